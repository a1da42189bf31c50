"""The Lightning module of embedding training: `EmbeddingNet` + a `pytorch-metric-learning` loss,
AdamW with warm-up and cosine decay, validation Recall@1 of held-out views; and the seeding of the
backbone from a local pretrained checkpoint (torchvision/timm through `core.pretrained`, never downloaded).

Training side only: runtime modules never import this.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import lightning
import numpy as np
import torch

from visionpipes.core.errors import UserError
from visionpipes.core.pretrained import convert_state_dict, read_weights
from visionpipes.retail.embedding.network import EmbeddingNet
from visionpipes.retail.training.augment import BatchAugment, normalize_tensor
from visionpipes.retail.training.losses import build_loss
from visionpipes.retail.training.params import TrainParams


def load_pretrained_backbone(model: EmbeddingNet, path: str | os.PathLike) -> int:
    """Seed `model` from a local checkpoint (never downloaded): a torchvision or timm ImageNet
    checkpoint (`.pth` or `.safetensors`, mapped by `core.pretrained`'s tables: the backbone must be
    that architecture at width x1), or a state dict of the backbone, of a whole `EmbeddingNet`, or a
    Lightning checkpoint holding one. Returns the number of tensors loaded.

    Raises:
        UserError: if the file is missing, unreadable, or fits the backbone neither way.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"pretrained checkpoint {path} does not exist (it is never downloaded).")
    state = read_weights(path)
    own = model.backbone.state_dict()
    picked: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for prefix in ("model.backbone.", "backbone.", ""):
            if key.startswith(prefix) and key[len(prefix) :] in own:
                name = key[len(prefix) :]
                if value.shape == own[name].shape:
                    picked[name] = value
                break
    if not picked:
        # not a visionpipes checkpoint: an ImageNet model of torchvision/timm, through the mapping tables
        converted, report = convert_state_dict(state, model.backbone, path=path)
        missing = [k for k in report.missing if ".attn." not in k]
        if missing:
            raise UserError(
                f"pretrained checkpoint {path} leaves {len(missing)} tensors of the {model.backbone.spec.name} "
                f"backbone unfilled (first: {missing[0]}): not the same architecture."
            )
        picked = converted
    model.backbone.load_state_dict(picked, strict=False)
    return len(picked)


def leave_one_out_recall(
    query: np.ndarray, query_labels: np.ndarray, gallery: np.ndarray, gallery_labels: np.ndarray
) -> float:
    """Share of queries whose nearest gallery embedding (cosine) has the query's label."""
    if len(query) == 0 or len(gallery) == 0:
        return math.nan
    nearest = np.argmax(query @ gallery.T, axis=1)
    return float(np.mean(gallery_labels[nearest] == query_labels))


class EmbeddingModule(lightning.LightningModule):
    """The Lightning wrapper: `EmbeddingNet` + loss, AdamW with warm-up and cosine decay; validation
    logs `val/recall_at_1` of held-out views against the training views (embedded without augmentation)."""

    def __init__(self, params: TrainParams, num_classes: int, steps_per_epoch: int) -> None:
        super().__init__()
        self.params = params
        self.model = EmbeddingNet.from_config(params.embedding_config())
        if params.pretrained:
            load_pretrained_backbone(self.model, params.pretrained)
        self.loss = build_loss(params.loss, num_classes, params.dimension, **dict(params.loss_options))
        self.steps_per_epoch = steps_per_epoch
        self.augment = BatchAugment(params.augment)
        self._val: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {0: [], 1: []}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def on_fit_start(self) -> None:
        # NHWC is the faster layout for oneDNN and cuDNN convolutions (2x with bf16 on CPU here).
        self.model.to(memory_format=torch.channels_last)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        x = normalize_tensor(self.augment(x.float() / 255.0)).contiguous(memory_format=torch.channels_last)
        loss = self.loss(self.model(x).float(), y)
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y))
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        x, y = batch
        emb = self.model(normalize_tensor(x.float() / 255.0).contiguous(memory_format=torch.channels_last))
        self._val[dataloader_idx].append((emb.detach().float().cpu(), y.detach().cpu()))

    def on_validation_epoch_end(self) -> None:
        parts = {i: v for i, v in self._val.items() if v}
        if len(parts) == 2:
            q, ql = (torch.cat(t).numpy() for t in zip(*parts[0]))
            g, gl = (torch.cat(t).numpy() for t in zip(*parts[1]))
            self.log("val/recall_at_1", leave_one_out_recall(q, ql, g, gl), prog_bar=True)
        self._val = {0: [], 1: []}

    def configure_optimizers(self) -> Any:
        p = self.params
        groups = [
            {"params": list(self.model.parameters()), "lr": p.lr},
            {"params": list(self.loss.parameters()), "lr": p.lr * p.loss_lr_multiplier, "weight_decay": 0.0},
        ]
        groups = [g for g in groups if g["params"]]
        optimizer = torch.optim.AdamW(groups, weight_decay=p.weight_decay)
        steps_per_epoch = self.steps_per_epoch
        if self.trainer.world_size > 1:  # DDP: each rank steps through its share of the batches
            steps_per_epoch = max(1, int(self.trainer.estimated_stepping_batches) // p.epochs)
        total = max(1, p.epochs * steps_per_epoch)
        warmup = int(p.warmup_epochs * steps_per_epoch)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            t = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
