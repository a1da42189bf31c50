"""Training the multi-task network: `MultiTaskModule` (Lightning; the joint loss of `multitask.loss`,
AdamW + warm-up + cosine of `core.training.adamw_warmup_cosine` as the lane trainer, a `joint` or
`staged` schedule) and `train_multitask`, which runs it through `core.training.fit` (Lightning +
DVCLive) for a fixed number of epochs (or, with `max_minutes`, within a time budget) and saves
`multitask_model.pt`.

The schedule — what the papers did (`multitask.loss` quotes the sources):

- YOLOP (Wu et al. 2022, "YOLOP: You Only Look Once for Panoptic Driving Perception", sec. 3.4 and
  the repository's ablation "End-to-end v.s. Step-by-step"): the paper describes alternating
  optimisation as a way to train a multi-task network, and its ablation compares end-to-end training
  with step-by-step paradigms (`ES-W`, `ED-W`, `ES-D-W`, `ED-S-W`: encoder + one task first, then the
  other, then everything). End to end came out as good as the staged paradigms (detection AP 76.5 vs
  76.1 for `ED-S-W`, drivable mIoU 91.5 vs 91.6, lane IoU 26.2 vs 26.8): "the three tasks can be
  learned jointly without tedious alternating optimization", so YOLOP trains end to end.
- HybridNets (Vu et al. 2022): the authors report that a staged schedule worked best for them — about
  200 epochs with the segmentation head frozen (detection first: "detection head is harder to
  converge early on"), ~50 epochs of segmentation on a frozen backbone and detection head, then ~50
  epochs end to end.

`schedule: joint` is YOLOP's end-to-end training. `schedule: staged` is HybridNets' (and YOLOP's
`ED-S-W`): for the first `stages[0]` of the run only the encoder (backbone + FPN) and the detection
path learn from the detection loss; for the next `stages[1]` the encoder and detection path are
frozen (weights and batch-norm statistics) and the segmentation decoder and heads learn from the
lane and drivable losses; the rest of the run trains everything on the joint loss. "The run" is the
time budget (`max_minutes`) or the planned steps, whichever is further along, so both schedules get
the same wall-clock time.

Does it matter here? Measured by epochs now (the earlier runs, 5-64 steps by the clock on a machine
at load ~20, were untrained whatever the schedule). Built-in sample (240 train / 60 val images),
384x224, batch 8, 6 epochs = 180 steps, one thread each, the same code (`MultiTaskConfig` of
params.yaml with `max_epochs: 6`), val:

    joint  (180 joint steps)                          AP 0.240 / AP_50 0.541, lane F1_pix2 25.3, drivable mIoU 66.0
    staged (90 detection / 45 segmentation / 45 joint) AP 0.189 / AP_50 0.464, lane F1_pix2  7.3, drivable mIoU 42.0

So at this budget the schedule matters, and `joint` (YOLOP's end-to-end) is better on all three
tasks: the staged run spends half its steps on detection alone and still ends with the worse
detector, and its segmentation heads get only 90 steps. The default stays `joint`.
At 15 epochs (450 joint steps of 8, same data and size) `joint` scores AP 0.408 / AP_50 0.729, lane
F1_pix2 66.5, drivable mIoU 85.3; with batches of 4 at lr 0.003 (900 steps) 0.534 / 0.833, 78.6,
90.9; 20 epochs of 4 0.600 / 0.886, 79.8, 92.6; the pipeline's 25 epochs of 4 (with the network's
own lane decoding) 0.625 / 0.890, 84.1, 92.6 (packages/driving/README.md, "Two models or one").

At equal steps early on, the shared encoder did not slow detection down: val detection loss after
epochs 1 and 2 was 16.75 / 11.38 with `joint` against 17.31 / 12.42 with `staged` (whose first
half trains detection alone). The dedicated models reach AP_50 0.845 / F1_pix2 82.4 (16 / 20 epochs).
Commands: `vp-driving train-multitask --dataset prepared/dataset.json --out mt_<schedule> --params
params.yaml --family multitask --schedule <schedule>` then `vp-driving evaluate --multitask
mt_<schedule>/multitask_model.pt ...` (`packages/driving/README.md`, "Two models or one"); the runs
above called the functions behind them, `train_multitask` and `evaluate_multitask`, from a scratch
script with `max_epochs: 6`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning
import torch

from visionpipes.core.checkpoint import load_checkpoint, state_dict_of
from visionpipes.core.errors import UserError
from visionpipes.core.training import adamw_warmup_cosine
from visionpipes.driving.multitask.config import (
    MultiTaskConfig,
    MultiTaskLossConfig,
    MultiTaskModelConfig,
    MultiTaskTrainConfig,
)
from visionpipes.driving.multitask.data import MultiTaskDataset, collate, multitask_samples
from visionpipes.driving.multitask.loss import DETECTION_KEYS, DRIVABLE_KEYS, LANE_KEYS, MultiTaskLoss
from visionpipes.driving.multitask.model import build_multitask_model, save_multitask_model

#: The file `train_multitask` writes.
MODEL_FILE = "multitask_model.pt"
#: The phases of the staged schedule, in order, and which task modules each trains.
PHASES: dict[str, tuple[str, ...]] = {
    "detection": ("encoder", "detection"),
    "segmentation": ("segmentation",),
    "joint": ("encoder", "detection", "segmentation"),
}


class MultiTaskModule(lightning.LightningModule):
    """Trains a `MultiTaskNet` on the joint loss with the `joint` or `staged` schedule.

    Args:
        model_config: `MultiTaskModelConfig` mapping.
        loss_config: `MultiTaskLossConfig` mapping.
        train_config: `MultiTaskTrainConfig` mapping.
        total_steps: the planned optimiser steps (LR schedule and phase progress).
        budget_s: the wall-clock budget in seconds (None: steps only).
    """

    def __init__(
        self,
        model_config: dict[str, Any],
        loss_config: dict[str, Any],
        train_config: dict[str, Any],
        total_steps: int,
        budget_s: float | None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = build_multitask_model(
            MultiTaskModelConfig.from_params(model_config, source="multitask.model")
        )
        self.loss_config = MultiTaskLossConfig.from_params(loss_config, source="multitask.loss")
        self.train_config = MultiTaskTrainConfig.from_params(train_config, source="multitask.train")
        self.criterion = MultiTaskLoss(self.model, self.loss_config)  # its task weights follow the phase
        self.val_criterion = MultiTaskLoss(self.model, self.loss_config)  # every task, whatever the phase
        self.total_steps = max(1, total_steps)
        self.budget_s = budget_s
        self.phase_steps: dict[str, int] = {}
        self._phase: str | None = None
        self._start = time.monotonic()

    def forward(self, x: torch.Tensor) -> Any:
        return self.model(x)

    # ---------------------------------------------------------------------------------------------
    # The schedule
    # ---------------------------------------------------------------------------------------------

    def progress(self) -> float:
        """Share of the run done: the larger of steps and wall-clock time (0 to 1)."""
        done = self.global_step / self.total_steps
        if self.budget_s:
            done = max(done, (time.monotonic() - self._start) / self.budget_s)
        return min(1.0, done)

    def phase(self) -> str:
        """`joint`, or with the staged schedule `detection`, `segmentation` or `joint` by progress."""
        if self.train_config.schedule == "joint":
            return "joint"
        first, second = self.train_config.stages
        done = self.progress()
        return "detection" if done < first else "segmentation" if done < first + second else "joint"

    def set_phase(self, phase: str) -> None:
        """Train only the phase's task modules (the others: no gradient, batch norms in eval) and
        weigh only its tasks' losses."""
        parts = self.model.task_modules()
        trained = PHASES[phase]
        for name, modules in parts.items():
            for module in modules:
                module.requires_grad_(name in trained)
                module.train(name in trained and self.training)
        weights = {
            "detection": {"lanes": 0.0, "drivable": 0.0},
            "segmentation": {"detection": 0.0},
            "joint": {},
        }[phase]
        self.criterion.config = self.loss_config.model_copy(update=weights)
        self._phase = phase

    def on_train_start(self) -> None:
        self._start = time.monotonic()

    def on_train_epoch_start(self) -> None:
        loader = self.trainer.train_dataloader
        dataset = getattr(loader, "dataset", None)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(self.current_epoch)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self.set_phase(self.phase())  # also after Lightning's model.train() at each epoch start

    # ---------------------------------------------------------------------------------------------
    # Steps
    # ---------------------------------------------------------------------------------------------

    def _has_targets(self, batch: dict[str, Any]) -> bool:
        config = self.criterion.config
        return any(
            weight and all(k in batch for k in keys)
            for weight, keys in (
                (config.detection, DETECTION_KEYS),
                (config.lanes, LANE_KEYS),
                (config.drivable, DRIVABLE_KEYS),
            )
        )

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        if not self._has_targets(batch):
            return None  # e.g. the segmentation phase on a batch without lane or drivable labels
        total, parts = self.criterion(self.model(batch["image"]), batch)
        size = len(batch["image"])
        self.log("train/loss", total, prog_bar=True, on_step=True, on_epoch=True, batch_size=size)
        for name, value in parts.items():
            if name != "total":
                self.log(f"train/{name}", value, on_step=True, on_epoch=False, batch_size=size)
        phase = self._phase or "joint"
        self.phase_steps[phase] = self.phase_steps.get(phase, 0) + 1
        return total

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        total, parts = self.val_criterion(self.model.forward_raw(batch["image"]), batch)
        size = len(batch["image"])
        self.log("val/loss", total, prog_bar=True, on_epoch=True, batch_size=size)
        for name in ("detection", "lanes", "drivable"):
            if name in parts:
                self.log(f"val/{name}", parts[name], on_epoch=True, batch_size=size)

    def configure_optimizers(self) -> dict[str, Any]:
        config = self.train_config
        return adamw_warmup_cosine(
            self.model.parameters(),
            lr=config.lr,
            weight_decay=config.weight_decay,
            warmup_steps=config.warmup_steps,
            total_steps=self.total_steps,
            budget_s=self.budget_s,
            started=lambda: self._start,
        )


