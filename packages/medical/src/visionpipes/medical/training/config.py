"""The training settings (`params.yaml`'s `train:` section) as typed config models: the network, how
volumes become batches, the core trainer's settings (also accepted flat), optimiser and loss.

Configuration only: no Lightning or MONAI import, so a bad key fails before the training stack loads.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ValidationInfo, field_validator, model_validator

from visionpipes.core.config import ConfigModel, Field
from visionpipes.core.training import TrainConfig
from visionpipes.medical.msd.regions import RegionScheme
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
            bad = [s for s in value.roi_size if s % model.divisor]
            if bad:
                raise ValueError(
                    f"data.roi_size {list(value.roi_size)} must be divisible by {model.divisor} for model "
                    f"{model.name} with {len(model.channels)} levels"
                )
        return value
