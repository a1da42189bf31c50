"""The architecture of an embedding model (`EmbeddingConfig`, what a model record stores) and the
backbone spec it builds, scaled to a width multiplier.

Validation only (pydantic); builds no network and imports no training code.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import field_validator

from visionpipes.core.backbones import BackboneSpec, get_spec, inline_spec_file
from visionpipes.core.config import ConfigModel, Field

#: Global pooling of the backbone's last feature map.
POOLINGS = ("avg", "gem")
Pooling = Literal["avg", "gem"]


def spec_of(backbone: str | Mapping[str, Any]) -> BackboneSpec:
    """The `BackboneSpec` of a preset name or a spec mapping.

    Raises:
        ValueError: on an unknown preset or an invalid spec.
    """
    return get_spec(backbone) if isinstance(backbone, str) else BackboneSpec.from_params(backbone, source="backbone spec")


def check_backbone(value: Any, *, inline: bool) -> Any:
    """Validate a backbone (a preset, a spec file, or a spec mapping); with `inline`, a spec file is
    read and returned as its mapping (so a model records its architecture, not a path).

    Raises:
        ValueError: naming what is wrong with it.
    """
    try:
        resolved = inline_spec_file(value)
        spec_of(resolved)
    except (ValueError, TypeError) as err:
        raise ValueError(f"backbone: {err}") from None
    return resolved if inline else value


def scaled_spec(name: str | Mapping[str, Any], width_multiplier: float = 1.0) -> BackboneSpec:
    """The spec of backbone `name` (a preset, spec file or spec mapping) with every width (stem,
    stages, final conv) scaled."""
    spec = spec_of(name)
    if width_multiplier == 1.0:
        return spec
    base = spec.name

    def scale(w: int) -> int:
        return max(8, round(w * width_multiplier / 8) * 8)

    spec.name = f"{base}_x{width_multiplier:g}"
    spec.stem_width = scale(spec.stem_width)
    for stage in spec.stages:
        stage.width = scale(stage.width)
    if spec.final_width:
        spec.final_width = scale(spec.final_width)
    return spec


class EmbeddingConfig(ConfigModel):
    """The architecture of an embedding model (what `model.json` records).

    Attributes:
        backbone: a preset of `visionpipes.core.backbones` (e.g. 'resnet18', 'mobilenet_v2'), a
            backbone spec file (e.g. the `best_spec.yaml` of `vp-core search`; read once and recorded
            inline), or a spec mapping.
        width_multiplier: scales every stage's width (timm/torchvision style; 0.5 = half as wide).
        dimension: embedding dimension.
        image_size: square input size in pixels.
        pooling: 'avg' (global average) or 'gem' (generalised mean, p learnt, Radenović et al. 2018).
    """

    backbone: str | dict[str, Any] = "resnet18"
    width_multiplier: float = Field(1.0, ge=0.05, le=4)
    dimension: int = Field(128, ge=2)
    image_size: int = Field(96, ge=32, le=1024)
    pooling: Pooling = "gem"

    @field_validator("backbone")
    @classmethod
    def _backbone(cls, value: Any) -> Any:
        return check_backbone(value, inline=True)
