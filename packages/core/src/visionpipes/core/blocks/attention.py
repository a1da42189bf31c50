"""Attention blocks: squeeze-excitation (channel), CBAM (channel + spatial) and multi-head
self-attention over spatial positions, each for 1-, 2- or 3-D feature maps.

These re-weight or mix features; they never change the number of channels or the spatial size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from visionpipes.core.layers import (
    LayerArg,
    adaptive_avg_pool,
    adaptive_max_pool,
    check_spatial_dims,
    conv_type,
    make_act,
    make_norm,
    same_padding,
)


def _reduced(channels: int, reduction: int, min_channels: int = 8) -> int:
    return max(min_channels, channels // reduction)


class SqueezeExcitation(nn.Module):
    """Squeeze-and-Excitation (Hu et al., 2018): global pooling, a bottleneck MLP, a sigmoid gate
    that scales each channel.

    Args:
        spatial_dims: 1, 2 or 3.
        channels: input (= output) channels.
        reduction: channel reduction of the bottleneck (16 in the paper).
        act: activation inside the bottleneck.
        gate: gating activation (`sigmoid`, or `hardsigmoid` as in MobileNetV3).
        rd_channels: bottleneck width; overrides `reduction` when given.

    Example:
        >>> se = SqueezeExcitation(2, 64)
        >>> se(torch.randn(2, 64, 8, 8)).shape
        torch.Size([2, 64, 8, 8])
    """

    def __init__(
        self,
        spatial_dims: int,
        channels: int,
        reduction: int = 16,
        act: LayerArg = "relu",
        gate: LayerArg = "sigmoid",
        rd_channels: int | None = None,
    ) -> None:
        super().__init__()
        conv = conv_type(spatial_dims)
        rd = rd_channels or _reduced(channels, reduction)
        self.pool = adaptive_avg_pool(spatial_dims, 1)
        self.fc1 = conv(channels, rd, 1)
        self.act = make_act(act)
        self.fc2 = conv(rd, channels, 1)
        self.gate = make_act(gate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.gate(self.fc2(self.act(self.fc1(self.pool(x)))))
        return x * w


class CBAM(nn.Module):
    """Convolutional Block Attention Module (Woo et al., 2018): channel attention from average-
    and max-pooled descriptors through a shared MLP, then spatial attention from a 7x7 conv over
    the channel-wise mean and max maps.

    Args:
        spatial_dims: 1, 2 or 3.
        channels: input (= output) channels.
        reduction: reduction of the shared MLP.
        kernel_size: kernel of the spatial-attention conv (odd).
        act: activation of the MLP.

    Example:
        >>> cbam = CBAM(3, 32)
        >>> cbam(torch.randn(1, 32, 4, 8, 8)).shape
        torch.Size([1, 32, 4, 8, 8])
    """

    def __init__(
        self,
        spatial_dims: int,
        channels: int,
        reduction: int = 16,
        kernel_size: int = 7,
        act: LayerArg = "relu",
    ) -> None:
        super().__init__()
        conv = conv_type(spatial_dims)
        rd = _reduced(channels, reduction)
        self.avg_pool = adaptive_avg_pool(spatial_dims, 1)
        self.max_pool = adaptive_max_pool(spatial_dims, 1)
        self.mlp = nn.Sequential(conv(channels, rd, 1, bias=False), make_act(act), conv(rd, channels, 1, bias=False))
        self.spatial = conv(2, 1, kernel_size, padding=same_padding(kernel_size), bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channel = torch.sigmoid(self.mlp(self.avg_pool(x)) + self.mlp(self.max_pool(x)))
        x = x * channel
        stats = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.spatial(stats))


def sinusoidal_position_encoding(
    channels: int, size: Sequence[int], device: torch.device | None = None, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Fixed sine/cosine position encoding of shape `(1, channels, *size)` (Vaswani et al.,
    extended to N-D by giving each spatial axis an equal share of the channels).

    Raises:
        ValueError: if `channels` cannot be split into sin/cos pairs per axis.
    """
    dims = len(size)
    per_axis = (channels // (2 * dims)) * 2
    if per_axis == 0:
        raise ValueError(f"sinusoidal position encoding needs at least {2 * dims} channels, got {channels}.")
    freqs = torch.exp(
        torch.arange(0, per_axis, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / per_axis)
    )
    parts = []
    for axis, n in enumerate(size):
        pos = torch.arange(n, device=device, dtype=torch.float32)[:, None] * freqs[None, :]
        enc = torch.cat([pos.sin(), pos.cos()], dim=1).t()  # (per_axis, n)
        shape = [1] * dims
        shape[axis] = n
        parts.append(enc.reshape(per_axis, *shape).expand(per_axis, *size))
    pe = torch.cat(parts, dim=0)
    if per_axis * dims < channels:
        pe = torch.cat([pe, pe.new_zeros(channels - per_axis * dims, *size)], dim=0)
    return pe.unsqueeze(0).to(dtype or torch.float32)


class SelfAttention(nn.Module):
    """Multi-head self-attention over the spatial positions of a feature map, as a residual
    block that fits inside a CNN stage (a pre-norm transformer layer: attention, then an MLP).

    Every position attends to every other one, so the block has a global receptive field; the
    cost grows with the square of the number of positions, so use it at strides 16-32.

    Args:
        spatial_dims: 1, 2 or 3.
        channels: input (= output) channels; must be divisible by `num_heads`.
        num_heads: attention heads.
        pos_encoding: `"sinusoidal"` (fixed, any size), `"learned"` (a parameter grid of
            `pos_grid` resized to the input), or `None`.
        pos_grid: size of the learned grid per axis.
        mlp_ratio: hidden width of the MLP relative to `channels`; 0 disables the MLP.
        norm: normalisation before attention and MLP (`"layer"` = GroupNorm(1)).
        act: MLP activation.

    Raises:
        ValueError: if `channels` is not divisible by `num_heads` or `pos_encoding` is unknown.

    Example:
        >>> sa = SelfAttention(2, 64, num_heads=4, pos_encoding="learned")
        >>> sa(torch.randn(2, 64, 7, 7)).shape
        torch.Size([2, 64, 7, 7])
    """

    def __init__(
        self,
        spatial_dims: int,
        channels: int,
        num_heads: int = 4,
        pos_encoding: str | None = "sinusoidal",
        pos_grid: int = 14,
        mlp_ratio: float = 2.0,
        norm: LayerArg = "layer",
        act: LayerArg = "gelu",
    ) -> None:
        super().__init__()
        self.spatial_dims = check_spatial_dims(spatial_dims)
        if channels % num_heads:
            raise ValueError(f"channels ({channels}) must be divisible by num_heads ({num_heads}).")
        if pos_encoding not in (None, "sinusoidal", "learned"):
            raise ValueError(f"pos_encoding must be 'sinusoidal', 'learned' or None, got {pos_encoding!r}.")
        conv = conv_type(spatial_dims)
        self.channels = channels
        self.num_heads = num_heads
        self.pos_encoding = pos_encoding
        self.norm1 = make_norm(norm, spatial_dims, channels)
        self.qkv = conv(channels, 3 * channels, 1)
        self.proj = conv(channels, channels, 1)
        if pos_encoding == "learned":
            self.pos = nn.Parameter(torch.zeros(1, channels, *([pos_grid] * spatial_dims)))
            nn.init.trunc_normal_(self.pos, std=0.02)
        else:
            self.register_parameter("pos", None)
        hidden = int(channels * mlp_ratio)
        if hidden > 0:
            self.norm2 = make_norm(norm, spatial_dims, channels)
            self.mlp = nn.Sequential(conv(channels, hidden, 1), make_act(act), conv(hidden, channels, 1))
        else:
            self.norm2 = None
            self.mlp = None

    def _position(self, x: torch.Tensor) -> torch.Tensor | None:
        size = tuple(x.shape[2:])
        if self.pos_encoding == "sinusoidal":
            # the channel count is a python int (not a traced shape), so export traces no branch
            return sinusoidal_position_encoding(self.channels, size, device=x.device, dtype=x.dtype)
        if self.pos is not None:
            if tuple(self.pos.shape[2:]) == size:
                return self.pos
            mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[self.spatial_dims]
            return F.interpolate(self.pos, size=size, mode=mode, align_corners=False)
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        size = x.shape[2:]
        h = self.norm1(x)
        pos = self._position(h)
        if pos is not None:
            h = h + pos
        q, k, v = self.qkv(h).reshape(b, 3, self.num_heads, c // self.num_heads, -1).unbind(1)
        # (b, heads, positions, head_dim)
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        out = out.transpose(-1, -2).reshape(b, c, *size)
        x = x + self.proj(out)
        if self.mlp is not None:
            x = x + self.mlp(self.norm2(x))
        return x


_ATTENTION = {
    "se": SqueezeExcitation,
    "cbam": CBAM,
    "self_attention": SelfAttention,
    "mhsa": SelfAttention,
}


def make_attn(attn: LayerArg, spatial_dims: int, channels: int) -> nn.Module:
    """An attention module over `channels` maps: `"se"`, `"cbam"`, `"self_attention"`, a
    `(name, kwargs)` pair, a class called as `cls(spatial_dims, channels, **kwargs)`, or
    `None`/`"none"` for identity.

    Raises:
        ValueError: for an unknown name.
    """
    if isinstance(attn, tuple):
        name, kwargs = attn
    else:
        name, kwargs = attn, {}
    if name is None or name == "none":
        return nn.Identity()
    if isinstance(name, str):
        key = name.lower()
        if key not in _ATTENTION:
            raise ValueError(f"unknown attention {name!r}; use se, cbam, self_attention or none.")
        name = _ATTENTION[key]
    return name(spatial_dims, channels, **kwargs)
