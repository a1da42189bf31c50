"""The backbone builder: every preset gives features at strides 4-32 with the advertised widths,
matches torchvision's parameter count where torchvision has the same architecture, and specs
round-trip through plain dicts (as read from params.yaml)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torchvision

from visionpipes.core.backbones import BackboneSpec, StageSpec, build_backbone, get_spec, list_backbones
from visionpipes.core.errors import UserError

REQUIRED = {"resnet18", "resnet50", "resnext50_32x4d", "mobilenet_v2", "se_resnet50", "cbam_resnet50", "resnet18_mhsa"}
TORCHVISION_TWINS = {
    "resnet18": torchvision.models.resnet18,
    "resnet50": torchvision.models.resnet50,
    "resnext50_32x4d": torchvision.models.resnext50_32x4d,
    "mobilenet_v2": torchvision.models.mobilenet_v2,
}


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_required_presets_are_registered() -> None:
    assert set(list_backbones()) >= REQUIRED


@pytest.mark.parametrize("name", list_backbones())
def test_preset_returns_four_scales(name: str) -> None:
    net = build_backbone(name).eval()
    assert net.strides == [4, 8, 16, 32]
    with torch.no_grad():
        feats = net(torch.zeros(1, 3, 64, 64))
    assert [f.shape[1] for f in feats] == net.out_channels
    assert [f.shape[-1] for f in feats] == [64 // s for s in net.strides]


@pytest.mark.parametrize("name", sorted(TORCHVISION_TWINS))
def test_parameter_count_matches_torchvision(name: str) -> None:
    reference = TORCHVISION_TWINS[name]()
    head = reference.fc if hasattr(reference, "fc") else reference.classifier
    expected = n_params(reference) - n_params(head)
    ours = n_params(build_backbone(name))
    assert abs(ours - expected) / expected <= 0.01, (ours, expected)


def test_resnext_is_grouped_and_attention_presets_add_attention() -> None:
    resnext = build_backbone("resnext50_32x4d")
    assert resnext.stages[0][0].conv2.conv.groups == 32
    se = build_backbone("se_resnet50")
    assert type(se.stages[2][0].attn).__name__ == "SqueezeExcitation"
    cbam = build_backbone("cbam_resnet50")
    assert type(cbam.stages[3][1].attn).__name__ == "CBAM"
    hybrid = build_backbone("resnet18_mhsa")
    assert type(hybrid.stages[3][0].attn).__name__ == "SelfAttention"
    assert type(hybrid.stages[0][0].attn).__name__ == "Identity"


def test_spec_round_trips_through_a_dict_and_builds_in_3d() -> None:
    spec = get_spec("resnet18")
    data = spec.to_dict()
    assert BackboneSpec.from_params(data, source="t") == spec
    small = {
        "name": "tiny3d",
        "stem": "conv",
        "stem_width": 8,
        "norm": "group",
        "stages": [
            {"block": "basic", "depth": 1, "width": 8, "stride": 2, "attn": "se"},
            {"block": "bottleneck", "depth": 1, "width": 16, "stride": 2, "cardinality": 2, "base_width": 16},
            {"block": "depthwise_separable", "depth": 1, "width": 16, "stride": 2, "attn": "cbam"},
            {"block": "self_attention", "depth": 1, "width": 16, "stride": 2},
        ],
    }
    net = build_backbone(small, in_channels=4, spatial_dims=3)
    feats = net(torch.randn(1, 4, 64, 64, 64))
    assert net.strides == [4, 8, 16, 32]
    assert [tuple(f.shape[1:]) for f in feats] == [(8, 16, 16, 16), (16, 8, 8, 8), (16, 4, 4, 4), (16, 2, 2, 2)]


def test_bad_specs_are_refused_with_a_sentence() -> None:
    with pytest.raises(ValueError, match="unknown backbone 'resnet1000'; did you mean 'resnet50'"):
        build_backbone("resnet1000")
    with pytest.raises(ValueError, match="block"):
        StageSpec(block="transformer", depth=1, width=8)
    with pytest.raises(ValueError, match="stride"):
        StageSpec(block="basic", depth=1, width=8, stride=3)
    with pytest.raises(UserError, match=re.escape("key 'stages.0.block' = 'transformer': input should be 'basic'")):
        BackboneSpec.from_params({"name": "x", "stages": [{"block": "transformer", "depth": 1, "width": 8}]}, source="t")
    with pytest.raises(UserError, match="t: unknown key 'depth'"):
        BackboneSpec.from_params({"name": "x", "stages": [], "depth": 3}, source="t")
    with pytest.raises(UserError, match=re.escape("unknown key 'stages.0.groups'")):
        BackboneSpec.from_params(
            {"name": "x", "stages": [{"block": "basic", "depth": 1, "width": 8, "groups": 2}]}, source="t"
        )
    with pytest.raises(UserError, match=re.escape("unknown key 'stages.0.dpth'; did you mean 'depth'")):
        build_backbone({"name": "x", "stages": [{"block": "basic", "dpth": 1, "width": 8}]})
    with pytest.raises(UserError, match="out_indices"):
        BackboneSpec.from_params({"name": "x", "stages": [{"block": "basic", "depth": 1, "width": 8}], "out_indices": [2]},
                                 source="t")


def test_a_spec_file_is_built_like_a_preset(tmp_path: Path) -> None:
    import json

    import yaml

    from visionpipes.core.backbones import get_spec, inline_spec_file

    spec = get_spec("mobilenet_v2")
    spec.name = "searched"
    (tmp_path / "best_spec.yaml").write_text(yaml.safe_dump(spec.to_dict()))
    (tmp_path / "best_spec.json").write_text(json.dumps(spec.to_dict()))
    for path in (tmp_path / "best_spec.yaml", tmp_path / "best_spec.json"):
        net = build_backbone(str(path))
        assert net.out_channels == build_backbone("mobilenet_v2").out_channels
        assert inline_spec_file(str(path)) == spec.to_dict()
    assert inline_spec_file("resnet18") == "resnet18"
    (tmp_path / "bad.yaml").write_text("stages: [{block: basic, colour: red}]\n")
    with pytest.raises(UserError, match=r"backbone spec file .*bad\.yaml: unknown key 'stages\.0\.colour'"):
        build_backbone(str(tmp_path / "bad.yaml"))
    with pytest.raises(UserError, match=r"missing\.yaml does not exist"):
        build_backbone(str(tmp_path / "missing.yaml"))
