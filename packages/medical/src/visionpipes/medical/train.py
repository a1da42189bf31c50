"""Training of a 3-D region segmentation model on an MSD task: MONAI transforms and datasets, DiceCE on
sigmoid region channels, validation Dice by sliding window, run by the core Lightning + DVCLive glue.

It trains and checkpoints; it writes no predictions or reports (see `infer` and `metrics`). The checkpoint
is self-describing (model, regions, modalities, preprocessing), so inference needs nothing else.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import lightning
import numpy as np
import torch
from monai.transforms import MapTransform

from visionpipes.core.errors import UserError
from visionpipes.core.io import check_known_keys, write_json
from visionpipes.core.training import FitResult, TrainConfig, fit, seed_everything
from visionpipes.medical.models import ModelConfig, build_model
from visionpipes.medical.msd import MSDCase, MSDTask, Region, labels_to_regions, load_task

#: `TrainConfig` fields, which a training section may give flat instead of under `trainer:`.
TRAINER_KEYS: frozenset[str] = frozenset(f.name for f in fields(TrainConfig))
#: Orientation every volume is brought to before the network sees it.
AXCODES = "RAS"
_AXIS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


@dataclass
class DataConfig:
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

    roi_size: Sequence[int] = (48, 48, 48)
    pixdim: Sequence[float] | None = None
    batch_size: int = 2
    num_samples: int = 2
    pos: float = 2.0
    neg: float = 1.0
    val_fraction: float = 0.2
    cache: str = "memory"
    cache_dir: str | None = None
    num_workers: int = 0
    augment: bool = True


@dataclass
class SegmentationConfig:
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

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainConfig = field(default_factory=lambda: TrainConfig(monitor="val_dice", mode="max"))
    lr: float = 1e-3
    weight_decay: float = 1e-5
    loss: str = "dice_ce"
    sw_overlap: float = 0.5
    sw_batch_size: int = 4
    region_scheme: str = "auto"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "training config") -> SegmentationConfig:
        """Build from a mapping such as `params.yaml`'s `train:` section.

        Raises:
            UserError: on unknown keys or unusable values, naming `source`.
        """
        known = {f.name for f in fields(cls)}
        check_known_keys(data, known | TRAINER_KEYS, source=source,
                         hint=f"known: {', '.join(sorted(known))}, or any trainer key given flat")
        data = dict(data)
        model = ModelConfig.from_dict(data.pop("model", {}) or {}, source=f"{source} model")
        data_section = dict(data.pop("data", {}) or {})
        check_known_keys(data_section, {f.name for f in fields(DataConfig)}, source=f"{source} data")
        trainer_section = dict(data.pop("trainer", {}) or {})
        flat = {name: data.pop(name) for name in TRAINER_KEYS & set(data)}
        both = sorted(set(flat) & set(trainer_section))
        if both:
            raise UserError(f"{source}: {', '.join(both)} given both flat and under trainer; keep one.")
        trainer_section = {"monitor": "val_dice", "mode": "max", **trainer_section, **flat}
        trainer = TrainConfig.from_dict(trainer_section, source=f"{source} trainer")
        config = cls(model=model, data=DataConfig(**data_section), trainer=trainer, **data)
        config.check(source)
        return config

    def check(self, source: str = "training config") -> None:
        """Raises `UserError` for values that cannot train."""
        d = self.data
        if len(d.roi_size) != 3 or any(int(s) < 8 for s in d.roi_size):
            raise UserError(
                f"{source}: data.roi_size must be three sizes of at least 8, not {list(d.roi_size)}."
            )
        bad = [int(s) for s in d.roi_size if int(s) % self.model.divisor]
        if bad:
            raise UserError(
                f"{source}: data.roi_size {list(d.roi_size)} must be divisible by {self.model.divisor} "
                f"for model {self.model.name} with {len(self.model.channels)} levels."
            )
        if d.pixdim is not None and (len(d.pixdim) != 3 or any(float(p) <= 0 for p in d.pixdim)):
            raise UserError(f"{source}: data.pixdim must be three positive sizes or null, not {d.pixdim}.")
        if d.cache not in ("memory", "disk", "none"):
            raise UserError(f"{source}: data.cache must be memory, disk or none, not '{d.cache}'.")
        if not 0.0 <= d.val_fraction < 1.0:
            raise UserError(f"{source}: data.val_fraction must be in [0, 1), not {d.val_fraction}.")
        if self.loss not in ("dice_ce", "dice"):
            raise UserError(f"{source}: loss must be dice_ce or dice, not '{self.loss}'.")
        if not 0.0 <= self.sw_overlap < 1.0:
            raise UserError(f"{source}: sw_overlap must be in [0, 1), not {self.sw_overlap}.")
        for name, value in (
            ("data.batch_size", d.batch_size),
            ("data.num_samples", d.num_samples),
            ("sw_batch_size", self.sw_batch_size),
        ):
            if int(value) < 1:
                raise UserError(f"{source}: {name} must be at least 1, not {value}.")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["model"] = self.model.to_dict()
        return json.loads(json.dumps(out, default=list))


# ---------------------------------------------------------------------------------------------------
# Data


class LabelToRegionsd(MapTransform):
    """Turn an MSD label map `(1, *spatial)` into float region channels `(R, *spatial)` (TC, WT, ET ...)."""

    def __init__(self, keys: Sequence[Hashable] | Hashable, regions: Sequence[Region]) -> None:
        super().__init__(keys)
        self.regions = tuple(regions)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            label = d[key]
            masks = labels_to_regions(np.asarray(label[0]), self.regions).astype(np.float32)
            out = torch.from_numpy(masks)
            if hasattr(label, "copy_meta_from"):
                from monai.data import MetaTensor

                out = MetaTensor(out, meta=label.meta, applied_operations=label.applied_operations)
            d[key] = out
        return d


def spatial_transforms(keys: Sequence[str], pixdim: Sequence[float] | None) -> list:
    """Orientation to RAS and optional resampling: shared by training, validation and inference."""
    from monai.transforms import Orientationd, Spacingd

    out: list = [Orientationd(keys=keys, axcodes=AXCODES, labels=_AXIS_LABELS)]
    if pixdim is not None:
        modes = ["bilinear" if k == "image" else "nearest" for k in keys]
        out.append(Spacingd(keys=keys, pixdim=tuple(float(p) for p in pixdim), mode=modes))
    return out


def build_transforms(regions: Sequence[Region], config: DataConfig, *, train: bool, seed: int = 0):
    """MONAI transforms from `{"image": path, "label": path}` to normalised image and region channels.

    Training adds foreground cropping, `num_samples` positive/negative crops of `roi_size`, flips and
    intensity jitter; validation keeps whole volumes.
    """
    from monai.transforms import (
        Compose,
        CropForegroundd,
        EnsureChannelFirstd,
        LoadImaged,
        NormalizeIntensityd,
        RandCropByPosNegLabeld,
        RandFlipd,
        RandScaleIntensityd,
        RandShiftIntensityd,
        SpatialPadd,
    )

    keys = ["image", "label"]
    steps: list = [
        LoadImaged(keys=keys, image_only=True),
        EnsureChannelFirstd(keys=keys),
        *spatial_transforms(keys, config.pixdim),
        NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True),
    ]
    if train:
        roi = tuple(int(s) for s in config.roi_size)
        steps += [
            CropForegroundd(keys=keys, source_key="image", allow_smaller=True),
            SpatialPadd(keys=keys, spatial_size=roi),
            RandCropByPosNegLabeld(
                keys=keys,
                label_key="label",
                spatial_size=roi,
                pos=config.pos,
                neg=config.neg,
                num_samples=config.num_samples,
                image_key="image",
                image_threshold=0.0,
            ),
        ]
        if config.augment:
            steps += [RandFlipd(keys=keys, prob=0.5, spatial_axis=axis) for axis in range(3)]
            steps += [
                RandScaleIntensityd(keys="image", factors=0.1, prob=1.0),
                RandShiftIntensityd(keys="image", offsets=0.1, prob=1.0),
            ]
    steps.append(LabelToRegionsd(keys="label", regions=regions))
    transform = Compose(steps)
    transform.set_random_state(seed=seed)
    return transform


def split_cases(
    cases: Sequence[MSDCase], val_fraction: float, seed: int
) -> tuple[list[MSDCase], list[MSDCase]]:
    """Deterministic hold-out split: a seeded shuffle, `ceil(val_fraction * n)` cases for validation.

    At least one case stays in training; with `val_fraction > 0` and two cases or more, at least one
    goes to validation.
    """
    order = np.random.default_rng(seed).permutation(len(cases))
    n_val = (
        0
        if val_fraction <= 0 or len(cases) < 2
        else min(len(cases) - 1, math.ceil(val_fraction * len(cases)))
    )
    val = sorted((cases[i] for i in order[:n_val]), key=lambda c: c.case_id)
    train_ = sorted((cases[i] for i in order[n_val:]), key=lambda c: c.case_id)
    return train_, val


def check_volume_headers(task: MSDTask, cases: Sequence[MSDCase]) -> None:
    """Header-only check (cheap) that images have the task's channel count and labels their shape.

    Raises:
        UserError: naming the first file that does not fit (run `vp-medical validate` for all).
    """
    import nibabel as nib

    n = task.num_channels
    for case in cases:
        for path in (case.image, case.label):
            if path is not None and not path.is_file():
                raise UserError(f"{path} does not exist (listed in {task.root / 'dataset.json'}).")
        try:
            shape = nib.load(case.image).shape
            label_shape = nib.load(case.label).shape if case.label is not None else None
        except Exception as err:  # nibabel raises several types for unreadable headers
            raise UserError(f"{case.image} or its label is not a readable NIfTI file ({err}).") from None
        channels = 1 if len(shape) == 3 else shape[-1] if len(shape) == 4 else None
        if channels != n:
            raise UserError(
                f"{case.image} has shape {shape}, but {task.root / 'dataset.json'} declares {n} modalities."
            )
        if label_shape is not None and tuple(label_shape[:3]) != tuple(shape[:3]):
            raise UserError(f"{case.label} has shape {label_shape}, but its image {case.image} has {shape}.")


def _dataset(items: list[dict], transform, config: DataConfig, out_dir: Path, name: str):
    from monai.data import CacheDataset, Dataset, PersistentDataset

    if config.cache == "memory":
        return CacheDataset(items, transform=transform, cache_rate=1.0, num_workers=None, progress=False)
    if config.cache == "disk":
        cache_dir = Path(config.cache_dir) if config.cache_dir else out_dir / "cache" / name
        cache_dir.mkdir(parents=True, exist_ok=True)
        return PersistentDataset(items, transform=transform, cache_dir=cache_dir)
    return Dataset(items, transform=transform)


# ---------------------------------------------------------------------------------------------------
# Model


class MSDSegmentationModule(lightning.LightningModule):
    """Region segmentation: sigmoid logits per region, DiceCE (or Dice) loss, sliding-window validation.

    All constructor arguments are plain values saved in the checkpoint, so `infer.Predictor` rebuilds
    the network and its preprocessing from the checkpoint alone.

    Args:
        model: `ModelConfig.to_dict()`.
        regions: `[[name, [labels...]], ...]` in channel order.
        modality: modality names in channel order.
        labels: `{label value: name}` of the task.
        roi_size: training crop / sliding-window size.
        pixdim: resampling spacing, or None.
        lr, weight_decay: AdamW settings; the learning rate is cosine-annealed over `max_epochs`.
        loss: `dice_ce` or `dice`.
        sw_overlap, sw_batch_size: validation sliding-window settings (Gaussian blending).
        max_epochs: length of the cosine schedule.
    """

    def __init__(
        self,
        model: dict,
        regions: list,
        modality: list[str],
        labels: dict,
        roi_size: list[int],
        pixdim: list[float] | None = None,
        lr: float = 1e-3,
        weight_decay: float = 1e-5,
        loss: str = "dice_ce",
        sw_overlap: float = 0.5,
        sw_batch_size: int = 4,
        max_epochs: int = 10,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        from monai.losses import DiceCELoss, DiceLoss
        from monai.metrics import DiceMetric

        self.net = build_model(ModelConfig.from_dict(model), len(modality), len(regions))
        self.region_names = [name for name, _ in regions]
        common = {"sigmoid": True, "smooth_nr": 0.0, "smooth_dr": 1e-5, "squared_pred": True}
        self.loss_fn = DiceCELoss(**common) if loss == "dice_ce" else DiceLoss(**common)
        self.val_dice = DiceMetric(include_background=True, reduction="mean_batch", ignore_empty=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        image, target = batch["image"], batch["label"]
        loss = self.loss_fn(self.net(image), target)
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=image.shape[0])
        return loss

    def sliding_window(self, image: torch.Tensor) -> torch.Tensor:
        """Logits of whole volumes by Gaussian-blended sliding windows of `roi_size`."""
        from monai.inferers import sliding_window_inference

        return sliding_window_inference(
            image,
            roi_size=tuple(self.hparams.roi_size),
            sw_batch_size=self.hparams.sw_batch_size,
            predictor=self.net,
            overlap=self.hparams.sw_overlap,
            mode="gaussian",
        )

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        image, target = batch["image"], batch["label"]
        logits = self.sliding_window(image)
        self.log("val_loss", self.loss_fn(logits, target), on_epoch=True, batch_size=image.shape[0])
        self.val_dice(y_pred=(torch.sigmoid(logits) > 0.5).float(), y=target)

    def on_validation_epoch_end(self) -> None:
        values = [float(v) for v in self.val_dice.aggregate(reduction="mean_batch")]
        self.val_dice.reset()
        for name, value in zip(self.region_names, values):
            self.log(f"val_dice_{name}", value)
        finite = [v for v in values if not math.isnan(v)]
        self.log("val_dice", float(np.mean(finite)) if finite else 0.0, prog_bar=True)

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(
            self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=max(1, self.hparams.max_epochs)
        )
        return {"optimizer": optimizer, "lr_scheduler": scheduler}


# ---------------------------------------------------------------------------------------------------
# Entry point


@dataclass
class TrainResult:
    """What `train` produced.

    Attributes:
        fit: the core `FitResult` (checkpoints, final metrics, epochs, seconds).
        split: `{"train": [case ids], "val": [case ids]}` as written to `split.json`.
        seconds_per_epoch: wall-clock seconds per epoch run in this call (validation included).
    """

    fit: FitResult
    split: dict[str, list[str]]
    seconds_per_epoch: float


def train(
    task_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: SegmentationConfig | None = None,
    *,
    resume: bool = True,
) -> TrainResult:
    """Train a region segmentation model on an MSD task folder.

    Writes `<out_dir>/checkpoints/{best,last}.ckpt`, DVCLive logs in `<out_dir>/dvclive`, the hold-out
    split in `<out_dir>/split.json` and a summary in `<out_dir>/train.json`.

    Args:
        task_dir: the `TaskXX_Name` folder.
        out_dir: where training writes.
        config: the settings; default `SegmentationConfig()`.
        resume: continue from `<out_dir>/checkpoints/last.ckpt` when present.

    Returns:
        The result, with checkpoints and the seconds per epoch.

    Raises:
        UserError: on an unreadable task, unmappable labels, volumes that do not match the task, or
            an unusable configuration.
    """
    config = config or SegmentationConfig()
    config.check()
    task = load_task(task_dir)
    regions = task.regions(config.region_scheme)  # type: ignore[arg-type]
    if not task.training:
        raise UserError(f"{task.root / 'dataset.json'} lists no training cases.")
    check_volume_headers(task, task.training)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    seed = config.trainer.seed
    # Seeded before the network is built: its initial weights, not only the data order, follow the seed.
    seed_everything(seed)
    train_cases, val_cases = split_cases(task.training, config.data.val_fraction, seed)
    split = {"train": [c.case_id for c in train_cases], "val": [c.case_id for c in val_cases]}
    write_json(out / "split.json", split)

    def items(cases: Sequence[MSDCase]) -> list[dict]:
        return [{"image": str(c.image), "label": str(c.label)} for c in cases]

    from monai.data import DataLoader

    train_ds = _dataset(
        items(train_cases),
        build_transforms(regions, config.data, train=True, seed=seed),
        config.data,
        out,
        "train",
    )
    train_loader = DataLoader(
        train_ds, batch_size=config.data.batch_size, shuffle=True, num_workers=config.data.num_workers
    )
    val_loader = None
    trainer_config = config.trainer
    if val_cases:
        val_ds = _dataset(
            items(val_cases), build_transforms(regions, config.data, train=False), config.data, out, "val"
        )
        val_loader = DataLoader(val_ds, batch_size=1, shuffle=False, num_workers=config.data.num_workers)
    else:
        trainer_config = TrainConfig(**{**trainer_config.to_dict(), "monitor": None})

    module = MSDSegmentationModule(
        model=config.model.to_dict(),
        regions=[[r.name, sorted(r.labels)] for r in regions],
        modality=task.modality_names,
        labels={int(k): v for k, v in task.labels.items()},
        roi_size=[int(s) for s in config.data.roi_size],
        pixdim=None if config.data.pixdim is None else [float(p) for p in config.data.pixdim],
        lr=config.lr,
        weight_decay=config.weight_decay,
        loss=config.loss,
        sw_overlap=config.sw_overlap,
        sw_batch_size=config.sw_batch_size,
        max_epochs=config.trainer.max_epochs,
    )
    last = out / "checkpoints" / "last.ckpt"
    start_epoch = 0
    if resume and last.is_file():
        start_epoch = int(torch.load(last, map_location="cpu", weights_only=True).get("epoch", -1)) + 1
    result = fit(module, train_loader, val_loader, config=trainer_config, out_dir=out, resume=resume)
    epochs_run = max(1, result.epochs - start_epoch)
    seconds_per_epoch = result.seconds / epochs_run
    write_json(
        out / "train.json",
        {
            "epochs": result.epochs,
            "epochs_this_run": result.epochs - start_epoch,
            "seconds": round(result.seconds, 3),
            "seconds_per_epoch": round(seconds_per_epoch, 3),
            "best_checkpoint": str(result.best_checkpoint) if result.best_checkpoint else None,
            "last_checkpoint": str(result.last_checkpoint) if result.last_checkpoint else None,
            "metrics": result.metrics,
            "split": split,
            "config": config.to_dict(),
        },
    )
    return TrainResult(fit=result, split=split, seconds_per_epoch=seconds_per_epoch)
