"""The training settings (`params.yaml`'s `train:` section) as typed config models: the network, how
volumes become batches, the core trainer's settings (also accepted flat), optimiser and loss; and the
resolution of `auto` values from a plan (`vp-medical plan`, `resolve_training_config`).

Configuration only: no Lightning or MONAI import, so a bad key fails before the training stack loads.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import ValidationInfo, field_validator, model_validator

from visionpipes.core.config import ConfigModel, Field, parse_config
from visionpipes.core.errors import UserError
from visionpipes.core.training import TrainConfig
from visionpipes.medical.msd.regions import RegionScheme
from visionpipes.medical.planning.plan import PLAN_KEYS, is_auto, plan_summary, read_plan
from visionpipes.medical.runtime.networks import ModelConfig

#: Trainer keys, which a training section may give flat instead of under `trainer:`.
TRAINER_KEYS: frozenset[str] = frozenset(TrainConfig.model_fields)
#: The metric that picks the best checkpoint unless the section names another (or null).
DEFAULT_MONITOR = "val_dice"


class DataConfig(ConfigModel):
    """How volumes become training batches.

    Attributes:
        roi_size: training crop and sliding-window size (voxels).
        pixdim: resample to this voxel size (mm) first; None keeps the files' spacing.
        batch_size: crops per optimiser step.
        num_samples: crops drawn from each volume per epoch.
        pos, neg: odds of a crop centred on foreground vs background (`RandCropByPosNegLabeld`).
        val_fraction: share of the training cases held out for validation (at least one when > 0).
        cache: `memory` (`CacheDataset`), `disk` (`PersistentDataset` in `cache_dir`) or `none`.
        cache_dir: folder of the disk cache (default `<out_dir>/cache`).
        num_workers: data-loader worker processes.
        augment: random flips and intensity jitter on training crops.
        normalization: per-channel intensity normalisation: `auto` (CT channels: clip to the training
            foreground's 0.5/99.5 percentiles, then z-score with its mean/std, computed by
            `planning.fingerprint`; other modalities: z-score of each image's non-zero voxels), a scheme
            name for every channel (`zscore_nonzero`, `zscore`, `none`), or explicit per-channel entries
            (`planning.normalization`, e.g. a plan's `[{scheme: ct, clip: [lo, hi], mean: m, std: s}]`).
    """

    roi_size: tuple[int, int, int] = (48, 48, 48)
    pixdim: tuple[float, float, float] | None = None
    batch_size: int = Field(2, ge=1)
    num_samples: int = Field(2, ge=1)
    pos: float = Field(2.0, ge=0.0)
    neg: float = Field(1.0, ge=0.0)
    val_fraction: float = Field(0.2, ge=0.0, lt=1.0)
    cache: Literal["memory", "disk", "none"] = "memory"
    cache_dir: str | None = None
    num_workers: int = Field(0, ge=0)
    augment: bool = True
    normalization: Literal["auto", "zscore_nonzero", "zscore", "none"] | list[dict[str, Any]] = "auto"

    @field_validator("roi_size")
    @classmethod
    def _roi_at_least_8(cls, value: tuple[int, int, int]) -> tuple[int, int, int]:
        if any(s < 8 for s in value):
            raise ValueError(f"roi_size must be three sizes of at least 8, not {list(value)}")
        return value

    @field_validator("pixdim")
    @classmethod
    def _positive_spacing(cls, value: tuple[float, float, float] | None) -> tuple[float, float, float] | None:
        if value is not None and any(p <= 0 for p in value):
            raise ValueError(f"pixdim must be three positive sizes or null, not {list(value)}")
        return value


class SegmentationConfig(ConfigModel):
    """Everything `train` needs; one `params.yaml` section (`model:`, `data:`, `trainer:` and the rest).

    The trainer's keys may also be given flat in the section (`max_epochs: 60` beside `lr:`), which is
    what `dvc exp run -S params.yaml:train.max_epochs=2` sets.

    Attributes:
        model: the network.
        data: transforms, crops, split and caching.
        trainer: the core training settings (epochs, device, seed, checkpoint monitor, ...).
        lr: AdamW learning rate (cosine-annealed to 0 over `trainer.max_epochs`).
        weight_decay: AdamW weight decay.
        loss: `dice_ce` (Dice + BCE) or `dice`, both on sigmoid region channels.
        sw_overlap: overlap of the validation sliding windows.
        sw_batch_size: windows per forward pass in validation.
        region_scheme: `auto`, `brain_tumour` or `per_label` (see `regions_from_labels`).
        configuration: nnU-Net's configuration: `3d_fullres` (the plan's patch at its spacing),
            `3d_lowres` (the plan's cascade stage: its `lowres_spacing`, patch and batch),
            `3d_cascade_fullres` (3d_lowres, then 3d_fullres fed the low-resolution prediction as one-hot
            channels: `training.cascade`), or `auto`: `3d_cascade_fullres` when the plan enables the
            cascade, else `3d_fullres` (`resolve_configuration`).
    """

    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    trainer: TrainConfig = Field(default_factory=lambda: TrainConfig(monitor=DEFAULT_MONITOR))
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(1e-5, ge=0.0)
    loss: Literal["dice_ce", "dice"] = "dice_ce"
    sw_overlap: float = Field(0.5, ge=0.0, lt=1.0)
    sw_batch_size: int = Field(4, ge=1)
    region_scheme: RegionScheme = "auto"
    configuration: Literal["auto", "3d_fullres", "3d_lowres", "3d_cascade_fullres"] = "auto"

    @model_validator(mode="before")
    @classmethod
    def _flat_trainer_keys(cls, data: Any) -> Any:
        """Move trainer keys given flat into `trainer` (and refuse one given both ways)."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        trainer = data.get("trainer") or {}
        if isinstance(trainer, ConfigModel):
            trainer = trainer.model_dump()
        flat = {name: data.pop(name) for name in TRAINER_KEYS & set(data)}
        both = sorted(set(flat) & set(trainer))
        if both:
            raise ValueError(f"{', '.join(both)} given both flat and under trainer; keep one")
        data["trainer"] = {"monitor": DEFAULT_MONITOR, **trainer, **flat}
        return data

    @field_validator("data")
    @classmethod
    def _roi_fits_the_network(cls, value: DataConfig, info: ValidationInfo) -> DataConfig:
        model = info.data.get("model")
        if model is not None:
            divisors = model.divisors
            if any(s % d for s, d in zip(value.roi_size, divisors)):
                by = divisors[0] if len(set(divisors)) == 1 else list(divisors)
                raise ValueError(
                    f"data.roi_size {list(value.roi_size)} must be divisible by {by} for model "
                    f"{model.name} with {len(model.channels)} levels"
                )
        return value


def resolve_auto_values(
    train_params: Mapping[str, Any], plan: Mapping[str, Any] | None, *, source: str
) -> tuple[dict[str, Any], dict[str, str]]:
    """Replace `auto` at the planned keys of a `train:` section with the plan's values.

    `auto` (and `ct` for `data.normalization`) take the plan's; explicit values stay; an absent
    `data.normalization` (default `auto`) takes the plan's too. Without a plan,
    `data.normalization: auto` stays `auto` (training then computes the CT statistics itself:
    `training.data.resolve_normalization`); any other `auto` is an error.

    Returns:
        `(resolved section, {dotted key: "plan", "params" or "training"})` for the planned keys present.

    Raises:
        UserError: if a key other than `data.normalization` is `auto` and there is no plan.
    """
    out = copy.deepcopy(dict(train_params))
    origin: dict[str, str] = {}
    data = out.get("data")
    if plan is not None and (data is None or isinstance(data, dict)) and "normalization" not in (data or {}):
        out["data"] = {**(data or {}), "normalization": "auto"}  # its default is auto: the plan's
    for key in PLAN_KEYS:
        parts = key.split(".")[1:]
        node: Any = out
        for part in parts[:-1]:
            node = node.get(part) if isinstance(node, Mapping) else None
        if not isinstance(node, dict) or parts[-1] not in node:
            continue
        value = node[parts[-1]]
        wants_plan = is_auto(value) or (key == "train.data.normalization" and value == "ct")
        if not wants_plan:
            origin[key] = "params"
            continue
        if plan is None and key == "train.data.normalization" and is_auto(value):
            origin[key] = "training"
            continue
        if plan is None:
            raise UserError(
                f"{source}: key '{'.'.join(parts)}' is {value!r} but no plan was given: run `vp-medical plan "
                f"TASK_DIR --out PLAN.json` and train with --plan PLAN.json."
            )
        if is_auto(value):
            node[parts[-1]] = copy.deepcopy((plan.get("auto") or plan["values"])[key])
        else:  # ct on every channel, with the dataset statistics the plan carries
            from visionpipes.medical.planning.normalization import expand_normalization

            stats = plan.get("foreground_intensity") or []
            try:
                node[parts[-1]] = expand_normalization("ct", len(stats) or 1, stats)
            except ValueError as err:
                raise UserError(f"{source}: data.normalization: {err}.") from None
        origin[key] = "plan"
    return out, origin


def resolve_training_config(
    train_params: Mapping[str, Any], plan_path: str | os.PathLike | None, *, source: str
) -> tuple[SegmentationConfig, dict[str, Any] | None]:
    """The training config of a `train:` section, `auto` values taken from the plan at `plan_path`.

    Returns:
        `(config, plan record)`: the record (None without a plan) is `plan_summary` of the plan plus
        `sources` (where each planned key's value came from); training saves it in the checkpoint, and
        export copies it into `model.json` and the model card.

    Raises:
        UserError: on an unreadable plan, `auto` without a plan, or an invalid setting (naming `source`).
    """
    plan = read_plan(plan_path) if plan_path is not None else None
    resolved, origin = resolve_auto_values(train_params, plan, source=source)
    config = parse_config(SegmentationConfig, resolved, source=source)
    configuration = resolve_configuration(config.configuration, plan, source=source)
    config = config.model_copy(update={"configuration": configuration})
    if plan is None:
        return config, None
    return config, {**plan_summary(plan, plan_path), "sources": origin, "configuration": configuration}


def resolve_configuration(requested: str, plan: Mapping[str, Any] | None, *, source: str) -> str:
    """The nnU-Net configuration `train.configuration` names: `auto` is `3d_cascade_fullres` when the
    plan enables the low-resolution cascade (nnU-Net trains 3d_lowres + 3d_cascade_fullres only then),
    else `3d_fullres` (also without a plan).

    Raises:
        UserError: if `3d_lowres` or `3d_cascade_fullres` is asked for without a plan that enables the
            cascade (the low-resolution spacing, patch and batch come from the plan).
    """
    enabled = bool(plan is not None and (plan.get("cascade") or {}).get("enabled"))
    if requested == "auto":
        return "3d_cascade_fullres" if enabled else "3d_fullres"
    if requested in ("3d_lowres", "3d_cascade_fullres") and not enabled:
        why = "no plan was given" if plan is None else "the plan does not enable the cascade"
        raise UserError(
            f"{source}: configuration {requested} needs a plan with a low-resolution cascade stage, but {why} "
            "(`vp-medical plan` enables it when the patch covers < 25 % of the median image); use "
            "3d_fullres or auto."
        )
    return requested
