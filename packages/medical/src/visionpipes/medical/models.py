"""The 3-D segmentation networks selectable by name: MONAI's `UNet` and `SegResNet`, and a U-Net built from
`visionpipes.core` blocks (residual units with SE or CBAM attention, ASPP at the bottleneck).

Networks only: no loss, data or training logic. Every model maps `(B, C_in, X, Y, Z)` to region logits.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from visionpipes.core.errors import UserError
from visionpipes.core.io import dataclass_from_params

MODEL_NAMES: tuple[str, ...] = ("unet", "segresnet", "attention_resunet")


@dataclass
class ModelConfig:
    """Which network and how wide.

    Attributes:
        name: `unet` (MONAI UNet), `segresnet` (MONAI SegResNet) or `attention_resunet` (core blocks).
        channels: feature channels per resolution level (UNet, attention_resunet; SegResNet uses the
            first as `init_filters`).
        strides: down-sampling per level after the first (UNet; the others halve at each level).
        num_res_units: residual units per UNet block.
        attn: attention of attention_resunet's residual blocks: `se`, `cbam` or `none`.
        aspp_rates: dilation rates of attention_resunet's ASPP bottleneck.
        dropout: dropout probability.
    """

    name: str = "unet"
    channels: Sequence[int] = (16, 32, 64, 128)
    strides: Sequence[int] = (2, 2, 2)
    num_res_units: int = 2
    attn: str = "se"
    aspp_rates: Sequence[int] = field(default_factory=lambda: (1, 2, 4))
    dropout: float = 0.0

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "model config") -> ModelConfig:
        """Build from a mapping (a `params.yaml` section).

        Raises:
            UserError: on an unknown key, an unknown model name, or inconsistent channels/strides.
        """
        config = dataclass_from_params(cls, data, source=source, what="model keys")
        config.channels = tuple(int(c) for c in config.channels)
        config.strides = tuple(int(s) for s in config.strides)
        config.aspp_rates = tuple(int(r) for r in config.aspp_rates)
        if config.name not in MODEL_NAMES:
            raise UserError(
                f"{source}: unknown model '{config.name}'; choose one of {', '.join(MODEL_NAMES)}."
            )
        if config.name == "unet" and len(config.strides) != len(config.channels) - 1:
            raise UserError(
                f"{source}: unet needs one stride per level after the first: {len(config.channels)} channels "
                f"but {len(config.strides)} strides."
            )
        if config.attn not in ("se", "cbam", "none"):
            raise UserError(f"{source}: attn must be se, cbam or none, not '{config.attn}'.")
        return config

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}

    @property
    def divisor(self) -> int:
        """Spatial sizes the network needs to be divisible by."""
        if self.name == "unet":
            out = 1
            for s in self.strides:
                out *= s
            return out
        return 2 ** (len(self.channels) - 1)


class AttentionResUNet(nn.Module):
    """U-Net whose stages are `visionpipes.core` residual blocks with channel/spatial attention.

    Encoder: a residual stem, then per level a strided residual block (SE or CBAM on the residual
    branch); bottleneck: ASPP (dilated context); decoder: transposed-conv up-sampling, concatenation with
    the skip, a residual block. Works in 2-D or 3-D.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels (modalities).
        out_channels: region channels (logits).
        channels: feature channels per level.
        attn: `se`, `cbam` or `none`.
        aspp_rates: ASPP dilation rates at the bottleneck.
        norm: normalisation of every block.
        dropout: dropout before the head.

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
        norm: str = "instance",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        from visionpipes.core.blocks import ASPP, ResidualBlock
        from visionpipes.core.layers import conv_type

        if len(channels) < 2:
            raise ValueError("AttentionResUNet needs at least two levels of channels.")
        attn_arg = None if attn == "none" else attn
        self.stem = ResidualBlock(spatial_dims, in_channels, channels[0], norm=norm, attn=attn_arg)
        self.down = nn.ModuleList(
            ResidualBlock(spatial_dims, c_in, c_out, stride=2, norm=norm, attn=attn_arg)
            for c_in, c_out in itertools.pairwise(channels)
        )
        self.bottleneck = ASPP(
            spatial_dims, channels[-1], channels[-1], rates=aspp_rates, image_pooling=False, norm=norm
        )
        up_type = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[spatial_dims]
        self.up = nn.ModuleList(
            up_type(c_out, c_in, kernel_size=2, stride=2) for c_in, c_out in itertools.pairwise(channels)
        )
        self.decode = nn.ModuleList(
            ResidualBlock(spatial_dims, 2 * c, c, norm=norm, attn=attn_arg) for c in channels[:-1]
        )
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = conv_type(spatial_dims)(channels[0], out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.stem(x)]
        for block in self.down:
            skips.append(block(skips[-1]))
        y = self.bottleneck(skips.pop())
        for level in reversed(range(len(self.up))):
            y = self.up[level](y)
            y = self.decode[level](torch.cat([y, skips[level]], dim=1))
        return self.head(self.dropout(y))


def build_model(config: ModelConfig, in_channels: int, out_channels: int) -> nn.Module:
    """The 3-D network `config` names, mapping `in_channels` modalities to `out_channels` region logits.

    Raises:
        UserError: if the model name is unknown.

    Example:
        >>> net = build_model(ModelConfig(channels=(8, 16, 32), strides=(2, 2)), 4, 3)
        >>> net(torch.randn(1, 4, 16, 16, 16)).shape
        torch.Size([1, 3, 16, 16, 16])
    """
    if config.name == "unet":
        from monai.networks.nets import UNet

        return UNet(
            spatial_dims=3,
            in_channels=in_channels,
            out_channels=out_channels,
            channels=tuple(config.channels),
            strides=tuple(config.strides),
            num_res_units=config.num_res_units,
            norm="INSTANCE",
            dropout=config.dropout,
        )
    if config.name == "segresnet":
        from monai.networks.nets import SegResNet

        return SegResNet(
            spatial_dims=3,
            init_filters=int(config.channels[0]),
            in_channels=in_channels,
            out_channels=out_channels,
            dropout_prob=config.dropout or None,
            blocks_down=(1, 2, 2, 4)[: len(config.channels)],
            blocks_up=(1, 1, 1)[: len(config.channels) - 1],
            num_groups=min(8, int(config.channels[0])),
        )
    if config.name == "attention_resunet":
        return AttentionResUNet(
            3,
            in_channels,
            out_channels,
            channels=tuple(config.channels),
            attn=config.attn,
            aspp_rates=tuple(config.aspp_rates),
            dropout=config.dropout,
        )
    raise UserError(f"unknown model '{config.name}'; choose one of {', '.join(MODEL_NAMES)}.")
