"""Training augmentation of multi-task items (`multitask.data.MultiTaskDataset`), YOLOP's set: a random
affine warp (scale, translation, rotation) that moves the image, the boxes and every mask alike, and an
HSV colour jitter of the image only.

YOLOP (hustvl/YOLOP, `lib/dataset/AutoDriveDataset.py` with `lib/config/default.py`) trains with
`random_perspective` over the image, the drivable and the lane masks (SCALE_FACTOR 0.25, TRANSLATE 0.1,
ROT_FACTOR 10, SHEAR 0), `augment_hsv` (HSV_H 0.015, HSV_S 0.7, HSV_V 0.4) and the left-right flip (the
flip is `multitask.data.flip_item`). The warp here is the same similarity transform about the image centre
(ultralytics' `RandomPerspective` without shear and perspective); boxes are the warped corners' extent,
clipped to the canvas and kept when they keep at least `MIN_AREA_RATIO` of their warped area and
`MIN_SIDE` pixels a side (ultralytics' `box_candidates`). Masks are warped nearest-neighbour; what the
warp brings in from outside the canvas is grey in the image and ignored in every target.

Training side: the runtime never imports it.
"""

from __future__ import annotations

import math

import numpy as np

from visionpipes.driving.multitask.config import IGNORE_INDEX

#: A warped box is kept when it keeps this share of its warped area after clipping to the canvas...
MIN_AREA_RATIO = 0.1
#: ...and is at least this many pixels wide and high (ultralytics' `box_candidates` thresholds).
MIN_SIDE = 2.0
#: Grey of the letterbox bands (ultralytics' 114).
GREY = 114
#: The per-pixel targets an item may hold.
MASK_KEYS = ("lane_category", "lane_style", "lane_direction", "drivable")


def affine_matrix(
    size: tuple[int, int], rng: np.random.Generator, *, scale: float, translate: float, degrees: float
) -> np.ndarray:
    """A 2x3 similarity transform about the centre of a `(width, height)` canvas: rotation uniform in
    +-`degrees`, scale uniform in 1 +- `scale`, translation uniform in +-`translate` of each side."""
    width, height = size
    angle = rng.uniform(-degrees, degrees) if degrees else 0.0
    factor = rng.uniform(1 - scale, 1 + scale) if scale else 1.0
    tx = rng.uniform(-translate, translate) * width if translate else 0.0
    ty = rng.uniform(-translate, translate) * height if translate else 0.0
    a = math.radians(angle)
    cos, sin = factor * math.cos(a), factor * math.sin(a)
    cx, cy = width / 2, height / 2
    # x' = R (x - c) + c + t
    return np.array(
        [[cos, -sin, cx - cos * cx + sin * cy + tx], [sin, cos, cy - sin * cx - cos * cy + ty]],
        dtype=np.float64,
    )


def warp_boxes(boxes: np.ndarray, matrix: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Boxes `(K, 4)` xyxy through `matrix`: the extent of the warped corners, clipped to the canvas;
    returns the kept boxes and the boolean mask of which were kept."""
    if len(boxes) == 0:
        return boxes.reshape(0, 4).astype(np.float32), np.zeros(0, dtype=bool)
    x1, y1, x2, y2 = boxes.T
    corners = np.stack([np.stack([x1, y1]), np.stack([x2, y1]), np.stack([x1, y2]), np.stack([x2, y2])])
    xy = np.einsum("ij,cjk->cik", matrix[:, :2], corners) + matrix[:, 2][None, :, None]  # (4, 2, K)
    warped = np.stack([xy[:, 0].min(0), xy[:, 1].min(0), xy[:, 0].max(0), xy[:, 1].max(0)], 1)
    clipped = warped.copy()
    clipped[:, [0, 2]] = clipped[:, [0, 2]].clip(0, size[0])
    clipped[:, [1, 3]] = clipped[:, [1, 3]].clip(0, size[1])
    w, h = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
    area = (warped[:, 2] - warped[:, 0]) * (warped[:, 3] - warped[:, 1])
    keep = (w >= MIN_SIDE) & (h >= MIN_SIDE) & (w * h >= MIN_AREA_RATIO * np.maximum(area, 1e-9))
    return clipped[keep].astype(np.float32), keep


def warp_item(
    item: dict[str, np.ndarray], matrix: np.ndarray, size: tuple[int, int]
) -> dict[str, np.ndarray]:
    """The item (`image` (3, H, W) uint8, `boxes`, `classes`, int8 masks) through the affine `matrix`."""
    import cv2

    width, height = size
    out = dict(item)
    image = np.ascontiguousarray(item["image"].transpose(1, 2, 0))
    out["image"] = cv2.warpAffine(
        image, matrix, (width, height), flags=cv2.INTER_LINEAR, borderValue=(GREY, GREY, GREY)
    ).transpose(2, 0, 1)
    for key in MASK_KEYS:
        if key in item:  # int16: OpenCV warps no int8
            warped = cv2.warpAffine(
                item[key].astype(np.int16),
                matrix,
                (width, height),
                flags=cv2.INTER_NEAREST,
                borderValue=IGNORE_INDEX,
            )
            out[key] = warped.astype(np.int8)
    out["boxes"], keep = warp_boxes(item["boxes"], matrix, size)
    out["classes"] = item["classes"][keep]
    return out


def jitter_hsv(image: np.ndarray, rng: np.random.Generator, gains: tuple[float, float, float]) -> np.ndarray:
    """An RGB `(3, H, W)` uint8 image with hue, saturation and value scaled by factors uniform in
    1 +- gain (YOLOP's / ultralytics' `augment_hsv`: OpenCV's 180-step hue wraps around)."""
    import cv2

    if not any(gains):
        return image
    factors = rng.uniform(-1, 1, 3) * np.asarray(gains) + 1
    hue, sat, val = cv2.split(cv2.cvtColor(np.ascontiguousarray(image.transpose(1, 2, 0)), cv2.COLOR_RGB2HSV))
    x = np.arange(256, dtype=np.float64)
    lut_hue = ((x * factors[0]) % 180).astype(np.uint8)
    lut_sat = np.clip(x * factors[1], 0, 255).astype(np.uint8)
    lut_val = np.clip(x * factors[2], 0, 255).astype(np.uint8)
    hsv = cv2.merge((cv2.LUT(hue, lut_hue), cv2.LUT(sat, lut_sat), cv2.LUT(val, lut_val)))
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB).transpose(2, 0, 1)
