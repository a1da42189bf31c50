"""Atrous Spatial Pyramid Pooling (DeepLabv3): parallel dilated convolutions and image pooling
that see context at several scales without losing resolution, in 1-, 2- or 3-D.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from visionpipes.core.layers import ConvNormAct, LayerArg, adaptive_avg_pool, conv_type, make_act


class ASPP(nn.Module):
    """ASPP (Chen et al., 2017): a 1x1 branch, one 3x3 branch per dilation rate, and an
    image-pooling branch, concatenated and projected by a 1x1 conv.

    The image-pooling branch has a bias and no norm, so it also trains with batch size 1 (a
    batch norm over one 1x1 map has no variance to normalise).

    Args:
        spatial_dims: 1, 2 or 3.
        in_channels: input channels.
        out_channels: channels of each branch and of the output.
        rates: dilation rates of the 3x3 branches.
        image_pooling: include the global image-pooling branch.
        norm: normalisation.
        act: activation.
        dropout: dropout after the projection.

    Raises:
        ValueError: if a rate is below 1.

    Example:
        >>> aspp = ASPP(2, 256, 64, rates=(2, 4, 6))
        >>> aspp(torch.randn(1, 256, 33, 33)).shape
        torch.Size([1, 64, 33, 33])
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int = 256,
        rates: Sequence[int] = (6, 12, 18),
        image_pooling: bool = True,
        norm: LayerArg = "batch",
        act: LayerArg = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if any(int(r) < 1 for r in rates):
            raise ValueError(f"ASPP rates must be >= 1, got {tuple(rates)}.")
        self.rates = tuple(int(r) for r in rates)
        branches = [ConvNormAct(spatial_dims, in_channels, out_channels, 1, norm=norm, act=act)]
        branches += [
            ConvNormAct(spatial_dims, in_channels, out_channels, 3, dilation=r, norm=norm, act=act) for r in self.rates
        ]
        self.branches = nn.ModuleList(branches)
        self.pooling = (
            nn.Sequential(
                adaptive_avg_pool(spatial_dims, 1),
                conv_type(spatial_dims)(in_channels, out_channels, 1),
                make_act(act),
            )
            if image_pooling
            else None
        )
        n = len(branches) + (1 if image_pooling else 0)
        self.project = ConvNormAct(spatial_dims, n * out_channels, out_channels, 1, norm=norm, act=act)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [branch(x) for branch in self.branches]
        if self.pooling is not None:
            outs.append(self.pooling(x).expand(-1, -1, *x.shape[2:]))
        return self.dropout(self.project(torch.cat(outs, dim=1)))

