"""Factorised convolutions for efficient networks: the depthwise separable conv (MobileNetV1,
Xception) and the inverted residual with linear bottleneck (MobileNetV2), in 1-, 2- or 3-D.

A k x k standard conv C_in -> C_out costs k^2 * C_in * C_out weights; the depthwise separable
version costs k^2 * C_in + C_in * C_out, about k^2 times fewer when C_out is large.
"""

from __future__ import annotations

import torch
from torch import nn

from visionpipes.core.blocks.attention import make_attn
from visionpipes.core.layers import ConvNormAct, LayerArg


class DepthwiseSeparableConv(nn.Module):
    """Depthwise k x k conv (one filter per channel) then pointwise 1x1 conv across channels.

    Args:
        spatial_dims: 1, 2 or 3.
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: depthwise kernel (odd).
        stride: depthwise stride.
        dilation: depthwise dilation.
        norm: normalisation after each conv (None: convs carry a bias instead).
        act: activation after the depthwise conv.
        pw_act: activation after the pointwise conv (MobileNetV1 uses one; set None for linear).
        attn: attention between the depthwise and pointwise convs (`"se"` as in EfficientNet).
        skip: add the input when stride is 1 and channels match.

    Example:
        >>> conv = DepthwiseSeparableConv(2, 256, 256, norm=None, act=None, pw_act=None)
        >>> sum(p.numel() for p in conv.parameters()) == 3 * 3 * 256 + 256 + 256 * 256 + 256
        True
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        dilation: int = 1,
        norm: LayerArg = "batch",
        act: LayerArg = "relu",
        pw_act: LayerArg = "relu",
        attn: LayerArg = None,
        skip: bool = False,
    ) -> None:
        super().__init__()
        self.depthwise = ConvNormAct(
            spatial_dims, in_channels, in_channels, kernel_size, stride, dilation, groups=in_channels, norm=norm, act=act
        )
        self.attn = make_attn(attn, spatial_dims, in_channels)
        self.pointwise = ConvNormAct(spatial_dims, in_channels, out_channels, 1, norm=norm, act=pw_act)
        self.has_skip = skip and stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.pointwise(self.attn(self.depthwise(x)))
        return out + x if self.has_skip else out


class InvertedResidual(nn.Module):
    """MobileNetV2 inverted residual (Sandler et al., 2018): 1x1 expansion, depthwise k x k,
    1x1 linear projection; a shortcut joins the two narrow ends when stride is 1 and channels
    match.

    Args:
        spatial_dims: 1, 2 or 3.
        in_channels: input channels.
        out_channels: output channels.
        stride: depthwise stride.
        expand_ratio: hidden width relative to `in_channels` (no expansion conv when 1).
        kernel_size: depthwise kernel (odd).
        dilation: depthwise dilation.
        norm: normalisation.
        act: activation of expansion and depthwise convs (ReLU6 in MobileNetV2).
        attn: attention on the expanded features (`"se"` as in MobileNetV3).

    Example:
        >>> block = InvertedResidual(2, 24, 24, expand_ratio=6)
        >>> block(torch.randn(1, 24, 56, 56)).shape
        torch.Size([1, 24, 56, 56])
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        expand_ratio: float = 6,
        kernel_size: int = 3,
        dilation: int = 1,
        norm: LayerArg = "batch",
        act: LayerArg = "relu6",
        attn: LayerArg = None,
    ) -> None:
        super().__init__()
        hidden = round(in_channels * expand_ratio)
        self.expand = (
            ConvNormAct(spatial_dims, in_channels, hidden, 1, norm=norm, act=act) if hidden != in_channels else nn.Identity()
        )
        self.depthwise = ConvNormAct(
            spatial_dims, hidden, hidden, kernel_size, stride, dilation, groups=hidden, norm=norm, act=act
        )
        self.attn = make_attn(attn, spatial_dims, hidden)
        self.project = ConvNormAct(spatial_dims, hidden, out_channels, 1, norm=norm, act=None)
        self.has_skip = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.attn(self.depthwise(self.expand(x))))
        return out + x if self.has_skip else out
