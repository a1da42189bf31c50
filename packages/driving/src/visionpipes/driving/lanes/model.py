"""The lane network: a segmentation-models-pytorch architecture (its encoders, or a core backbone
through `core.heads.encoder`) predicting category, style and direction, its typed config, and the
one saver/loader of trained lane models.

No weights are ever downloaded (`encoder_weights=None`); nothing here imports training code.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from pydantic import model_validator
from torch import nn

from visionpipes.core.checkpoint import load_model_file, load_state_into, save_model_file
from visionpipes.core.config import ConfigModel, Field, parse_config
from visionpipes.core.errors import UserError
from visionpipes.core.heads.encoder import CoreFeatureEncoder
from visionpipes.driving.lanes.decode import LANE_CHANNELS

ARCHITECTURES: tuple[str, ...] = ("Unet", "FPN", "DeepLabV3Plus")
#: Prefix that selects a `visionpipes.core.backbones` preset as the encoder (`core:resnet18`).
CORE_PREFIX = "core:"
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


class LaneModelConfig(ConfigModel):
    """The lane network.

    Attributes:
        arch: smp architecture: `Unet`, `FPN` or `DeepLabV3Plus`.
        encoder: an smp encoder name (`resnet18`, `mobilenet_v2`, `tu-<timm name>`), or
            `core:<preset>` for a `visionpipes.core.backbones` preset, or `core:<spec file>` for a
            backbone spec file such as the `best_spec.yaml` of `vp-core search` (Unet and FPN only).
        encoder_spec: the spec of a `core:<spec file>` encoder, filled in when the config is read,
            so that a saved model never needs the file again.
        encoder_depth: encoder stages (3-5; Unet only; 5 for the others).
        decoder_channels: Unet decoder widths, one per encoder stage (None: smp's default).
        width: network input width (multiple of 32).
        height: network input height (multiple of 32).
        roi_top: fraction of the image rows, from the top, that the network never sees and that
            are predicted as background (sky and horizon: the `cut_height` of CULane-style lane
            detectors). The remaining rows are resized to `width` x `height`. 0: the whole image.
        join_gaps: decoding: join two pieces of a predicted lane of the same type that point at
            each other across a gap of at most this many times the longer piece's length (the
            gaps between dashes, which the annotation covers, and lanes hidden behind vehicles;
            see `join_lane_gaps`). 0: off.
        min_area: decoding, after the joins: drop pieces of one lane type smaller than this
            fraction of the image (specks; 0.0002 is 184 pixels at 1280x720). 0: off.
        vote: decoding, last: each connected piece of one lane type takes the style most of its
            pixels have (`vote_lane_style`).
    """

    arch: Literal["Unet", "FPN", "DeepLabV3Plus"] = "Unet"
    encoder: str = "resnet18"
    encoder_spec: dict[str, Any] | None = None
    encoder_depth: int = Field(5, ge=3, le=5)
    decoder_channels: list[int] | None = Field(default_factory=lambda: [64, 32, 16, 16, 8])
    width: int = Field(320, ge=32, multiple_of=32)
    height: int = Field(192, ge=32, multiple_of=32)
    roi_top: float = Field(0.0, ge=0.0, lt=1.0)
    join_gaps: float = Field(0.0, ge=0.0, le=20.0)
    min_area: float = Field(0.0, ge=0.0, lt=0.1)
    vote: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> LaneModelConfig:
        if self.arch != "Unet" and self.encoder_depth != 5:
            raise ValueError("encoder_depth other than 5 is for Unet only")
        if self.decoder_channels is not None and self.arch == "Unet" and len(self.decoder_channels) != self.encoder_depth:
            raise ValueError(
                f"decoder_channels needs {self.encoder_depth} widths (one per encoder stage), "
                f"got {len(self.decoder_channels)}"
            )
        if self.encoder.startswith(CORE_PREFIX) and self.arch == "DeepLabV3Plus":
            raise ValueError("core backbones have no dilated stride-16 mode; use Unet or FPN")
        return self

    @classmethod
    def from_params(cls, data: Any, *, source: str) -> LaneModelConfig:
        """Validate `data` (see `core.config.parse_config`) and inline the spec file of a
        `core:<spec file>` encoder into `encoder_spec`, so a saved model never needs the file again.

        Raises:
            UserError: on an unknown key, a bad value, or an unreadable spec file.
        """
        config = parse_config(cls, data, source=source)
        if config.encoder.startswith(CORE_PREFIX) and config.encoder_spec is None:
            from visionpipes.core.backbones import inline_spec_file

            try:
                spec = inline_spec_file(config.encoder[len(CORE_PREFIX) :])
            except ValueError as err:
                raise UserError(f"{source}: encoder {config.encoder}: {err}") from None
            config.encoder_spec = spec if isinstance(spec, dict) else None
        return config

    def decoding(self) -> dict[str, Any]:
        """The decoding settings, as keyword arguments of `lane_mask_from_logits`."""
        return {"roi_top": self.roi_top, "join_gaps": self.join_gaps, "min_area": self.min_area, "vote": self.vote}


def core_encoder(preset: str | Mapping[str, Any], out_channels: Sequence[int]) -> CoreFeatureEncoder:
    """A core backbone as an smp encoder (`net.encoder = core_encoder(...)`): smp decoders read its
    `out_channels` and take its list of features; only the error text is the lane model's.

    Raises:
        UserError: if the preset is unknown or its strides do not reach 32.
    """
    name = preset if isinstance(preset, str) else str(preset.get("name", "spec"))
    try:
        return CoreFeatureEncoder(preset, out_channels)
    except ValueError as err:
        raise UserError(f"lane encoder {CORE_PREFIX}{name}: {err}") from None


class LaneNet(nn.Module):
    """RGB in [0, 1] (N, 3, H, W) -> lane logits (N, 13, H, W): 9 category, 2 style, 2 direction.

    The ImageNet normalisation is part of the network, so the exported graph takes plain [0, 1] RGB.
    """

    def __init__(self, config: LaneModelConfig) -> None:
        super().__init__()
        import segmentation_models_pytorch as smp

        self.config = config
        core = config.encoder.startswith(CORE_PREFIX)
        template = "resnet18" if core else config.encoder
        kwargs: dict[str, Any] = {"encoder_name": template, "encoder_weights": None, "classes": LANE_CHANNELS}
        if config.arch == "Unet":
            kwargs["encoder_depth"] = config.encoder_depth
            if config.decoder_channels is not None:
                kwargs["decoder_channels"] = list(config.decoder_channels)
        if core and config.arch == "Unet" and config.encoder_depth != 5:
            raise UserError("core backbones need encoder_depth 5 (features down to stride 32).")
        arch = getattr(smp, config.arch)
        try:
            self.net = arch(**kwargs)
        except (KeyError, ValueError) as err:
            raise UserError(f"lane model {config.arch}/{config.encoder}: {err}") from None
        if core:
            self.net.encoder = core_encoder(
                config.encoder_spec or config.encoder[len(CORE_PREFIX) :], self.net.encoder.out_channels
            )
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


def build_lane_model(config: LaneModelConfig | None = None) -> LaneNet:
    """A freshly initialised `LaneNet` (no weights are downloaded).

    Raises:
        UserError: on an unknown architecture or encoder.
    """
    return LaneNet(config or LaneModelConfig())


def save_lane_model(path: str | os.PathLike, model: LaneNet, extra: Mapping[str, Any] | None = None) -> None:
    """Save a lane model as `{config, state_dict, extra}` (atomically; `core.checkpoint.save_model_file`).

    Raises:
        UserError: if the folder does not exist.
    """
    save_model_file(path, model.config, model.state_dict(), extra)


def load_lane_model(path: str | os.PathLike) -> LaneNet:
    """Load a lane model saved by `save_lane_model`, in eval mode.

    Raises:
        UserError: if the file is missing or is not a lane model.
    """
    config, state, _ = load_model_file(path, LaneModelConfig, what="lane model")
    return load_state_into(build_lane_model(config), state, path=path, what="lane model")


def seed_lane_encoder(model: LaneNet, path: str | os.PathLike) -> int:
    """Seed the lane model's encoder from local ImageNet weights (never downloaded): a `core:`
    encoder through `core.pretrained`'s mapping tables; an smp ResNet-family encoder (whose modules
    are torchvision's) from a torchvision or timm ResNet checkpoint by name, the classifier dropped.
    Returns the number of tensors loaded.

    Raises:
        UserError: if the file is unreadable or does not fill the encoder (another architecture).
    """
    from visionpipes.core.pretrained import load_pretrained, read_weights

    if isinstance(model.net.encoder, CoreFeatureEncoder):
        return len(load_pretrained(model.net.encoder.backbone, path).loaded)
    state = {k: v for k, v in read_weights(path).items() if not k.startswith("fc.")}
    own = model.net.encoder.state_dict()
    missing = sorted(k for k in own if k not in state)
    if missing:
        raise UserError(
            f"pretrained weights {path} do not fill the lane encoder {model.config.encoder} "
            f"({len(missing)} tensors missing, first {missing[0]}): not the same architecture."
        )
    for key, value in own.items():
        if state[key].shape != value.shape:
            raise UserError(
                f"pretrained weights {path}: {key} has shape {tuple(state[key].shape)} but the lane encoder's "
                f"has {tuple(value.shape)}: not the same architecture."
            )
    model.net.encoder.load_state_dict({k: state[k] for k in own})
    return len(own)
