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

from visionpipes.driving.detection.runtime import Letterbox, decode_predictions, letterbox
from visionpipes.driving.lanes.decode import (
    BACKGROUND_CLASS,
    CATEGORY_CHANNELS,
    channel_argmax,
    lane_fields,
    lane_margin,
    lane_mask_from_fields,
    lane_mask_from_logits,
)

#: A cell is a lane candidate where its coarse margin exceeds this (a bound of the fine margin
#: up to float32 rounding, ~1e-5 at the logits' magnitudes; see `upsampled_lane_fields`).
_CANDIDATE_MARGIN = -0.01
#: The margin given to the cells a sparse decoding leaves out: any negative value (never a lane).
_OUTSIDE_MARGIN = np.float32(-1000.0)


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


def _grid_stride(logits: np.ndarray, network_size: tuple[int, int] | None) -> int:
    """The stride of (C, h, w) logits' grid over the network input (1: at its size or None).

    Raises:
        ValueError: if the network size is not an integer multiple of the grid.
    """
    if network_size is None or (logits.shape[2], logits.shape[1]) == tuple(network_size):
        return 1
    width, height = network_size
    stride_x, stride_y = width // logits.shape[2], height // logits.shape[1]
    if stride_x != stride_y or stride_x * logits.shape[2] != width or stride_y * logits.shape[1] != height:
        raise ValueError(
            f"logits of {logits.shape[2]}x{logits.shape[1]} are not on a grid of the {width}x{height} input."
        )
    return stride_x


