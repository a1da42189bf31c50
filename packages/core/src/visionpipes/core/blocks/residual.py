"""Residual blocks: the basic two-conv block (ResNet-18/34) and the bottleneck block with
grouped convolution (ResNet-50, ResNeXt), for 1-, 2- or 3-D inputs.

Attention (SE, CBAM, self-attention) is an argument, applied to the residual branch before the
addition; `skip=False` gives the same block without its shortcut (a plain network), which is
how the tests measure what the skip connection buys.
"""

from __future__ import annotations

import torch
from torch import nn

from visionpipes.core.blocks.attention import make_attn
from visionpipes.core.layers import ConvNormAct, LayerArg, conv_type, make_act, make_norm


def _shortcut(
    spatial_dims: int, in_channels: int, out_channels: int, stride: int, norm: LayerArg
) -> nn.Module:
    """Identity when shapes match, else a strided 1x1 projection with norm (ResNet option B)."""
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    return nn.Sequential(
        conv_type(spatial_dims)(in_channels, out_channels, 1, stride=stride, bias=False),
        make_norm(norm, spatial_dims, out_channels),
    )


class ResidualBlock(nn.Module):
    """Basic residual block (He et al., 2016): 3x3 conv-norm-act, 3x3 conv-norm, + shortcut, act.

    Args:
        spatial_dims: 1, 2 or 3.
        in_channels: input channels.
        out_channels: output channels.
        stride: stride of the first conv (and of the projection shortcut).
        dilation: dilation of both convs.
        kernel_size: kernel size of both convs (odd).
        norm: normalisation (name, `(name, kwargs)`, class or None).
        act: activation.
        attn: attention on the residual branch (`"se"`, `"cbam"`, `"self_attention"`, class).
        skip: keep the shortcut; `False` makes a plain (non-residual) block.
        zero_init_residual: start the last norm's scale at 0, so the block starts as identity.

    Example:
        >>> block = ResidualBlock(2, 64, 128, stride=2, attn="se")
        >>> block(torch.randn(1, 64, 32, 32)).shape
        torch.Size([1, 128, 16, 16])
    """

    expansion = 1

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        dilation: int = 1,
        kernel_size: int = 3,
        norm: LayerArg = "batch",
        act: LayerArg = "relu",
        attn: LayerArg = None,
        skip: bool = True,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        self.conv1 = ConvNormAct(spatial_dims, in_channels, out_channels, kernel_size, stride, dilation, norm=norm, act=act)
        self.conv2 = ConvNormAct(spatial_dims, out_channels, out_channels, kernel_size, 1, dilation, norm=norm, act=None)
        self.attn = make_attn(attn, spatial_dims, out_channels)
        self.shortcut = _shortcut(spatial_dims, in_channels, out_channels, stride, norm) if skip else None
        self.act = make_act(act)
        if zero_init_residual and hasattr(self.conv2.norm, "weight") and self.conv2.norm.weight is not None:
            nn.init.zeros_(self.conv2.norm.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.attn(self.conv2(self.conv1(x)))
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return self.act(out)


class Bottleneck(nn.Module):
    """Bottleneck residual block: 1x1 reduce, 3x3 grouped conv, 1x1 expand, + shortcut.

    With `cardinality=1, base_width=64` this is the ResNet-50 block; `cardinality=32,
    base_width=4` is ResNeXt-50 32x4d (Xie et al., 2017): the 3x3 conv is split into 32 groups
    of 4 channels per 64 of the stage's base width, at about the same parameter count.

    Args:
        spatial_dims: 1, 2 or 3.
        in_channels: input channels.
        out_channels: output channels (= `planes * expansion`).
        stride: stride of the 3x3 conv (torchvision's ResNet v1.5 placement).
        cardinality: groups of the 3x3 conv.
        base_width: channels per group per 64 planes.
        expansion: ratio of `out_channels` to the bottleneck's planes.
        dilation: dilation of the 3x3 conv.
        kernel_size: kernel of the grouped conv (odd).
        norm, act, attn, skip, zero_init_residual: as in `ResidualBlock`.

    Raises:
        ValueError: if `out_channels` is not divisible by `expansion`.

    Example:
        >>> block = Bottleneck(2, 256, 256, cardinality=32, base_width=4)
        >>> block(torch.randn(1, 256, 14, 14)).shape
        torch.Size([1, 256, 14, 14])
    """

    expansion = 4

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        cardinality: int = 1,
        base_width: int = 64,
        expansion: int = 4,
        dilation: int = 1,
        kernel_size: int = 3,
        norm: LayerArg = "batch",
        act: LayerArg = "relu",
        attn: LayerArg = None,
        skip: bool = True,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if out_channels % expansion:
            raise ValueError(f"out_channels ({out_channels}) must be divisible by expansion ({expansion}).")
        planes = out_channels // expansion
        width = int(planes * (base_width / 64.0)) * cardinality
        self.conv1 = ConvNormAct(spatial_dims, in_channels, width, 1, norm=norm, act=act)
        self.conv2 = ConvNormAct(
            spatial_dims, width, width, kernel_size, stride, dilation, groups=cardinality, norm=norm, act=act
        )
        self.conv3 = ConvNormAct(spatial_dims, width, out_channels, 1, norm=norm, act=None)
        self.attn = make_attn(attn, spatial_dims, out_channels)
        self.shortcut = _shortcut(spatial_dims, in_channels, out_channels, stride, norm) if skip else None
        self.act = make_act(act)
        if zero_init_residual and hasattr(self.conv3.norm, "weight") and self.conv3.norm.weight is not None:
            nn.init.zeros_(self.conv3.norm.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.attn(self.conv3(self.conv2(self.conv1(x))))
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return self.act(out)
