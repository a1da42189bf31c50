"""Lane training data: image/mask pairs of a prepared dataset, the network's targets split from a
lane mask, and the resized, cached and augmented torch `Dataset`.

Training side: read by `lanes.train`; the runtime never imports it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from visionpipes.core.errors import UserError
from visionpipes.core.image import read_image
from visionpipes.driving.bdd100k.categories import (
    LANE_DIRECTION_BIT,
    LANE_STYLE_BIT,
)
from visionpipes.driving.bdd100k.masks import mask_name, read_mask
from visionpipes.driving.lanes.decode import BACKGROUND_CLASS, roi_top_rows

#: Value of style/direction targets at background pixels (ignored by the loss).
IGNORE_INDEX: int = -100


def lane_targets(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split a lane mask into the network's targets: category (0-7, 8 = background), and style and
    direction (0/1, `IGNORE_INDEX` at background pixels), each HxW int64."""
    mask = np.asarray(mask, dtype=np.uint8).astype(np.int64)
    background = ((mask >> 3) & 1).astype(bool)
    category = np.where(background, BACKGROUND_CLASS, mask & 0b111).astype(np.int64)
    style = np.where(background, IGNORE_INDEX, (mask >> LANE_STYLE_BIT) & 1).astype(np.int64)
    direction = np.where(background, IGNORE_INDEX, (mask >> LANE_DIRECTION_BIT) & 1).astype(np.int64)
    return category, style, direction


@dataclass(frozen=True)
class LaneSample:
    """One training image and its lane mask."""

    image: Path
    mask: Path


def lane_samples(images_dir: str | os.PathLike, masks_dir: str | os.PathLike, limit: int = 0) -> list[LaneSample]:
    """Pair the images of a folder with their lane masks (`<stem>.png`); images without a mask are skipped.

    Raises:
        UserError: if a folder is missing or no image has a mask.
    """
    images, masks = Path(images_dir), Path(masks_dir)
    for folder, what in ((images, "image"), (masks, "lane mask")):
        if not folder.is_dir():
            raise UserError(f"{what} folder {folder} does not exist.")
    pairs = [
        LaneSample(img, masks / mask_name(img.name))
        for img in sorted(images.iterdir())
        if img.suffix.lower() in (".jpg", ".jpeg", ".png") and (masks / mask_name(img.name)).is_file()
    ]
    if not pairs:
        raise UserError(f"no image of {images} has a lane mask in {masks}.")
    return pairs[:limit] if limit > 0 else pairs


class LaneDataset(torch.utils.data.Dataset):
    """Images and lane masks resized to the network size, optionally cached in memory, with training
    augmentation (random horizontal flip — lane types are symmetric — and a random crop of rows).

    Args:
        samples: image/mask pairs.
        size: (width, height) of the network input.
        train: apply augmentation.
        crop_height: rows of each training crop (None: whole image).
        cache: keep the resized arrays in memory after the first read.
        roi_top: the model's `roi_top` (the rows above it are cut before resizing).
    """

    def __init__(
        self,
        samples: Sequence[LaneSample],
        size: tuple[int, int],
        *,
        train: bool = False,
        crop_height: int | None = None,
        cache: bool = True,
        roi_top: float = 0.0,
    ) -> None:
        self.samples = list(samples)
        self.roi_top = roi_top
        self.size = tuple(size)
        self.train = train
        self.crop_height = crop_height if train and crop_height and crop_height < size[1] else None
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.samples)

    def _load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        import cv2

        if self._cache is not None and index in self._cache:
            return self._cache[index]
        sample = self.samples[index]
        image = read_image(sample.image, order="RGB")
        mask = read_mask(sample.mask, expected_shape=image.shape[:2], kind="lane")
        top = roi_top_rows(image.shape[0], self.roi_top)
        image, mask = image[top:], mask[top:]
        image = cv2.resize(image, self.size, interpolation=cv2.INTER_AREA)
        mask = cv2.resize(mask, self.size, interpolation=cv2.INTER_NEAREST)
        item = (np.ascontiguousarray(image), mask)
        if self._cache is not None:
            self._cache[index] = item
        return item

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image, mask = self._load(index)
        if self.train:
            rng = np.random.default_rng(torch.randint(0, 2**31 - 1, (1,)).item())
            if rng.random() < 0.5:
                image, mask = image[:, ::-1], mask[:, ::-1]
            if self.crop_height:
                top = int(rng.integers(0, self.size[1] - self.crop_height + 1))
                image = image[top : top + self.crop_height]
                mask = mask[top : top + self.crop_height]
        category, style, direction = lane_targets(mask)
        x = torch.from_numpy(np.ascontiguousarray(image).transpose(2, 0, 1).copy()).float() / 255.0
        return {
            "image": x,
            "category": torch.from_numpy(category),
            "style": torch.from_numpy(style),
            "direction": torch.from_numpy(direction),
        }
