"""The CPU plan's costs (`planning.plan.make_plan` on a CPU): FLOPs and seconds of a training step and of
predicting the median image with the plan's network (`rules.conv_layers` over a `throughput` table), and the
choice of the network's base width by a prediction-time target (`plan.predict_seconds`). The rule is
argued in `planning.plan`'s docstring. Pure Python/numpy, no torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from visionpipes.core.errors import UserError
from visionpipes.medical.planning import rules, throughput

#: Crops per step on a CPU (nnU-Net's minimum batch; see `planning.plan`'s docstring).
CPU_MAX_BATCH = 2
#: Base widths (features of the first stage) a CPU plan chooses from, widest first (32: nnU-Net's).
WIDTH_CANDIDATES: tuple[int, ...] = (32, 16, 8)
#: Default target of a CPU plan: seconds to predict the median image (`plan.predict_seconds`).
DEFAULT_PREDICT_SECONDS = 300.0
#: nnU-Net's sliding-window overlap (tile_step_size 0.5), used for estimates unless one is given.
NNUNET_OVERLAP = 0.5


def throughput_table(cpu_gflops: float | Mapping[Any, float] | None) -> dict[int, float] | None:
    if cpu_gflops is None:
        return None
    if isinstance(cpu_gflops, Mapping):
        table = {int(k): float(v) for k, v in cpu_gflops.items()}
        if not table or min(table.values()) <= 0:
            raise UserError(f"plan cpu_gflops table must hold positive GFLOP/s per width, got {cpu_gflops}.")
        return table
    try:
        return throughput.table_from_gflops(float(cpu_gflops))
    except (TypeError, ValueError):
        raise UserError(
            f"plan cpu_gflops must be a number > 0 (GFLOP/s) or auto, got {cpu_gflops!r}."
        ) from None


def estimate_cost(
    patch: Any,
    batch: int,
    topology: rules.Topology,
    features: Any,
    *,
    in_channels: int,
    num_classes: int,
    median_shape: Any,
    overlap: float,
    table: Mapping[int, float] | None,
) -> dict[str, Any]:
    """FLOPs and (given a throughput table) seconds of one training step and of predicting the median image."""
    layers = rules.conv_layers(
        patch, topology.strides, topology.kernel_sizes, features, in_channels, num_classes
    )
    forward = float(sum(layer.flops for layer in layers))
    n_windows = rules.sliding_windows(median_shape, patch, overlap)
    out: dict[str, Any] = {
        "patch_size": [int(p) for p in patch],
        "batch_size": int(batch),
        "features": [int(f) for f in features],
        "forward_gflop_per_patch": round(forward / 1e9, 3),
        "step_gflop": round(3 * batch * forward / 1e9, 2),
        "windows_per_volume": n_windows,
        "predict_gflop_per_volume": round(n_windows * forward / 1e9, 1),
    }
    if table is not None:
        seconds = throughput.layer_seconds(layers, table)
        out["seconds_per_patch"] = round(seconds, 3)
        out["seconds_per_step"] = round(3 * batch * seconds, 2)
        out["predict_seconds_per_volume"] = round(n_windows * seconds, 1)
    return out


def plan_width(
    patch: Any,
    topology: rules.Topology,
    *,
    in_channels: int,
    num_classes: int,
    median_shape: Any,
    overlap: float,
    table: Mapping[int, float],
    predict_seconds: float,
) -> tuple[int, bool, list[dict[str, Any]]]:
    """The widest base width of `WIDTH_CANDIDATES` whose predicted median volume fits `predict_seconds`
    (else the narrowest), whether it fits, and each candidate's estimate."""
    tried = []
    for base in WIDTH_CANDIDATES:
        features = rules.features_per_stage(len(topology.strides), 3, base)
        cost = estimate_cost(
            patch, CPU_MAX_BATCH, topology, features, in_channels=in_channels, num_classes=num_classes,
            median_shape=median_shape, overlap=overlap, table=table,
        )  # fmt: skip
        tried.append({"base_width": base, "predict_seconds_per_volume": cost["predict_seconds_per_volume"]})
        if cost["predict_seconds_per_volume"] <= predict_seconds:
            return base, True, tried
    return WIDTH_CANDIDATES[-1], False, tried


def width_reason(
    on_cpu: bool, table: Any, width: int, meets: bool | None, target: float, overlap: float
) -> str:
    if not on_cpu:
        return "nnU-Net's 32 per stage, doubling, capped at 320"
    if table is None:
        return "nnU-Net's 32 per stage (no CPU throughput given: no time estimate)"
    fits = "fits" if meets else "is the narrowest; even it misses"
    return (
        f"cpu: base width {width} (doubling, capped at 10x): the widest of {list(WIDTH_CANDIDATES)} whose "
        f"prediction of the median image at overlap {overlap:g} {fits} the {target:g} s target"
    )
