"""The training glue every domain shares: a Lightning Trainer with the DVCLive logger, seeding,
device choice, checkpoint/resume and progress bars.

Domains bring a `LightningModule` and data loaders; this module owns how they are run. Scale-out
is Lightning's: set `devices`/`strategy="ddp"`/`num_nodes` in `TrainConfig` and launch with
`torchrun` (or let Lightning start the processes); nothing here is home-made distribution. DDP
all-reduces gradients over gloo on CPU and NCCL on GPU (Lightning's default backend per device), and
gives every rank its share of each data loader through a `DistributedSampler` unless
`use_distributed_sampler=False` (for loaders whose sampler shards itself by rank).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import torch

from visionpipes.core.config import ConfigModel, Field
from visionpipes.core.device import resolve_precision, select_device


class TrainConfig(ConfigModel):
    """How to run training; every field can come from a `params.yaml` section
    (`TrainConfig.from_params(section, source="params.yaml:train")`: did-you-mean errors).

    Attributes:
        max_epochs: epochs to train (the total, also when resuming).
        max_steps: optimiser steps limit (-1: none).
        max_time: wall-clock limit as `DD:HH:MM:SS`, or None.
        accelerator: `auto`, `cpu`, `cuda`/`gpu`, `mps`.
        devices: devices per node (`auto`, a count, or a list); under `torchrun` this is
            `--nproc_per_node` (on CPU, `auto` is 1 process per node).
        strategy: `auto`, `ddp`, `ddp_spawn`, `fsdp`, ... (Lightning's names). With `ddp` and
            `devices: N`, a plain `python`/CLI run starts the other N-1 processes itself (it re-runs
            the same command); under `torchrun` Lightning joins the processes torchrun started.
        num_nodes: nodes for multi-node DDP (launch with `torchrun --nnodes`).
        use_distributed_sampler: let Lightning give each rank a `DistributedSampler` share of every
            loader (the default); False where the loader's sampler shards itself by rank.
        precision: Lightning precision (`32-true`, `16-mixed`, `bf16-mixed`), or `auto`: bf16 mixed
            precision where the hardware computes bf16 natively (see `resolve_precision`), else 32-true.
        seed: seed of python, numpy and torch (and data-loader workers).
        log_every_n_steps: logging interval in steps.
        check_val_every_n_epoch: validation interval in epochs.
        monitor: metric that picks the best checkpoint (None: keep the last only).
        mode: `max` or `min` for `monitor`.
        gradient_clip_val: clip gradients by norm, or None.
        accumulate_grad_batches: batches per optimiser step.
        progress: show progress bars.
        deterministic: ask torch for deterministic algorithms.
        logger: `dvclive` (metrics and plots for `dvc metrics`/`dvc plots`), `csv` (Lightning's
            CSVLogger, for environments without DVC) or `none`.
    """

    max_epochs: int = Field(10, ge=-1)
    max_steps: int = Field(-1, ge=-1)
    max_time: str | None = None
    accelerator: str = "auto"
    devices: int | str | list[int] = "auto"
    strategy: str = "auto"
    num_nodes: int = Field(1, ge=1)
    use_distributed_sampler: bool = True
    precision: str = "32-true"
    seed: int = 0
    log_every_n_steps: int = Field(10, ge=1)
    check_val_every_n_epoch: int = Field(1, ge=1)
    monitor: str | None = None
    mode: Literal["max", "min"] = "max"
    gradient_clip_val: float | None = Field(None, ge=0)
    accumulate_grad_batches: int = Field(1, ge=1)
    progress: bool = True
    deterministic: bool = False
    logger: Literal["dvclive", "csv", "none"] = "dvclive"


#: The loggers `TrainConfig.logger` may name.
LOGGERS: tuple[str, ...] = get_args(TrainConfig.model_fields["logger"].annotation)


@dataclass
class FitResult:
    """What `fit` produced.

    Under DDP every rank returns one; `world_size` and `global_rank` say which, and only the
    `is_global_zero` one should write the domain's outputs (checkpoints are rank 0's already).
    """

    best_checkpoint: Path | None
    last_checkpoint: Path | None
    metrics: dict[str, float]
    epochs: int
    seconds: float
    resumed_from: Path | None
    world_size: int = 1
    global_rank: int = 0

    @property
    def is_global_zero(self) -> bool:
        """True in the process that writes outputs (rank 0; the only process without DDP)."""
        return self.global_rank == 0


def seed_everything(seed: int) -> int:
    """Seed python, numpy and torch, and make data-loader workers derive their seeds from it."""
    import lightning

    return lightning.seed_everything(seed, workers=True, verbose=False)


def warmup_cosine_factor(
    step: int,
    *,
    warmup: int,
    total_steps: int,
    start: float | None = None,
    budget_s: float | None = None,
    floor: float = 0.02,
) -> float:
    """Learning-rate factor: linear warm-up over `warmup` steps, then a cosine from 1 down to `floor`
    over the rest of `total_steps` or, with `budget_s`, over the larger of step and wall-clock
    progress (`time.monotonic() - start` of `budget_s` seconds).

    Example:
        >>> warmup_cosine_factor(0, warmup=10, total_steps=100)
        0.1
        >>> round(warmup_cosine_factor(100, warmup=10, total_steps=100), 3)
        0.02
    """
    if step < warmup:
        return (step + 1) / max(1, warmup)
    progress = (step - warmup) / max(1, total_steps - warmup)
    if budget_s and start is not None:
        progress = max(progress, (time.monotonic() - start) / budget_s)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def adamw_warmup_cosine(
    params: Iterable[Any],
    *,
    lr: float,
    weight_decay: float,
    warmup_steps: int,
    total_steps: int,
    budget_s: float | None = None,
    started: Callable[[], float] | None = None,
) -> dict[str, Any]:
    """What a `LightningModule.configure_optimizers` returns for AdamW with `warmup_cosine_factor`
    stepped every optimiser step: `{"optimizer", "lr_scheduler": {"scheduler", "interval": "step"}}`.

    Args:
        params: parameters or parameter groups (a group's own `lr` wins over `lr`).
        lr: peak learning rate.
        weight_decay: AdamW's decoupled weight decay.
        warmup_steps: linear warm-up steps.
        total_steps: the planned optimiser steps (the cosine ends there).
        budget_s: a wall-clock budget in seconds: the cosine follows the larger of step and time
            progress (None: steps only).
        started: returns the run's `time.monotonic()` start, read at every step (a module sets it
            in `on_train_start`).
    """
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)

    def factor(step: int) -> float:
        return warmup_cosine_factor(
            step,
            warmup=warmup_steps,
            total_steps=total_steps,
            start=started() if started is not None else None,
            budget_s=budget_s,
        )

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def _accelerator(config: TrainConfig) -> str:
    if config.accelerator == "auto":
        return select_device("auto").type.replace("cuda", "gpu")
    return config.accelerator


def build_trainer(
    config: TrainConfig,
    out_dir: str | Path,
    *,
    callbacks: Sequence[Any] = (),
    resume_logs: bool = False,
) -> Any:
    """A `lightning.Trainer` logging (by default) to DVCLive in `<out_dir>/dvclive` and checkpointing to
    `<out_dir>/checkpoints` (`last.ckpt`, plus `best.ckpt` when `config.monitor` is set).

    DVCLive writes `metrics.json` and `plots/metrics/*.tsv` there without touching any
    `dvc.yaml` (`dvcyaml=False`): the pipelines declare metrics and plots themselves.
    """
    import lightning
    from lightning.pytorch.callbacks import ModelCheckpoint

    out_dir = Path(out_dir)
    ckpt_dir = out_dir / "checkpoints"
    checkpoint = ModelCheckpoint(
        dirpath=ckpt_dir,
        filename="best",
        monitor=config.monitor,
        mode=config.mode,
        save_last=True,
        save_top_k=1 if config.monitor else 0,
        enable_version_counter=False,
    )
    accelerator = _accelerator(config)
    return lightning.Trainer(
        max_epochs=config.max_epochs,
        max_steps=config.max_steps,
        max_time=config.max_time,
        accelerator=accelerator,
        devices=config.devices,
        strategy=config.strategy,
        num_nodes=config.num_nodes,
        use_distributed_sampler=config.use_distributed_sampler,
        precision=resolve_precision(config.precision, accelerator),
        log_every_n_steps=config.log_every_n_steps,
        check_val_every_n_epoch=config.check_val_every_n_epoch,
        gradient_clip_val=config.gradient_clip_val,
        accumulate_grad_batches=config.accumulate_grad_batches,
        enable_progress_bar=config.progress,
        enable_model_summary=False,
        deterministic=config.deterministic,
        default_root_dir=str(out_dir),
        callbacks=[checkpoint, *callbacks],
        logger=_make_logger(config.logger, out_dir, resume_logs),
    )


def _make_logger(kind: str, out_dir: Path, resume: bool) -> Any:
    if kind == "dvclive":
        from dvclive.lightning import DVCLiveLogger

        return DVCLiveLogger(dir=str(out_dir / "dvclive"), dvcyaml=False, save_dvc_exp=False, resume=resume, report=None)
    if kind == "csv":
        from lightning.pytorch.loggers import CSVLogger

        return CSVLogger(str(out_dir), name="csv", version=0)
    if kind == "none":
        return False
    raise ValueError(f"unknown logger {kind!r}; use one of {', '.join(LOGGERS)}.")


def fit(
    module: Any,
    train_loader: Any,
    val_loader: Any = None,
    *,
    config: TrainConfig,
    out_dir: str | Path,
    resume: bool = True,
    callbacks: Sequence[Any] = (),
) -> FitResult:
    """Train `module` (a `lightning.LightningModule`) and return where its checkpoints are.

    With `resume=True` and a `<out_dir>/checkpoints/last.ckpt` from an earlier run, training
    continues from it (optimizer, scheduler and epoch included) up to `config.max_epochs`, and
    DVCLive appends to the same logs.

    Args:
        module: the LightningModule.
        train_loader: training data loader.
        val_loader: validation data loader, or None.
        config: how to run.
        out_dir: folder for checkpoints and DVCLive logs.
        resume: continue from `last.ckpt` when present.
        callbacks: extra Lightning callbacks.

    Returns:
        FitResult with the best and last checkpoints and the final logged metrics.

    Example:
        >>> # fit(MyModule(), train_dl, val_dl, config=TrainConfig(max_epochs=2), out_dir="runs/a")
    """
    seed_everything(config.seed)
    out_dir = Path(out_dir)
    last = out_dir / "checkpoints" / "last.ckpt"
    ckpt_path = last if resume and last.is_file() else None
    trainer = build_trainer(config, out_dir, callbacks=callbacks, resume_logs=ckpt_path is not None)
    start = time.perf_counter()
    trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=val_loader, ckpt_path=ckpt_path)
    seconds = time.perf_counter() - start
    checkpoint = trainer.checkpoint_callback
    best = Path(checkpoint.best_model_path) if checkpoint.best_model_path else None
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}
    return FitResult(
        best_checkpoint=best,
        last_checkpoint=last if last.is_file() else None,
        metrics=metrics,
        epochs=trainer.current_epoch,
        seconds=seconds,
        resumed_from=ckpt_path,
        world_size=trainer.world_size,
        global_rank=trainer.global_rank,
    )
