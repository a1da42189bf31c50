"""The one image preprocessing every path shares (training, evaluation, export parity, serving):
RGB uint8 → square resize → ImageNet normalisation, and the catalog-image reader built on
`core.image.read_image`.

Numpy and Pillow only; no torch, no training code.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from visionpipes.core.errors import UserError
from visionpipes.core.image import read_image

#: ImageNet channel statistics, the usual input normalisation of CNN backbones.
MEAN = np.array((0.485, 0.456, 0.406), dtype=np.float32)
STD = np.array((0.229, 0.224, 0.225), dtype=np.float32)


def resize_rgb(image: np.ndarray, size: int, *, index: int = 0) -> np.ndarray:
    """An HxWx3 uint8 image resized (antialiased bilinear, aspect not kept) to size x size.

    Raises:
        UserError: if the array is not HxWx3.
    """
    from PIL import Image

    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise UserError(f"image {index} has shape {arr.shape}, expected (height, width, 3) RGB.")
    if arr.shape[:2] == (size, size):
        return np.ascontiguousarray(arr, dtype=np.uint8)
    return np.asarray(Image.fromarray(arr.astype(np.uint8, copy=False)).resize((size, size), Image.BILINEAR))


def normalize_batch(batch: np.ndarray) -> np.ndarray:
    """(n, S, S, 3) uint8 → (n, 3, S, S) float32 with ImageNet mean/std."""
    x = batch.astype(np.float32) / 255.0
    x = (x - MEAN) / STD
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def prepare_images(images: Sequence[np.ndarray], size: int) -> np.ndarray:
    """The model input for RGB uint8 images: (n, 3, size, size) float32, resized and normalised.

    Raises:
        UserError: if an image is not HxWx3.
    """
    if len(images) == 0:
        return np.zeros((0, 3, size, size), dtype=np.float32)
    return normalize_batch(np.stack([resize_rgb(img, size, index=i) for i, img in enumerate(images)]))


def read_view(path: str | os.PathLike, size: int | None = None) -> np.ndarray:
    """One catalog image as an RGB uint8 array, resized to size x size when `size` is given (the
    same resize as at query time).

    Raises:
        UserError: if the file is missing or not a readable image.
    """
    pixels = read_image(path, name=f"image {path}")
    return resize_rgb(pixels, size) if size else pixels
