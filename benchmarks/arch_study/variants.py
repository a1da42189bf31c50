"""The variants of each section of the study: the specs matched in parameters for the scaling
and attention sections, the calibration nets, and `make_variants` for the chosen sections.

Part of `benchmarks/architecture_study.py`; measures only, changes no library code.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from arch_study.config import StudyConfig, Variant, _ch, _kw
from visionpipes.core.backbones import BackboneSpec, StageSpec
from visionpipes.core.nas.proxy import CLASSES
from visionpipes.core.nas.training import Classifier
from visionpipes.core.profile import count_parameters


def _spec_items(spec: BackboneSpec) -> tuple[tuple[str, Any], ...]:
    data = spec.to_dict()
    data["stages"] = tuple(tuple(sorted(s.items())) for s in data["stages"])
    return tuple(sorted(data.items(), key=lambda kv: kv[0]))


def _bottleneck_spec(name: str, depth: int, widths: Sequence[int], cardinality: int, base_width: int,
                     stem: int) -> BackboneSpec:
    stages = [
        StageSpec(block="bottleneck", depth=depth, width=w, stride=1 if i == 0 else 2, cardinality=cardinality,
                  base_width=base_width)
        for i, w in enumerate(widths)
    ]
    return BackboneSpec(name=name, stages=stages, stem_width=stem)


def _spec_params(spec: BackboneSpec) -> int:
    return count_parameters(Classifier(spec, len(CLASSES)))


def scaling_specs(scale: float) -> list[BackboneSpec]:
    """Bottleneck nets for depth vs width vs cardinality (ResNeXt, Table 4): a baseline of one
    block per stage (1x64d), and three ways to about double its parameters: two blocks per stage
    (deeper), wider stages (wider, 1xNd), or cardinality 8 with the group width that matches the
    deeper net's parameters (8xNd)."""
    widths = [_ch(w, scale, 32) for w in (64, 128, 256, 512)]
    stem = _ch(32, scale)
    base = _bottleneck_spec("baseline 1x64d", 1, widths, 1, 64, stem)
    deeper = _bottleneck_spec("deeper (2 blocks/stage)", 2, widths, 1, 64, stem)
    target = _spec_params(deeper)

    def wider_spec(f: float) -> BackboneSpec:
        return _bottleneck_spec("wider", 1, [_ch(w * f, 1.0, 32) for w in widths], 1, 64, stem)

    f = min((x / 100 for x in range(100, 301, 2)), key=lambda x: abs(_spec_params(wider_spec(x)) - target))
    wider = wider_spec(f)
    wider.name = f"wider (x{f:.2f} channels)"
    card = 8
    first = math.ceil(64 / (widths[0] // 4))  # at least one channel per group
    bw = min(range(first, 257, 4), key=lambda b: abs(_spec_params(_bottleneck_spec("c", 1, widths, card, b, stem)) - target))
    group_width = int(widths[0] // 4 * bw / 64)  # channels per group in the first stage
    cardinal = _bottleneck_spec(f"cardinality ({card} groups x {group_width} ch)", 1, widths, card, bw, stem)
    return [base, deeper, wider, cardinal]


def attention_specs(scale: float) -> list[BackboneSpec]:
    """The small ResNet of the proxy calibration (one basic block per stage, 32-256 channels)
    with no attention, SE or CBAM in every block, or self-attention in the stride-16 and -32
    stages (as BoTNet puts it in the last stage only where the map is small)."""
    widths = [_ch(w, scale) for w in (32, 64, 128, 256)]
    stem = _ch(32, scale)
    specs = []
    for attn in ("none", "se", "cbam", "self_attention"):
        stages = []
        for i, w in enumerate(widths):
            a = None if attn == "none" or (attn == "self_attention" and i < 2) else attn
            stages.append(StageSpec(block="basic", depth=1, width=w, stride=1 if i == 0 else 2, attn=a, num_heads=4))
        specs.append(BackboneSpec(name=attn, stages=stages, stem_width=stem))
    return specs


def calibration_specs(scale: float) -> list[BackboneSpec]:
    """Reference nets for the proxy budget: the small ResNet (one basic block per stage, 32-256
    channels) and a small MobileNetV2-like net. (The presets the search compares with are trained
    on the same budget by `vp-core search` itself.)"""
    small_res = attention_specs(scale)[0]
    small_res.name = "small ResNet (4 basic blocks)"
    table = [(1, 24), (2, 32), (2, 64), (1, 128)]  # depth, width
    small_ir = BackboneSpec(
        name="small MobileNetV2-like (6 inverted residuals)", stem_width=_ch(24, scale),
        stages=[StageSpec(block="inverted_residual", depth=d, width=_ch(w, scale), stride=1 if i == 0 else 2,
                          expand_ratio=4)
                for i, (d, w) in enumerate(table)],
    )
    return [small_res, small_ir]


def make_variants(config: StudyConfig, sections: Sequence[str]) -> list[Variant]:
    """The models of the chosen experiments."""
    s = config.width_scale
    out: list[Variant] = []
    if "calibration" in sections:
        for spec in calibration_specs(s):
            out.append(Variant("calibration", spec.name, "spec_net", _kw(spec=_spec_items(spec))))
    if "depth" in sections:
        widths = [_ch(w, s) for w in (16, 32, 64)]
        for skip in (False, True):
            for depth in config.depths:
                name = f"{'residual' if skip else 'plain'}-{depth}"
                out.append(Variant("depth", name, "cifar_net", _kw(depth=depth, skip=skip, widths=widths)))
    if "separable" in sections:
        table = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1)]
        table = [(_ch(w / 2, s), st) for w, st in table]  # MobileNetV1 at width multiplier 0.5
        stem = _ch(16, s)
        for separable in (False, True):
            name = "depthwise separable" if separable else "standard 3x3"
            out.append(Variant("separable", name, "conv_stack", _kw(separable=separable, stem=stem, table=table)))
    if "scaling" in sections:
        for spec in scaling_specs(s):
            out.append(Variant("scaling", spec.name, "spec_net", _kw(spec=_spec_items(spec))))
    if "attention" in sections:
        for spec in attention_specs(s):
            out.append(Variant("attention", spec.name, "spec_net", _kw(spec=_spec_items(spec))))
    if "context" in sections:
        width = _ch(64, s)
        for task in ("context", "proxy"):
            for head in ("plain", "dilated", "aspp"):
                out.append(Variant("context", head, "context_net", _kw(head=head, width=width), task=task))
    return out
