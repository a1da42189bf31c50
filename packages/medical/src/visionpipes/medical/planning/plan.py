"""The medical plan: what `train`, `eval` and `predict` use, made from a dataset fingerprint
(`planning.fingerprint`) and the hardware by the nnU-Net rules of `planning.rules` (Isensee et al.,
Nature Methods 18, 203-211, 2021; nnunetv2 `experiment_planning/experiment_planners/
default_experiment_planner.py`).

`make_plan(fingerprint, hardware, overrides)`:
- spacing: `rules.target_spacing` (median, the anisotropic-axis rule) over the cases' RAS spacings;
  `train.data.pixdim` is that spacing, or null (no resampling) when every case already has it;
- the median shape at that spacing (nnU-Net: each case's cropped shape rescaled, then the median);
- patch, batch, poolings, strides and kernels: `rules.plan_patch_and_batch` under the memory budget;
- normalisation per channel: `rules.normalization_scheme` by modality; a `ct` channel carries the
  dataset's foreground 0.5/99.5 percentiles (clip) and mean/std from the fingerprint;
- cascade: when the patch covers < 25 % of the median image, nnU-Net's low-resolution stage: the
  spacing grows by 3 % per step (the finer axes first while an axis is > 2x finer than the coarsest)
  until the low-resolution patch covers >= 25 % of the low-resolution median image. `train.configuration:
  auto` then trains 3d_lowres + 3d_cascade_fullres (`training.cascade`).

Memory budget (`planning_budget_gb`) and width (`plan_width`), stated in terms of the hardware and of the
user's time:
- `cuda`: nnU-Net unchanged: the device's memory (`plan.memory_gb` overrides it: a plan for an 80 GB GPU
  can be made on a laptop), the batch fills it, nnU-Net's width (32 features doubling to 320).
- `cpu`/`mps`: the patch comes from memory, as nnU-Net's does on a GPU: the RAM share
  (`core.hardware`: 50 % of RAM, or `plan.memory_gb`) x `CPU_FP32_SHARE` (nnU-Net's 8 GB reference is
  for fp16 activations under AMP on a GPU; a CPU trains in fp32, twice the bytes per activation). A
  large patch is what nnU-Net's results rest on (context), and it is also the cheaper way to predict a
  volume: fewer windows overlap (MONAI's window grid over 240x240x155 at overlap 0.5 computes each voxel
  ~8x with 40x32x24 windows, ~3x with 128^3 ones). The batch stays at `cost.CPU_MAX_BATCH` = 2 (nnU-Net's
  minimum): a CPU's cores are already busy with one patch, a bigger batch only lengthens the step.
  What a CPU lacks is compute, so the *width* is chosen by time: the network's FLOPs are counted
  (`rules.conv_layers`: every conv of the plain-conv U-Net at the planned patch), the CPU's throughput
  is a table of GFLOP/s by channel width (`planning.throughput`: measured by a ~2 s conv probe at plan
  time, or `plan.cpu_gflops` in params.yaml), and the plan takes the widest base width of
  `cost.WIDTH_CANDIDATES` (32 = nnU-Net's, then 16, 8) whose full-volume prediction of the median image
  (windows at `plan.predict_overlap`, nnU-Net's 0.5 unless the params' `inference.overlap` is given)
  fits `plan.predict_seconds` (default `cost.DEFAULT_PREDICT_SECONDS` = 300 s: a case in minutes on a
  laptop); if none fits, the narrowest, flagged `meets_target: false`. The plan records (`time`) the
  estimates a user sees before training: `seconds_per_step` (forward + backward ~ 3 forwards, x batch)
  and `predict_seconds_per_volume`, for the planned values and for the ones params.yaml makes training
  use (`effective`, where it overrides).
  Why not cap the patch by time, as the former `CPU_GB_PER_CORE = 0.055` calibration did: it was fitted
  to one demo machine and planned 40x32x24 windows for a 240x240x155 MRI, ~1,850 windows and ~70
  minutes of prediction on 2 cores; the time per volume hardly depends on the patch (every voxel goes
  through the same convolutions; a smaller patch only adds overlap) but grows with the square of the
  width. Without a throughput (a library call with `cpu_gflops=None`) a CPU plan keeps nnU-Net's width
  and estimates no seconds. Measured against this rule: `benchmarks/medical_real_geometry.py`.
The memory estimate is that of nnU-Net's plain-conv U-Net at nnU-Net's width (conservative for a
narrower one); the pipeline's default MONAI UNet (16..128 features, `train.model.channels` explicit)
needs less at the same patch and batch.

Values in `params.yaml` that are not `auto` override the plan (`overrides`: dotted params keys); the plan
records each as `{"planned": ..., "params": ...}` and, where a patch is given, derives the strides from it.
Pure Python/numpy, no torch; `write_plan` / `read_plan` are the only file I/O (the plan JSON, atomic).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from visionpipes.core.errors import UserError
from visionpipes.medical.planning import cost, rules
from visionpipes.medical.planning.normalization import ct_entry, expand_normalization

__all__ = [
    "AUTO",
    "CPU_FP32_SHARE",
    "PLAN_FORMAT_VERSION",
    "PLAN_KEYS",
    "Plan",
    "make_plan",
    "plan_summary",
    "planning_budget_gb",
    "read_plan",
    "write_plan",
]

PLAN_FORMAT_VERSION = 1
AUTO = "auto"
#: A CPU's RAM share counts this much in nnU-Net's GB-equivalent (fp32 activations vs nnU-Net's fp16).
CPU_FP32_SHARE = 0.5
#: The `params.yaml` keys (below `train`) that may be `auto`, in the plan's `values`.
PLAN_KEYS: tuple[str, ...] = (
    "train.data.pixdim",
    "train.data.roi_size",
    "train.data.batch_size",
    "train.data.normalization",
    "train.model.strides",
    "train.model.channels",
)
#: Relative tolerance under which a case's spacing counts as already at the target (no resampling).
SPACING_RTOL = 1e-3
_LOWRES_STEP = 1.03
_LOWRES_MAX_STEPS = 300


def is_auto(value: Any) -> bool:
    return isinstance(value, str) and value.strip().lower() == AUTO


@dataclass
class Plan:
    """A medical plan (see the module docstring); `to_dict` is what `plan.json` holds.

    Attributes:
        spacing: target spacing (mm, RAS axis order).
        pixdim: resampling spacing training uses (None: the files' spacing; every case already has it).
        median_shape: median image shape after cropping, at `spacing`.
        patch_size: training crop and sliding window (voxels).
        batch_size: crops per step.
        strides: per stage, the stride per axis (the first stage: 1).
        kernel_sizes: per stage, the conv kernel per axis.
        features: nnU-Net's feature channels per stage.
        num_pool_per_axis: poolings per axis.
        normalization: one entry per channel (`planning.normalization`).
        foreground_intensity: per channel, the fingerprint's foreground statistics (for `ct` by name).
        cascade: `enabled`, and for an enabled one `lowres_spacing`, `lowres_median_shape`,
            `lowres_patch_size`, `lowres_batch_size`.
        memory: `budget_gb` given to the rules, how it was chosen, `estimated_gb` of the plan.
        hardware: what the plan was made for (`core.hardware.Hardware` as a dict).
        values: the planned value of each `PLAN_KEYS` key (the rules' choice).
        auto: what `auto` resolves to for each key: `values`, except that the strides and channels
            follow the patch actually used when `train.data.roi_size` is explicit (so they fit it).
        time: the cost model's inputs (CPU throughput table and its source, overlap, target, the base
            width chosen and the candidates tried) and estimates (`estimate_cost`) for the `planned`
            values and, where params.yaml overrides any, the `effective` ones.
        overridden: key -> `{"planned", "params"}` for keys `params.yaml` sets explicitly.
        reasons: key -> the rule that chose it.
        fingerprint_sha256: hash of the fingerprint the plan was made from.
    """

    spacing: list[float]
    pixdim: list[float] | None
    median_shape: list[float]
    patch_size: list[int]
    batch_size: int
    strides: list[list[int]]
    kernel_sizes: list[list[int]]
    features: list[int]
    num_pool_per_axis: list[int]
    normalization: list[dict[str, Any]]
    foreground_intensity: list[dict[str, Any]]
    cascade: dict[str, Any]
    memory: dict[str, Any]
    hardware: dict[str, Any]
    values: dict[str, Any]
    auto: dict[str, Any] = field(default_factory=dict)
    time: dict[str, Any] = field(default_factory=dict)
    overridden: dict[str, Any] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    fingerprint_sha256: str = ""
    domain: str = "medical"
    format_version: int = PLAN_FORMAT_VERSION

    def effective(self) -> dict[str, Any]:
        """Each `PLAN_KEYS` value training uses: the explicit params value where one was given."""
        return {
            k: self.overridden[k]["params"] if k in self.overridden else v for k, v in self.values.items()
        }

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["effective"] = self.effective()
        return out


def fingerprint_sha256(fingerprint: Mapping[str, Any]) -> str:
    """sha256 of the fingerprint's canonical JSON (sorted keys): equal data, equal hash."""
    text = json.dumps(fingerprint, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _hardware_dict(hardware: Any) -> dict[str, Any]:
    hw = hardware.to_dict() if hasattr(hardware, "to_dict") else dict(hardware)
    for key in ("device", "memory_gb", "cpu_cores"):
        if key not in hw:
            raise UserError(f"hardware for the plan lacks '{key}' ({hw}).")
    return hw


def planning_budget_gb(hardware: Any) -> tuple[float, str]:
    """The memory budget (nnU-Net's GB-equivalent) the rules plan for, and one sentence saying how."""
    hw = _hardware_dict(hardware)
    memory = float(hw["memory_gb"])
    if hw["device"] == "cuda":
        return memory, f"cuda: the device's {memory:g} GB"
    budget = round(memory * CPU_FP32_SHARE, 4)
    return budget, (
        f"{hw['device']}: the {memory:g} GB RAM share x {CPU_FP32_SHARE:g} (fp32 activations, twice "
        f"nnU-Net's fp16) = {budget:g} GB-equivalent"
    )


def _median_shape(fingerprint: Mapping[str, Any], spacing: np.ndarray) -> np.ndarray:
    shapes = np.asarray(fingerprint["shapes_after_crop"], dtype=np.float64)
    spacings = np.asarray(fingerprint["spacings"], dtype=np.float64)
    return np.median(np.round(spacings / spacing * shapes), axis=0)


def _model_strides(strides: tuple[tuple[int, ...], ...]) -> list[Any]:
    """The U-Net's strides after the first stage, an int where all axes agree (`train.model.strides`)."""
    return [s[0] if len(set(s)) == 1 else list(s) for s in strides[1:]]


def _lowres(
    spacing: np.ndarray, median: np.ndarray, *, num_classes: int, budget: float, n_cases: int
) -> dict[str, Any]:
    low = spacing.astype(np.float64).copy()
    for _ in range(_LOWRES_MAX_STEPS):
        coarsest = low.max()
        finer = coarsest / low > 2
        if finer.any():
            low[finer] *= _LOWRES_STEP
        else:
            low *= _LOWRES_STEP
        shape = spacing / low * median
        lp = rules.plan_patch_and_batch(
            low, np.round(shape), num_classes=num_classes, memory_gb=budget,
            dataset_voxels=float(np.prod(shape)) * n_cases,
        )  # fmt: skip
        if not rules.needs_lowres_stage(lp.patch_size, shape):
            return {
                "enabled": True,
                "lowres_spacing": [round(float(s), 5) for s in low],
                "lowres_median_shape": [round(float(s), 1) for s in shape],
                "lowres_patch_size": list(lp.patch_size),
                "lowres_batch_size": lp.batch_size,
                "note": "train.configuration auto trains 3d_lowres, then 3d_cascade_fullres on its predictions",
            }
    return {"enabled": False, "reason": f"no low-resolution spacing within {_LOWRES_MAX_STEPS} steps"}


def make_plan(
    fingerprint: Mapping[str, Any],
    hardware: Any,
    overrides: Mapping[str, Any] | None = None,
    *,
    cpu_gflops: float | Mapping[Any, float] | None = None,
    cpu_gflops_source: str = "given",
    predict_seconds: float = cost.DEFAULT_PREDICT_SECONDS,
    overlap: float = cost.NNUNET_OVERLAP,
) -> Plan:
    """A plan for the dataset `fingerprint` on `hardware`, with explicit `overrides`.

    Args:
        fingerprint: `planning.fingerprint.compute_fingerprint`'s dict (or the JSON it wrote).
        hardware: a `core.hardware.Hardware` or a mapping with `device`, `memory_gb`, `cpu_cores`.
        overrides: dotted `params.yaml` keys (`PLAN_KEYS`) with the explicit values params gives (no
            `auto`); each wins over the planned value and is recorded in `overridden`.
        cpu_gflops: the CPU's throughput: GFLOP/s of a 32-channel 3x3x3 conv, or a table width ->
            GFLOP/s (`throughput.probe_cpu_gflops`); None: no time estimate, nnU-Net's width.
        cpu_gflops_source: how `cpu_gflops` was obtained (recorded).
        predict_seconds: a CPU plan's target for predicting the median image (chooses the width).
        overlap: the sliding-window overlap the prediction estimate assumes.

    Raises:
        UserError: if the fingerprint lacks what the rules need, or an override names an unknown key.

    Example:
        >>> fp = {"spacings": [[1, 1, 1]] * 4, "shapes_after_crop": [[138, 169, 138]] * 4, "modality": ["CT"],
        ...       "labels": {"0": "bg", "1": "tumour"}, "median_relative_size_after_cropping": 1.0,
        ...       "foreground_intensity_properties_per_channel": [{"mean": 100.0, "std": 50.0,
        ...           "percentile_00_5": -50.0, "percentile_99_5": 300.0}]}
        >>> plan = make_plan(fp, {"device": "cuda", "memory_gb": 8, "cpu_cores": 8})
        >>> plan.patch_size, plan.normalization[0]["scheme"]
        ([128, 128, 128], 'ct')
    """
    hw = _hardware_dict(hardware)
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(PLAN_KEYS))
    if unknown:
        raise UserError(f"plan override '{unknown[0]}' is not a planned key ({', '.join(PLAN_KEYS)}).")
    needed = ("spacings", "shapes_after_crop", "modality", "foreground_intensity_properties_per_channel")
    missing = [k for k in needed if not fingerprint.get(k)]
    if missing:
        raise UserError(
            f"the fingerprint lacks '{missing[0]}' (or it is empty): recompute it with `vp-medical plan`."
        )
    spacings = np.asarray(fingerprint["spacings"], dtype=np.float64)
    shapes = np.asarray(fingerprint["shapes_after_crop"], dtype=np.float64)
    if spacings.ndim != 2 or spacings.shape[1] != 3 or shapes.shape != spacings.shape:
        raise UserError("the fingerprint's spacings and shapes_after_crop must be one [x, y, z] per case.")
    n_cases = len(spacings)
    num_classes = max(2, len(fingerprint.get("labels") or {}))
    in_channels = len(fingerprint["modality"])
    budget, budget_reason = planning_budget_gb(hw)
    on_cpu = hw["device"] != "cuda"
    table = cost.throughput_table(cpu_gflops) if on_cpu else None
    if not predict_seconds > 0:
        raise UserError(f"plan predict_seconds must be > 0, got {predict_seconds}.")
    if not 0 <= overlap < 1:
        raise UserError(f"the prediction overlap must be in [0, 1), got {overlap}.")

    spacing = rules.target_spacing(spacings, shapes)
    median = _median_shape(fingerprint, spacing)
    full = rules.plan_patch_and_batch(
        spacing, np.round(median), num_classes=num_classes, memory_gb=budget,
        dataset_voxels=float(np.prod(median)) * n_cases,
    )  # fmt: skip
    needs_resampling = not np.allclose(spacings, spacing[None], rtol=SPACING_RTOL, atol=0)
    planned_batch = min(full.batch_size, cost.CPU_MAX_BATCH) if on_cpu else full.batch_size
    median_int = [int(m) for m in np.round(median)]
    width, meets, tried = rules.BASE_FEATURES, None, []
    if table is not None:
        width, meets, tried = cost.plan_width(
            full.patch_size, full.topology, in_channels=in_channels, num_classes=num_classes,
            median_shape=median_int, overlap=overlap, table=table, predict_seconds=predict_seconds,
        )  # fmt: skip
    planned_features = list(rules.features_per_stage(len(full.topology.strides), 3, width))

    normalization = []
    relative = float(fingerprint.get("median_relative_size_after_cropping", 1.0))
    stats = fingerprint["foreground_intensity_properties_per_channel"]
    for c, modality in enumerate(fingerprint["modality"]):
        entry = rules.normalization_scheme(modality, median_relative_size_after_crop=relative)
        entry = {"modality": modality, **entry}
        if entry["scheme"] == "ct":
            try:
                entry.update(ct_entry(stats[c]))
            except ValueError:
                raise UserError(
                    f"the fingerprint has no foreground intensities for CT channel {c} (no label > 0 voxel)."
                ) from None
        normalization.append(entry)

    values: dict[str, Any] = {
        "train.data.pixdim": [round(float(s), 6) for s in spacing] if needs_resampling else None,
        "train.data.roi_size": list(full.patch_size),
        "train.data.batch_size": planned_batch,
        "train.data.normalization": normalization,
        "train.model.strides": _model_strides(full.topology.strides),
        "train.model.channels": planned_features,
    }
    reasons = {
        "train.data.pixdim": "median spacing with nnU-Net's anisotropic-axis rule"
        + ("" if needs_resampling else "; null: every case already has it, so nothing is resampled"),
        "train.data.roi_size": f"nnU-Net's patch search under {budget:g} GB ({budget_reason}), clipped to the median image",
        "train.data.batch_size": (
            f"cpu: {cost.CPU_MAX_BATCH} (a bigger batch only lengthens a CPU's step)"
            if on_cpu
            else "fills the budget, at most 5 % of the dataset's voxels, at least 2"
        ),
        "train.data.normalization": "by modality: CT clip + dataset z-score, others per-image z-score "
        f"(non-zero mask when cropping leaves < 75 %: here {relative:.2f})",
        "train.model.strides": "pool an axis while its feature map stays >= 8 and its spacing < 2x the finest",
        "train.model.channels": cost.width_reason(on_cpu, table, width, meets, predict_seconds, overlap),
    }
    overridden = {
        k: {"planned": values[k], "params": v, "differs": v != values[k]} for k, v in overrides.items()
    }
    patch = list(overrides.get("train.data.roi_size", full.patch_size))
    topology = full.topology
    if "train.data.roi_size" in overrides:
        topology = rules.pool_and_conv_props(spacing, patch)
    batch = int(overrides.get("train.data.batch_size", planned_batch))
    norm_used = overrides.get("train.data.normalization", normalization)
    if not isinstance(norm_used, list):
        try:
            norm_used = expand_normalization(norm_used, len(fingerprint["modality"]), stats)
        except ValueError as err:
            raise UserError(f"train.data.normalization: {err}.") from None
    if "train.data.pixdim" in overrides:
        pixdim = overrides["train.data.pixdim"]
    else:
        pixdim = values["train.data.pixdim"]
    features = list(rules.features_per_stage(len(topology.strides), 3, width))
    estimate = rules.feature_map_voxels(topology.patch_size, topology.strides, features, num_classes)
    ref_batch = rules.REFERENCE_BATCH[3]
    cost_args = {
        "in_channels": in_channels, "num_classes": num_classes, "median_shape": median_int,
        "overlap": overlap, "table": table,
    }  # fmt: skip
    time_record: dict[str, Any] = {
        "cpu_gflops": None if table is None else {str(k): v for k, v in sorted(table.items())},
        "cpu_gflops_source": None if table is None else cpu_gflops_source,
        "overlap": overlap,
        "predict_seconds_target": predict_seconds if on_cpu else None,
        "base_width": width,
        "meets_target": meets,
        "width_candidates": tried,
        "model": "nnU-Net's plain-conv U-Net (2 convs per stage, transposed-conv upsampling); "
        "a training step ~ 3 forward passes x batch; prediction: MONAI's window grid over the median image",
        "planned": cost.estimate_cost(
            full.patch_size, planned_batch, full.topology, planned_features, **cost_args
        ),
    }
    if overrides:
        eff_features = features
        channels = overrides.get("train.model.channels")
        if isinstance(channels, list) and len(channels) == len(topology.strides):
            eff_features = [int(c) for c in channels]
        time_record["effective"] = cost.estimate_cost(
            topology.patch_size, batch, topology, eff_features, **cost_args
        )
    cascade = (
        _lowres(spacing, median, num_classes=num_classes, budget=budget, n_cases=n_cases)
        if rules.needs_lowres_stage(full.patch_size, median)
        else {"enabled": False}
    )
    return Plan(
        spacing=[round(float(s), 6) for s in spacing],
        pixdim=None if pixdim is None else [float(p) for p in pixdim],
        median_shape=[round(float(s), 1) for s in median],
        patch_size=[int(p) for p in patch],
        batch_size=batch,
        strides=[list(s) for s in topology.strides],
        kernel_sizes=[list(k) for k in topology.kernel_sizes],
        features=features,
        num_pool_per_axis=list(topology.num_pool_per_axis),
        normalization=[dict(e) for e in norm_used],
        foreground_intensity=[dict(s) for s in stats],
        cascade=cascade,
        memory={
            "budget_gb": budget,
            "rule": budget_reason,
            "estimated_gb": round(
                estimate * batch / ref_batch * rules.REFERENCE_GB / rules.REFERENCE_VOXELS[3], 4
            ),
            "feature_map_voxels": int(estimate),
        },
        hardware=hw,
        values=values,
        auto={
            **values,
            "train.model.strides": _model_strides(topology.strides),
            "train.model.channels": features,
        },
        time=time_record,
        overridden=overridden,
        reasons=reasons,
        fingerprint_sha256=fingerprint_sha256(fingerprint),
    )


def overrides_from_params(train_section: Mapping[str, Any] | None) -> dict[str, Any]:
    """The `PLAN_KEYS` a `params.yaml` `train:` section sets explicitly (present and not `auto`)."""
    out: dict[str, Any] = {}
    for key in PLAN_KEYS:
        node: Any = train_section or {}
        found = True
        for part in key.split(".")[1:]:
            if not isinstance(node, Mapping) or part not in node:
                found = False
                break
            node = node[part]
        if found and not is_auto(node):
            out[key] = list(node) if isinstance(node, tuple) else node
    return out


def write_plan(path: str | os.PathLike, plan: Plan) -> Path:
    """Write `plan.json` atomically (the folder is created)."""
    from visionpipes.core.io import write_json

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_json(target, plan.to_dict())
    return target


def read_plan(path: str | os.PathLike) -> dict[str, Any]:
    """Read a `plan.json` written by `write_plan` (as a dict).

    Raises:
        UserError: if the file is missing, not JSON, not a medical plan, or of a newer format.
    """
    p = Path(path)
    if not p.is_file():
        raise UserError(f"plan file {p} does not exist; write it with `vp-medical plan TASK_DIR --out {p}`.")
    try:
        data = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"plan file {p} is not readable JSON ({err}).") from None
    if (
        not isinstance(data, dict)
        or data.get("domain") != "medical"
        or not isinstance(data.get("values"), dict)
    ):
        raise UserError(f"plan file {p} is not a medical plan (no domain 'medical' and 'values').")
    version = data.get("format_version")
    if not isinstance(version, int) or version > PLAN_FORMAT_VERSION:
        raise UserError(
            f"plan file {p} has format_version {version!r}; this code reads up to {PLAN_FORMAT_VERSION}."
        )
    return data


def plan_summary(plan: Mapping[str, Any], path: str | os.PathLike | None = None) -> dict[str, Any]:
    """What a checkpoint, `model.json` and the model card record of a plan: everything but the
    per-key reasons, with the plan file's path."""
    keep = (
        "spacing", "pixdim", "patch_size", "batch_size", "strides", "kernel_sizes", "normalization",
        "cascade", "memory", "time", "hardware", "overridden", "fingerprint_sha256", "format_version",
    )  # fmt: skip
    out = {k: plan.get(k) for k in keep if k in plan}
    if path is not None:
        out["path"] = str(path)
    return out
