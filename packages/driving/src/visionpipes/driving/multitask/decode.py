"""The multi-task network's input and output conventions, outside torch: frames letterboxed into the
network input (the exported detector's letterbox, grey 114), and the three outputs decoded per frame
(detections with the detector's class-wise NMS, the official lane mask, the official drivable mask),
segmentation outputs cropped to the letterboxed image and resized back to the frame.

Runtime: NumPy and OpenCV only; never imports training code. Shared by the evaluation and the deploy
step (and usable by `multitask.runtime`), so every consumer decodes the graph the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from visionpipes.driving.bdd100k.categories import LANE_BACKGROUND, LANE_DIRECTION_BIT, LANE_STYLE_BIT
from visionpipes.driving.detection.runtime import Letterbox, decode_predictions, letterbox
from visionpipes.driving.lanes.decode import (
    BACKGROUND_CLASS,
    CATEGORY_CHANNELS,
    LANE_CHANNELS,
    drop_small_pieces,
    join_lane_gaps,
    lane_margin,
    roi_top_rows,
    vote_lane_style,
)


def network_input(
    frames_bgr: Sequence[np.ndarray], size: tuple[int, int], out: np.ndarray | None = None
) -> tuple[np.ndarray, list[Letterbox]]:
    """BGR frames -> (N, 3, height, width) RGB float32 in [0, 1], letterboxed to `size` = (width,
    height) as the exported detector's input (`detection.runtime.detector_input`: the same values),
    and each frame's letterbox.

    Each letterboxed frame is converted straight into its slot of the batch (one pass, no stacked
    uint8 copy and no float copy before the division); `out`, a float32 array of that shape, is
    filled and returned instead of a new one (a stream reuses one buffer per batch size).
    """
    frames = list(frames_bgr)
    width, height = size
    shape = (len(frames), 3, height, width)
    if out is None or out.shape != shape or out.dtype != np.float32:
        out = np.empty(shape, dtype=np.float32)
    infos = []
    scale = np.float32(255.0)
    for k, frame in enumerate(frames):
        canvas, info = letterbox(frame, size)
        np.divide(canvas[:, :, ::-1].transpose(2, 0, 1), scale, out=out[k])
        infos.append(info)
    return out, infos


def letterbox_window(info: Letterbox, frame_size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The (top, bottom, left, right) rows/columns of the network input that hold the frame
    (`frame_size` = (width, height)), as `detection.runtime.letterbox` placed it."""
    width, height = frame_size
    new_w, new_h = round(width * info.scale), round(height * info.scale)
    top, left = int(info.pad_y), int(info.pad_x)
    return top, top + new_h, left, left + new_w


def unletterbox(logits: np.ndarray, info: Letterbox, frame_size: tuple[int, int]) -> np.ndarray:
    """(C, H, W) logits at network size -> (C, h, w) over the frame's part of the input only (the
    padding cut away), still at network resolution; the decoders resize to the frame."""
    top, bottom, left, right = letterbox_window(info, frame_size)
    return logits[:, top:bottom, left:right]


def channel_argmax(values: np.ndarray) -> np.ndarray:
    """`values.argmax(0)` of (C, h, w) values as an (h, w) uint8 (C <= 256), by C - 1 running
    comparisons over contiguous planes instead of NumPy's strided arg-max over the first axis
    (several times faster: that arg-max was a third of the stream's mask decoding). Ties go to the
    first channel, as `argmax`'s; identical to it for finite values."""
    values = np.asarray(values)
    if values.ndim != 3 or not 1 <= values.shape[0] <= 256:
        raise ValueError(f"channel_argmax needs (C, h, w) values with 1 <= C <= 256, got {values.shape}.")
    index = np.zeros(values.shape[1:], dtype=np.uint8)
    best = np.array(values[0], dtype=values.dtype, copy=True)
    for c in range(1, values.shape[0]):
        better = values[c] > best
        index[better] = c
        np.maximum(best, values[c], out=best)
    return index


def drivable_mask_from_logits(logits: np.ndarray, frame_size: tuple[int, int]) -> np.ndarray:
    """(3, h, w) drivable logits -> the official HxW uint8 drivable mask (0 direct, 1 alternative,
    2 background) at `frame_size` = (width, height): logits resized bilinearly, then arg-max
    (`channel_argmax`: the same mask as NumPy's `argmax(0)`, faster)."""
    import cv2

    logits = np.asarray(logits, dtype=np.float32)
    if logits.ndim != 3:
        raise ValueError(f"drivable logits must be (3, h, w), got {logits.shape}.")
    if (logits.shape[2], logits.shape[1]) == tuple(frame_size):
        return channel_argmax(logits)
    resized = np.stack([cv2.resize(c, frame_size, interpolation=cv2.INTER_LINEAR) for c in logits])
    return channel_argmax(resized)


