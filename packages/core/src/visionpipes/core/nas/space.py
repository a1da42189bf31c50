"""The search space of the architecture search: which block, depth, width, kernel, dilation,
attention and cardinality each of the four stages may take, and how an Optuna trial samples a
`BackboneSpec` from it.

A trial is used only through its `suggest_categorical` method, so this module does not import Optuna.
"""

from __future__ import annotations

from typing import Any

from visionpipes.core.backbones import BackboneSpec, StageSpec
from visionpipes.core.config import ConfigModel


class SearchSpace(ConfigModel, frozen=True):
    """Choices per stage. Widths are per stage (index = stage); self-attention is offered only
    from `attention_from_stage` on, where the feature map is small enough for it to be cheap."""

    block_types: tuple[str, ...] = ("basic", "bottleneck", "inverted_residual", "depthwise_separable")
    depths: tuple[int, ...] = (1, 2, 3)
    widths: tuple[tuple[int, ...], ...] = ((16, 32, 48), (32, 48, 64), (48, 64, 96, 128), (64, 96, 128, 192))
    kernel_sizes: tuple[int, ...] = (3, 5)
    dilations: tuple[int, ...] = (1, 2)
    attentions: tuple[str, ...] = ("none", "se", "cbam", "self_attention")
    cardinalities: tuple[int, ...] = (1, 4, 8)
    stem_widths: tuple[int, ...] = (16, 24, 32)
    attention_from_stage: int = 2


def suggest_spec(trial: Any, space: SearchSpace | None = None) -> BackboneSpec:
    """Sample a 4-stage backbone spec (strides 4, 8, 16, 32 after a ResNet stem) from `trial`
    (an `optuna.Trial`, or anything with its `suggest_categorical`)."""
    space = space or SearchSpace()
    stages = []
    for i, widths in enumerate(space.widths):
        block = trial.suggest_categorical(f"s{i}_block", list(space.block_types))
        attn_choices = [a for a in space.attentions if a != "self_attention" or i >= space.attention_from_stage]
        attn = trial.suggest_categorical(f"s{i}_attn", attn_choices)
        kw: dict[str, Any] = {
            "block": block,
            "depth": trial.suggest_categorical(f"s{i}_depth", list(space.depths)),
            "width": trial.suggest_categorical(f"s{i}_width", list(widths)),
            "stride": 1 if i == 0 else 2,
            "kernel_size": trial.suggest_categorical(f"s{i}_kernel", list(space.kernel_sizes)),
            "dilation": trial.suggest_categorical(f"s{i}_dilation", list(space.dilations)),
            "attn": None if attn == "none" else attn,
        }
        if block == "bottleneck":
            cardinality = trial.suggest_categorical(f"s{i}_cardinality", list(space.cardinalities))
            # base width 128/c: c groups of 128/c channels per 64 planes, i.e. ResNeXt's doubling
            kw.update(cardinality=cardinality, base_width=128 // cardinality if cardinality > 1 else 64)
        if block == "inverted_residual":
            kw["expand_ratio"] = trial.suggest_categorical(f"s{i}_expand", [3, 6])
        stages.append(StageSpec(**kw))
    stem = trial.suggest_categorical("stem_width", list(space.stem_widths))
    return BackboneSpec(name=f"nas_{trial.number}", stages=stages, stem="resnet", stem_width=stem)
