"""Multi-task training data over a prepared `dataset.json`: per image the letterboxed frame, its YOLO
boxes, its lane targets (the lane model's `lane_targets`) and, where the dataset has one, its
drivable mask; a seeded horizontal flip that moves boxes and masks alike; and the collate that builds
the batch `MultiTaskLoss` reads (`batch_idx`, `cls`, `bboxes` normalised xywh, `lane_*`, `drivable`).

A sample without a drivable mask (datasets prepared before drivable masks existed) has an all-ignored
drivable target, so it adds nothing to the drivable loss; a batch with no drivable pixel at all has no
`drivable` key, so the loss skips the task for it.

Training side: the runtime never imports it.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from visionpipes.core.errors import UserError
from visionpipes.core.image import read_image
from visionpipes.driving.bdd100k.detection import detection_boxes, warn_unknown_categories
from visionpipes.driving.bdd100k.drivable import read_drivable_mask
from visionpipes.driving.bdd100k.labels import load_frames
from visionpipes.driving.bdd100k.masks import mask_name, read_mask
from visionpipes.driving.lanes.data import lane_targets
from visionpipes.driving.multitask.config import IGNORE_INDEX
from visionpipes.driving.multitask.decode import letterbox_window, network_input
from visionpipes.driving.prepare import load_manifest


@dataclass(frozen=True)
class MultiTaskSample:
    """One image and its labels: boxes (K, 4) xyxy in image pixels with class ids (K,) into
    `DET_CATEGORIES`, the lane mask and the drivable mask (None: no supervision of that task)."""

    image: Path
    boxes: np.ndarray
    classes: np.ndarray
    lane_mask: Path | None
    drivable_mask: Path | None


def multitask_samples(dataset_json: str | os.PathLike, split: str, limit: int = 0) -> list[MultiTaskSample]:
    """The images of a split with their boxes (ignore regions left out, as in the YOLO dataset),
    lane masks and drivable masks (where present).

    Raises:
        UserError: if the manifest, the split or its det labels are missing or malformed.
    """
    dataset = load_manifest(dataset_json)
    if split not in dataset.names:
        raise UserError(
            f"{dataset_json}: the dataset has no split {split!r} (splits: {', '.join(dataset.names)})."
        )
    frames = {f.name: f for f in load_frames(dataset.det_labels[split])}
    lanes = dataset.lane_masks.get(split)
    drivable = dataset.drivable_masks.get(split)  # none: a dataset without drivable labels
    unknown: Counter[str] = Counter()
    samples = []
    for name in dataset.names[split][: limit or None]:
        boxes, classes = [], []
        frame = frames.get(name)
        for det in detection_boxes(frame, unknown) if frame is not None else []:
            box = det.label.box2d
            if det.ignored or box is None or box.x2 <= box.x1 or box.y2 <= box.y1:
                continue
            boxes.append([box.x1, box.y1, box.x2, box.y2])
            classes.append(det.class_id)
        lane = lanes / mask_name(name) if lanes is not None else None
        area = drivable / mask_name(name) if drivable is not None else None
        samples.append(
            MultiTaskSample(
                dataset.images[split] / name,
                np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                np.asarray(classes, dtype=np.int64),
                lane if lane is not None and lane.is_file() else None,
                area if area is not None and area.is_file() else None,
            )
        )
    warn_unknown_categories(unknown, str(dataset.det_labels[split]))
    if not samples:
        raise UserError(f"{dataset_json}: the {split} split has no images.")
    return samples


def _letterbox_mask(mask: np.ndarray, window: tuple[int, int, int, int], size: tuple[int, int]) -> np.ndarray:
    """A uint8 mask resized (nearest) into the letterbox window of a `size` canvas (0 outside)."""
    import cv2

    top, bottom, left, right = window
    canvas = np.zeros((size[1], size[0]), dtype=np.uint8)
    canvas[top:bottom, left:right] = cv2.resize(
        mask, (right - left, bottom - top), interpolation=cv2.INTER_NEAREST
    )
    return canvas


def _ignore_outside(target: np.ndarray, window: tuple[int, int, int, int]) -> np.ndarray:
    top, bottom, left, right = window
    out = np.full(target.shape, IGNORE_INDEX, dtype=np.int8)  # int8: a cached epoch stays small
    out[top:bottom, left:right] = target[top:bottom, left:right]
    return out


class MultiTaskDataset(torch.utils.data.Dataset):
    """Letterboxed images with their detection, lane and drivable targets at network size.

    Items: `image` (3, H, W) float RGB in [0, 1]; `boxes` (K, 4) xyxy and `classes` (K,) in network
    pixels; `lane_category`, `lane_style`, `lane_direction` (H, W) (the lane model's targets;
    `IGNORE_INDEX` on the padding, everywhere when the image has no lane mask); `drivable` (H, W)
    (0 direct, 1 alternative, 2 background; `IGNORE_INDEX` on the padding and when the image has no
    drivable mask). Masks are int8 in the items (a cached epoch stays small), int64 in the batch.

    Args:
        samples: the images and labels (`multitask_samples`).
        size: (width, height) of the network input.
        train: apply the augmentation.
        flip: probability of the horizontal flip (training only).
        augment: the affine warp and colour jitter (`multitask.augment`; training only): `scale`,
            `translate`, `degrees`, `hsv` (hue, saturation, value gains); None or zeros: none.
        seed: the augmentation seed; with `set_epoch`, item i of epoch e is flipped or not the same
            way in every run (and in every data-loader worker).
        cache: keep the letterboxed arrays in memory after the first read.
    """

    def __init__(
        self,
        samples: Sequence[MultiTaskSample],
        size: tuple[int, int],
        *,
        train: bool = False,
        flip: float = 0.5,
        augment: dict[str, Any] | None = None,
        seed: int = 0,
        cache: bool = True,
    ) -> None:
        self.samples = list(samples)
        self.size = (int(size[0]), int(size[1]))
        self.train = train
        self.flip = flip
        self.augment = dict(augment or {})
        self.seed = seed
        self.epoch = 0
        self._cache: dict[int, dict[str, np.ndarray]] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose augmentation the next items draw."""
        self.epoch = int(epoch)

    def load(self, index: int) -> dict[str, np.ndarray]:
        """The letterboxed item without augmentation (numpy arrays)."""
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        sample = self.samples[index]
        frame = read_image(sample.image, order="BGR")
        height, width = frame.shape[:2]
        x, (info,) = network_input([frame], self.size)
        window = letterbox_window(info, (width, height))
        boxes = sample.boxes.copy()
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width) * info.scale + info.pad_x
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height) * info.scale + info.pad_y
        keep = (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)
        item = {
            "image": (x[0] * 255).round().astype(np.uint8),
            "boxes": boxes[keep],
            "classes": sample.classes[keep],
        }
        if sample.lane_mask is not None:
            lane = read_mask(sample.lane_mask, expected_shape=(height, width), kind="lane")
            targets = lane_targets(_letterbox_mask(lane, window, self.size))
            for key, target in zip(("lane_category", "lane_style", "lane_direction"), targets):
                item[key] = _ignore_outside(target, window)
        else:
            for key in ("lane_category", "lane_style", "lane_direction"):
                item[key] = np.full((self.size[1], self.size[0]), IGNORE_INDEX, dtype=np.int8)
        if sample.drivable_mask is not None:
            area = read_drivable_mask(sample.drivable_mask, expected_shape=(height, width))
            item["drivable"] = _ignore_outside(
                _letterbox_mask(area.astype(np.uint8), window, self.size), window
            )
        else:
            item["drivable"] = np.full((self.size[1], self.size[0]), IGNORE_INDEX, dtype=np.int8)
        if self._cache is not None:
            self._cache[index] = item
        return item

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item = dict(self.load(index))
        if self.train:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            if self.flip > 0 and rng.random() < self.flip:
                item = flip_item(item, self.size[0])
            item = self._augment(item, rng)
        out = {
            key: torch.from_numpy(np.ascontiguousarray(value))
            for key, value in item.items()
            if key != "image"
        }
        out["image"] = torch.from_numpy(np.ascontiguousarray(item["image"])).float() / 255.0
        return out

    def _augment(self, item: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
        """The item through the configured affine warp and colour jitter (unchanged when all are 0)."""
        from visionpipes.driving.multitask.augment import affine_matrix, jitter_hsv, warp_item

        scale, translate = self.augment.get("scale", 0.0), self.augment.get("translate", 0.0)
        degrees, hsv = self.augment.get("degrees", 0.0), tuple(self.augment.get("hsv", (0.0, 0.0, 0.0)))
        if scale or translate or degrees:
            matrix = affine_matrix(self.size, rng, scale=scale, translate=translate, degrees=degrees)
            item = warp_item(item, matrix, self.size)
        if any(hsv):
            item = {**item, "image": jitter_hsv(item["image"], rng, hsv)}
        return item


def flip_item(item: dict[str, np.ndarray], width: int) -> dict[str, np.ndarray]:
    """The item mirrored left-right: image and every mask flipped, boxes x1, x2 -> width - x2,
    width - x1 (lane types, styles, directions and the drivable classes are mirror-symmetric)."""
    out = {key: value[..., ::-1] for key, value in item.items() if key not in ("boxes", "classes")}
    boxes = item["boxes"].copy()
    boxes[:, [0, 2]] = width - item["boxes"][:, [2, 0]]
    out["boxes"], out["classes"] = boxes, item["classes"]
    return out


def collate(items: Sequence[dict[str, torch.Tensor]]) -> dict[str, Any]:
    """Items -> a `MultiTaskLoss` batch: stacked images and masks, the boxes as ultralytics wants
    them (`batch_idx` (M,), `cls` (M, 1), `bboxes` (M, 4) centre xywh normalised by the input size),
    and no `drivable` key when no image of the batch has a drivable pixel to learn from."""
    images = torch.stack([item["image"] for item in items])
    height, width = images.shape[2:]
    scale = torch.tensor([width, height, width, height], dtype=torch.float32)
    idx, cls, xywh = [], [], []
    for i, item in enumerate(items):
        boxes = item["boxes"].float().reshape(-1, 4)
        xywh.append(torch.cat([(boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]], 1) / scale)
        cls.append(item["classes"].float().reshape(-1, 1))
        idx.append(torch.full((len(boxes),), float(i)))
    batch: dict[str, Any] = {
        "image": images,
        "batch_idx": torch.cat(idx),
        "cls": torch.cat(cls),
        "bboxes": torch.cat(xywh),
    }
    for key in ("lane_category", "lane_style", "lane_direction", "drivable"):
        batch[key] = torch.stack([item[key] for item in items]).long()
    if (batch["lane_category"] == IGNORE_INDEX).all():
        for key in ("lane_category", "lane_style", "lane_direction"):
            del batch[key]
    if (batch["drivable"] == IGNORE_INDEX).all():
        del batch["drivable"]
    return batch