def unletterbox(
    logits: np.ndarray,
    info: Letterbox,
    frame_size: tuple[int, int],
    network_size: tuple[int, int] | None = None,
    *,
    upsample: bool = False,
) -> np.ndarray:
    """(C, h, w) logits over the network input -> (C, h', w') over the frame's part of it only (the
    padding cut away); the decoders resize to the frame.

    `network_size` = (width, height) of the network input, when the logits are at a coarser grid
    than it (the exported graph's segmentation outputs at the heads' own strides, 2 and 4: see
    `multitask.export`); None: the logits are at the network's size. With `upsample` (the lane
    logits), or when the letterbox's edges do not fall on the grid, the logits are first resized
    bilinearly to the network's size (OpenCV; what the graph did before it left the resize out),
    then cut; else the window is cut from the grid as it is (a 16:9 frame in 384x224: the picture
    is rows 4..220, on every grid up to stride 4). Lanes need the upsampling: their decoding takes
    a log-sum-exp of the category logits, which is convex, so computed on the coarse grid and then
    resized it widens the lanes between cells (measured on the 20-epoch model: val F1_pix2 77.8
    against 79.8); the drivable arg-max straight from the stride-4 grid scores as before (92.6).

    Raises:
        ValueError: if the network size is not an integer multiple of the logits' grid.
    """
    top, bottom, left, right = letterbox_window(info, frame_size)
    logits = np.asarray(logits)
    stride = _grid_stride(logits, network_size)
    if stride == 1:
        return logits[:, top:bottom, left:right]
    width, height = network_size  # type: ignore[misc]  # not None when the stride is above 1
    if upsample or top % stride or bottom % stride or left % stride or right % stride:
        import cv2

        full = np.stack([cv2.resize(c, (width, height), interpolation=cv2.INTER_LINEAR) for c in logits])
        return full[:, top:bottom, left:right]
    return logits[:, top // stride : bottom // stride, left // stride : right // stride]


def _linear_taps(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """OpenCV's bilinear taps of a `src` -> `dst` resize along one axis (half-pixel centres, the
    edges clamped): per destination index the two source indices and the second one's weight.
    Bit-exact for the integer upscales used here (the graph's strides); for other ratios OpenCV's
    weights can differ in their last bits."""
    d = np.arange(dst, dtype=np.float64)
    f = ((d + 0.5) * (src / dst) - 0.5).astype(np.float32)
    first = np.floor(f).astype(np.intp)
    weight = (f - first).astype(np.float32)
    outside = (first < 0) | (first >= src - 1)
    weight[outside] = 0.0
    first = np.clip(first, 0, src - 1)
    return first, np.minimum(first + 1, src - 1), weight


def _lerp(p: np.ndarray, q: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """`p + (q - p) * weight` in float32 with one rounding of the multiply-add, as OpenCV's float
    bilinear resize computes it (its fused multiply-add: the same bits, measured on 2x resizes)."""
    fused = np.multiply(np.subtract(q, p), weight, dtype=np.float64)  # exact: 24-bit x 24-bit products
    fused += p
    return fused.astype(np.float32)


def _candidate_cells(logits: np.ndarray) -> np.ndarray:
    """uint8 (h, w): 1 where a grid cell's lane margin exceeds `_CANDIDATE_MARGIN`. The log-sum-exp
    of the eight lane logits is at most their maximum + log 8, so only the cells that pass that
    bound (a few percent of a trained model's frame) need the exact margin."""
    lanes = logits[:BACKGROUND_CLASS]
    bound = np.float32(_CANDIDATE_MARGIN - np.log(BACKGROUND_CLASS) - 1e-3)  # 1e-3: float32 slack
    maybe = np.flatnonzero(lanes.max(axis=0) > logits[BACKGROUND_CLASS] + bound)
    out = np.zeros(logits.shape[1:], dtype=np.uint8)
    if maybe.size:
        cells = np.take(logits[:CATEGORY_CHANNELS].reshape(CATEGORY_CHANNELS, -1), maybe, axis=1)
        out.ravel()[maybe] = lane_margin(cells) > _CANDIDATE_MARGIN
    return out


def upsampled_lane_fields(
    logits: np.ndarray, stride: int, window: tuple[int, int, int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """The lane fields (`lanes.decode.lane_fields`) of stride-`stride` lane logits resized
    bilinearly to the network input, over its rows/columns `window` = (top, bottom, left, right),
    computed only near the cells that can be lanes: what `lane_fields(unletterbox(logits, ...,
    upsample=True))` gives wherever a decoding reads it, without resizing all 13 channels.

    Why it is exact: a resized cell's logits are a convex combination of (at most) four grid
    cells', and the margin (log-sum-exp of the lane logits minus the background logit) is convex,
    so a resized cell's margin is at most the largest margin among its four grid cells. Cells
    whose grid cells all have a negative margin can never be lanes; the fields are computed (with
    OpenCV's arithmetic) on the others and on their neighbours (the two-tap resize of the margin
    to the frame and the nearest value read those), and every other cell gets a negative margin
    (`_OUTSIDE_MARGIN`), which no resize turns positive. A 640x360 frame of a trained model has
    lane candidates on ~5 % of its grid cells.

    Returns:
        (margin float32, value uint8), each (bottom - top, right - left).
    """
    import cv2

    logits = np.asarray(logits, dtype=np.float32)
    channels, height, width = logits.shape
    top, bottom, left, right = window
    rows = _linear_taps(height, height * stride)
    cols = _linear_taps(width, width * stride)
    rows = tuple(a[top:bottom] for a in rows)
    cols = tuple(a[left:right] for a in cols)
    coarse = _candidate_cells(logits)
    # a window cell is a candidate when one of its four grid cells is
    by_row = np.take(coarse, rows[0], axis=0) | np.take(coarse, rows[1], axis=0)
    candidate = np.take(by_row, cols[0], axis=1) | np.take(by_row, cols[1], axis=1)
    needed = cv2.dilate(candidate, np.ones((3, 3), np.uint8))
    flat = np.flatnonzero(needed)
    margin = np.full(needed.shape, _OUTSIDE_MARGIN, dtype=np.float32)
    value = np.zeros(needed.shape, dtype=np.uint8)
    if flat.size:
        y, x = np.divmod(flat, needed.shape[1])
        y0, y1, wy = (a[y] for a in rows)
        x0, x1, wx = (a[x] for a in cols)
        grid = logits.reshape(channels, -1)

        def cells(index: np.ndarray) -> np.ndarray:
            # (13, n) C-contiguous (`take`; `grid[:, index]` is laid out cell by cell): each channel's
            # values in one run, so NumPy's vector loops (and their rounding) are the dense path's
            return np.take(grid, index, axis=1)

        upper = _lerp(cells(y0 * width + x0), cells(y0 * width + x1), wx)
        lower = _lerp(cells(y1 * width + x0), cells(y1 * width + x1), wx)
        margin.flat[flat], value.flat[flat] = lane_fields(_lerp(upper, lower, wy))
    return margin, value


def lane_mask_from_grid(
    logits: np.ndarray,
    info: Letterbox,
    frame_size: tuple[int, int],
    network_size: tuple[int, int] | None = None,
    **decoding: Any,
) -> np.ndarray:
    """The official lane mask of one frame from the graph's lane logits (at the network's size or
    at a stride of it): `lanes.decode.lane_mask_from_logits(unletterbox(logits, info, frame_size,
    network_size, upsample=True), frame_size, **decoding)`, the same mask (`upsampled_lane_fields`),
    without upsampling all 13 channels over the whole frame.

    Raises:
        ValueError: if the network size is not an integer multiple of the logits' grid.
    """
    logits = np.asarray(logits, dtype=np.float32)
    stride = _grid_stride(logits, network_size)
    if stride == 1:
        return lane_mask_from_logits(unletterbox(logits, info, frame_size, network_size), frame_size, **decoding)
    margin, value = upsampled_lane_fields(logits, stride, letterbox_window(info, frame_size))
    return lane_mask_from_fields(margin, value, frame_size, **decoding)


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
    # each channel resized into its plane of one array (no stacked copy of separately allocated
    # planes: less than half the time per 640x360 frame, the same values)
    resized = np.empty((logits.shape[0], frame_size[1], frame_size[0]), dtype=np.float32)
    for channel, plane in zip(logits, resized):
        cv2.resize(channel, frame_size, dst=plane, interpolation=cv2.INTER_LINEAR)
    return channel_argmax(resized)


def drivable_mask_from_grid(
    logits: np.ndarray,
    info: Letterbox,
    frame_size: tuple[int, int],
    network_size: tuple[int, int] | None = None,
) -> np.ndarray:
    """The official drivable mask of one frame from the graph's drivable logits (at the network's
    size or at a stride of it): the frame's window cut (`unletterbox`), then
    `drivable_mask_from_logits` at the frame's size. The twin of `lane_mask_from_grid`."""
    return drivable_mask_from_logits(unletterbox(logits, info, frame_size, network_size), frame_size)


def decode_outputs(
    outputs: Sequence[np.ndarray],
    infos: Sequence[Letterbox],
    frame_sizes: Sequence[tuple[int, int]],
    *,
    lane_decoding: Mapping[str, Any] | None = None,
    network_size: tuple[int, int] | None = None,
    conf: float = 0.25,
    iou: float = 0.6,
    max_det: int = 100,
) -> list[tuple[tuple[np.ndarray, np.ndarray, np.ndarray], np.ndarray, np.ndarray]]:
    """The graph's three outputs for a batch -> per frame (detections, lane mask, drivable mask).

    Args:
        outputs: `predictions` (N, 14, A), `lanes` (N, 13, h, w), `drivable` (N, 3, h', w') (the
            names and layout of `multitask.export`; segmentation grids at the input size or at a
            stride of it).
        infos: each frame's letterbox (`network_input`).
        frame_sizes: each frame's (width, height).
        lane_decoding: `lane_mask_from_logits` keywords (`MultiTaskModelConfig.decoding()`).
        network_size: (width, height) of the network input (`unletterbox`); None: the segmentation
            outputs are at that size.
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
        lane_mask = lane_mask_from_grid(lane, info, size, network_size, **decoding)
        area_mask = drivable_mask_from_grid(area, info, size, network_size)
        out.append((det, lane_mask, area_mask))
    return out
