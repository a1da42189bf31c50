"""The models the study trains that are not backbone specs: CIFAR-style plain/residual nets,
standard vs depthwise separable stacks, the context heads, and the pooled classifier around them.

Part of `benchmarks/architecture_study.py`; measures only, changes no library code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from visionpipes.core.backbones import BackboneSpec
from visionpipes.core.blocks import ASPP, DepthwiseSeparableConv, ResidualBlock
from visionpipes.core.layers import ConvNormAct
from visionpipes.core.nas.training import Classifier


class PooledClassifier(nn.Module):
    """Features -> global average pooling -> linear classifier."""

    def __init__(self, features: nn.Module, channels: int, classes: int) -> None:
        super().__init__()
        self.features = features
        self.head = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3)))


def cifar_net(depth: int, skip: bool, widths: Sequence[int], classes: int) -> nn.Module:
    """The CIFAR ResNet of He et al. (2016, section 4.2): a 3x3 conv, then 3 stages of n basic
    blocks (widths x1, x2, x4, stride 2 between stages), pooling and a linear layer: 6n + 2
    layers. `skip=False` is the paper's plain net (same layers, no shortcuts). Our stem adds a
    stride-2 conv and a 2x2 max-pool so that the proxy images (48 px) cost what 12 px would.

    Raises:
        ValueError: if `depth` is not 6n + 2.
    """
    if (depth - 2) % 6 or depth < 8:
        raise ValueError(f"a CIFAR-style net has 6n + 2 layers (8, 14, 20, ...), got {depth}.")
    n = (depth - 2) // 6
    layers: list[nn.Module] = [ConvNormAct(2, 3, widths[0], 3, 2), nn.MaxPool2d(2)]
    ch = widths[0]
    for i, width in enumerate(widths):
        for j in range(n):
            layers.append(ResidualBlock(2, ch, width, stride=2 if i > 0 and j == 0 else 1, skip=skip))
            ch = width
    return PooledClassifier(nn.Sequential(*layers), ch, classes)


def conv_stack(separable: bool, stem: int, table: Sequence[tuple[int, int]], classes: int) -> nn.Module:
    """A MobileNetV1-style stack without shortcuts: a 3x3/2 conv stem, then one layer per
    `(width, stride)`: a standard 3x3 conv-BN-ReLU, or (`separable`) a depthwise 3x3 + pointwise
    1x1 conv, each with BN-ReLU, as in Howard et al. (2017), Figure 3."""
    layers: list[nn.Module] = [ConvNormAct(2, 3, stem, 3, 2)]
    ch = stem
    for width, stride in table:
        if separable:
            layers.append(DepthwiseSeparableConv(2, ch, width, 3, stride))
        else:
            layers.append(ConvNormAct(2, ch, width, 3, stride))
        ch = width
    return PooledClassifier(nn.Sequential(*layers), ch, classes)


def spec_net(spec: tuple[tuple[str, Any], ...], classes: int) -> nn.Module:
    """The search's classifier (`Classifier`) on a backbone spec given as sorted items."""
    data = dict(spec)
    data["stages"] = [dict(s) for s in data["stages"]]
    return Classifier(BackboneSpec.from_params(data, source="study spec"), classes)


def context_net(head: str, width: int, classes: int) -> nn.Module:
    """A small trunk at output stride 4 (a 3x3/2 conv, a residual block with stride 2), then a
    head that keeps the resolution: `plain` (two 3x3 convs), `dilated` (the same two convs with
    dilation 2 and 4: same parameters, larger field of view) or `aspp` (ASPP with rates 2, 4, 6 and
    image pooling, half the width so the parameters stay comparable); pooling and a linear layer.

    Raises:
        ValueError: for an unknown head.
    """
    trunk = [ConvNormAct(2, 3, width // 2, 3, 2), ResidualBlock(2, width // 2, width, stride=2)]
    if head == "plain":
        layers, out = [ConvNormAct(2, width, width, 3, 1, 1), ConvNormAct(2, width, width, 3, 1, 1)], width
    elif head == "dilated":
        layers, out = [ConvNormAct(2, width, width, 3, 1, 2), ConvNormAct(2, width, width, 3, 1, 4)], width
    elif head == "aspp":
        layers, out = [ASPP(2, width, width // 2, rates=(2, 4, 6))], width // 2
    else:
        raise ValueError(f"unknown context head {head!r}; use plain, dilated or aspp.")
    return PooledClassifier(nn.Sequential(*trunk, *layers), out, classes)


BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "cifar_net": cifar_net,
    "conv_stack": conv_stack,
    "spec_net": spec_net,
    "context_net": context_net,
}
