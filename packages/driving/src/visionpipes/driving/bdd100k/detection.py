"""Detection labels resolved to the 10 BDD100K classes (legacy names mapped, ignore regions marked),
and a detector's boxes turned back into a det-JSON frame.

Pure data conversion; no torch, no ultralytics.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from visionpipes.driving.bdd100k.categories import DET_CATEGORIES, resolve_det_category
from visionpipes.driving.bdd100k.labels import BDD100KWarning, Box2D, Frame, Label


@dataclass(frozen=True)
class DetectionBox:
    """A box label resolved to a detection class (`class_id` 0..9; `ignored` for ignore regions)."""

    label: Label
    category: str
    class_id: int
    ignored: bool

    @property
    def crowd(self) -> bool:
        return bool(self.label.attributes.get("crowd", False))


def detection_boxes(frame: Frame, unknown: Counter[str] | None = None) -> list[DetectionBox]:
    """The box labels of a frame resolved to the 10 classes; unknown categories are counted and skipped.

    Args:
        frame: the frame.
        unknown: a counter that receives the categories that were skipped.
    """
    out = []
    for label in frame.labels or []:
        if label.box2d is None:
            continue
        resolved = resolve_det_category(label.category)
        if resolved is None:
            if unknown is not None:
                unknown[label.category] += 1
            continue
        name, ignored = resolved
        out.append(DetectionBox(label, name, DET_CATEGORIES.index(name), ignored))
    return out


def warn_unknown_categories(unknown: Counter[str], source: str) -> None:
    """Emit one `BDD100KWarning` counting the labels skipped for unknown categories (none: no warning)."""
    if unknown:
        total = sum(unknown.values())
        names = ", ".join(f"{name!r} x{count}" for name, count in unknown.most_common())
        warnings.warn(
            f"{source}: skipped {total} box label(s) of unknown categories ({names}).",
            BDD100KWarning,
            stacklevel=2,
        )


def detections_to_frame(
    name: str,
    boxes_xyxy: np.ndarray | Sequence[Sequence[float]],
    scores: np.ndarray | Sequence[float],
    class_ids: np.ndarray | Sequence[int],
    *,
    class_names: Sequence[str] = DET_CATEGORIES,
    first_id: int = 0,
    **frame_fields: Any,
) -> Frame:
    """A detector's output for one image as a det-JSON frame with `score` on every label.

    Args:
        name: the image name (`abc.jpg`).
        boxes_xyxy: (N, 4) pixel corners.
        scores: (N,) confidences.
        class_ids: (N,) indices into `class_names`.
        class_names: the detector's class names (default: the 10 BDD100K classes).
        first_id: the id of the first label (ids count up from it).
        frame_fields: other `Frame` fields (`video_name`, `frame_index`, ...).

    Raises:
        ValueError: if the arrays disagree in length or a class id is out of range.
    """
    boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    scores_arr = np.asarray(scores, dtype=np.float64).reshape(-1)
    classes = np.asarray(class_ids).astype(np.int64).reshape(-1)
    if not len(boxes) == len(scores_arr) == len(classes):
        raise ValueError(f"{len(boxes)} boxes, {len(scores_arr)} scores and {len(classes)} class ids differ.")
    if len(classes) and (classes.min() < 0 or classes.max() >= len(class_names)):
        raise ValueError(f"class ids must lie in 0..{len(class_names) - 1}.")
    labels = [
        Label(
            id=str(first_id + i),
            category=class_names[int(c)],
            box2d=Box2D(*(float(v) for v in box)),
            score=float(s),
        )
        for i, (box, s, c) in enumerate(zip(boxes, scores_arr, classes))
    ]
    return Frame(name=name, labels=labels, **frame_fields)
