"""What a CPU computes per second for the plan's network: a short measured probe, or a given number.

A 3-D U-Net spends its time in 3x3x3 convolutions, and a CPU's throughput on them depends on the
channel count: a narrow conv moves as many bytes per FLOP as a wide one does per 4 FLOPs, so it runs at
a fraction of the speed (measured on this project's 2-core Xeon, oneDNN via PyTorch: 14, 31, 50 and 48
GFLOP/s for 8, 16, 32 and 64 channels). The plan's time estimates therefore use a *table*: GFLOP/s by
channel width, each layer at the width of its narrower side (`layer_seconds`).

- the probe (`plan_command.probe_cpu_gflops(threads)`; torch lives outside `planning`): times one conv
  block as the U-Net runs it (`Conv3d(c, c, 3, padding=1)`, instance norm, leaky ReLU; only the conv's
  FLOPs counted, so the rate carries the elementwise layers' time: a bare conv probe underestimated a
  full-volume prediction 1.5-1.7x in `benchmarks/medical_real_geometry.py`) forward per width in
  `PROBE_WIDTHS` on an input of edge `PROBE_EDGE[c]` (best of `PROBE_REPEATS`, after one warm-up; about
  1-2 s in all): the table as measured. Under a shared machine's load it measures what is left (the
  plan records the load average).
- `table_from_gflops(g)`: a user's `plan.cpu_gflops: g` (GFLOP/s of the 32-channel block), narrower widths
  scaled by `(c / 32) ** NARROW_EXPONENT` (the measured curve above: 0.28 and 0.63 of the 32-channel
  rate at 8 and 16 channels; the exponent 0.8 sits between them).
No torch here (import-linter: planning never imports torch).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

__all__ = [
    "NARROW_EXPONENT",
    "PROBE_WIDTHS",
    "REFERENCE_WIDTH",
    "gflops_at",
    "layer_seconds",
    "table_from_gflops",
]

#: Channel widths the probe measures (a layer between two is interpolated in log2, outside clamped).
PROBE_WIDTHS: tuple[int, ...] = (8, 16, 32, 64)
#: `plan.cpu_gflops` is the throughput of a conv block this wide (nnU-Net's first stage).
REFERENCE_WIDTH = 32
NARROW_EXPONENT = 0.8
PROBE_REPEATS = 3
#: Probe input edge per width: ~1-7 GFLOP per call, large enough to be timed, small enough for 2 cores.
PROBE_EDGE = {8: 64, 16: 56, 32: 40, 64: 28}


def table_from_gflops(gflops: float) -> dict[int, float]:
    """GFLOP/s by width from one number (the 32-channel conv's), by the narrow-width curve."""
    if not gflops > 0:
        raise ValueError(f"cpu_gflops must be > 0, got {gflops}")
    return {w: round(gflops * min(1.0, w / REFERENCE_WIDTH) ** NARROW_EXPONENT, 3) for w in PROBE_WIDTHS}


def gflops_at(table: Mapping[int | str, float], channels: int) -> float:
    """GFLOP/s of a conv `channels` wide: the table, interpolated in log2 between widths, clamped outside."""
    points = sorted((int(w), float(g)) for w, g in table.items())
    if not points:
        raise ValueError("empty throughput table")
    c = max(1, int(channels))
    if c <= points[0][0]:
        return points[0][1]
    if c >= points[-1][0]:
        return points[-1][1]
    for (w0, g0), (w1, g1) in itertools.pairwise(points):
        if w0 <= c <= w1:
            t = (math.log2(c) - math.log2(w0)) / (math.log2(w1) - math.log2(w0))
            return g0 + t * (g1 - g0)
    return points[-1][1]  # unreachable


def layer_seconds(layers: Sequence[object], table: Mapping[int | str, float]) -> float:
    """Seconds of one forward pass over `rules.ConvLayer`s, each at the rate of its narrower side."""
    total = 0.0
    for layer in layers:
        width = min(layer.in_channels, layer.out_channels)  # type: ignore[attr-defined]
        total += layer.flops / (gflops_at(table, width) * 1e9)  # type: ignore[attr-defined]
    return total
