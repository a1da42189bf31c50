"""The exported detector under onnxruntime: letterbox, the raw output decoded into boxes with
class-wise NMS, `OnnxDetector` for streams, and det-JSON predictions of image files.

Runtime: never imports training code or ultralytics.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from visionpipes.core.image import read_image
from visionpipes.driving.bdd100k.categories import DET_CATEGORIES
from visionpipes.driving.bdd100k.detection import detections_to_frame
from visionpipes.driving.bdd100k.labels import Frame


def batched(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def predict_detections_onnx(
    detector: OnnxDetector,
    images: Sequence[str | os.PathLike],
    *,
    conf: float = 0.001,
    iou: float = 0.6,
    max_det: int = 100,
    batch: int = 8,
) -> list[Frame]:
    """`predict_detections` for an exported detector (`OnnxDetector`): one det-JSON frame per image.

    Raises:
        UserError: if an image file is missing or unreadable.
    """

    frames: list[Frame] = []
    for chunk in batched([Path(p) for p in images], max(1, batch)):
        pictures = [read_image(path, order="BGR") for path in chunk]
        for path, (boxes, scores, classes) in zip(chunk, detector(pictures, conf=conf, iou=iou, max_det=max_det)):
            frames.append(detections_to_frame(path.name, boxes, scores, [int(c) for c in classes]))
    return frames


@dataclass(frozen=True)
class Letterbox:
    """How an image was fitted into the square network input: scale, then padding."""

    scale: float
    pad_x: float
    pad_y: float


def letterbox(image_bgr: np.ndarray, size: int | tuple[int, int]) -> tuple[np.ndarray, Letterbox]:
    """Resize keeping the aspect ratio and pad with grey (114), as ultralytics, to `size` x `size`
    or to `size` = (width, height)."""
    import cv2

    out_w, out_h = (size, size) if isinstance(size, int) else size
    height, width = image_bgr.shape[:2]
    scale = min(out_h / height, out_w / width)
    new_w, new_h = round(width * scale), round(height * scale)
    resized = cv2.resize(image_bgr, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    pad_x, pad_y = (out_w - new_w) / 2, (out_h - new_h) / 2
    top, left = round(pad_y - 0.1), round(pad_x - 0.1)
    canvas = np.full((out_h, out_w, 3), 114, dtype=np.uint8)
    canvas[top : top + new_h, left : left + new_w] = resized
    return canvas, Letterbox(scale, left, top)


def detector_input(frames_bgr: Sequence[np.ndarray], size: tuple[int, int]) -> tuple[np.ndarray, list[Letterbox]]:
    """BGR frames -> the exported detector's input: (N, 3, height, width) RGB float32 in [0, 1],
    letterboxed to `size` = (width, height), and each frame's letterbox."""
    batch, infos = [], []
    for frame in frames_bgr:
        canvas, info = letterbox(frame, size)
        batch.append(canvas[:, :, ::-1].transpose(2, 0, 1))
        infos.append(info)
    return np.ascontiguousarray(np.stack(batch), dtype=np.float32) / 255.0, infos


def decode_predictions(
    predictions: np.ndarray,
    boxes_info: Sequence[Letterbox],
    image_sizes: Sequence[tuple[int, int]],
    *,
    conf: float = 0.25,
    iou: float = 0.6,
    max_det: int = 100,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Turn the ONNX detector's raw output into boxes per image (class-wise NMS, OpenCV).

    Args:
        predictions: (N, 4 + classes, anchors) from `export_detector_onnx`'s graph.
        boxes_info: the letterbox of each image.
        image_sizes: (width, height) of each original image.
        conf: score threshold.
        iou: NMS IoU threshold.
        max_det: boxes kept per image.

    Returns:
        Per image: (K, 4) xyxy boxes in original pixels, (K,) scores, (K,) class ids.
    """
    import cv2

    out = []
    for pred, lb, (width, height) in zip(predictions, boxes_info, image_sizes):
        pred = pred.T  # anchors x (4 + classes)
        scores_all = pred[:, 4:]
        classes = scores_all.argmax(axis=1)
        scores = scores_all[np.arange(len(pred)), classes]
        keep = scores > conf
        pred, classes, scores = pred[keep], classes[keep], scores[keep]
        if not len(pred):
            out.append((np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=int)))
            continue
        cx, cy, w, h = pred[:, 0], pred[:, 1], pred[:, 2], pred[:, 3]
        boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
        boxes[:, [0, 2]] = (boxes[:, [0, 2]] - lb.pad_x) / lb.scale
        boxes[:, [1, 3]] = (boxes[:, [1, 3]] - lb.pad_y) / lb.scale
        # NMS on the unclipped boxes, clipping after, as ultralytics does (clipping first changes the IoUs
        # of boxes that cross the frame's edge, so other boxes would survive).
        xywh = np.stack([boxes[:, 0], boxes[:, 1], boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], 1)
        idx = cv2.dnn.NMSBoxesBatched(xywh.tolist(), scores.tolist(), classes.tolist(), conf, iou)
        idx = np.asarray(idx, dtype=int).reshape(-1)[:max_det]
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
        out.append((boxes[idx], scores[idx], classes[idx]))
    return out


class OnnxDetector:
    """The exported detector under onnxruntime: BGR frames in, boxes out (batched over frames).

    Args:
        path: the `.onnx` from `export_detector_onnx`.
        class_names: the model's classes (default the 10 BDD100K classes).
        threads: onnxruntime intra-op threads (None: all cores).

    Raises:
        UserError: if the file is missing or not loadable.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        class_names: Sequence[str] = DET_CATEGORIES,
        threads: int | None = None,
    ) -> None:
        from visionpipes.core.export import OnnxRunner

        self.runner = OnnxRunner(path, threads=threads)
        shape = self.runner.session.get_inputs()[0].shape
        self.imgsz = int(shape[-1]) if isinstance(shape[-1], int) else 320
        self.height = int(shape[-2]) if isinstance(shape[-2], int) else self.imgsz
        self.class_names = list(class_names)

    def __call__(
        self, frames_bgr: Iterable[np.ndarray], *, conf: float = 0.25, iou: float = 0.6, max_det: int = 100
    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Detect in each frame; returns per frame (xyxy boxes, scores, class ids)."""
        frames = list(frames_bgr)
        if not frames:
            return []
        x, infos = detector_input(frames, (self.imgsz, self.height))
        (pred,) = self.runner(x)
        sizes = [(f.shape[1], f.shape[0]) for f in frames]
        return decode_predictions(pred, infos, sizes, conf=conf, iou=iou, max_det=max_det)
