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
  until the low-resolution patch covers >= 25 % of the low-resolution median image. It is recorded
  only: training here runs the full-resolution configuration.

Memory budget (`planning_budget_gb`): on `cuda` the device's memory (`plan.memory_gb` overrides it: a plan
for an 80 GB GPU can be made on a laptop). On `cpu`/`mps` the smaller of (a) `core.hardware`'s share of
RAM (50 %) and (b) a compute cap of `CPU_GB_PER_CORE` x cores: on a CPU the time per step, not memory,
is the limit. The cap is a calibration, not a law: 0.055 GB-equivalent per core puts nnU-Net's network
at a 32^3 patch, batch 2 on the 2 shared cores this project's demo runs on (the step the pipeline's
measured budget was set with, ~10 s/epoch on the 48^3 sample); 16 cores buy an 8x larger budget.
The estimate is that of nnU-Net's plain-conv U-Net (32 features doubling to 320); the pipeline's default
MONAI UNet (16..128 features, `train.model.channels` explicit) needs less at the same patch and batch.

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
from visionpipes.medical.planning import rules
from visionpipes.medical.planning.normalization import ct_entry, expand_normalization

__all__ = [
    "AUTO",
    "CPU_GB_PER_CORE",
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
#: Compute cap of CPU plans, in nnU-Net's GB-equivalent of activations per core (see the module docstring).
CPU_GB_PER_CORE = 0.055
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
    """The memory budget (GB) the rules plan for, and one sentence saying how it was chosen."""
    hw = _hardware_dict(hardware)
    memory = float(hw["memory_gb"])
    if hw["device"] == "cuda":
        return memory, f"cuda: the device's {memory:g} GB"
    cap = round(CPU_GB_PER_CORE * int(hw["cpu_cores"]), 4)
    if cap < memory:
        return cap, (
            f"{hw['device']}: compute cap {CPU_GB_PER_CORE} GB-equivalent x {hw['cpu_cores']} cores = {cap:g} "
            f"(below the {memory:g} GB RAM share)"
        )
    return memory, f"{hw['device']}: the {memory:g} GB RAM share (below the {cap:g} GB compute cap)"


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
                "note": "recorded only: training runs the full-resolution configuration",
            }
    return {"enabled": False, "reason": f"no low-resolution spacing within {_LOWRES_MAX_STEPS} steps"}


def make_plan(
    fingerprint: Mapping[str, Any], hardware: Any, overrides: Mapping[str, Any] | None = None
) -> Plan:
    """A plan for the dataset `fingerprint` on `hardware`, with explicit `overrides`.

    Args:
        fingerprint: `planning.fingerprint.compute_fingerprint`'s dict (or the JSON it wrote).
        hardware: a `core.hardware.Hardware` or a mapping with `device`, `memory_gb`, `cpu_cores`.
        overrides: dotted `params.yaml` keys (`PLAN_KEYS`) with the explicit values params gives (no
            `auto`); each wins over the planned value and is recorded in `overridden`.

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
    budget, budget_reason = planning_budget_gb(hw)

    spacing = rules.target_spacing(spacings, shapes)
    median = _median_shape(fingerprint, spacing)
    full = rules.plan_patch_and_batch(
        spacing, np.round(median), num_classes=num_classes, memory_gb=budget,
        dataset_voxels=float(np.prod(median)) * n_cases,
    )  # fmt: skip
    needs_resampling = not np.allclose(spacings, spacing[None], rtol=SPACING_RTOL, atol=0)

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
        "train.data.batch_size": full.batch_size,
        "train.data.normalization": normalization,
        "train.model.strides": _model_strides(full.topology.strides),
        "train.model.channels": list(full.features),
    }
    reasons = {
        "train.data.pixdim": "median spacing with nnU-Net's anisotropic-axis rule"
        + ("" if needs_resampling else "; null: every case already has it, so nothing is resampled"),
        "train.data.roi_size": f"nnU-Net's patch search under {budget:g} GB ({budget_reason}), clipped to the median image",
        "train.data.batch_size": "fills the budget, at most 5 % of the dataset's voxels, at least 2",
        "train.data.normalization": "by modality: CT clip + dataset z-score, others per-image z-score "
        f"(non-zero mask when cropping leaves < 75 %: here {relative:.2f})",
        "train.model.strides": "pool an axis while its feature map stays >= 8 and its spacing < 2x the finest",
        "train.model.channels": "nnU-Net's 32 per stage, doubling, capped at 320",
    }
    overridden = {
        k: {"planned": values[k], "params": v, "differs": v != values[k]} for k, v in overrides.items()
    }
    patch = list(overrides.get("train.data.roi_size", full.patch_size))
    topology = full.topology
    if "train.data.roi_size" in overrides:
        topology = rules.pool_and_conv_props(spacing, patch)
    batch = int(overrides.get("train.data.batch_size", full.batch_size))
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
    estimate = rules.feature_map_voxels(
        topology.patch_size, topology.strides, rules.features_per_stage(len(topology.strides), 3), num_classes
    )
    ref_batch = rules.REFERENCE_BATCH[3]
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
        features=list(rules.features_per_stage(len(topology.strides), 3)),
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
            "train.model.channels": list(rules.features_per_stage(len(topology.strides), 3)),
        },
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
        "cascade", "memory", "hardware", "overridden", "fingerprint_sha256", "format_version",
    )  # fmt: skip
    out = {k: plan.get(k) for k in keep if k in plan}
    if path is not None:
        out["path"] = str(path)
    return out
