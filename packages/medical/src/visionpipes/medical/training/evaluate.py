"""Evaluation of a trained region model on labelled cases of an MSD task: whole-volume prediction, then
Dice and HD95 per region and their NaN-aware means, as JSON that `dvc metrics show` reads.

It scores what `runtime.predictor.Predictor` predicts; it does not train, and writes only the files it is asked to.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from visionpipes.core.errors import UserError
from visionpipes.core.io import atomic_path, write_json
from visionpipes.medical.msd.dataset_json import MSDCase, MSDTask
from visionpipes.medical.msd.regions import labels_to_regions
from visionpipes.medical.msd.volumes import read_image_volume, read_nifti
from visionpipes.medical.runtime.predictor import Predictor
from visionpipes.medical.training.metrics import case_metrics, summarize


def _json_safe(value: Any) -> Any:
    """NaN -> None (JSON has no NaN), recursively."""
    if isinstance(value, float):
        return None if math.isnan(value) else round(value, 6)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def select_cases(task: MSDTask, split: str | os.PathLike | None, subset: str = "val") -> list[MSDCase]:
    """The labelled cases to evaluate: all of `task.training`, or the `subset` listed in a `split.json`.

    Raises:
        UserError: if the split file is missing or malformed, or names a case the task does not have.
    """
    if split is None:
        return list(task.training)
    path = Path(split)
    if not path.is_file():
        raise UserError(f"split file {path} does not exist.")
    try:
        ids = json.loads(path.read_text())[subset]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise UserError(f"split file {path} has no '{subset}' list of case ids.") from None
    by_id = {c.case_id: c for c in task.training}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise UserError(f"split file {path} names cases {missing[:5]} that {task.root} does not list.")
    if not ids:
        raise UserError(f"split file {path} has an empty '{subset}' list: nothing to evaluate.")
    return [by_id[i] for i in ids]


def evaluate_cases(
    predictor: Predictor,
    task: MSDTask,
    cases: Sequence[MSDCase],
    *,
    progress: Callable[[int, int, str], None] | None = None,
    on_case: Callable[[str, np.ndarray, np.ndarray, np.ndarray], None] | None = None,
) -> dict[str, Any]:
    """Predict each case and score it against its label, per region.

    Args:
        predictor: the trained model.
        task: the task the cases belong to (its label names must give the model's regions).
        cases: labelled cases.
        progress: called as `progress(done, total, case_id)`.
        on_case: called as `on_case(case_id, image (C, X, Y, Z), truth, predicted)` (label maps on the
            image grid), e.g. to keep slices for a figure.

    Returns:
        `{"summary": {region: {"dice", "hd95", "n_dice", "n_hd95"}, "mean": {...}}, "cases": [...]}`,
        NaN where nothing could be measured.

    Raises:
        UserError: if the task's regions differ from the model's, or a file is unreadable.
    """
    task_regions = task.regions()
    if tuple(task_regions) != tuple(predictor.regions):
        raise UserError(
            f"{task.root / 'dataset.json'} gives regions {[r.name for r in task_regions]} but the model predicts "
            f"{[r.name for r in predictor.regions]}."
        )
    per_case = []
    for done, case in enumerate(cases, start=1):
        volume, image = read_image_volume(case.image, predictor.num_channels)
        predicted = predictor.predict_array(volume, image.affine)
        truth, _ = read_nifti(case.label)
        if truth.shape != predicted.shape:
            raise UserError(
                f"{case.label} has shape {truth.shape}, but its image {case.image} has {predicted.shape}."
            )
        scores = case_metrics(
            labels_to_regions(predicted, predictor.regions),
            labels_to_regions(truth, predictor.regions),
            predictor.regions,
            spacing=[float(z) for z in image.header.get_zooms()[:3]],
        )
        per_case.append({"case_id": case.case_id, **scores})
        if on_case:
            on_case(case.case_id, volume, truth, predicted)
        if progress:
            progress(done, len(cases), case.case_id)
    summary = summarize(
        [{k: v for k, v in c.items() if k != "case_id"} for c in per_case],
        [r.name for r in predictor.regions],
    )
    return {"summary": summary, "cases": per_case}


def write_metrics(
    result: dict[str, Any], metrics_path: str | os.PathLike, cases_path: str | os.PathLike | None = None
) -> None:
    """Write the summary (`metrics.json` for DVC) and, optionally, the per-case scores; NaN as null."""
    write_json(metrics_path, _json_safe(result["summary"]))
    if cases_path is not None:
        write_json(cases_path, _json_safe(result["cases"]))


class OverlaySlices:
    """Keeps, for the first `max_cases` cases given to it (as `evaluate_cases`' `on_case`), the axial slice
    where the true label map has most foreground: the first channel of the image, truth and prediction."""

    def __init__(self, max_cases: int = 3) -> None:
        self.max_cases = max_cases
        self.slices: list[tuple[str, int, np.ndarray, np.ndarray, np.ndarray]] = []

    def __call__(self, case_id: str, image: np.ndarray, truth: np.ndarray, predicted: np.ndarray) -> None:
        if len(self.slices) >= self.max_cases:
            return
        z = int(np.argmax((truth > 0).sum(axis=(0, 1))))
        self.slices.append((case_id, z, np.asarray(image[0, :, :, z]), truth[:, :, z], predicted[:, :, z]))


def write_overlay(
    slices: OverlaySlices, labels: dict[int, str], path: str | os.PathLike, channel_name: str = "image"
) -> Path:
    """A PNG with one row per kept case: the image slice, the truth and the prediction drawn over it.

    Raises:
        UserError: if no case was kept or the output folder does not exist.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    if not slices.slices:
        raise UserError("no evaluated case to draw in the overlay figure.")
    colours = ["#00000000", "#2ca02c", "#ffd700", "#d62728", "#1f77b4", "#9467bd", "#8c564b"]
    top = max(labels) if labels else 3
    cmap = ListedColormap(colours[: top + 1] if top + 1 <= len(colours) else plt.cm.tab10.colors[: top + 1])
    rows = len(slices.slices)
    fig, axes = plt.subplots(rows, 3, figsize=(9, 3 * rows), squeeze=False)
    for row, (case_id, z, image, truth, predicted) in enumerate(slices.slices):
        for col, (title, mask) in enumerate(
            ((channel_name, None), ("ground truth", truth), ("prediction", predicted))
        ):
            ax = axes[row, col]
            ax.imshow(image.T, cmap="gray", origin="lower")
            if mask is not None:
                shown = np.ma.masked_equal(mask.T.astype(int), 0)
                ax.imshow(
                    shown, cmap=cmap, vmin=0, vmax=top, alpha=0.55, origin="lower", interpolation="nearest"
                )
            ax.set_title(f"{case_id} z={z}: {title}", fontsize=8)
            ax.set_axis_off()
    legend = ", ".join(f"{v}={name}" for v, name in sorted(labels.items()) if v)
    fig.suptitle(f"labels: {legend}", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)
    return path
