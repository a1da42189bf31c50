"""Prediction with the eager ultralytics detector: a trained `.pt` loaded offline, run on image
files, its classes mapped onto the 10 BDD100K classes, one det-JSON frame per image.

Runtime: never imports training code.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from visionpipes.core.errors import UserError
from visionpipes.driving.bdd100k.categories import DET_CATEGORIES, resolve_det_category
from visionpipes.driving.bdd100k.detection import detections_to_frame
from visionpipes.driving.bdd100k.labels import Frame
from visionpipes.driving.detection.runtime import batched
from visionpipes.driving.devices import ultralytics_device
from visionpipes.driving.ultralytics_env import prepare_ultralytics


def local_file(path: str, what: str) -> Path:
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"{what} {path} does not exist (weights are never downloaded; give a local file).")
    return file


def load_detector(weights: str | os.PathLike) -> Any:
    """A trained detector from its local `.pt`.

    Raises:
        UserError: if the file does not exist or is not an ultralytics checkpoint.
    """
    prepare_ultralytics()
    from ultralytics import YOLO

    path = local_file(str(weights), "detector weights")
    try:
        return YOLO(str(path))
    except Exception as err:  # ultralytics raises assorted errors on foreign files
        raise UserError(f"detector weights {path} are not an ultralytics checkpoint ({err}).") from None


def _class_names(model: Any) -> list[str | None]:
    """The BDD100K category of each of the model's classes (None: a class with no BDD100K twin)."""
    names = model.names
    ordered = [names[i] for i in range(len(names))] if isinstance(names, dict) else list(names)
    out: list[str | None] = []
    for name in ordered:
        resolved = resolve_det_category(str(name))
        out.append(None if resolved is None or resolved[1] else resolved[0])
    return out


def predict_detections(
    model: Any,
    images: Sequence[str | os.PathLike],
    *,
    imgsz: int = 320,
    conf: float = 0.001,
    iou: float = 0.6,
    max_det: int = 100,
    batch: int = 16,
    device: str = "auto",
) -> list[Frame]:
    """Run a YOLO model on image files and return one det-JSON frame per image (labels with `score`).

    Classes the model knows under BDD100K's legacy names (e.g. COCO's `person`) are mapped onto the
    10 classes; classes with no BDD100K twin are dropped.

    Args:
        model: an ultralytics `YOLO` (see `load_detector`).
        images: image files; each frame is named after its file name.
        imgsz: inference size.
        conf: score threshold (low for AP evaluation).
        iou: NMS IoU threshold.
        max_det: detections kept per image (the official evaluation uses up to 100).
        batch: images per forward pass.
        device: `auto`, `cpu` or a CUDA index.

    Raises:
        UserError: if an image file is missing.
    """
    paths = [Path(p) for p in images]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise UserError(f"image file {missing[0]} does not exist.")
    categories = _class_names(model)
    frames: list[Frame] = []
    for chunk in batched(paths, max(1, batch)):
        results = model.predict(
            source=[str(p) for p in chunk],
            imgsz=imgsz,
            conf=conf,
            iou=iou,
            max_det=max_det,
            device=ultralytics_device(device),
            verbose=False,
        )
        for path, result in zip(chunk, results):
            boxes = result.boxes
            xyxy = boxes.xyxy.cpu().numpy() if len(boxes) else np.zeros((0, 4))
            scores = boxes.conf.cpu().numpy() if len(boxes) else np.zeros(0)
            classes = boxes.cls.cpu().numpy().astype(int) if len(boxes) else np.zeros(0, int)
            keep = np.array([categories[c] is not None for c in classes], dtype=bool)
            mapped = [DET_CATEGORIES.index(categories[c]) for c in classes[keep]]  # type: ignore[arg-type]
            frames.append(detections_to_frame(path.name, xyxy[keep], scores[keep], mapped))
    return frames
