"""ImageNet checkpoints of torchvision and timm, saved to local files, load into the core presets
through the mapping tables with exact parity of the stage features. The models are randomly
initialised (nothing is downloaded), with randomised norm statistics, so the test proves the mapping,
not the weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file

from visionpipes.core.backbones import build_backbone
from visionpipes.core.errors import UserError
from visionpipes.core.pretrained import load_pretrained

X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def _randomise_norms(model: torch.nn.Module) -> torch.nn.Module:
    g = torch.Generator().manual_seed(1)
    for mod in model.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.copy_(torch.rand(mod.running_mean.shape, generator=g) - 0.5)
            mod.running_var.copy_(torch.rand(mod.running_var.shape, generator=g) + 0.5)
            mod.weight.data.copy_(torch.rand(mod.weight.shape, generator=g) + 0.5)
            mod.bias.data.copy_(torch.rand(mod.bias.shape, generator=g) - 0.5)
    return model.eval()


def _resnet_stages(m: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    act = m.relu if hasattr(m, "relu") else m.act1  # torchvision vs timm
    x = m.maxpool(act(m.bn1(m.conv1(x))))
    out = []
    for layer in (m.layer1, m.layer2, m.layer3, m.layer4):
        x = layer(x)
        out.append(x)
    return out


def _save(model: torch.nn.Module, path: Path) -> Path:
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    else:
        torch.save(model.state_dict(), path)
    return path


def _max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    assert [t.shape for t in a] == [t.shape for t in b]
    return max(float((u - v).abs().max()) for u, v in zip(a, b))


@pytest.mark.parametrize(
    ("preset", "make", "suffix"),
    [
        ("resnet18", lambda: torchvision.models.resnet18(), ".pth"),
        ("resnext50_32x4d", lambda: torchvision.models.resnext50_32x4d(), ".pth"),
        ("resnet50", lambda: timm.create_model("resnet50"), ".safetensors"),
        ("se_resnet50", lambda: timm.create_model("seresnet50"), ".safetensors"),
    ],
)
def test_resnet_family_parity(tmp_path: Path, preset: str, make, suffix: str) -> None:
    source = _randomise_norms(make())
    core = build_backbone(preset).eval()
    report = load_pretrained(core, _save(source, tmp_path / f"w{suffix}"))
    assert report.dropped == ["fc.bias", "fc.weight"] and report.missing == []
    with torch.no_grad():
        assert _max_diff(core(X), _resnet_stages(source, X)) <= 1e-5


def test_cbam_preset_takes_the_shared_resnet_parts(tmp_path: Path) -> None:
    source = _randomise_norms(torchvision.models.resnet50())
    core = build_backbone("cbam_resnet50")
    report = load_pretrained(core, _save(source, tmp_path / "r50.pth"))
    assert report.missing and all(".attn." in k for k in report.missing)
    own = core.state_dict()
    assert torch.equal(own["stages.2.3.conv2.conv.weight"], source.state_dict()["layer3.3.conv2.weight"])
    assert torch.equal(own["stem.0.norm.running_var"], source.state_dict()["bn1.running_var"])


@pytest.mark.parametrize("flavour", ["torchvision", "timm"])
def test_mobilenet_v2_parity(tmp_path: Path, flavour: str) -> None:
    source = _randomise_norms(
        torchvision.models.mobilenet_v2() if flavour == "torchvision" else timm.create_model("mobilenetv2_100")
    )
    core = build_backbone("mobilenet_v2").eval()
    load_pretrained(core, _save(source, tmp_path / "m.pth"))
    with torch.no_grad():
        if flavour == "torchvision":
            outs, y = [], X
            for layer in source.features:
                y = layer(y)
                outs.append(y)
        else:
            y = source.bn1(source.conv_stem(X))
            outs = []
            for stage in source.blocks:
                y = stage(y)
                outs.append(y)
            outs.append(source.bn2(source.conv_head(y)))
        feats = core(X)
        # each core feature equals the source output of that shape produced last before it
        by_shape = {tuple(t.shape): t for t in outs}
        assert _max_diff(feats, [by_shape[tuple(t.shape)] for t in feats]) <= 1e-5


def test_wrong_architecture_and_bad_files_are_one_sentence(tmp_path: Path) -> None:
    r18 = _save(torchvision.models.resnet18(), tmp_path / "r18.pth")
    with pytest.raises(UserError, match=r"layer1\.0\.conv1\.weight has shape \(64, 64, 3, 3\) but .* has \(64, 64, 1, 1\)"):
        load_pretrained(build_backbone("resnet50"), r18)
    with pytest.raises(UserError, match="never downloaded"):
        load_pretrained(build_backbone("resnet18"), tmp_path / "absent.safetensors")
    torch.save({"head.weight": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(UserError, match="no mapping table for these weights"):
        load_pretrained(build_backbone("resnet18"), tmp_path / "other.pth")
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(UserError, match="not a readable PyTorch file"):
        load_pretrained(build_backbone("resnet18"), tmp_path / "junk.pth")


def test_build_backbone_takes_weights_from_a_local_file(tmp_path: Path) -> None:
    source = _randomise_norms(torchvision.models.resnet34())
    core = build_backbone("resnet34", weights=_save(source, tmp_path / "resnet34.pth")).eval()
    with torch.no_grad():
        assert _max_diff(core(X), _resnet_stages(source, X)) <= 1e-5
