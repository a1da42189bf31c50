"""The multi-task training augmentation (`multitask.augment`): the affine warp moves the image, the boxes
and every mask alike (checked against where the warped pixels land), brings in grey image and ignored
targets from outside the canvas, drops boxes warped off the canvas; the colour jitter leaves the labels
alone; the dataset's draws are seeded per (seed, epoch, item)."""

from __future__ import annotations

import numpy as np
import pytest

from visionpipes.driving.multitask.augment import GREY, affine_matrix, jitter_hsv, warp_boxes, warp_item
from visionpipes.driving.multitask.config import IGNORE_INDEX, MultiTaskTrainConfig

SIZE = (160, 96)  # width, height


def _item() -> dict[str, np.ndarray]:
    """A white rectangle (a box, drivable 'direct', lane type 3) on black, one more box elsewhere."""
    width, height = SIZE
    image = np.zeros((3, height, width), dtype=np.uint8)
    image[:, 30:50, 40:90] = 255
    drivable = np.full((height, width), 2, dtype=np.int8)
    drivable[30:50, 40:90] = 0
    lanes = np.full((height, width), 8, dtype=np.int8)
    lanes[30:50, 40:90] = 3
    return {
        "image": image,
        "boxes": np.array([[40, 30, 90, 50], [150, 5, 158, 15]], dtype=np.float32),
        "classes": np.array([2, 5]),
        "drivable": drivable,
        "lane_category": lanes,
    }


def _extent(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float32)


@pytest.mark.parametrize("seed", range(6))
def test_the_warp_moves_image_boxes_and_masks_alike(seed: int) -> None:
    rng = np.random.default_rng(seed)
    matrix = affine_matrix(SIZE, rng, scale=0.25, translate=0.1, degrees=10 if seed % 2 else 0)
    out = warp_item(_item(), matrix, SIZE)
    white = out["image"][0] > 127
    # the masks follow the pixels: the drivable 'direct' and lane type 3 regions are the white rectangle
    for key, value in (("drivable", 0), ("lane_category", 3)):
        region = out[key] == value
        iou = (region & white).sum() / (region | white).sum()
        assert iou > 0.9, (key, iou)
    # the first box is the warped rectangle's extent (rotation grows it: the corners' extent contains it)
    assert out["classes"][0] == 2
    pixels = _extent(white)
    box = out["boxes"][0]
    assert np.all(box[:2] <= pixels[:2] + 1.5) and np.all(box[2:] >= pixels[2:] - 1.5), (box, pixels)
    if seed % 2 == 0:  # no rotation: the extent itself, within the resampling's pixel
        assert np.abs(box - pixels).max() <= 1.5, (box, pixels)
    # what came in from outside the canvas: grey image, ignored targets (the warp shrinks or shifts it)
    outside = out["drivable"] == IGNORE_INDEX
    assert np.array_equal(outside, out["lane_category"] == IGNORE_INDEX)
    inner = np.zeros_like(outside)  # away from the edge, where bilinear resampling blends grey with the image
    inner[1:-1, 1:-1] = outside[1:-1, 1:-1] & outside[:-2, 1:-1] & outside[2:, 1:-1]
    inner[1:-1, 1:-1] &= outside[1:-1, :-2] & outside[1:-1, 2:]
    if inner.any():
        assert np.mean(np.abs(out["image"][:, inner].astype(int) - GREY) <= 1) > 0.95


def test_boxes_warped_off_the_canvas_are_dropped() -> None:
    shift = np.array([[1.0, 0.0, 100.0], [0.0, 1.0, 0.0]])  # 100 px to the right
    boxes, keep = warp_boxes(np.array([[10, 10, 40, 30], [100, 10, 150, 30]], dtype=np.float32), shift, SIZE)
    assert keep.tolist() == [True, False]
    assert boxes.tolist() == [[110, 10, 140, 30]]
    out = warp_item(_item(), shift, SIZE)
    # the rectangle keeps 20 of its 50 px (over MIN_AREA_RATIO): kept and clipped; the small box leaves
    assert out["classes"].tolist() == [2]
    assert out["boxes"].tolist() == [[140, 30, 160, 50]]
    # a sliver under MIN_AREA_RATIO of its box goes too
    _, keep = warp_boxes(np.array([[10, 10, 110, 30]], dtype=np.float32), shift, SIZE)
    assert keep.tolist() == [True]
    _, keep = warp_boxes(
        np.array([[10, 10, 110, 30]], dtype=np.float32), shift + np.array([[0, 0, 45], [0, 0, 0]]), SIZE
    )
    assert keep.tolist() == [False]  # 5 of 100 px left on the canvas


def test_the_colour_jitter_changes_the_image_only() -> None:
    rng = np.random.default_rng(0)
    image = np.random.default_rng(1).integers(0, 256, (3, 24, 32), dtype=np.uint8)
    assert jitter_hsv(image, rng, (0.0, 0.0, 0.0)) is image
    jittered = jitter_hsv(image, rng, (0.015, 0.7, 0.4))
    assert jittered.shape == image.shape and jittered.dtype == np.uint8
    assert np.abs(jittered.astype(int) - image).mean() > 2  # the value/saturation gains move the pixels


def test_params_take_yolops_augmentation_and_reject_bad_ranges() -> None:
    cfg = MultiTaskTrainConfig(scale=0.25, translate=0.1, degrees=10, hsv=[0.015, 0.7, 0.4])
    assert cfg.hsv == [0.015, 0.7, 0.4]
    with pytest.raises(ValueError):
        MultiTaskTrainConfig(scale=1.5)
    with pytest.raises(ValueError):
        MultiTaskTrainConfig(hsv=[0.1, 0.2])
