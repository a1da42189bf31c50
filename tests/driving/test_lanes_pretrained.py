"""`lanes.train.pretrained`: local ImageNet weights seed the lane encoder (smp's torchvision-style
ResNet encoder by name, a `core:` encoder through core's mapping tables) with the source model's
features; a lower encoder learning rate and frozen encoder norms are options. Randomly initialised
torchvision models saved to disk: this proves the wiring, not the weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from visionpipes.core.errors import UserError
from visionpipes.driving.lanes.model import LaneModelConfig, build_lane_model, seed_lane_encoder
from visionpipes.driving.lanes.train import LaneModule, LaneTrainConfig

X = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def _tv_stages(m: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
    out = []
    for layer in (m.layer1, m.layer2, m.layer3, m.layer4):
        x = layer(x)
        out.append(x)
    return out


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    source = torchvision.models.resnet18().eval()
    for mod in source.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_var.uniform_(0.5, 2.0)
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(source.state_dict(), path)
    return source, path


@pytest.mark.parametrize("encoder", ["resnet18", "core:resnet18"])
def test_encoder_features_equal_the_source_model(resnet18_file, encoder: str) -> None:
    source, path = resnet18_file
    model = build_lane_model(LaneModelConfig(encoder=encoder, width=64, height=64)).eval()
    assert seed_lane_encoder(model, path) > 100
    with torch.no_grad():
        feats = model.net.encoder(X)[-4:]  # strides 4..32
        expected = _tv_stages(source, X)
    assert max(float((a - b).abs().max()) for a, b in zip(feats, expected)) <= 1e-5


def test_wrong_architecture_is_one_sentence(resnet18_file) -> None:
    _, path = resnet18_file
    model = build_lane_model(LaneModelConfig(encoder="resnet34", width=64, height=64))
    with pytest.raises(UserError, match="do not fill the lane encoder resnet34"):
        seed_lane_encoder(model, path)


def test_encoder_learning_rate_and_frozen_norms(resnet18_file) -> None:
    _, path = resnet18_file
    train = LaneTrainConfig(pretrained=str(path), encoder_lr_scale=0.1, freeze_encoder_norm=True, lr=0.01)
    module = LaneModule(LaneModelConfig(width=64, height=64).to_dict(), train.to_dict(), total_steps=10, budget_s=None)
    optimizer = module.configure_optimizers()["optimizer"]
    assert sorted(g["initial_lr"] for g in optimizer.param_groups) == pytest.approx([0.001, 0.01])
    norm = module._encoder_norms()[0]
    before = norm.running_var.clone()
    module.train()
    assert not norm.training and not norm.weight.requires_grad
    module.model(torch.rand(2, 3, 64, 64))
    assert torch.equal(norm.running_var, before)
