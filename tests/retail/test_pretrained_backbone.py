"""`train.pretrained`: a torchvision ImageNet checkpoint saved to a local file seeds the embedding
backbone through core's mapping tables (same stage features as the source model); a visionpipes
checkpoint still loads by name; a checkpoint of another shape is one sentence. Randomly initialised
models: this proves the mapping, not the weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from visionpipes.core.errors import UserError
from visionpipes.retail.embedding.config import EmbeddingConfig
from visionpipes.retail.embedding.network import EmbeddingNet
from visionpipes.retail.training.module import load_pretrained_backbone


def _stages(m: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
    out = []
    for layer in (m.layer1, m.layer2, m.layer3, m.layer4):
        x = layer(x)
        out.append(x)
    return out


def test_torchvision_weights_seed_the_backbone(tmp_path: Path) -> None:
    source = torchvision.models.resnet18().eval()
    for mod in source.modules():  # statistics unlike a fresh model's, so a skipped norm would show
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_var.uniform_(0.5, 2.0)
    torch.save(source.state_dict(), tmp_path / "resnet18.pth")
    net = EmbeddingNet.from_config(EmbeddingConfig(backbone="resnet18", width_multiplier=1.0)).eval()
    assert load_pretrained_backbone(net, tmp_path / "resnet18.pth") == 120
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        diff = max(float((a - b).abs().max()) for a, b in zip(net.backbone(x), _stages(source, x)))
    assert diff <= 1e-5


def test_visionpipes_checkpoint_and_wrong_width(tmp_path: Path) -> None:
    half = EmbeddingNet.from_config(EmbeddingConfig(backbone="resnet18", width_multiplier=0.5))
    torch.save({"state_dict": {f"model.{k}": v for k, v in half.state_dict().items()}}, tmp_path / "run.ckpt")
    other = EmbeddingNet.from_config(EmbeddingConfig(backbone="resnet18", width_multiplier=0.5))
    assert load_pretrained_backbone(other, tmp_path / "run.ckpt") == len(other.backbone.state_dict())
    assert torch.equal(other.backbone.state_dict()["stem.0.conv.weight"], half.backbone.state_dict()["stem.0.conv.weight"])
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pth")
    with pytest.raises(UserError, match=r"r18.pth: conv1.weight has shape \(64, 3, 7, 7\) but the backbone's"):
        load_pretrained_backbone(other, tmp_path / "r18.pth")
