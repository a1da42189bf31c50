"""Several camera streams at once: batches the cameras' newest frames into one detection call and one
lane call of the exported (ONNX) models, tracks, and writes an annotated video and a BDD100K-format
JSON per camera, printing per-camera and total frames/s. A camera that fails never stops the others.

Runtime: loads exported models (or a deploy folder); never trains or exports.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from visionpipes.core.errors import UserError
from visionpipes.core.io import atomic_path
from visionpipes.driving.bdd100k.labels import Frame
from visionpipes.driving.detection.runtime import OnnxDetector
from visionpipes.driving.drawing import annotate
from visionpipes.driving.streams.cameras import CameraReader, parse_source
from visionpipes.driving.streams.tracking import make_tracker, track, tracks_to_frame


@dataclass
class StreamConfig:
    """How `run_streams` runs.

    Attributes:
        conf: detection score threshold.
        iou: NMS IoU threshold.
        tracker: `bytetrack` or `botsort`.
        lanes_every: run the lane model on every n-th tick (0: never).
        max_seconds: stop after this long (None: when every camera has ended or failed).
        max_frames: stop after this many processed frames per camera (None: no limit).
        realtime: pace video files at their frame rate.
        loop: replay video files.
        threads: onnxruntime threads per model (None: all cores).
        write_video: write an annotated video per camera.
        status_every_s: seconds between live status lines.
    """

    conf: float = 0.25
    iou: float = 0.6
    tracker: str = "bytetrack"
    lanes_every: int = 1
    max_seconds: float | None = None
    max_frames: int | None = None
    realtime: bool = True
    loop: bool = False
    threads: int | None = None
    write_video: bool = True
    status_every_s: float = 1.0


@dataclass
class CameraReport:
    """Per-camera outcome of a run."""

    name: str
    source: str
    frames: int
    fps: float
    status: str
    error: str | None
    video: str | None
    labels: str


@dataclass
class StreamReport:
    """Outcome of `run_streams`."""

    cameras: list[CameraReport]
    seconds: float
    total_fps: float
    ticks: int
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


def run_streams(
    sources: Sequence[str],
    out_dir: str | os.PathLike,
    *,
    detector_path: str | os.PathLike,
    lanes_path: str | os.PathLike | None = None,
    config: StreamConfig | None = None,
    printer: Callable[[str], None] = print,
    capture_factory: Callable[[int | str], Any] | None = None,
) -> StreamReport:
    """Run the exported detector (and lane model) on several camera streams at once.

    Writes, per camera `camK`: `camK.mp4` (annotated, when enabled) and `camK.json` (BDD100K det
    JSON: one frame per processed frame with `videoName`, `frameIndex`, `timestamp` in ms, and labels
    with `score` and the track id in `attributes.trackId`).

    Raises:
        UserError: if no source is given or a model file is missing.
    """
    import cv2

    if not sources:
        raise UserError("stream needs at least one source (video file, camera index or URL).")
    config = config or StreamConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    detector = OnnxDetector(detector_path, threads=config.threads)
    lanes = None
    if lanes_path is not None and config.lanes_every:
        from visionpipes.driving.lanes.runtime import OnnxLaneModel

        lanes = OnnxLaneModel(lanes_path, threads=config.threads)
    names = [f"cam{i}" for i in range(len(sources))]
    readers = [
        CameraReader(
            name, parse_source(src), realtime=config.realtime, loop=config.loop, capture_factory=capture_factory
        )
        for name, src in zip(names, sources)
    ]
    trackers = [make_tracker(config.tracker) for _ in readers]
    frames_out: list[list[Frame]] = [[] for _ in readers]
    writers: list[Any] = [None] * len(readers)
    processed = [0] * len(readers)
    last_index = [-1] * len(readers)
    last_lane: list[np.ndarray | None] = [None] * len(readers)
    reported: set[tuple[str, str]] = set()

    def finish_frame(i: int, frame: np.ndarray, timestamp: float, index: int, dets: Any, mask: Any) -> None:
        """Tracking, the JSON frame and the annotated video frame of one camera frame."""
        boxes, scores, classes = dets
        if mask is not None:
            last_lane[i] = mask
        tracks = track(trackers[i], boxes, scores, classes, frame)
        frames_out[i].append(tracks_to_frame(names[i], index, timestamp, tracks, detector.class_names))
        if config.write_video:
            if writers[i] is None:
                writers[i] = cv2.VideoWriter(
                    str(out / f"{names[i]}.mp4.tmp.mp4"),
                    cv2.VideoWriter_fourcc(*"mp4v"),
                    readers[i].fps or 10.0,
                    (frame.shape[1], frame.shape[0]),
                )
            lane_now = last_lane[i] if last_lane[i] is not None and last_lane[i].shape == frame.shape[:2] else None
            writers[i].write(annotate(frame, tracks, lane_now, detector.class_names))

    # Tracking, drawing and video encoding run in one worker thread (in frame order), overlapping
    # the next tick's inference: OpenCV and onnxruntime release the GIL.
    post = _PostProcessor(finish_frame, maxsize=2 * len(readers))
    for reader in readers:
        reader.start()
    start = time.monotonic()
    next_status = start + config.status_every_s
    ticks = 0
    try:
        while True:
            now = time.monotonic()
            if config.max_seconds is not None and now - start >= config.max_seconds:
                break
            batch: list[tuple[int, np.ndarray, float, int]] = []
            for i, reader in enumerate(readers):
                if config.max_frames is not None and processed[i] >= config.max_frames:
                    continue
                item = reader.latest()
                if item is not None and item[2] != last_index[i]:
                    batch.append((i, *item))
                    reader.mark_taken()
            for reader in readers:
                key = (reader.camera, reader.state.status)
                if reader.state.status in ("reconnecting", "failed", "ended") and key not in reported:
                    reported.add(key)
                    detail = f": {reader.state.error}" if reader.state.error and reader.state.status != "ended" else ""
                    printer(f"{reader.camera} ({reader.source}) {reader.state.status}{detail}")
            if not batch:
                done = all(
                    r.finished or (config.max_frames is not None and processed[i] >= config.max_frames)
                    for i, r in enumerate(readers)
                )
                if done:
                    break
                time.sleep(0.002)
                continue
            ticks += 1
            images = [frame for _, frame, _, _ in batch]
            detections = detector(images, conf=config.conf, iou=config.iou)
            masks: list[np.ndarray | None] = [None] * len(batch)
            if lanes is not None and (ticks - 1) % config.lanes_every == 0:
                masks = list(lanes(images))
            for (i, frame, timestamp, index), dets, mask in zip(batch, detections, masks):
                last_index[i] = index
                processed[i] += 1
                post.put((i, frame, timestamp, index, dets, mask))
            post.raise_if_failed()
            now = time.monotonic()
            if now >= next_status:
                next_status = now + config.status_every_s
                printer(_status_line(names, processed, now - start, readers))
        post.close()
    finally:
        post.close(wait=False)
        for reader in readers:
            reader.stop()
        for reader in readers:
            reader.join(timeout=5)
        for i, writer in enumerate(writers):
            if writer is not None:
                writer.release()
                os.replace(out / f"{names[i]}.mp4.tmp.mp4", out / f"{names[i]}.mp4")
    seconds = time.monotonic() - start
    cameras = []
    for i, reader in enumerate(readers):
        labels = out / f"{names[i]}.json"
        with atomic_path(labels) as tmp:
            tmp.write_text(json.dumps([frame.to_dict() for frame in frames_out[i]]))
        cameras.append(
            CameraReport(
                name=names[i],
                source=str(reader.source),
                frames=processed[i],
                fps=round(processed[i] / seconds, 2) if seconds > 0 else 0.0,
                status=reader.state.status,
                error=reader.state.error,
                video=str(out / f"{names[i]}.mp4") if writers[i] is not None else None,
                labels=str(labels),
            )
        )
    total = sum(processed)
    printer(_status_line(names, processed, seconds, readers))
    return StreamReport(cameras, round(seconds, 2), round(total / seconds, 2) if seconds > 0 else 0.0, ticks)


class _PostProcessor:
    """A worker thread that applies `fn` to queued items in order; the first error is kept and
    re-raised in the caller by `raise_if_failed` or `close`."""

    def __init__(self, fn: Callable[..., None], maxsize: int) -> None:
        import queue

        self._fn = fn
        self._queue: queue.Queue[tuple[Any, ...] | None] = queue.Queue(maxsize=maxsize)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="stream-post", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._error is None:
                try:
                    self._fn(*item)
                except BaseException as err:  # handed to the caller
                    self._error = err

    def put(self, item: tuple[Any, ...]) -> None:
        self._queue.put(item)

    def raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def close(self, wait: bool = True) -> None:
        """Finish the queued items and stop (`wait=False`: stop after them without raising)."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        if wait:
            self.raise_if_failed()


def _status_line(names: Sequence[str], processed: Sequence[int], seconds: float, readers: Sequence[CameraReader]) -> str:
    seconds = max(seconds, 1e-6)
    parts = [
        f"{name} {n / seconds:5.1f} fps" + ("" if r.state.status == "live" else f" ({r.state.status})")
        for name, n, r in zip(names, processed, readers)
    ]
    return " | ".join(parts) + f" | total {sum(processed) / seconds:5.1f} fps"
