"""The official BDD100K drivable-area IoU of predicted masks on a prepared split (`vp-driving evaluate
--drivable-pred DIR`, or a model's predict function), scored with `metrics.drivable_histogram` /
`metrics.drivable_scores` (as `bdd100k/eval/seg.py`: background ground truth not counted, a missing
prediction all background, IoU 0-100 per class, mIoU over the classes present in the ground truth).

Public API:

- `evaluate_drivable(dataset, predictions, *, split="val", out_dir=None) -> DrivableEvaluation`
    - `dataset`: a `PreparedDataset` or the path of its `dataset.json` (it must record
      `drivable_masks` for `split`).
    - `predictions`: a folder of official drivable mask PNGs named `<image stem>.png` (extra files are
      ignored, a missing one counts as all background), or a callable `predict(image_path: Path) ->
      np.ndarray` returning the (H, W) mask (values 0 direct, 1 alternative, 2 background) at the
      ground truth's size.
    - `out_dir`: with a callable, also write each predicted mask there in the official format
      (`bdd100k.drivable.write_drivable_mask`), ready to submit.
    - The result's `as_dict()` is what `metrics.json` holds under `drivable`: `mIoU`, `IoU`
      (`direct`, `alternative`), `pAcc` (all 0-100, as the toolkit and the lane F-scores), `images`
      (scored: the split's images with a ground-truth mask), `missing_predictions`, `split`.

Scores files or a callable's arrays; it never trains or imports torch itself.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from visionpipes.core.errors import UserError
from visionpipes.driving.bdd100k.categories import DRIVABLE_BACKGROUND, DRIVABLE_CATEGORIES
from visionpipes.driving.bdd100k.drivable import check_drivable_array, read_drivable_mask, write_drivable_mask
from visionpipes.driving.bdd100k.masks import mask_name
from visionpipes.driving.metrics import DrivableScores, drivable_histogram, drivable_scores

if TYPE_CHECKING:
    from visionpipes.driving.prepare import PreparedDataset

#: A model's drivable prediction for one image: its path -> (H, W) mask in {0, 1, 2}.
DrivablePredictFn = Callable[[Path], np.ndarray]


@dataclass(frozen=True)
class DrivableEvaluation:
    """The official drivable scores of one split, and how many images had no predicted mask."""

    scores: DrivableScores
    missing_predictions: int
    split: str

    def as_dict(self) -> dict[str, Any]:
        return {**self.scores.as_dict(), "missing_predictions": self.missing_predictions, "split": self.split}


def _dataset(dataset: PreparedDataset | str | os.PathLike) -> PreparedDataset:
    from visionpipes.driving.prepare import PreparedDataset, load_manifest

    return dataset if isinstance(dataset, PreparedDataset) else load_manifest(dataset)


def evaluate_drivable(
    dataset: PreparedDataset | str | os.PathLike,
    predictions: str | os.PathLike | DrivablePredictFn,
    *,
    split: str = "val",
    out_dir: str | os.PathLike | None = None,
) -> DrivableEvaluation:
    """Score drivable-area predictions on a prepared split with the official IoU.

    Args:
        dataset: the prepared dataset (or its `dataset.json`).
        predictions: a folder of official mask PNGs (`<image stem>.png`), or `predict(image_path) -> mask`.
        split: the split to score (`val`).
        out_dir: with a callable, the folder its masks are also written to (official PNGs).

    Returns:
        The scores (IoU per class, mIoU, pixel accuracy, 0-100) and the count of missing predictions.

    Raises:
        UserError: when the split has no drivable ground truth, the prediction folder is missing or
            matches no image of the split, or a mask (file or array) has the wrong mode, shape or values.

    Example:
        >>> result = evaluate_drivable("prepared/dataset.json", "preds/drivable")  # doctest: +SKIP
        >>> result.as_dict()["mIoU"]  # doctest: +SKIP
    """
    data = _dataset(dataset)
    if split not in data.names:
        raise UserError(f"the dataset has no split {split!r} (splits: {', '.join(data.names)}).")
    gt_dir = data.drivable_masks.get(split)
    if gt_dir is None:
        raise UserError(
            f"the prepared dataset has no drivable masks for split {split!r}: its BDD100K root ({data.root}) "
            f"has neither labels/drivable/masks/{split}/ nor labels/drivable/polygons/drivable_{split}.json "
            "(or it was prepared before drivable masks were recorded: run `vp-driving prepare` again)."
        )
    if not Path(gt_dir).is_dir():
        raise UserError(f"drivable ground-truth folder {gt_dir} (for split {split!r}) does not exist.")
    pairs = [(data.images[split] / name, Path(gt_dir) / mask_name(name)) for name in data.names[split]]
    pairs = [(image, gt) for image, gt in pairs if gt.is_file()]
    if not pairs:
        raise UserError(f"no {split} image has a drivable mask in {gt_dir}.")

    predict: DrivablePredictFn | None = None
    pred_dir: Path | None = None
    if callable(predictions):
        predict = predictions
    else:
        pred_dir = Path(predictions)
        if not pred_dir.is_dir():
            raise UserError(f"drivable prediction folder {pred_dir} does not exist.")
        if not any((pred_dir / gt.name).is_file() for _, gt in pairs):
            raise UserError(
                f"drivable prediction folder {pred_dir} holds no mask named after a {split} image "
                f"(expected e.g. {pairs[0][1].name})."
            )
    out = Path(out_dir) if out_dir is not None and predict is not None else None

    size = len(DRIVABLE_CATEGORIES)
    hist = np.zeros((size, size), dtype=np.int64)
    missing = 0
    for image, gt_path in pairs:
        gt = read_drivable_mask(gt_path)
        if predict is not None:
            pred = check_drivable_array(
                predict(image), what=f"the predicted drivable mask of {image.name}", expected_shape=gt.shape
            )
            if out is not None:
                write_drivable_mask(out / gt_path.name, pred)
        else:
            assert pred_dir is not None
            pred_path = pred_dir / gt_path.name
            if pred_path.is_file():
                pred = read_drivable_mask(pred_path, expected_shape=gt.shape)
            else:  # as the official evaluation: a missing prediction is all background
                missing += 1
                pred = np.full_like(gt, DRIVABLE_BACKGROUND)
        hist += drivable_histogram(gt, pred)
    # the classes in the ground truth: the histogram's non-empty rows (every non-background gt pixel counts)
    gt_ids = {k for k in range(size - 1) if hist[k].sum() > 0}
    return DrivableEvaluation(drivable_scores(hist, gt_ids, len(pairs)), missing, split)


__all__ = ["DrivableEvaluation", "DrivablePredictFn", "evaluate_drivable"]
