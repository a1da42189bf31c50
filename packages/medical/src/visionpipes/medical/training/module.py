"""The LightningModule of region segmentation: sigmoid logits per region, DiceCE (or Dice) loss from MONAI,
validation Dice by Gaussian-blended sliding windows, AdamW with a cosine schedule.

Its hyper-parameters are plain values saved in the checkpoint, so that the runtime rebuilds the network
and its preprocessing from the checkpoint alone (`visionpipes.medical.runtime.checkpoint`).
"""

from __future__ import annotations

import math

import lightning
import numpy as np
import torch

from visionpipes.core.config import parse_config
from visionpipes.medical.runtime.networks import ModelConfig, build_model


class MSDSegmentationModule(lightning.LightningModule):
    """Region segmentation: sigmoid logits per region, DiceCE (or Dice) loss, sliding-window validation.

    All constructor arguments are plain values saved in the checkpoint, so `runtime.predictor.Predictor` rebuilds
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
        normalization: per-channel intensity normalisation entries (`planning.normalization`); None for
            the non-zero z-score per channel.
        plan: the plan record training was configured with (`training.config.resolve_training_config`),
            or None; export copies it into `model.json` and the model card.
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
        normalization: list | None = None,
        plan: dict | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        from monai.losses import DiceCELoss, DiceLoss
        from monai.metrics import DiceMetric

        self.net = build_model(
            parse_config(ModelConfig, model, source="model settings"), self._input_channels(), len(regions)
        )
        self.region_names = [name for name, _ in regions]
        common = {"sigmoid": True, "smooth_nr": 0.0, "smooth_dr": 1e-5, "squared_pred": True}
        self.loss_fn = DiceCELoss(**common) if loss == "dice_ce" else DiceLoss(**common)
        self.val_dice = DiceMetric(include_background=True, reduction="mean_batch", ignore_empty=True)

    def _input_channels(self) -> int:
        """The network's input channels: one per modality (a cascade's stage adds its previous stage's)."""
        return len(self.hparams.modality)

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
