"""Several camera streams at once: one reader thread per camera (OpenCV) that keeps only its newest
frame, and a loop that batches the cameras' frames into one detection call and one lane call of the
exported (ONNX) models, tracks objects per camera (ultralytics' ByteTrack/BoT-SORT), and writes an
annotated video and a BDD100K-format JSON per camera, printing per-camera and total frames/s.

A camera that fails or ends is reopened with backoff and reported; it never stops the others. This
module runs models and writes outputs; it never trains or exports.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from visionpipes.core.errors import UserError
from visionpipes.core.io import atomic_path
from visionpipes.driving.bdd100k.labels import Box2D, Frame, Label

#: BGR colour of each detection class in the annotated videos.
CLASS_COLORS: tuple[tuple[int, int, int], ...] = (
    (60, 20, 220),
    (0, 140, 255),
    (255, 144, 30),
    (180, 130, 70),
    (0, 215, 255),
    (128, 0, 128),
    (147, 20, 255),
    (50, 205, 50),
    (0, 255, 255),
    (255, 255, 0),
)


def parse_source(source: str) -> int | str:
    """A camera index (`0`) as an int; a file path or an RTSP/HTTP URL as given."""
    return int(source) if source.isdigit() else source


def _is_file_source(source: int | str) -> bool:
    return isinstance(source, str) and "://" not in source


@dataclass
class CameraState:
    """What a reader thread reports about its camera."""

    status: str = "starting"  # starting, live, reconnecting, ended, failed
    error: str | None = None
    frames_read: int = 0
    reconnects: int = 0


class CameraReader(threading.Thread):
    """Reads one camera in its own thread and keeps only the newest frame (with its timestamp).

    A source that cannot be opened or stops delivering frames is reopened after a backoff that
    doubles from `backoff_s` up to `max_backoff_s`; after `max_retries` failed attempts in a row it
    is reported `failed`. A video file that reaches its end is `ended` (or replayed with `loop`).
    Video files are paced at their own frame rate when `realtime` is set, as a live camera would be;
    otherwise each file frame waits until the consumer has taken the previous one (`mark_taken`), so
    that no frame is dropped and throughput is measured over every frame. Live cameras always keep
    only their newest frame.

    Args:
        name: the camera's name in outputs (`cam0`).
        source: camera index, file path or URL.
        realtime: pace video files at their frame rate.
        loop: replay a video file when it ends.
        max_retries: failed (re)connection attempts in a row before giving up.
        backoff_s: first wait before reconnecting.
        max_backoff_s: longest wait between attempts.
        capture_factory: opens a source (default `cv2.VideoCapture`); for tests and other back-ends.
    """

    def __init__(
        self,
        name: str,
        source: int | str,
        *,
        realtime: bool = True,
        loop: bool = False,
        max_retries: int = 3,
        backoff_s: float = 0.2,
        max_backoff_s: float = 2.0,
        capture_factory: Callable[[int | str], Any] | None = None,
    ) -> None:
        super().__init__(name=f"camera-{name}", daemon=True)
        self.camera = name
        self.source = source
        self.realtime = realtime
        self.loop = loop
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._factory = capture_factory
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self._taken = threading.Event()
        self._taken.set()
        self.wait_for_consumer = not realtime and _is_file_source(source)
        self._frame: np.ndarray | None = None
        self._timestamp = 0.0
        self._index = -1
        self.fps = 0.0
        self.state = CameraState()

    def _open(self) -> Any:
        if self._factory is not None:
            return self._factory(self.source)
        import cv2

        return cv2.VideoCapture(self.source)

    def latest(self) -> tuple[np.ndarray, float, int] | None:
        """The newest frame, its capture time (time.time()) and its index, or None before the first."""
        with self._lock:
            if self._frame is None:
                return None
            return self._frame, self._timestamp, self._index

    def mark_taken(self) -> None:
        """Tell the reader that its newest frame was taken (lets a non-realtime file read on)."""
        self._taken.set()

    def stop(self) -> None:
        self._halt.set()

    @property
    def finished(self) -> bool:
        return self.state.status in ("ended", "failed")

    def _set(self, status: str, error: str | None = None) -> None:
        self.state.status = status
        if error is not None:
            self.state.error = error

    def run(self) -> None:
        failures = 0
        delay = self.backoff_s
        while not self._halt.is_set():
            capture = self._open()
            if capture is None or not capture.isOpened():
                failures += 1
                self._set("reconnecting", f"cannot open {self.source!r}")
                if failures > self.max_retries:
                    self._set("failed", f"cannot open {self.source!r} after {failures} attempts")
                    return
                self.state.reconnects += 1
                self._halt.wait(delay)
                delay = min(delay * 2, self.max_backoff_s)
                continue
            fps = float(capture.get(5) or 0.0)  # cv2.CAP_PROP_FPS
            self.fps = fps if 0 < fps < 240 else 0.0
            period = 1.0 / self.fps if self.realtime and self.fps and _is_file_source(self.source) else 0.0
            next_time = time.monotonic()
            got_any = False
            while not self._halt.is_set():
                if self.wait_for_consumer:
                    while not self._taken.wait(0.05):
                        if self._halt.is_set():
                            capture.release()
                            return
                    self._taken.clear()
                ok, frame = capture.read()
                if not ok or frame is None:
                    break
                got_any = True
                failures, delay = 0, self.backoff_s
                with self._lock:
                    self._frame, self._timestamp = frame, time.time()
                    self._index += 1
                self.state.frames_read += 1
                self._set("live")
                if period:
                    next_time += period
                    wait = next_time - time.monotonic()
                    if wait > 0:
                        self._halt.wait(wait)
                    else:
                        next_time = time.monotonic()
            capture.release()
            if self._halt.is_set():
                return
            if _is_file_source(self.source) and got_any and not self.loop:
                self._set("ended")
                return
            failures += 0 if got_any else 1
            if failures > self.max_retries:
                self._set("failed", f"{self.source!r} delivers no frames")
                return
            self._set("reconnecting", f"{self.source!r} stopped delivering frames")
            self.state.reconnects += 1
            self._halt.wait(delay)
            delay = min(delay * 2, self.max_backoff_s)


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


def annotate(frame: np.ndarray, tracks: np.ndarray, lane_mask: np.ndarray | None, class_names: Sequence[str]) -> np.ndarray:
    """Draw lane markings, then boxes with class, track id and score."""
    import cv2

    from visionpipes.driving.evaluation import lane_overlay

    out = lane_overlay(frame, lane_mask) if lane_mask is not None else frame.copy()
    for x1, y1, x2, y2, track_id, score, cls, _ in tracks:
        color = CLASS_COLORS[int(cls) % len(CLASS_COLORS)]
        p1, p2 = (int(x1), int(y1)), (int(x2), int(y2))
        cv2.rectangle(out, p1, p2, color, 2)
        label = f"{class_names[int(cls)]} #{int(track_id)} {score:.2f}"
        cv2.putText(out, label, (p1[0], max(12, p1[1] - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.45, color, 1, cv2.LINE_AA)
    return out


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

    from visionpipes.driving.detection.runtime import OnnxDetector

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
        frames_out[i].append(_tracks_to_frame(names[i], index, timestamp, tracks, detector.class_names))
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


def _tracks_to_frame(video: str, index: int, timestamp: float, tracks: np.ndarray, class_names: Sequence[str]) -> Frame:
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
