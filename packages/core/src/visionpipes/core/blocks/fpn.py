"""Feature Pyramid Network (Lin et al., 2017): a top-down pathway with lateral 1x1 connections
that gives every scale of a backbone the same width and the semantics of the coarsest level.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from visionpipes.core.layers import ConvNormAct, LayerArg, check_spatial_dims


class FPN(nn.Module):
    """Top-down feature pyramid over a list of feature maps ordered fine to coarse.

    Each level: a lateral 1x1 conv to `out_channels`, plus the nearest-upsampled sum from the
    level above, then a 3x3 output conv. Optionally adds extra coarser levels by stride-2
    max-pooling of the coarsest output (the "P6" of detection FPNs).

    Args:
        in_channels: channels of each input level, fine to coarse.
        out_channels: channels of every output level.
        spatial_dims: 1, 2 or 3.
        norm: normalisation of the lateral and output convs (None as in the paper).
        act: activation after the output convs (None as in the paper).
        extra_levels: number of extra pooled levels on top.

    Raises:
        ValueError: if `in_channels` is empty, or at call time if the number of inputs differs.

    Example:
        >>> fpn = FPN([64, 128, 256], 32)
        >>> feats = [torch.randn(1, 64, 32, 32), torch.randn(1, 128, 16, 16), torch.randn(1, 256, 8, 8)]
        >>> [tuple(f.shape) for f in fpn(feats)]
        [(1, 32, 32, 32), (1, 32, 16, 16), (1, 32, 8, 8)]
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        out_channels: int = 256,
        spatial_dims: int = 2,
        norm: LayerArg = None,
        act: LayerArg = None,
        extra_levels: int = 0,
    ) -> None:
        super().__init__()
        check_spatial_dims(spatial_dims)
        if not in_channels:
            raise ValueError("FPN needs at least one input level.")
        self.lateral = nn.ModuleList(
            ConvNormAct(spatial_dims, c, out_channels, 1, norm=norm, act=None) for c in in_channels
        )
        self.output = nn.ModuleList(
            ConvNormAct(spatial_dims, out_channels, out_channels, 3, norm=norm, act=act) for _ in in_channels
        )
        self.extra_levels = extra_levels
        self.spatial_dims = spatial_dims
        self.out_channels = [out_channels] * (len(in_channels) + extra_levels)

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if len(features) != len(self.lateral):
            raise ValueError(f"FPN was built for {len(self.lateral)} levels, got {len(features)}.")
        last = self.lateral[-1](features[-1])
        outs = [self.output[-1](last)]
        for i in range(len(features) - 2, -1, -1):
            lateral = self.lateral[i](features[i])
            last = lateral + F.interpolate(last, size=lateral.shape[2:], mode="nearest")
            outs.insert(0, self.output[i](last))
        pool = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[self.spatial_dims]
        for _ in range(self.extra_levels):
            outs.append(pool(outs[-1], kernel_size=1, stride=2))
        return outs
