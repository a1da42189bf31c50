"""The training driver: read the MSD task, split it, build the data loaders and the LightningModule, and
run them through the core Lightning + DVCLive glue; writes checkpoints, `split.json` and `train.json`.

`train.configuration` (resolved from the plan): 3d_fullres trains one network as configured; 3d_lowres the
same at the plan's low-resolution spacing, patch and batch; 3d_cascade_fullres both stages
(`training.cascade.train_cascade`, which calls `train_stage` twice).

It trains and checkpoints; it writes no predictions or reports (see `runtime.predictor`, `evaluate`). The
checkpoint is self-describing (model, regions, modalities, preprocessing), so inference needs nothing else.
Under DDP (`train.devices`/`strategy: ddp`/`num_nodes`), Lightning gives each rank a `DistributedSampler`
share of the training crops and of the validation cases (MONAI's Dice gathers all ranks' cases; a case is
repeated when their number does not divide by the ranks); only rank 0 writes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from visionpipes.core.checkpoint import load_checkpoint
from visionpipes.core.errors import UserError
from visionpipes.core.io import write_json
from visionpipes.core.training import FitResult, fit, seed_everything
from visionpipes.medical.msd.dataset_json import MSDCase, load_task
from visionpipes.medical.training.config import SegmentationConfig
from visionpipes.medical.training.data import (
    build_transforms,
    check_volume_headers,
    make_dataset,
    resolve_normalization,
    split_cases,
)
from visionpipes.medical.training.module import MSDSegmentationModule


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
    plan: dict | None = None,
) -> TrainResult:
    """Train a region segmentation model on an MSD task folder.

    Writes `<out_dir>/checkpoints/{best,last}.ckpt`, DVCLive logs in `<out_dir>/dvclive`, the hold-out
    split in `<out_dir>/split.json` and a summary in `<out_dir>/train.json`.

    Args:
        task_dir: the `TaskXX_Name` folder.
        out_dir: where training writes.
        config: the settings; default `SegmentationConfig()`.
        resume: continue from `<out_dir>/checkpoints/last.ckpt` when present.
        plan: the plan record the config was resolved with (`resolve_training_config`), saved in the
            checkpoint and `train.json`.

    Returns:
        The result, with checkpoints and the seconds per epoch.

    Raises:
        UserError: on an unreadable task, unmappable labels, volumes that do not match the task, or
            an unusable configuration.
    """
    config = config or SegmentationConfig()
    configuration = config.configuration
    if configuration == "auto":  # an API call without `resolve_training_config`
        from visionpipes.medical.training.config import resolve_configuration

        configuration = resolve_configuration("auto", plan, source="train")
    if configuration == "3d_cascade_fullres":
        from visionpipes.medical.training.cascade import train_cascade

        return train_cascade(task_dir, out_dir, config, resume=resume, plan=plan, train_stage=train_stage)
    if configuration == "3d_lowres":
        from visionpipes.medical.training.cascade import lowres_config

        config = lowres_config(config, plan)
    return train_stage(task_dir, out_dir, config, resume=resume, plan=plan)


def train_stage(
    task_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: SegmentationConfig,
    *,
    resume: bool = True,
    plan: dict | None = None,
    previous_stage: dict | None = None,
) -> TrainResult:
    """One network's training (`train` without the configuration dispatch): `config` as given.

    `previous_stage` (3d_cascade_fullres, `training.cascade.train_cascade`): `foreground_labels`,
    `predictions` (case id -> the low-resolution label map), `description` and `checkpoint` of the
    low-resolution network; the items then carry `prev` and the module is `CascadeFullresModule`.
    """
    task = load_task(task_dir)
    regions = task.regions(config.region_scheme)  # type: ignore[arg-type]
    if not task.training:
        raise UserError(f"{task.root / 'dataset.json'} lists no training cases.")
    check_volume_headers(task, task.training)
    normalization = resolve_normalization(task, config.data)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    seed = config.trainer.seed
    # Seeded before the network is built: its initial weights, not only the data order, follow the seed.
    seed_everything(seed)
    train_cases, val_cases = split_cases(task.training, config.data.val_fraction, seed)
    split = {"train": [c.case_id for c in train_cases], "val": [c.case_id for c in val_cases]}
    write_json(out / "split.json", split)

    def items(cases: Sequence[MSDCase]) -> list[dict]:
        if previous_stage is not None:
            preds = previous_stage["predictions"]
            return [
                {"image": str(c.image), "label": str(c.label), "prev": str(preds[c.case_id])} for c in cases
            ]
        return [{"image": str(c.image), "label": str(c.label)} for c in cases]

    prev_labels = None if previous_stage is None else previous_stage["foreground_labels"]

    from monai.data import DataLoader

    train_ds = make_dataset(
        items(train_cases),
        build_transforms(
            regions,
            config.data,
            train=True,
            seed=seed,
            normalization=normalization,
            previous_stage_labels=prev_labels,
        ),
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
        val_ds = make_dataset(
            items(val_cases),
            build_transforms(
                regions,
                config.data,
                train=False,
                normalization=normalization,
                previous_stage_labels=prev_labels,
            ),
            config.data,
            out,
            "val",
        )
        val_loader = DataLoader(val_ds, batch_size=1, shuffle=False, num_workers=config.data.num_workers)
    else:
        trainer_config = trainer_config.model_copy(update={"monitor": None})

    module_class, extra = MSDSegmentationModule, {}
    if previous_stage is not None:
        from visionpipes.medical.training.cascade import CascadeFullresModule

        module_class = CascadeFullresModule
        extra = {"previous_stage": {k: previous_stage[k] for k in ("foreground_labels", "description")}}
    module = module_class(
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
        normalization=normalization,
        plan=plan,
        **extra,
    )
    if previous_stage is not None:
        module.load_previous_stage(previous_stage["checkpoint"])
    last = out / "checkpoints" / "last.ckpt"
    start_epoch = 0
    if resume and last.is_file():
        start_epoch = int(load_checkpoint(last, what="last checkpoint").get("epoch", -1)) + 1
    result = fit(module, train_loader, val_loader, config=trainer_config, out_dir=out, resume=resume)
    epochs_run = max(1, result.epochs - start_epoch)
    seconds_per_epoch = result.seconds / epochs_run
    if not result.is_global_zero:  # DDP: rank 0 writes the summary (and, through Lightning, the checkpoints)
        return TrainResult(fit=result, split=split, seconds_per_epoch=seconds_per_epoch)
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
            "normalization": normalization,
            "config": config.to_dict(),
            "plan": plan,
        },
    )
    return TrainResult(fit=result, split=split, seconds_per_epoch=seconds_per_epoch)
