"""The 3-D segmentation networks selectable by name in `params.yaml`: MONAI's `UNet` and `SegResNet`, and the
core-block U-Net (`visionpipes.core.heads.unet.AttentionResUNet`: residual units with SE or CBAM attention,
ASPP at the bottleneck).

The mapping from the medical model config to networks only: no loss, data or training logic. Every model
maps `(B, C_in, X, Y, Z)` to region logits.
"""

from __future__ import annotations

import importlib
import math
from typing import Any, Literal

from pydantic import ValidationInfo, field_validator
from torch import nn

from visionpipes.core.config import ConfigModel, Field

MODEL_NAMES: tuple[str, ...] = ("unet", "segresnet", "attention_resunet")
ModelName = Literal["unet", "segresnet", "attention_resunet"]


class ModelConfig(ConfigModel):
    """Which network and how wide (`params.yaml`'s `train.model:`).

    Attributes:
        name: `unet` (MONAI UNet), `segresnet` (MONAI SegResNet) or `attention_resunet` (core blocks).
        channels: feature channels per resolution level (UNet, attention_resunet; SegResNet uses the
            first as `init_filters`).
        strides: down-sampling per level after the first (UNet; the others halve at each level): an int, or
            one per axis (`[2, 2, 1]`: an anisotropic level, as a plan for thick-slice CT gives).
        num_res_units: residual units per UNet block.
        attn: attention of attention_resunet's residual blocks: `se`, `cbam` or `none`.
        aspp_rates: dilation rates of attention_resunet's ASPP bottleneck.
        dropout: dropout probability.
    """

    name: ModelName = "unet"
    channels: tuple[int, ...] = Field((16, 32, 64, 128), min_length=2)
    strides: tuple[int | tuple[int, int, int], ...] = (2, 2, 2)
    num_res_units: int = Field(2, ge=0)
    attn: Literal["se", "cbam", "none"] = "se"
    aspp_rates: tuple[int, ...] = Field((1, 2, 4), min_length=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)

    @field_validator("channels", "strides", "aspp_rates")
    @classmethod
    def _positive(cls, value: tuple) -> tuple:
        flat = [x for v in value for x in (v if isinstance(v, tuple) else (v,))]
        if any(v < 1 for v in flat):
            raise ValueError(
                f"every entry must be at least 1, not {[list(v) if isinstance(v, tuple) else v for v in value]}"
            )
        return value

    @field_validator("strides")
    @classmethod
    def _one_stride_per_level(cls, value: tuple[int, ...], info: ValidationInfo) -> tuple[int, ...]:
        channels = info.data.get("channels")
        if info.data.get("name") == "unet" and channels is not None and len(value) != len(channels) - 1:
            raise ValueError(
                f"unet needs one stride per level after the first: {len(channels)} channels "
                f"but {len(value)} strides"
            )
        return value

    @property
    def divisors(self) -> tuple[int, int, int]:
        """Per axis, what the spatial size must be divisible by."""
        if self.name == "unet":
            return tuple(  # type: ignore[return-value]
                math.prod(s[axis] if isinstance(s, tuple) else s for s in self.strides) for axis in range(3)
            )
        return (2 ** (len(self.channels) - 1),) * 3

    @property
    def divisor(self) -> int:
        """Spatial sizes the network needs to be divisible by (the largest over the axes)."""
        return max(self.divisors)


def network_spec(config: ModelConfig, in_channels: int, out_channels: int) -> dict[str, Any]:
    """The network `config` names as a MONAI-bundle style component: `{"_target_": dotted class, **kwargs}`
    with JSON values only, so `build_model` and an exported bundle's `network_def` build the same network.

    Example:
        >>> network_spec(ModelConfig(channels=(8, 16), strides=(2,)), 4, 3)["_target_"]
        'monai.networks.nets.UNet'
    """
    if config.name == "unet":
        return {
            "_target_": "monai.networks.nets.UNet",
            "spatial_dims": 3,
            "in_channels": in_channels,
            "out_channels": out_channels,
            "channels": list(config.channels),
            "strides": [list(s) if isinstance(s, tuple) else s for s in config.strides],
            "num_res_units": config.num_res_units,
            "norm": "INSTANCE",
            "dropout": config.dropout,
        }
    if config.name == "segresnet":
        return {
            "_target_": "monai.networks.nets.SegResNet",
            "spatial_dims": 3,
            "init_filters": int(config.channels[0]),
            "in_channels": in_channels,
            "out_channels": out_channels,
            "dropout_prob": config.dropout or None,
            "blocks_down": [1, 2, 2, 4][: len(config.channels)],
            "blocks_up": [1, 1, 1][: len(config.channels) - 1],
            "num_groups": min(8, int(config.channels[0])),
        }
    if config.name == "attention_resunet":
        return {
            "_target_": "visionpipes.core.heads.unet.AttentionResUNet",
            "spatial_dims": 3,
            "in_channels": in_channels,
            "out_channels": out_channels,
            "channels": list(config.channels),
            "attn": config.attn,
            "aspp_rates": list(config.aspp_rates),
            "dropout": config.dropout,
        }
    raise ValueError(f"unknown model {config.name!r}; choose one of {', '.join(MODEL_NAMES)}.")


def build_model(config: ModelConfig, in_channels: int, out_channels: int) -> nn.Module:
    """The 3-D network `config` names, mapping `in_channels` modalities to `out_channels` region logits.

    Example:
        >>> net = build_model(ModelConfig(channels=(8, 16, 32), strides=(2, 2)), 4, 3)
        >>> net(torch.randn(1, 4, 16, 16, 16)).shape
        torch.Size([1, 3, 16, 16, 16])
    """
    spec = network_spec(config, in_channels, out_channels)
    module_name, _, class_name = spec.pop("_target_").rpartition(".")
    return getattr(importlib.import_module(module_name), class_name)(**spec)