@dataclass
class MultiTaskRun:
    """What `train_multitask` produced."""

    model_path: Path
    metrics: dict[str, float]
    epochs: int
    seconds: float
    phase_steps: dict[str, int]


def trainer_config(config: MultiTaskConfig, source: str = "multitask") -> Any:
    """The `core.training.TrainConfig` of a run: `multitask.trainer` keys, with `max_epochs` and
    `max_time` from `multitask.train` (keep the last checkpoint: no monitor).

    Raises:
        UserError: on an unknown or bad `trainer` key.
    """
    from visionpipes.core.training import TrainConfig

    trainer = {"progress": False, "log_every_n_steps": 5, **config.trainer}
    trainer["max_epochs"] = config.train.max_epochs
    trainer["seed"] = config.train.seed
    if config.train.max_minutes:
        seconds = round(config.train.max_minutes * 60)
        trainer["max_time"] = f"00:{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
    return TrainConfig.from_params(trainer, source=f"{source}.trainer")


def train_multitask(
    dataset_json: str | os.PathLike, out_dir: str | os.PathLike, cfg: MultiTaskConfig | None = None
) -> MultiTaskRun:
    """Train the multi-task network on a prepared dataset into `out_dir`.

    Writes `out_dir/dvclive/` (metrics and plots, unless `trainer.logger` says otherwise),
    `out_dir/checkpoints/` (Lightning's last checkpoint) and `out_dir/multitask_model.pt` (the final
    weights with the config; `extra` holds the metrics, epochs, seconds and steps per phase).

    Args:
        dataset_json: `dataset.json` of `vp-driving prepare`.
        out_dir: the output folder.
        cfg: the `multitask` section (network, loss, training, trainer).

    Raises:
        UserError: on a missing or malformed dataset, images or masks, or a bad config.
    """
    from visionpipes.core.training import fit, seed_everything

    cfg = cfg or MultiTaskConfig()
    trainer = trainer_config(cfg)
    train_cfg = cfg.train
    seed_everything(train_cfg.seed)
    size = (cfg.model.width, cfg.model.height)
    train_samples = multitask_samples(dataset_json, "train", train_cfg.limit)
    try:
        val_samples = multitask_samples(dataset_json, "val")
    except UserError:
        val_samples = []
    train_ds = MultiTaskDataset(
        train_samples,
        size,
        train=True,
        flip=train_cfg.flip,
        augment={k: getattr(train_cfg, k) for k in ("scale", "translate", "degrees", "hsv")},
        seed=train_cfg.seed,
        cache=train_cfg.cache,
    )
    loader = {"num_workers": train_cfg.workers, "collate_fn": collate}
    train_dl = torch.utils.data.DataLoader(
        train_ds,
        batch_size=train_cfg.batch_size,
        shuffle=True,
        drop_last=len(train_ds) > train_cfg.batch_size,
        **loader,
    )
    val_dl = None
    if val_samples:
        val_ds = MultiTaskDataset(val_samples, size, cache=train_cfg.cache)
        val_dl = torch.utils.data.DataLoader(val_ds, batch_size=train_cfg.batch_size, **loader)
    steps = max(1, len(train_dl)) * train_cfg.max_epochs
    if trainer.max_steps and trainer.max_steps > 0:
        steps = min(steps, trainer.max_steps)
    budget = train_cfg.max_minutes * 60 if train_cfg.max_minutes else None
    module = MultiTaskModule(cfg.model.to_dict(), cfg.loss.to_dict(), train_cfg.to_dict(), steps, budget)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = fit(module, train_dl, val_dl, config=trainer, out_dir=out, resume=False)
    if result.last_checkpoint is not None:
        data = load_checkpoint(result.last_checkpoint, what="multi-task checkpoint", weights_only=False)
        module.load_state_dict(state_dict_of(data, path=result.last_checkpoint, what="multi-task checkpoint"))
    model = module.model.cpu().eval()
    model.requires_grad_(True)
    extra = {
        "metrics": result.metrics,
        "epochs": result.epochs,
        "seconds": round(result.seconds, 1),
        "schedule": train_cfg.schedule,
        "phase_steps": dict(module.phase_steps),
    }
    save_multitask_model(out / MODEL_FILE, model, extra)
    return MultiTaskRun(
        out / MODEL_FILE, result.metrics, result.epochs, result.seconds, dict(module.phase_steps)
    )
