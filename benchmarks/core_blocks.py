"""Benchmark the core backbone presets next to torchvision's implementation of the same architecture.

For each preset: parameters, GFLOPs (torch's flop counter, 1 MAC = 2 FLOPs) and CPU latency
(batch 8, 224x224 by default; GFLOPs per image, `torch.inference_mode`, eval mode) of ours and of its twin, measured
in the same run with the two models' timed runs interleaved (ABAB..., alternating who goes first)
so that load from other processes falls on both alike; the latency ratio is ours / twin (goal
<= 1.10). Presets without a torchvision twin (SE, CBAM, self-attention, MobileNetV1) are timed
next to our own plain preset they extend, as context. The twin is torchvision's model cut to the
same four feature maps with `create_feature_extractor` (no pooling / classifier head, no weights).

Usage:
    python benchmarks/core_blocks.py [--batch 8] [--size 224] [--repeats 10] [--presets a,b]
                                     [--threads N] [--out benchmarks/results/core_blocks.json]

Writes JSON (machine info included) and prints a table. Measures only; changes no model code.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
from pathlib import Path

import torch
import torchvision
from torch import nn

from visionpipes.core.backbones import build_backbone, list_backbones
from visionpipes.core.hardware import cpu_model_name
from visionpipes.core.io import write_json
from visionpipes.core.profile import LatencyStats, count_flops, count_parameters, time_forward
from visionpipes.core.settings import apply_runtime_settings

#: torchvision model with the same architecture, and the nodes giving our four feature maps.
_RESNET_NODES = ["layer1", "layer2", "layer3", "layer4"]
TWINS: dict[str, tuple[str, list[str]]] = {
    "resnet18": ("resnet18", _RESNET_NODES),
    "resnet34": ("resnet34", _RESNET_NODES),
    "resnet50": ("resnet50", _RESNET_NODES),
    "resnext50_32x4d": ("resnext50_32x4d", _RESNET_NODES),
    "mobilenet_v2": ("mobilenet_v2", ["features.3", "features.6", "features.13", "features.18"]),
}
#: presets with no torchvision twin: timed next to the plain preset of ours they extend.
CONTEXT: dict[str, str] = {
    "se_resnet50": "resnet50",
    "cbam_resnet50": "resnet50",
    "resnet18_mhsa": "resnet18",
    "mobilenet_v1": "mobilenet_v2",
}


def torchvision_twin(name: str) -> nn.Module:
    """torchvision's model `name` (random weights) returning the same four feature maps as ours."""
    from torchvision.models.feature_extraction import create_feature_extractor

    arch, nodes = TWINS[name]
    model = torchvision.models.get_model(arch, weights=None)
    extractor = create_feature_extractor(model, return_nodes={n: str(i) for i, n in enumerate(nodes)})

    class _AsList(nn.Module):  # our backbones return a list; keep the call shape identical
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
            return list(self.inner(x).values())

    return _AsList(extractor).eval()


def interleaved_latency(
    a: nn.Module, b: nn.Module, x: torch.Tensor, *, warmup: int, repeats: int
) -> tuple[LatencyStats, LatencyStats]:
    """Time `a(x)` and `b(x)` alternately (a b, b a, a b, ...), `repeats` runs each."""
    samples_a: list[float] = []
    samples_b: list[float] = []
    with torch.inference_mode():
        time_forward(a, (x,), warmup)
        time_forward(b, (x,), warmup)
        for r in range(repeats):
            order = [(a, samples_a), (b, samples_b)]
            for model, samples in order if r % 2 == 0 else reversed(order):
                samples.extend(time_forward(model, (x,), 1))
    return LatencyStats.from_samples(samples_a), LatencyStats.from_samples(samples_b)




def _lat(stats: LatencyStats) -> dict[str, float | int]:
    return {"median_ms": round(stats.median_ms, 2), "p90_ms": round(stats.p90_ms, 2),
            "min_ms": round(stats.min_ms, 2), "runs": stats.runs}