def lane_mask_fast(
    logits: np.ndarray,
    size: tuple[int, int] | None = None,
    roi_top: float = 0.0,
    *,
    join_gaps: float = 0.0,
    min_area: float = 0.0,
    vote: bool = False,
) -> np.ndarray:
    """`lanes.decode.lane_mask_from_logits`, the same mask byte for byte (tested), with the three
    channel-group arg-maxes done by `channel_argmax` (NumPy's arg-max over the channel axis was
    ~40% of a stream frame's lane decoding); the lane-level steps are the lane model's own."""
    import cv2

    logits = np.asarray(logits, dtype=np.float32)
    if logits.ndim != 3 or logits.shape[0] != LANE_CHANNELS:
        raise ValueError(f"lane logits must be ({LANE_CHANNELS}, h, w), got {logits.shape}.")
    margin = lane_margin(logits[:CATEGORY_CHANNELS])
    style = logits[CATEGORY_CHANNELS + 1] > logits[CATEGORY_CHANNELS]
    direction = logits[CATEGORY_CHANNELS + 3] > logits[CATEGORY_CHANNELS + 2]
    value = channel_argmax(logits[:BACKGROUND_CLASS])
    value |= style.view(np.uint8) << np.uint8(LANE_STYLE_BIT)
    value |= direction.view(np.uint8) << np.uint8(LANE_DIRECTION_BIT)
    top = 0
    if size is not None:
        top = roi_top_rows(size[1], roi_top)
        roi_size = (size[0], size[1] - top)
        if (margin.shape[1], margin.shape[0]) != roi_size:
            margin = cv2.resize(margin, roi_size, interpolation=cv2.INTER_LINEAR)
            value = cv2.resize(value, roi_size, interpolation=cv2.INTER_NEAREST_EXACT)
    mask = np.where(margin > 0, value, np.uint8(LANE_BACKGROUND))
    if join_gaps > 0:
        mask = join_lane_gaps(mask, max_gap_ratio=join_gaps)
    if min_area > 0:
        mask = drop_small_pieces(mask, round(min_area * mask.shape[1] * (mask.shape[0] + top)))
    if vote:
        mask = vote_lane_style(mask)
    if top:
        mask = np.concatenate([np.full((top, mask.shape[1]), LANE_BACKGROUND, np.uint8), mask])
    return mask


def decode_outputs(
    outputs: Sequence[np.ndarray],
    infos: Sequence[Letterbox],
    frame_sizes: Sequence[tuple[int, int]],
    *,
    lane_decoding: Mapping[str, Any] | None = None,
    conf: float = 0.25,
    iou: float = 0.6,
    max_det: int = 100,
) -> list[tuple[tuple[np.ndarray, np.ndarray, np.ndarray], np.ndarray, np.ndarray]]:
    """The graph's three outputs for a batch -> per frame (detections, lane mask, drivable mask).

    Args:
        outputs: `predictions` (N, 14, A), `lanes` (N, 13, H, W), `drivable` (N, 3, H, W) (the
            names and layout of `multitask.export`).
        infos: each frame's letterbox (`network_input`).
        frame_sizes: each frame's (width, height).
        lane_decoding: `lane_mask_from_logits` keywords (`MultiTaskModelConfig.decoding()`).
        conf, iou, max_det: the detector's decoding (`decode_predictions`).

    Returns:
        Per frame: ((K, 4) xyxy boxes in frame pixels, (K,) scores, (K,) class ids), the HxW
        official lane mask (255 background), the HxW official drivable mask.
    """
    predictions, lanes, drivable = outputs
    detections = decode_predictions(predictions, infos, frame_sizes, conf=conf, iou=iou, max_det=max_det)
    decoding = dict(lane_decoding or {})
    out = []
    for det, lane, area, info, size in zip(detections, lanes, drivable, infos, frame_sizes):
        lane_mask = lane_mask_fast(unletterbox(lane, info, size), size, **decoding)
        out.append((det, lane_mask, drivable_mask_from_logits(unletterbox(area, info, size), size)))
    return out
