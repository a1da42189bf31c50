"""Evaluation of a trained region model on labelled cases of an MSD task: whole-volume prediction, then
Dice and HD95 per region and their NaN-aware means, as JSON that `dvc metrics show` reads.

It scores what `infer.Predictor` predicts; it does not train, and writes only the files it is asked to.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from visionpipes.core.errors import UserError
from visionpipes.core.io import write_json
from visionpipes.medical.infer import Predictor
from visionpipes.medical.metrics import case_metrics, summarize
from visionpipes.medical.msd import MSDCase, MSDTask, labels_to_regions, read_nifti, to_channels_first


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
) -> dict[str, Any]:
    """Predict each case and score it against its label, per region.

    Args:
        predictor: the trained model.
        task: the task the cases belong to (its label names must give the model's regions).
        cases: labelled cases.
        progress: called as `progress(done, total, case_id)`.

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
        data, image = read_nifti(case.image)
        predicted = predictor.predict_array(
            to_channels_first(data, predictor.num_channels, case.image), image.affine
        )
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