def run(presets: list[str], batch: int, size: int, repeats: int, warmup: int) -> list[dict]:
    x = torch.randn(batch, 3, size, size)
    flops_x = x[:1]
    results = []
    for name in presets:
        torch.manual_seed(0)
        ours = build_backbone(name).eval()
        if name in TWINS:
            base, kind, base_name = torchvision_twin(name), "torchvision", f"torchvision {TWINS[name][0]}"
            with torch.inference_mode():
                same = [tuple(t.shape) for t in ours(flops_x)] == [tuple(t.shape) for t in base(flops_x)]
        else:
            base_name = CONTEXT.get(name, "resnet50")
            base, kind, same = build_backbone(base_name).eval(), "ours (context, not a twin)", None
            base_name = f"ours {base_name}"
        lat_ours, lat_base = interleaved_latency(ours, base, x, warmup=warmup, repeats=repeats)
        row = {
            "preset": name,
            "params": count_parameters(ours),
            "gflops_per_image": round(count_flops(ours, flops_x) / 1e9, 3),
            "latency": _lat(lat_ours),
            "baseline": {
                "kind": kind,
                "name": base_name,
                "params": count_parameters(base),
                "gflops_per_image": round(count_flops(base, flops_x) / 1e9, 3),
                "latency": _lat(lat_base),
                "same_feature_shapes": same,
            },
            "ratio_median": round(lat_ours.median_ms / lat_base.median_ms, 3),
            "ratio_min": round(lat_ours.min_ms / lat_base.min_ms, 3),
        }
        results.append(row)
        print(_format_row(row), flush=True)
    return results


_HEADER = (
    f"{'preset':<16} {'params M':>8} {'GFLOPs':>7} {'ours ms':>8} {'base ms':>8} {'ratio':>6} {'min-ratio':>9}"
    f"  baseline (params M, GFLOPs)"
)


def _format_row(row: dict) -> str:
    b = row["baseline"]
    return (
        f"{row['preset']:<16} {row['params'] / 1e6:>8.2f} {row['gflops_per_image']:>7.2f} "
        f"{row['latency']['median_ms']:>8.1f} {b['latency']['median_ms']:>8.1f} {row['ratio_median']:>6.2f} "
        f"{row['ratio_min']:>9.2f}  {b['name']} ({b['params'] / 1e6:.2f}, {b['gflops_per_image']:.2f})"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per model (interleaved)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--presets", default=",".join(list_backbones()), help="comma-separated preset names")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/core_blocks.json"))
    args = parser.parse_args(argv)
    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    unknown = [p for p in presets if p not in list_backbones()]
    if unknown:
        parser.error(f"unknown presets {unknown}; known: {', '.join(list_backbones())}")
    settings = apply_runtime_settings(args.threads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()
    started = dt.datetime.now(dt.timezone.utc)
    print(f"batch {args.batch}, {args.size}x{args.size}, {settings.threads} threads, {args.repeats} interleaved runs")
    print(_HEADER, flush=True)
    results = run(presets, args.batch, args.size, args.repeats, args.warmup)
    load_end = os.getloadavg()
    write_json(args.out, {
        "benchmark": "core backbone presets vs torchvision, CPU latency",
        "started_utc": started.isoformat(timespec="seconds"),
        "seconds": round((dt.datetime.now(dt.timezone.utc) - started).total_seconds(), 1),
        "settings": {"batch": args.batch, "size": args.size, "repeats": args.repeats, "warmup": args.warmup,
                     "threads": settings.threads, "inference_mode": True, "memory_format": "contiguous (NCHW)"},
        "machine": {
            "cpu_model": cpu_model_name(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "loadavg_start": [round(v, 2) for v in load_start],
            "loadavg_end": [round(v, 2) for v in load_end],
        },
        "notes": (
            "The CPU was shared with other processes during the run (see loadavg); the two models of a row "
            "were timed alternately, so load falls on both alike, and medians are reported. ratio_median = "
            "ours / baseline median latency (goal <= 1.10); ratio_min compares the fastest runs (least "
            "disturbed by other load). GFLOPs are torch's FlopCounterMode count per image "
            "(1 multiply-accumulate = 2 FLOPs). Baselines of kind 'ours (context, not a twin)' are not a "
            "parity comparison: they show what the attention adds."
        ),
        "results": results,
    })
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
