"""Official BDD100K metrics on the toolkit's own test files, against the toolkit's published numbers."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from skimage.morphology import disk

from visionpipes.core.errors import UserError
from visionpipes.driving.bdd100k.categories import LANE_BACKGROUND
from visionpipes.driving.bdd100k.labels import Box2D, Frame, Label, load_frames
from visionpipes.driving.bdd100k.masks import write_mask
from visionpipes.driving.metrics import (
    DET_METRICS,
    _dilate,
    evaluate_detection,
    evaluate_detection_files,
    evaluate_drivable,
    evaluate_lanes,
    lane_f_score,
)

# Scalabel's `scalabel/eval/detect_test.py` (and bdd100k's `detect_test.py`): the same gt/pred files
OFFICIAL_DET = {
    "AP": 0.34029392668401016,
    "AP_50": 0.55323900409039695,
    "AP_75": 0.3493873359997877,
    "AP_small": 0.2091624813537171,
    "AP_medium": 0.484364652499885,
    "AP_large": 0.6428530466767323,
    "AR_max_1": 0.23877338403079264,
    "AR_max_10": 0.38050036781867405,
    "AR_max_100": 0.4095160450224777,
    "AR_small": 0.255530493279957,
    "AR_medium": 0.5838594871794871,
    "AR_large": 0.6604261954261955,
}
OFFICIAL_DET_AP_PER_CLASS = {
    "pedestrian": 0.4137670388442971,
    "rider": 0.4170985553789942,
    "car": 0.6614185518719762,
    "truck": 0.5007078219289907,
    "bus": 0.003025302530253025,
    "train": -1.0,
    "motorcycle": 0.04574628954954978,
    "bicycle": -1.0,
    "traffic light": -1.0,
    "traffic sign": -1.0,
}
# bdd100k's `bdd100k/eval/lane_test.py` on lane/gts vs lane/res: rows are parallel, vertical, solid,
# dashed, the 8 categories, then the direction, style and category means and the overall mean.
OFFICIAL_LANE = np.array(
    [
        [70.53328267, 80.9831119, 100.0],
        [100.0, 100.0, 100.0],
        [70.53328267, 80.9831119, 100.0],
        [100.0, 100.0, 100.0],
        [99.82147748, 100.0, 100.0],
        [100.0, 100.0, 100.0],
        [100.0, 100.0, 100.0],
        [75.33066961, 79.34917317, 100.0],
        [71.02916505, 86.25984707, 100.0],
        [100.0, 100.0, 100.0],
        [96.43828133, 100.0, 100.0],
        [94.79621737, 100.0, 100.0],
        [85.26664133, 90.49155595, 100.0],
        [85.26664133, 90.49155595, 100.0],
        [92.17697636, 95.70112753, 100.0],
        [87.57008634, 92.22807981, 100.0],
    ]
)


def test_eval_det_matches_official_numbers(bdd_fixtures: Path) -> None:
    scores = evaluate_detection_files(bdd_fixtures / "det" / "gt.json", bdd_fixtures / "det" / "pred.json")
    summary = scores.summary()
    assert list(summary) == list(DET_METRICS)
    for name, value in OFFICIAL_DET.items():
        assert summary[name] == pytest.approx(value, abs=1e-12), name
    for name, value in OFFICIAL_DET_AP_PER_CLASS.items():
        assert scores.per_class_AP[name] == pytest.approx(value, abs=1e-12), name


def test_eval_det_gt_against_itself(bdd_fixtures: Path) -> None:
    gt = load_frames(bdd_fixtures / "det" / "gt.json")
    pred = copy.deepcopy(gt)
    for frame in pred:
        for label in frame.labels or []:
            label.score = 1.0
    scores = evaluate_detection(gt, pred)
    for name in ("AP", "AP_50", "AP_75", "AP_small", "AP_medium", "AP_large", "AR_max_100"):
        assert getattr(scores, name) == pytest.approx(1.0), name
    # several objects per image: one or ten detections cannot recall them all
    assert 0 < scores.AR_max_1 < scores.AR_max_10 < 1.0


def test_eval_det_missing_prediction_frames_count_as_empty(bdd_fixtures: Path) -> None:
    gt = load_frames(bdd_fixtures / "det" / "gt.json")
    pred = load_frames(bdd_fixtures / "det" / "pred.json")
    half = evaluate_detection(gt, pred[: len(pred) // 2])
    explicit = evaluate_detection(
        gt, pred[: len(pred) // 2] + [Frame(f.name, []) for f in pred[len(pred) // 2 :]]
    )
    assert half == explicit
    assert half.AR_max_100 < OFFICIAL_DET["AR_max_100"]


def test_eval_det_bad_predictions() -> None:
    gt = [Frame("a.jpg", [Label("1", "car", box2d=Box2D(0, 0, 50, 50))])]
    with pytest.raises(UserError, match=r"not in the ground truth \(first: 'b.jpg'\)"):
        evaluate_detection(gt, [Frame("b.jpg", [])])
    with pytest.raises(UserError, match="label id '9' has no 'score'"):
        evaluate_detection(gt, [Frame("a.jpg", [Label("9", "car", box2d=Box2D(0, 0, 50, 50))])])


def test_crowd_box_is_an_ignore_region() -> None:
    crowd = Label("2", "car", {"crowd": True}, box2d=Box2D(600, 300, 900, 500))
    gt = [Frame("a.jpg", [Label("1", "car", box2d=Box2D(0, 0, 99, 99)), crowd])]
    hit = Label("p1", "car", box2d=Box2D(0, 0, 99, 99), score=0.9)
    inside_crowd = Label("p2", "car", box2d=Box2D(650, 320, 700, 380), score=0.95)
    scores = evaluate_detection(gt, [Frame("a.jpg", [hit, inside_crowd])])
    assert scores.summary()["AP"] == pytest.approx(
        1.0
    )  # the detection inside the crowd region is not a false positive


# ---------------------------------------------------------------------------------------- lanes


def _lane_rows(scores) -> np.ndarray:
    rows = [
        list(v.values()) for task in ("direction", "style", "category") for v in scores.classes[task].values()
    ]
    rows += [list(scores.sub_tasks[t].values()) for t in ("direction", "style", "category")]
    rows.append([scores.F1_pix1, scores.F1_pix2, scores.F1_pix5])
    return np.array(rows)


def test_eval_lanes_matches_official_numbers(bdd_fixtures: Path) -> None:
    scores = evaluate_lanes(bdd_fixtures / "lane" / "gts", bdd_fixtures / "lane" / "res")
    assert scores.images == 4
    np.testing.assert_allclose(_lane_rows(scores), OFFICIAL_LANE, atol=1e-6)


def test_eval_lanes_gt_against_itself(bdd_fixtures: Path) -> None:
    scores = evaluate_lanes(bdd_fixtures / "lane" / "gts", bdd_fixtures / "lane" / "gts")
    assert (scores.F1_pix1, scores.F1_pix2, scores.F1_pix5) == (100.0, 100.0, 100.0)


def test_missing_lane_prediction_is_empty(bdd_fixtures: Path, tmp_path: Path) -> None:
    pred = tmp_path / "pred"
    shutil.copytree(bdd_fixtures / "lane" / "res", pred)
    missing = sorted(pred.glob("*.png"))[0]
    missing.unlink()
    without = evaluate_lanes(bdd_fixtures / "lane" / "gts", pred)
    write_mask(missing, np.full((720, 1280), LANE_BACKGROUND, dtype=np.uint8))
    assert evaluate_lanes(bdd_fixtures / "lane" / "gts", pred) == without
    assert without.F1_pix5 < 100.0


def test_lane_prediction_folder_errors(bdd_fixtures: Path, tmp_path: Path) -> None:
    pred = tmp_path / "pred"
    shutil.copytree(bdd_fixtures / "lane" / "res", pred)
    write_mask(pred / "not-in-gt.png", np.full((720, 1280), 255, dtype=np.uint8))
    with pytest.raises(UserError, match=r"1 mask\(s\) the ground truth lacks \(first: not-in-gt.png\)"):
        evaluate_lanes(bdd_fixtures / "lane" / "gts", pred)
    (pred / "not-in-gt.png").unlink()
    name = sorted(pred.glob("*.png"))[0]
    write_mask(name, np.full((360, 640), 255, dtype=np.uint8))
    with pytest.raises(UserError, match=f"{name.name} is 640x360, expected 1280x720"):
        evaluate_lanes(bdd_fixtures / "lane" / "gts", pred)
    with pytest.raises(UserError, match="does not exist"):
        evaluate_lanes(bdd_fixtures / "lane" / "gts", tmp_path / "nowhere")


def test_lane_f_score_cases() -> None:
    # the official unit cases of `eval_lane_per_threshold`
    a = np.zeros((10, 10), dtype=bool)
    b = np.zeros((10, 10), dtype=bool)
    a[3, 3:7] = True
    b[7, 3:7] = True
    assert [lane_f_score(a, b, r) for r in (1, 2, 3, 4, 5, 6)] == pytest.approx([0, 0, 0, 1, 1, 1])
    a = np.zeros((10, 10), dtype=bool)
    b = np.zeros((10, 10), dtype=bool)
    a[3, 3:6] = True
    b[5:8, 7] = True
    assert [lane_f_score(a, b, r) for r in (2, 3, 4, 5)] == pytest.approx([0, 1 / 3, 2 / 3, 1])
    empty = np.zeros((10, 10), dtype=bool)
    assert lane_f_score(a, empty, 2) == 0.0  # P = 1, R = 0
    assert lane_f_score(empty, a, 2) == 0.0  # P = 0, R = 1
    assert lane_f_score(empty, empty, 2) == 1.0


def test_dilation_equals_skimage() -> None:
    # skimage's binary_dilation (what the toolkit calls) is scipy.ndimage's, with a zero border
    rng = np.random.default_rng(0)
    mask = rng.random((64, 80)) > 0.97
    mask[0, :] = mask[:, -1] = True  # borders
    for radius in (1, 2, 5):
        assert np.array_equal(
            _dilate(mask, disk(radius).astype(np.uint8)), ndimage.binary_dilation(mask, disk(radius))
        )


# ---------------------------------------------------------------------------------------- drivable


def test_eval_drivable(tmp_path: Path) -> None:
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    gt = np.full((4, 10), 2, dtype=np.uint8)
    gt[:, :4] = 0  # 16 direct pixels
    gt[:, 4:6] = 1  # 8 alternative pixels
    pred = np.full((4, 10), 2, dtype=np.uint8)
    pred[:, :3] = 0  # 12 direct hits, 4 direct pixels predicted background
    pred[:, 4:8] = 1  # 8 alternative hits; 8 predicted on gt background are not counted
    write_mask(gt_dir / "a.png", gt)
    write_mask(pred_dir / "a.png", pred)
    write_mask(gt_dir / "b.png", np.full((4, 10), 2, dtype=np.uint8))  # no prediction: background
    scores = evaluate_drivable(gt_dir, pred_dir)
    assert scores.IoU == pytest.approx({"direct": 75.0, "alternative": 100.0})
    assert scores.mIoU == pytest.approx(87.5)
    assert scores.pAcc == pytest.approx(100 * 20 / 24)
    assert scores.images == 2
    write_mask(gt_dir / "c.png", np.full((4, 10), 0, dtype=np.uint8))
    write_mask(pred_dir / "c.png", np.full((4, 10), 0, dtype=np.uint8))
    write_mask(pred_dir / "extra.png", np.zeros((4, 10), dtype=np.uint8))
    with pytest.raises(UserError, match="ground truth lacks"):
        evaluate_drivable(gt_dir, pred_dir)
