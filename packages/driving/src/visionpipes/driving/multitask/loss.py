"""The multi-task network's joint loss: ultralytics' `v8DetectionLoss` (task-aligned assigner, CIoU,
DFL) used as a library, the lane model's category/style/direction losses, and drivable CE + Dice.
Losses only: no optimiser, no schedule, no data reading (the trainer owns those).

Training schedule — what the sources found (to be tested here by the trainer, not decided here):

- YOLOP (hustvl/YOLOP, `README.md`, "Ablation Studies 1: End-to-end v.s. Step-by-step"): "It is
  proved that the three tasks can be learned jointly without tedious alternating optimization."
  Their table: `End-to-end` Recall 89.2 / AP 76.5 / da mIoU 91.5 / ll Acc 70.5 / ll IoU 26.2,
  against the staged `ED-S-W` ("First, we only train Encoder and Detect head. Then we freeze the
  Encoder and Detect head as well as train two Segmentation heads. Finally, the entire network is
  trained jointly for all three tasks.") 87.5 / 76.1 / 91.6 / 68.0 / 26.8, and `ES-W`, `ED-W`,
  `ES-D-W` in between. Their switches are `lib/config/default.py` `TRAIN.SEG_ONLY`, `DET_ONLY`,
  `ENC_SEG_ONLY`, `ENC_DET_ONLY` ("# Alternating optimization"; all False = end to end), which
  `lib/core/loss.py` `MultiHeadLoss` applies by multiplying the other tasks' losses by 0. Loss
  gains (`default.py`): BOX 0.05, CLS 0.5, OBJ 1.0, DA_SEG 0.2, LL_SEG 0.2, LL_IOU 0.2.
- HybridNets (datvuthanh/HybridNets, `README.md`, "Training stages"): "We experimented with
  training stages and found that this settings achieved the best results: 1. `--freeze_seg True`
  ~ 200 epochs 2. `--freeze_backbone True --freeze_det True` ~ 50 epochs 3. Train end-to-end ~ 50
  epochs. The reason being detection head is harder to converge early on, so we basically skipped
  segmentation head to focus on detection first." (seg loss: Tversky + focal, `hybridnets/model.py`).

So YOLOP trains end to end from the start; HybridNets trains detection first, then the
segmentation heads on a frozen encoder, then everything. `MultiTaskLossConfig`'s task weights (0
switches a task off) and `MultiTaskNet.task_modules()` (what to freeze) express both schedules.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from visionpipes.driving.multitask.config import (
    IGNORE_INDEX,
    LANE_BACKGROUND_CLASS,
    LANE_CATEGORY_CHANNELS,
    LANE_STYLE_CHANNELS,
    MultiTaskLossConfig,
)

#: The keys of a training batch, by task (a task whose keys are absent counts 0).
DETECTION_KEYS: tuple[str, ...] = ("batch_idx", "cls", "bboxes")
LANE_KEYS: tuple[str, ...] = ("lane_category", "lane_style", "lane_direction")
DRIVABLE_KEYS: tuple[str, ...] = ("drivable",)


def detection_targets(
    boxes: Sequence[torch.Tensor], classes: Sequence[torch.Tensor], image_size: tuple[int, int]
) -> dict[str, torch.Tensor]:
    """Per-image boxes -> the detection part of a batch, in ultralytics' layout.

    Args:
        boxes: per image, (k, 4) boxes x1, y1, x2, y2 in network-input pixels.
        classes: per image, (k,) class indices into `DET_CATEGORIES`.
        image_size: (width, height) of the network input.

    Returns:
        `batch_idx` (M,) image index, `cls` (M, 1) class, `bboxes` (M, 4) centre x, y, width,
        height normalised by the input size (what `v8DetectionLoss` reads).

    Raises:
        ValueError: if the two lists differ in length or a box tensor is not (k, 4).
    """
    if len(boxes) != len(classes):
        raise ValueError(
            f"detection_targets needs one class tensor per box tensor, got {len(boxes)} and {len(classes)}."
        )
    width, height = image_size
    scale = torch.tensor([width, height, width, height], dtype=torch.float32)
    idx, cls, xywh = [], [], []
    for i, (b, c) in enumerate(zip(boxes, classes)):
        b = torch.as_tensor(b, dtype=torch.float32).reshape(-1, 4) if len(b) else torch.zeros(0, 4)
        if b.shape[0] != len(c):
            raise ValueError(f"image {i}: {b.shape[0]} boxes but {len(c)} classes.")
        centre = (b[:, :2] + b[:, 2:]) / 2
        size = b[:, 2:] - b[:, :2]
        xywh.append(torch.cat([centre, size], 1) / scale)
        cls.append(torch.as_tensor(c, dtype=torch.float32).reshape(-1, 1))
        idx.append(torch.full((b.shape[0],), float(i)))
    return {"batch_idx": torch.cat(idx), "cls": torch.cat(cls), "bboxes": torch.cat(xywh)}


class MultiTaskLoss(nn.Module):
    """Weighted sum of the three task losses of a `MultiTaskNet`.

    - detection: ultralytics' `v8DetectionLoss` on the net's `Detect` head (its assigner, CIoU box
      loss and DFL, with the `box`, `cls`, `dfl` gains), divided by the batch size (ultralytics
      returns it multiplied by the batch size, for its own SGD settings);
    - lanes: the dedicated lane model's loss: category cross-entropy (background weighted by
      `lane_background`) + `lane_dice` x multi-class Dice, + `lane_attributes` x (style CE +
      direction CE) on lane pixels;
    - drivable: cross-entropy + `drivable_dice` x multi-class Dice.

    Args:
        model: the `MultiTaskNet` (its `detect` head gives strides, classes and DFL bins).
        config: weights and gains (default `MultiTaskLossConfig()`).

    Example:
        >>> criterion = MultiTaskLoss(model, MultiTaskLossConfig(drivable=0.5))
        >>> total, parts = criterion(model(images), batch)  # doctest: +SKIP
    """

    def __init__(self, model: nn.Module, config: MultiTaskLossConfig | None = None) -> None:
        super().__init__()
        import segmentation_models_pytorch as smp

        self.config = config or MultiTaskLossConfig()
        # A plain reference (not a submodule): the loss holds no parameters of its own.
        self._detect = (model.detect,)
        self._detection_loss: Any = None
        self._detection_device: torch.device | None = None
        self.dice = smp.losses.DiceLoss("multiclass", from_logits=True, ignore_index=IGNORE_INDEX)
        weights = torch.ones(LANE_CATEGORY_CHANNELS)
        weights[LANE_BACKGROUND_CLASS] = self.config.lane_background
        self.register_buffer("lane_class_weights", weights, persistent=False)

    def _ultralytics_loss(self, device: torch.device) -> Any:
        """ultralytics' `v8DetectionLoss` for our `Detect` head, built for `device` (it fixes its
        device when built). It reads `model.args` (the gains), `model.model[-1]` (the head) and
        `model.parameters()`: that is all a `DetectionModel` gives it, so a namespace does."""
        if self._detection_loss is None or self._detection_device != device:
            from visionpipes.driving.ultralytics_env import apply_ultralytics_env

            apply_ultralytics_env()
            from ultralytics.utils.loss import v8DetectionLoss

            (detect,) = self._detect
            gains = SimpleNamespace(box=self.config.box, cls=self.config.cls, dfl=self.config.dfl)
            view = SimpleNamespace(args=gains, model=[detect], parameters=detect.parameters)
            self._detection_loss = v8DetectionLoss(view, tal_topk=self.config.tal_topk)
            self._detection_device = device
        return self._detection_loss

    def detection_loss(self, raw: Mapping[str, Any], batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """ultralytics' box + cls + DFL loss (gains applied), per image.

        Args:
            raw: `Detect`'s raw dict (`MultiTaskNet` in training mode, or `forward_raw`).
            batch: `batch_idx` (M,), `cls` (M,) or (M, 1), `bboxes` (M, 4) normalised xywh.

        Returns:
            A (3,) tensor: box, cls, DFL.
        """
        if not isinstance(raw, Mapping) or "boxes" not in raw:
            raise ValueError(
                "the detection output must be Detect's raw dict (the model in training mode, or forward_raw), "
                f"got {type(raw).__name__}."
            )
        device = raw["boxes"].device
        criterion = self._ultralytics_loss(device)
        targets = {k: batch[k].to(device) for k in DETECTION_KEYS}
        # In float32 whatever the autocast (bf16-mixed training): the anchor points follow the
        # dtype of `feats`, and bf16 keeps 8 significant bits (a 2-px step at x = 256..512).
        preds = {k: [f.float() for f in v] if k == "feats" else v.float() for k, v in raw.items()}
        with torch.autocast(device.type, enabled=False):
            loss, _ = criterion(preds, targets)
        return loss / raw["boxes"].shape[0]

    def lane_loss(self, logits: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The lane model's loss on (N, 13, H, W) logits and (N, H, W) targets `lane_category`
        (0-7, 8 background), `lane_style` and `lane_direction` (0/1, `IGNORE_INDEX` off lanes)."""
        category = batch["lane_category"]
        _check_size(logits, category, "lane_category")
        cat = logits[:, :LANE_CATEGORY_CHANNELS]
        style = logits[:, LANE_CATEGORY_CHANNELS : LANE_CATEGORY_CHANNELS + LANE_STYLE_CHANNELS]
        direction = logits[:, LANE_CATEGORY_CHANNELS + LANE_STYLE_CHANNELS :]
        loss = F.cross_entropy(cat, category, weight=self.lane_class_weights.to(cat.dtype))
        if self.config.lane_dice:
            loss = loss + self.config.lane_dice * self.dice(cat, category)
        if self.config.lane_attributes:
            on_lane = batch["lane_style"] != IGNORE_INDEX
            # zero (with gradient) when the batch has no lane pixel, instead of CE's NaN
            attr = F.cross_entropy(style, batch["lane_style"], ignore_index=IGNORE_INDEX, reduction="sum")
            attr = attr + F.cross_entropy(
                direction, batch["lane_direction"], ignore_index=IGNORE_INDEX, reduction="sum"
            )
            loss = loss + self.config.lane_attributes * attr / on_lane.sum().clamp(min=1)
        return loss

    def drivable_loss(self, logits: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Cross-entropy (+ Dice) on (N, 3, H, W) logits and (N, H, W) `drivable` targets (0
        direct, 1 alternative, 2 background, `IGNORE_INDEX` ignored)."""
        target = batch["drivable"]
        _check_size(logits, target, "drivable")
        loss = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX)
        if self.config.drivable_dice:
            loss = loss + self.config.drivable_dice * self.dice(logits, target)
        return loss

    def forward(
        self, outputs: Sequence[Any], batch: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The weighted total and each task's (unweighted) loss.

        Args:
            outputs: `(detection raw dict, lane logits, drivable logits)` from `MultiTaskNet`
                in training mode (or `forward_raw`).
            batch: the targets: detection `batch_idx`, `cls`, `bboxes` (see `detection_targets`);
                lanes `lane_category`, `lane_style`, `lane_direction`; drivable `drivable`. A task
                whose keys are absent, or whose weight is 0, is skipped (counts 0).

        Returns:
            `(total, parts)`; `parts` holds detached `box`, `cls`, `dfl`, `detection`, `lanes`,
            `drivable` (the tasks computed) and `total`.

        Raises:
            ValueError: if no task could be computed, a target's size differs from its logits', or
                the detection output is not the raw dict.
        """
        raw, lanes, drivable = outputs
        config = self.config
        total: torch.Tensor | None = None
        parts: dict[str, torch.Tensor] = {}

        def add(name: str, weight: float, value: torch.Tensor) -> None:
            nonlocal total
            parts[name] = value.detach()
            total = weight * value if total is None else total + weight * value

        if config.detection and all(k in batch for k in DETECTION_KEYS):
            det = self.detection_loss(raw, batch)
            parts.update(box=det[0].detach(), cls=det[1].detach(), dfl=det[2].detach())
            add("detection", config.detection, det.sum())
        if config.lanes and all(k in batch for k in LANE_KEYS):
            add("lanes", config.lanes, self.lane_loss(lanes, batch))
        if config.drivable and all(k in batch for k in DRIVABLE_KEYS):
            add("drivable", config.drivable, self.drivable_loss(drivable, batch))
        if total is None:
            raise ValueError(
                "the batch has the targets of no task with a weight above 0 (detection: batch_idx, cls, bboxes; "
                "lanes: lane_category, lane_style, lane_direction; drivable: drivable)."
            )
        parts["total"] = total.detach()
        return total, parts


def _check_size(logits: torch.Tensor, target: torch.Tensor, name: str) -> None:
    if tuple(target.shape) != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(
            f"`{name}` targets have shape {tuple(target.shape)}; the logits need "
            f"{(logits.shape[0], *logits.shape[2:])} (batch, height, width of the network input)."
        )
