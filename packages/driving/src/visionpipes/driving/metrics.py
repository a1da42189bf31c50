"""The official BDD100K metrics, reproduced: detection AP/AR (pycocotools COCOeval, as Scalabel's
`evaluate_det` runs it), lane-marking F-scores (as `bdd100k/eval/lane.py`) and drivable-area IoU (as
`bdd100k/eval/seg.py`).

This module only scores files or arrays already written; it never trains, predicts or imports torch.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from visionpipes.core.errors import UserError
from visionpipes.driving.bdd100k.categories import (
    DET_CATEGORIES,
    DRIVABLE_BACKGROUND,
    DRIVABLE_CATEGORIES,
    LANE_BACKGROUND,
    LANE_BACKGROUND_BIT,
    LANE_CATEGORIES,
    LANE_DIRECTION_BIT,
    LANE_DIRECTIONS,
    LANE_STYLE_BIT,
    LANE_STYLES,
)
from visionpipes.driving.bdd100k.detection import detection_boxes, warn_unknown_categories
from visionpipes.driving.bdd100k.labels import IMAGE_SIZE, Frame, load_frames
from visionpipes.driving.bdd100k.masks import check_mask_array, read_mask

# --------------------------------------------------------------------------------------------------
# Detection
# --------------------------------------------------------------------------------------------------

#: The 12 official detection numbers, in the official order.
DET_METRICS: tuple[str, ...] = (
    "AP",
    "AP_50",
    "AP_75",
    "AP_small",
    "AP_medium",
    "AP_large",
    "AR_max_1",
    "AR_max_10",
    "AR_max_100",
    "AR_small",
    "AR_medium",
    "AR_large",
)


@dataclass(frozen=True)
class DetectionScores:
    """The 12 official numbers (0-1; -1 where the ground truth has nothing to score) and AP per class."""

    AP: float
    AP_50: float
    AP_75: float
    AP_small: float
    AP_medium: float
    AP_large: float
    AR_max_1: float
    AR_max_10: float
    AR_max_100: float
    AR_small: float
    AR_medium: float
    AR_large: float
    per_class_AP: dict[str, float]

    def summary(self) -> dict[str, float]:
        """The 12 numbers as an ordered dict."""
        return {name: getattr(self, name) for name in DET_METRICS}


def frames_to_coco(
    frames: Sequence[Frame],
    *,
    image_ids: Mapping[str, int] | None = None,
    image_size: tuple[int, int] = IMAGE_SIZE,
    with_scores: bool = False,
    source: str = "<frames>",
) -> dict[str, Any]:
    """Frames as a COCO detection dict, the way the official evaluation converts them.

    Each box becomes `bbox = [x1, y1, x2 - x1 + 1, y2 - y1 + 1]` with `area = w * h`; category ids are
    1..10 in `DET_CATEGORIES` order; `iscrowd` is 1 for `crowd` boxes and for ignore regions
    (`other person`, `other vehicle`, `trailer`, mapped to their class); labels of unknown categories are
    skipped and counted in one warning.

    Args:
        frames: the frames.
        image_ids: image id per frame name; default: frames sorted by name, numbered from 1.
        image_size: (width, height) written for every image.
        with_scores: copy each label's `score` (predictions).
        source: the file the frames came from, for the warning.

    Raises:
        UserError: if `with_scores` and a label has no score, or a frame is missing from `image_ids`.
    """
    if image_ids is None:
        image_ids = {frame.name: i + 1 for i, frame in enumerate(sorted(frames, key=lambda f: f.name))}
    width, height = image_size
    images = [
        {"id": image_ids[name], "file_name": name, "width": width, "height": height}
        for name in sorted(image_ids, key=image_ids.__getitem__)
    ]
    annotations = []
    unknown: Counter[str] = Counter()
    for frame in sorted(frames, key=lambda f: f.name):
        if frame.name not in image_ids:
            raise UserError(f"{source}: frame {frame.name!r} is not in the ground truth.")
        for det in detection_boxes(frame, unknown):
            box = det.label.box2d
            assert box is not None
            w, h = box.x2 - box.x1 + 1, box.y2 - box.y1 + 1
            ann: dict[str, Any] = {
                "id": len(annotations) + 1,
                "image_id": image_ids[frame.name],
                "category_id": det.class_id + 1,
                "bbox": [box.x1, box.y1, w, h],
                "area": float(w * h),
                "iscrowd": int(det.crowd or det.ignored),
                "ignore": 0,
            }
            if with_scores:
                if det.label.score is None:
                    raise UserError(
                        f"{source}: frame {frame.name!r} label id {det.label.id!r} has no 'score'."
                    )
                ann["score"] = det.label.score
            annotations.append(ann)
    warn_unknown_categories(unknown, source)
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(DET_CATEGORIES)]
    return {"images": images, "annotations": annotations, "categories": categories}


def _coco(dataset: dict[str, Any]) -> Any:
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _mean_valid(values: np.ndarray) -> float:
    valid = values[values > -1]
    return float(np.mean(valid)) if valid.size else -1.0


def evaluate_detection(
    gt_frames: Sequence[Frame],
    pred_frames: Sequence[Frame],
    *,
    gt_source: str = "<ground truth>",
    pred_source: str = "<predictions>",
) -> DetectionScores:
    """Score detections the way the official BDD100K toolkit does.

    Ground-truth frames are sorted by name and numbered from 1; predictions are matched to them by
    name (a frame with no prediction has none); pycocotools' COCOeval runs on `bbox` over the 10
    classes; each number is the mean over the valid (`> -1`) entries of COCOeval's precision/recall
    arrays, as Scalabel's `COCOevalV2.get_score` takes it.

    Raises:
        UserError: if a prediction names a frame the ground truth lacks, or has no score.
    """
    from pycocotools.cocoeval import COCOeval

    gt_names = [frame.name for frame in gt_frames]
    if len(set(gt_names)) != len(gt_names):
        dup = next(name for name, n in Counter(gt_names).items() if n > 1)
        raise UserError(f"{gt_source}: frame {dup!r} appears more than once.")
    image_ids = {name: i + 1 for i, name in enumerate(sorted(gt_names))}
    extra = sorted({frame.name for frame in pred_frames} - set(image_ids))
    if extra:
        raise UserError(
            f"{pred_source}: {len(extra)} predicted frame(s) are not in the ground truth (first: {extra[0]!r})."
        )
    coco_gt = _coco(frames_to_coco(gt_frames, image_ids=image_ids, source=gt_source))
    dt = frames_to_coco(pred_frames, image_ids=image_ids, with_scores=True, source=pred_source)
    for ann in dt["annotations"]:  # what COCO.loadRes sets for bbox results
        ann["iscrowd"] = 0
    coco_dt = _coco(dt)

    evaluator = COCOeval(coco_gt, coco_dt, "bbox")
    evaluator.params.imgIds = sorted(image_ids.values())
    evaluator.params.catIds = list(range(1, len(DET_CATEGORIES) + 1))
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
    params = evaluator.params
    precision = evaluator.eval["precision"]  # [T, R, K, A, M]
    recall = evaluator.eval["recall"]  # [T, K, A, M]
    area = {label: i for i, label in enumerate(params.areaRngLbl)}
    max_dets = {m: i for i, m in enumerate(params.maxDets)}
    t50 = int(np.where(np.isclose(params.iouThrs, 0.5))[0][0])
    t75 = int(np.where(np.isclose(params.iouThrs, 0.75))[0][0])

    def ap(k: slice | int = slice(None), t: slice | int = slice(None), a: str = "all") -> float:
        return _mean_valid(precision[t, :, k, area[a], max_dets[100]])

    def ar(a: str = "all", m: int = 100) -> float:
        return _mean_valid(recall[:, :, area[a], max_dets[m]])

    return DetectionScores(
        AP=ap(),
        AP_50=ap(t=t50),
        AP_75=ap(t=t75),
        AP_small=ap(a="small"),
        AP_medium=ap(a="medium"),
        AP_large=ap(a="large"),
        AR_max_1=ar(m=1),
        AR_max_10=ar(m=10),
        AR_max_100=ar(m=100),
        AR_small=ar(a="small"),
        AR_medium=ar(a="medium"),
        AR_large=ar(a="large"),
        per_class_AP={name: ap(k=k) for k, name in enumerate(DET_CATEGORIES)},
    )


def evaluate_detection_files(gt_path: str | os.PathLike, pred_path: str | os.PathLike) -> DetectionScores:
    """`evaluate_detection` on two det JSON files (Scalabel or legacy format).

    Raises:
        UserError: on unreadable or malformed files (see `load_frames`).
    """
    gt = load_frames(gt_path)
    pred = load_frames(pred_path)
    return evaluate_detection(gt, pred, gt_source=str(gt_path), pred_source=str(pred_path))


# --------------------------------------------------------------------------------------------------
# Lane marking
# --------------------------------------------------------------------------------------------------

#: Boundary tolerances (pixels) of the three official F-scores.
BOUND_PIXELS: tuple[int, ...] = (1, 2, 5)
#: Sub-task -> (bit offset, bit width, value names).
LANE_SUB_TASKS: dict[str, tuple[int, int, tuple[str, ...]]] = {
    "direction": (LANE_DIRECTION_BIT, 1, LANE_DIRECTIONS),
    "style": (LANE_STYLE_BIT, 1, LANE_STYLES),
    "category": (0, 3, LANE_CATEGORIES),
}


def _disk(radius: int) -> np.ndarray:
    from skimage.morphology import disk

    return disk(radius).astype(np.uint8)


def _dilate(mask: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    """Binary dilation, equal to `skimage.morphology.binary_dilation(mask, footprint)` (zero border)."""
    import cv2

    if not mask.any():
        return mask
    return cv2.dilate(mask.view(np.uint8), footprint, borderType=cv2.BORDER_CONSTANT, borderValue=0).view(
        bool
    )


def lane_f_score(gt_mask: np.ndarray, pred_mask: np.ndarray, bound_pixels: int) -> float:
    """The official boundary F-score of one class in one image (0-1).

    Both masks are dilated with a disk of radius `bound_pixels`; precision = |pred ∩ dilated gt| /
    |pred|, recall = |gt ∩ dilated pred| / |gt|; an empty prediction with ground truth gives P=1, R=0,
    a prediction with empty ground truth P=0, R=1, both empty 1, 1; F = 2PR / (P + R) (0 if P + R = 0).
    """
    gt = np.ascontiguousarray(gt_mask, dtype=bool)
    pred = np.ascontiguousarray(pred_mask, dtype=bool)
    n_gt = int(gt.sum())
    n_pred = int(pred.sum())
    if n_pred == 0 and n_gt > 0:
        precision, recall = 1.0, 0.0
    elif n_pred > 0 and n_gt == 0:
        precision, recall = 0.0, 1.0
    elif n_pred == 0 and n_gt == 0:
        precision, recall = 1.0, 1.0
    else:
        footprint = _disk(bound_pixels)
        precision = float(np.sum(pred & _dilate(gt, footprint))) / n_pred
        recall = float(np.sum(gt & _dilate(pred, footprint))) / n_gt
    if precision + recall == 0:
        return 0.0
    return 2.0 * precision * recall / (precision + recall)


def lane_frame_scores(gt_byte: np.ndarray, pred_byte: np.ndarray) -> dict[str, np.ndarray]:
    """Per sub-task, an (n_values, len(BOUND_PIXELS)) array of F-scores (0-1) for one image.

    The mask of a value is `field == value AND bit 3 == 0`, on ground truth and prediction alike.

    Raises:
        UserError: if the masks are not uint8 of the same shape.
    """
    check_mask_array(gt_byte, what="ground-truth lane mask")
    check_mask_array(pred_byte, expected_shape=gt_byte.shape, what="predicted lane mask")
    gt_fg = ((gt_byte >> LANE_BACKGROUND_BIT) & 1) == 0
    pred_fg = ((pred_byte >> LANE_BACKGROUND_BIT) & 1) == 0
    out = {}
    for task, (offset, width, names) in LANE_SUB_TASKS.items():
        field_mask = (1 << width) - 1
        gt_field = (gt_byte >> offset) & field_mask
        pred_field = (pred_byte >> offset) & field_mask
        scores = np.zeros((len(names), len(BOUND_PIXELS)))
        for value in range(len(names)):
            gt_mask = (gt_field == value) & gt_fg
            pred_mask = (pred_field == value) & pred_fg
            for j, bound in enumerate(BOUND_PIXELS):
                scores[value, j] = lane_f_score(gt_mask, pred_mask, bound)
        out[task] = scores
    return out


@dataclass(frozen=True)
class LaneScores:
    """Lane F-scores (0-100): overall, per sub-task and per class, for each boundary tolerance."""

    F1_pix1: float
    F1_pix2: float
    F1_pix5: float
    sub_tasks: dict[str, dict[str, float]]
    classes: dict[str, dict[str, dict[str, float]]]
    images: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def merge_lane_scores(per_image: Sequence[Mapping[str, np.ndarray]]) -> LaneScores:
    """Average per-image scores as the official `merge_results`: mean over images, x100, mean over the
    values of each sub-task, then mean over the three sub-tasks.

    Raises:
        UserError: if there are no images.
    """
    if not per_image:
        raise UserError("no lane masks to evaluate.")
    keys = [f"F1_pix{b}" for b in BOUND_PIXELS]
    sub_tasks: dict[str, dict[str, float]] = {}
    classes: dict[str, dict[str, dict[str, float]]] = {}
    task_means = []
    for task, (_, _, names) in LANE_SUB_TASKS.items():
        arr = np.stack([scores[task] for scores in per_image]).mean(axis=0) * 100  # (n_values, n_bounds)
        mean = arr.mean(axis=0)
        task_means.append(mean)
        sub_tasks[task] = {key: float(v) for key, v in zip(keys, mean)}
        classes[task] = {name: {key: float(v) for key, v in zip(keys, row)} for name, row in zip(names, arr)}
    overall = np.stack(task_means).mean(axis=0)
    return LaneScores(
        *(float(v) for v in overall), sub_tasks=sub_tasks, classes=classes, images=len(per_image)
    )


def _png_files(folder: Path, what: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise UserError(f"{what} folder {folder} does not exist.")
    files: dict[str, Path] = {}
    for path in sorted(folder.rglob("*.png")):
        files.setdefault(path.stem, path)
    return files


def match_mask_folders(
    gt_dir: str | os.PathLike, pred_dir: str | os.PathLike
) -> list[tuple[Path, Path | None]]:
    """Pair each ground-truth PNG with the prediction of the same stem (None when missing).

    Raises:
        UserError: if a folder is missing, the ground truth holds no PNG, or the prediction folder holds
            PNGs the ground truth lacks.
    """
    gt = _png_files(Path(gt_dir), "ground-truth")
    pred = _png_files(Path(pred_dir), "prediction")
    if not gt:
        raise UserError(f"ground-truth folder {gt_dir} holds no .png masks.")
    extra = sorted(set(pred) - set(gt))
    if extra:
        raise UserError(
            f"prediction folder {pred_dir} holds {len(extra)} mask(s) the ground truth lacks "
            f"(first: {pred[extra[0]].name})."
        )
    return [(gt[name], pred.get(name)) for name in sorted(gt)]


def evaluate_lanes(gt_dir: str | os.PathLike, pred_dir: str | os.PathLike) -> LaneScores:
    """Score a folder of predicted lane masks against the ground-truth folder, as the official toolkit.

    A missing prediction file counts as an empty prediction (every pixel background).

    Raises:
        UserError: on missing folders, extra predictions, or masks of the wrong size or dtype.
    """
    per_image = []
    for gt_path, pred_path in match_mask_folders(gt_dir, pred_dir):
        gt = read_mask(gt_path, kind="ground-truth lane")
        if pred_path is None:
            pred = np.full_like(gt, LANE_BACKGROUND)
        else:
            pred = read_mask(pred_path, expected_shape=gt.shape, kind="predicted lane")
        per_image.append(lane_frame_scores(gt, pred))
    return merge_lane_scores(per_image)


# --------------------------------------------------------------------------------------------------
# Drivable area
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DrivableScores:
    """Drivable-area IoU (0-100) per class (direct, alternative), their mean over the classes present in
    the ground truth (`mIoU`), and pixel accuracy on non-background ground truth (`pAcc`)."""

    mIoU: float
    IoU: dict[str, float]
    pAcc: float
    images: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def drivable_histogram(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """The official 3x3 confusion histogram of one image (rows gt, columns prediction).

    Ground-truth background (2, or 255) pixels are not counted; predicted values >= 2 count as background.
    """
    size = len(DRIVABLE_CATEGORIES)
    gt = gt.astype(np.int64).ravel()
    pred = pred.astype(np.int64).ravel().copy()
    gt[gt == 255] = DRIVABLE_BACKGROUND
    pred[pred >= size] = size - 1
    keep = (gt >= 0) & (gt < size - 1)
    return np.bincount(size * gt[keep] + pred[keep], minlength=size**2).reshape(size, size)


def drivable_scores(hist: np.ndarray, gt_ids: set[int], images: int) -> DrivableScores:
    """IoU per non-background class from an accumulated histogram, as `bdd100k/eval/seg.py`."""
    diag = np.diag(hist).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        ious = diag / (hist.sum(1) + hist.sum(0) - diag)
        acc = diag[:-1].sum() / hist[:-1].sum()
    ious[np.isnan(ious)] = 0
    ious = ious[:-1]
    present = sorted(gt_ids)
    miou = float(np.mean(ious[present]) * 100) if present else -1.0
    return DrivableScores(
        mIoU=miou,
        IoU={name: float(v * 100) for name, v in zip(DRIVABLE_CATEGORIES[:-1], ious)},
        pAcc=float(acc * 100) if np.isfinite(acc) else -1.0,
        images=images,
    )


def evaluate_drivable(gt_dir: str | os.PathLike, pred_dir: str | os.PathLike) -> DrivableScores:
    """Score a folder of drivable masks against the ground truth (a missing prediction is all background).

    Raises:
        UserError: on missing folders, extra predictions, or masks of the wrong size or dtype.
    """
    size = len(DRIVABLE_CATEGORIES)
    hist = np.zeros((size, size), dtype=np.int64)
    gt_ids: set[int] = set()
    pairs = match_mask_folders(gt_dir, pred_dir)
    for gt_path, pred_path in pairs:
        gt = read_mask(gt_path, kind="ground-truth drivable")
        if pred_path is None:
            pred = np.full_like(gt, DRIVABLE_BACKGROUND)
        else:
            pred = read_mask(pred_path, expected_shape=gt.shape, kind="predicted drivable")
        ids = set(np.unique(gt).tolist()) - {DRIVABLE_BACKGROUND, 255}
        gt_ids |= {i for i in ids if i < size - 1}
        hist += drivable_histogram(gt, pred)
    return drivable_scores(hist, gt_ids, len(pairs))
