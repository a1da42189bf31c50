"""Per-camera object tracking with ultralytics' ByteTrack/BoT-SORT on the ONNX detector's boxes, and
the tracked boxes of one frame as a BDD100K det-JSON frame (`attributes.trackId`).

Runtime: applies `ultralytics_env` before importing ultralytics; never imports training code.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import numpy as np

from visionpipes.core.errors import UserError
from visionpipes.driving.bdd100k.labels import Box2D, Frame, Label


def make_tracker(kind: str = "bytetrack", frame_rate: int = 30) -> Any:
    """An ultralytics ByteTrack or BoT-SORT tracker with its default settings.

    Raises:
        UserError: for another tracker name.
    """
    import yaml

    from visionpipes.driving.ultralytics_env import apply_ultralytics_env

    apply_ultralytics_env()
    from ultralytics.trackers.bot_sort import BOTSORT
    from ultralytics.trackers.byte_tracker import BYTETracker
    from ultralytics.utils import ROOT

    classes = {"bytetrack": BYTETracker, "botsort": BOTSORT}
    if kind not in classes:
        raise UserError(f"unknown tracker {kind!r}; use bytetrack or botsort.")
    settings = yaml.safe_load((ROOT / "cfg" / "trackers" / f"{kind}.yaml").read_text())
    if kind == "botsort":
        settings["with_reid"] = False
        settings["gmc_method"] = "sparseOptFlow"
    args = SimpleNamespace(**settings)
    try:
        return classes[kind](args, frame_rate=frame_rate)
    except TypeError:
        return classes[kind](args)


def track(tracker: Any, boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, frame: np.ndarray) -> np.ndarray:
    """Update a tracker with one frame's detections: rows `[x1, y1, x2, y2, track_id, score, class, index]`."""
    from ultralytics.engine.results import Boxes

    data = np.concatenate([boxes.reshape(-1, 4), scores.reshape(-1, 1), classes.reshape(-1, 1)], axis=1)
    tracked = tracker.update(Boxes(data.astype(np.float32), frame.shape[:2]), frame)
    return np.asarray(tracked, dtype=np.float64).reshape(-1, 8)


def tracks_to_frame(video: str, index: int, timestamp: float, tracks: np.ndarray, class_names: Sequence[str]) -> Frame:
    labels = []
    for k, (x1, y1, x2, y2, track_id, score, cls, _) in enumerate(tracks):
        category = class_names[int(cls)] if int(cls) < len(class_names) else str(int(cls))
        labels.append(
            Label(
                id=str(k),
                category=category,
                attributes={"trackId": int(track_id)},
                box2d=Box2D(float(x1), float(y1), float(x2), float(y2)),
                score=float(score),
            )
        )
    return Frame(
        name=f"{video}-{index:07d}.jpg",
        labels=labels,
        video_name=video,
        frame_index=index,
        timestamp=int(timestamp * 1000),
    )
