"""Dice and HD95 per region, NaN-aware."""

from __future__ import annotations

import math

import numpy as np
import pytest

from visionpipes.medical.msd.regions import regions_from_labels
from visionpipes.medical.training.metrics import case_metrics, summarize

REGIONS = regions_from_labels({0: "background", 1: "edema", 2: "non-enhancing tumor", 3: "enhancing tumour"})


def _cube(lo: int, hi: int, shape=(20, 20, 20)) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[lo:hi, lo:hi, lo:hi] = True
    return m


def _reference_hd95(a: np.ndarray, b: np.ndarray, spacing: float) -> float:
    """Symmetric 95th-percentile surface distance by brute force (surface: voxels with a 6-neighbour outside)."""
    from scipy.ndimage import binary_erosion

    pa = np.argwhere(a & ~binary_erosion(a)) * spacing
    pb = np.argwhere(b & ~binary_erosion(b)) * spacing
    d = np.linalg.norm(pa[:, None] - pb[None], axis=-1)
    return max(np.percentile(d.min(axis=1), 95), np.percentile(d.min(axis=0), 95))


def test_dice_and_hd95_of_known_shapes() -> None:
    truth = np.stack([_cube(5, 10), _cube(4, 12), _cube(6, 8)])
    pred = np.stack([_cube(5, 10), _cube(5, 12), np.zeros((20, 20, 20), bool)])
    m = case_metrics(pred, truth, REGIONS, spacing=(2.0, 2.0, 2.0))
    assert m["TC"] == {"dice": 1.0, "hd95": 0.0}
    # WT: 7^3 predicted inside 8^3 true: Dice = 2*343 / (343 + 512); HD95 from a brute-force reference.
    assert m["WT"]["dice"] == pytest.approx(2 * 343 / (343 + 512), rel=1e-5)
    assert m["WT"]["hd95"] == pytest.approx(_reference_hd95(pred[1], truth[1], 2.0), abs=1e-3)
    # ET missed entirely: Dice 0, HD95 undefined.
    assert m["ET"]["dice"] == 0.0 and math.isnan(m["ET"]["hd95"])


def test_empty_regions_are_nan_and_left_out_of_means() -> None:
    empty = np.zeros((3, 20, 20, 20), bool)
    both_empty = case_metrics(empty, empty, REGIONS)
    assert all(math.isnan(v["dice"]) and math.isnan(v["hd95"]) for v in both_empty.values())
    false_alarm = empty.copy()
    false_alarm[2] = _cube(1, 3)
    assert case_metrics(false_alarm, empty, REGIONS)["ET"]["dice"] == 0.0

    truth = np.stack([_cube(5, 10), _cube(4, 12), _cube(6, 8)])
    perfect = case_metrics(truth, truth, REGIONS)
    summary = summarize([perfect, both_empty], [r.name for r in REGIONS])
    assert summary["ET"] == {"dice": 1.0, "hd95": 0.0, "n_dice": 1, "n_hd95": 1}
    assert summary["mean"] == {"dice": 1.0, "hd95": 0.0}
    nothing = summarize([both_empty], [r.name for r in REGIONS])
    assert math.isnan(nothing["mean"]["dice"]) and nothing["TC"]["n_dice"] == 0


def test_shape_errors() -> None:
    with pytest.raises(ValueError, match="differs"):
        case_metrics(np.zeros((3, 4, 4, 4), bool), np.zeros((3, 4, 4, 5), bool), REGIONS)
    with pytest.raises(ValueError, match="2 channels for 3 regions"):
        case_metrics(np.zeros((2, 4, 4, 4), bool), np.zeros((2, 4, 4, 4), bool), REGIONS)
