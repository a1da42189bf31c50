"""Lane model training: the typed training config, the LightningModule (category CE + Dice,
style/direction CE on lane pixels, a time-aware cosine LR) and `train_lanes`, which runs it through
`core.training.fit` (Lightning + DVCLive) and saves `lane_model.pt`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning
import torch
from torch import nn

from visionpipes.core.checkpoint import load_checkpoint, state_dict_of
from visionpipes.core.config import ConfigModel, Field, parse_config
from visionpipes.core.errors import UserError
from visionpipes.core.training import adamw_warmup_cosine
from visionpipes.driving.lanes.data import IGNORE_INDEX, LaneDataset, LaneSample
from visionpipes.driving.lanes.decode import BACKGROUND_CLASS, CATEGORY_CHANNELS
from visionpipes.driving.lanes.model import (
    LaneModelConfig,
    build_lane_model,
    save_lane_model,
    seed_lane_encoder,
)


class LaneTrainConfig(ConfigModel):
    """How to train the lane model (the `lanes` section of params.yaml, beside `model` and `trainer`).

    Attributes:
        batch_size: images per batch.
        lr: peak learning rate (AdamW).
        weight_decay: AdamW weight decay.
        warmup_steps: linear warm-up steps.
        crop_height: rows of the random training crops at network size (None: whole images).
        dice_weight: weight of the multi-class Dice loss added to the category cross-entropy.
        background_weight: weight of the background class in the category cross-entropy (lane
            pixels weigh 1; below 1 counters the few-percent share of lane pixels).
        attribute_weight: weight of the style and direction cross-entropies (lane pixels only).
        workers: data-loader workers.
        cache: keep resized images in memory.
        limit: use at most this many training images (0: all).
        pretrained: local ImageNet weights seeding the encoder (torchvision/timm `.pth` or
            `.safetensors`; never downloaded), or None.
        encoder_lr_scale: the encoder's learning rate as a share of `lr` (below 1 for a pretrained
            encoder, so the fresh decoder learns faster than the features it starts from).
        freeze_encoder_norm: keep the encoder's batch-norm statistics (and affine weights) as loaded.
    """

    batch_size: int = Field(8, ge=1)
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_steps: int = Field(20, ge=0)
    crop_height: int | None = Field(128, ge=1)
    dice_weight: float = Field(1.0, ge=0)
    background_weight: float = Field(1.0, ge=0)
    attribute_weight: float = Field(0.5, ge=0)
    workers: int = Field(0, ge=0)
    cache: bool = True
    limit: int = Field(0, ge=0)
    pretrained: str | None = None
    encoder_lr_scale: float = Field(1.0, gt=0, le=1)
    freeze_encoder_norm: bool = False


class LanesSection(ConfigModel):
    """The `lanes` section of params.yaml: the network, its training, and the Lightning trainer
    (`core.training.TrainConfig`, validated by it)."""

    model: LaneModelConfig = Field(default_factory=LaneModelConfig)
    train: LaneTrainConfig = Field(default_factory=LaneTrainConfig)
    trainer: dict[str, Any] = Field(default_factory=dict)


def _max_time_seconds(max_time: str | None) -> float | None:
    """`DD:HH:MM:SS` -> seconds."""
    if not max_time:
        return None
    parts = [float(p) for p in str(max_time).split(":")]
    seconds = 0.0
    for part, unit in zip(reversed(parts), (1, 60, 3600, 86400)):
        seconds += part * unit
    return seconds


class LaneModule(lightning.LightningModule):
    """Trains a `LaneNet`: category CE + Dice, style/direction CE on lane pixels."""

    def __init__(
        self, model_config: dict[str, Any], train_config: dict[str, Any], total_steps: int, budget_s: float | None
    ) -> None:
        super().__init__()
        import segmentation_models_pytorch as smp

        self.save_hyperparameters()
        self.model = build_lane_model(parse_config(LaneModelConfig, model_config, source="lanes.model"))
        self.train_config = parse_config(LaneTrainConfig, train_config, source="lanes.train")
        if self.train_config.pretrained:
            seed_lane_encoder(self.model, self.train_config.pretrained)
        if self.train_config.freeze_encoder_norm:
            for module in self._encoder_norms():
                for param in module.parameters():
                    param.requires_grad_(False)
        self.total_steps = total_steps
        self.budget_s = budget_s
        self.dice = smp.losses.DiceLoss("multiclass", from_logits=True)
        weights = torch.ones(CATEGORY_CHANNELS)
        weights[BACKGROUND_CLASS] = self.train_config.background_weight
        self.register_buffer("class_weights", weights, persistent=False)
        self._start = time.monotonic()
        self._val: list[torch.Tensor] = []

    def _encoder_norms(self) -> list[nn.Module]:
        return [m for m in self.model.net.encoder.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def train(self, mode: bool = True) -> LaneModule:
        super().train(mode)
        if mode and self.train_config.freeze_encoder_norm:
            for module in self._encoder_norms():
                module.eval()  # running statistics stay as loaded
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def _losses(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(batch["image"])
        cat = out[:, :CATEGORY_CHANNELS]
        style = out[:, CATEGORY_CHANNELS : CATEGORY_CHANNELS + 2]
        direction = out[:, CATEGORY_CHANNELS + 2 :]
        ce = nn.functional.cross_entropy
        loss = ce(cat, batch["category"], weight=self.class_weights) + self.train_config.dice_weight * self.dice(cat, batch["category"])
        lane = batch["style"] != IGNORE_INDEX
        if lane.any():
            attr = ce(style, batch["style"], ignore_index=IGNORE_INDEX) + ce(
                direction, batch["direction"], ignore_index=IGNORE_INDEX
            )
            loss = loss + self.train_config.attribute_weight * attr
        return loss, cat

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, _ = self._losses(batch)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(batch["image"]))
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        loss, cat = self._losses(batch)
        lanes = cat[:, :BACKGROUND_CLASS].float()
        is_lane = lanes.logsumexp(1) > cat[:, BACKGROUND_CLASS].float()  # as `lane_mask_from_logits` decodes
        pred = torch.where(is_lane, lanes.argmax(1), BACKGROUND_CLASS)
        gt = batch["category"]
        # lane pixels whose category is right, for a cheap F1 of "lane of the right type"
        tp = ((pred == gt) & (gt != BACKGROUND_CLASS)).sum()
        n_pred = (pred != BACKGROUND_CLASS).sum()
        n_gt = (gt != BACKGROUND_CLASS).sum()
        self._val.append(torch.stack([tp, n_pred, n_gt]).float())
        self.log("val/loss", loss, prog_bar=True, on_epoch=True, batch_size=len(batch["image"]))

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        tp, n_pred, n_gt = torch.stack(self._val).sum(0)
        self._val.clear()
        f1 = 2 * tp / (n_pred + n_gt).clamp(min=1)
        self.log("val/lane_f1", f1, prog_bar=True)

    def on_train_start(self) -> None:
        self._start = time.monotonic()

    def configure_optimizers(self) -> dict[str, Any]:
        config = self.train_config
        encoder = {id(p) for p in self.model.net.encoder.parameters()}
        groups = [
            {"params": [p for p in self.parameters() if id(p) in encoder and p.requires_grad],
             "lr": config.lr * config.encoder_lr_scale},
            {"params": [p for p in self.parameters() if id(p) not in encoder and p.requires_grad], "lr": config.lr},
        ]
        return adamw_warmup_cosine(
            [g for g in groups if g["params"]],
            lr=config.lr,
            weight_decay=config.weight_decay,
            warmup_steps=config.warmup_steps,
            total_steps=self.total_steps,
            budget_s=self.budget_s,
            started=lambda: self._start,
        )



@dataclass
class LaneRun:
    """What `train_lanes` produced."""

    model_path: Path
    checkpoint: Path | None
    metrics: dict[str, float]
    epochs: int
    seconds: float


def train_lanes(
    train_samples: Sequence[LaneSample],
    val_samples: Sequence[LaneSample] | None,
    out_dir: str | os.PathLike,
    *,
    model_config: LaneModelConfig | None = None,
    train_config: LaneTrainConfig | None = None,
    trainer_config: Any = None,
) -> LaneRun:
    """Train a lane model with `visionpipes.core.training.fit` (Lightning + DVCLive) into `out_dir`.

    Writes `out_dir/checkpoints/` (Lightning), `out_dir/dvclive/` (metrics and plots) and
    `out_dir/lane_model.pt` (the weights of the best checkpoint, or the last one).

    Args:
        train_samples: training pairs.
        val_samples: validation pairs (None: no validation).
        out_dir: output folder.
        model_config: the network.
        train_config: batch size, LR, augmentation.
        trainer_config: a `core.training.TrainConfig` (epochs, time budget, device, logger).

    Raises:
        UserError: on missing or unreadable images and masks.
    """
    from visionpipes.core.training import TrainConfig, fit, seed_everything

    model_config = model_config or LaneModelConfig()
    train_config = train_config or LaneTrainConfig()
    trainer_config = trainer_config or TrainConfig(max_epochs=10)
    if not train_samples:
        raise UserError("no training images with lane masks.")
    if train_config.limit:
        train_samples = list(train_samples)[: train_config.limit]
    seed_everything(trainer_config.seed)
    size = (model_config.width, model_config.height)
    roi = model_config.roi_top
    train_ds = LaneDataset(
        train_samples, size, train=True, crop_height=train_config.crop_height, cache=train_config.cache, roi_top=roi
    )
    loader_kw = {"num_workers": train_config.workers, "persistent_workers": train_config.workers > 0}
    train_dl = torch.utils.data.DataLoader(
        train_ds, batch_size=train_config.batch_size, shuffle=True, drop_last=len(train_ds) > train_config.batch_size, **loader_kw
    )
    val_dl = None
    if val_samples:
        val_ds = LaneDataset(val_samples, size, cache=train_config.cache, roi_top=roi)
        val_dl = torch.utils.data.DataLoader(val_ds, batch_size=train_config.batch_size, **loader_kw)
    steps = max(1, len(train_dl)) * max(1, trainer_config.max_epochs)
    if trainer_config.max_steps and trainer_config.max_steps > 0:
        steps = min(steps, trainer_config.max_steps)
    module = LaneModule(
        model_config.to_dict(), train_config.to_dict(), steps, _max_time_seconds(trainer_config.max_time)
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = fit(module, train_dl, val_dl, config=trainer_config, out_dir=out)
    checkpoint = result.best_checkpoint or result.last_checkpoint
    if checkpoint is not None:
        # our own Lightning checkpoint (optimizer state and hyper-parameters beside the weights)
        data = load_checkpoint(checkpoint, what="lane checkpoint", weights_only=False)
        state = state_dict_of(data, path=checkpoint, what="lane checkpoint")
        module.load_state_dict(state)
    model = module.model.cpu().eval()
    save_lane_model(out / "lane_model.pt", model, {"metrics": result.metrics, "epochs": result.epochs})
    return LaneRun(out / "lane_model.pt", checkpoint, result.metrics, result.epochs, result.seconds)
