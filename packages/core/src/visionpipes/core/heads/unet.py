"""A U-Net built from core blocks: residual encoder stages with SE / CBAM attention, an ASPP bottleneck
and a residual decoder with skip connections, in 2-D or 3-D.

A network part only: no loss, data or domain logic, and no MONAI import (the medical package maps its
config onto this class).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn

from visionpipes.core.blocks import ASPP, ResidualBlock
from visionpipes.core.layers import LayerArg, check_spatial_dims, conv_type

__all__ = ["AttentionResUNet"]

_CONV_TRANSPOSE = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}


class AttentionResUNet(nn.Module):
    """U-Net whose stages are core residual blocks with channel/spatial attention.

    Encoder: a residual stem, then per level a strided residual block (SE or CBAM on the residual
    branch); bottleneck: ASPP (dilated context); decoder: transposed-conv up-sampling, concatenation
    with the skip, a residual block; head: a 1x1 convolution to `out_channels` logits.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels (image channels, modalities).
        out_channels: output channels (logits).
        channels: feature channels per level (at least two levels; each level halves the size).
        attn: `se`, `cbam` or `none`.
        aspp_rates: ASPP dilation rates at the bottleneck.
        norm: normalisation of every block (a name, `(name, kwargs)` or a class).
        dropout: dropout before the head.

    Raises:
        ValueError: if fewer than two levels are given, or `spatial_dims` is unsupported.

    Example:
        >>> net = AttentionResUNet(3, 4, 3, channels=(8, 16, 32))
        >>> net(torch.randn(1, 4, 16, 16, 16)).shape
        torch.Size([1, 3, 16, 16, 16])
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        channels: Sequence[int] = (16, 32, 64, 128),
        attn: str = "se",
        aspp_rates: Sequence[int] = (1, 2, 4),
        norm: LayerArg = "instance",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        check_spatial_dims(spatial_dims)
        if len(channels) < 2:
            raise ValueError("AttentionResUNet needs at least two levels of channels.")
        if attn not in ("se", "cbam", "none"):
            raise ValueError(f"attn must be 'se', 'cbam' or 'none', not {attn!r}.")
        attn_arg = None if attn == "none" else attn
        self.stem = ResidualBlock(spatial_dims, in_channels, channels[0], norm=norm, attn=attn_arg)
        self.down = nn.ModuleList(
            ResidualBlock(spatial_dims, c_in, c_out, stride=2, norm=norm, attn=attn_arg)
            for c_in, c_out in itertools.pairwise(channels)
        )
        self.bottleneck = ASPP(
            spatial_dims, channels[-1], channels[-1], rates=aspp_rates, image_pooling=False, norm=norm
        )
        up_type = _CONV_TRANSPOSE[spatial_dims]
        self.up = nn.ModuleList(
            up_type(c_out, c_in, kernel_size=2, stride=2) for c_in, c_out in itertools.pairwise(channels)
        )
        self.decode = nn.ModuleList(
            ResidualBlock(spatial_dims, 2 * c, c, norm=norm, attn=attn_arg) for c in channels[:-1]
        )
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = conv_type(spatial_dims)(channels[0], out_channels, kernel_size=1)

    @property
    def divisor(self) -> int:
        """Spatial sizes of the input must be divisible by this (2 per down-sampling level)."""
        return 2 ** len(self.down)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.stem(x)]
        for block in self.down:
            skips.append(block(skips[-1]))
        y = self.bottleneck(skips.pop())
        for level in reversed(range(len(self.up))):
            y = self.up[level](y)
            y = self.decode[level](torch.cat([y, skips[level]], dim=1))
        return self.head(self.dropout(y))
