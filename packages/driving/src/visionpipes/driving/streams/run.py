"""Several camera streams at once: batches the cameras' newest frames into one detection call and one
lane call of the exported (ONNX) models — or into one call of the multi-task graph (`perception.onnx`:
detections, lanes and drivable area) — tracks, and writes per camera an annotated video, the labels
as JSON Lines while it runs and a BDD100K-format JSON at the end, plus a `status.json` of the cameras.

Runtime: loads exported models (or a deploy folder); never trains or exports. A camera that fails
never stops the others; SIGINT and SIGTERM end the run cleanly (outputs finalised).
"""

from __future__ import annotations

import functools
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from visionpipes.core.errors import UserError
from visionpipes.driving.detection.runtime import OnnxDetector
from visionpipes.driving.drawing import annotate
from visionpipes.driving.lanes.decode import lane_mask_from_logits
from visionpipes.driving.streams.cameras import CameraReader, is_live_source, parse_source
from visionpipes.driving.streams.outputs import LabelLog, VideoSegments, drivable_labels, write_status
from visionpipes.driving.streams.postprocess import PostProcessor
from visionpipes.driving.streams.tracking import make_tracker, track, tracks_to_frame


@dataclass
class StreamConfig:
    """How `run_streams` runs.

    Attributes:
        conf: detection score threshold.
        iou: NMS IoU threshold.
        tracker: `bytetrack` or `botsort`.
        lanes_every: run the lane model on every n-th tick (0: never); with the multi-task model,
            decode its lane output on every n-th tick (its graph computes all three tasks each call).
        max_seconds: stop after this long (None: when every camera has ended or failed).
        max_frames: stop after this many processed frames per camera (None: no limit).
        realtime: pace video files at their frame rate.
        loop: replay video files.
        live: treat every source as live (reconnected when it drops; None: by its kind).
        reconnect_max_s: give a live camera up after this long without frames (None: never).
        backoff_s: first wait before reconnecting a live camera (doubles each attempt).
        backoff_cap_s: longest wait between reconnection attempts.
        threads: onnxruntime threads per model (None: all cores).
        write_video: write an annotated video per camera.
        status_every_s: seconds between status lines (and `status.json` updates of the counters).
        handle_signals: end cleanly on SIGINT/SIGTERM (only when run in the main thread).
    """

    conf: float = 0.25
    iou: float = 0.6
    tracker: str = "bytetrack"
    lanes_every: int = 1
    max_seconds: float | None = None
    max_frames: int | None = None
    realtime: bool = True
    loop: bool = False
    live: bool | None = None
    reconnect_max_s: float | None = None
    backoff_s: float = 0.5
    backoff_cap_s: float = 30.0
    threads: int | None = None
    write_video: bool = True
    status_every_s: float = 1.0
    handle_signals: bool = True


@dataclass
class CameraReport:
    """Per-camera outcome of a run (`videos`: one segment per frame size; `video` is the first)."""

    name: str
    source: str
    frames: int
    fps: float
    status: str
    error: str | None
    video: str | None
    labels: str
    jsonl: str = ""
    videos: list[str] = field(default_factory=list)
    drops: int = 0
    reconnects: int = 0


@dataclass
class StreamReport:
    """Outcome of `run_streams` (`stopped_by`: the signal that ended it, if one did)."""

    cameras: list[CameraReport]
    seconds: float
    total_fps: float
    ticks: int
    extra: dict[str, Any] = field(default_factory=dict)
    stopped_by: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_sources(sources: Sequence[str], *, live: bool | None = None) -> list[int | str]:
    """The parsed sources; a file source must exist (unless every source is forced live).

    Raises:
        UserError: naming the first source that is neither an existing file nor a live source.
    """
    if not sources:
        raise UserError(
            "stream needs at least one source (video file, camera index, URL or GStreamer pipeline)."
        )
    parsed = [parse_source(src) for src in sources]
    for src in parsed:
        if not live and not is_live_source(src) and not Path(str(src)).is_file():
            raise UserError(
                f"source {src!r} is not a file, a camera index, /dev/videoN, an RTSP/HTTP URL or a GStreamer pipeline."
            )
    return parsed


class _StopSignals:
    """While active (main thread only), SIGINT and SIGTERM set `event` instead of ending the process;
    after the first one the previous handlers return, so a second signal aborts as it would have."""

    def __init__(self, enabled: bool) -> None:
        self.event = threading.Event()
        self.name: str | None = None
        self._old: dict[int, Any] = {}
        self._enabled = enabled and threading.current_thread() is threading.main_thread()

    def __enter__(self) -> _StopSignals:
        if self._enabled:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.name = signal.Signals(signum).name
        self.event.set()
        self._restore()

    def _restore(self) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        self._old = {}

    def __exit__(self, *exc: Any) -> None:
        self._restore()


def run_streams(
    sources: Sequence[str],
    out_dir: str | os.PathLike,
    *,
    detector_path: str | os.PathLike | None = None,
    lanes_path: str | os.PathLike | None = None,
    perception_path: str | os.PathLike | None = None,
    config: StreamConfig | None = None,
    printer: Callable[[str], None] = print,
    capture_factory: Callable[[int | str], Any] | None = None,
) -> StreamReport:
    """Run the exported detector (and lane model), or the multi-task graph, on several camera streams at once.

    With `perception_path` (a `perception.onnx` or a deploy folder holding one) the multi-task
    graph replaces both models: one call per tick gives every camera's detections, lane mask and
    drivable mask, and each JSON frame also holds the drivable area (`area/drivable` and
    `area/alternative` polygons, `streams.outputs.drivable_labels`).

    Writes, per camera `camK`: `camK.jsonl` (one BDD100K det frame per line, flushed after each
    batch, so an interrupted run keeps what it saw), `camK.json` at the end (the same frames as a
    BDD100K det JSON list: `videoName`, `frameIndex`, `timestamp` in ms, labels with `score` and the
    track id in `attributes.trackId`), and `camK.mp4` (annotated, when enabled; a change of frame
    size starts a new segment `camK-1.mp4`, ...). `status.json` holds each camera's state (status,
    frames, drops, reconnects, last error), rewritten atomically when a status changes and with each
    status line. SIGINT/SIGTERM stop the run like `max_seconds` does: every output is finalised.

    Raises:
        UserError: if no source is given, a file source does not exist, or a model file is missing
            or unreadable (all checked before anything is written).
    """
    config = config or StreamConfig()
    parsed = check_sources(sources, live=config.live)
    detector: Any = None
    perception: Any = None
    if perception_path is not None:
        from visionpipes.driving.multitask.runtime import PerceptionRuntime

        perception = PerceptionRuntime(perception_path, threads=config.threads)
        class_names = perception.class_names
    elif detector_path is not None:
        detector = OnnxDetector(detector_path, threads=config.threads)
        class_names = detector.class_names
    else:
        raise UserError("stream needs a model: the exported detector or the multi-task perception.onnx.")
    lanes = None
    if perception is None and lanes_path is not None and config.lanes_every:
        from visionpipes.driving.lanes.runtime import OnnxLaneModel

        lanes = OnnxLaneModel(lanes_path, threads=config.threads)
    trackers = [make_tracker(config.tracker) for _ in parsed]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = [f"cam{i}" for i in range(len(parsed))]
    readers = [
        CameraReader(
            name,
            src,
            realtime=config.realtime,
            loop=config.loop,
            live=config.live,
            reconnect_max_s=config.reconnect_max_s,
            backoff_s=config.backoff_s,
            backoff_cap_s=config.backoff_cap_s,
            capture_factory=capture_factory,
        )
        for name, src in zip(names, parsed)
    ]
    logs = [LabelLog(out / f"{name}.jsonl") for name in names]
    videos = [VideoSegments(out / f"{name}.mp4") for name in names]
    processed = [0] * len(readers)
    last_index = [-1] * len(readers)
    last_lane: list[np.ndarray | None] = [None] * len(readers)

    def finish_frame(
        i: int, frame: np.ndarray, timestamp: float, index: int, dets: Any, mask: Any, drivable: Any = None
    ) -> None:
        """Mask decoding, tracking, the JSON Lines frame and the annotated video frame of one camera
        frame (`mask` and `drivable`: arrays, None, or callables that decode them here)."""
        boxes, scores, classes = dets
        mask = mask() if callable(mask) else mask
        drivable = drivable() if callable(drivable) else drivable
        if mask is not None:
            last_lane[i] = mask
        tracks = track(trackers[i], boxes, scores, classes, frame)
        labelled = tracks_to_frame(names[i], index, timestamp, tracks, class_names)
        if drivable is not None:
            labelled.labels = [
                *(labelled.labels or []),
                *drivable_labels(drivable, first_id=len(labelled.labels or [])),
            ]
        logs[i].write(labelled)
        if config.write_video:
            lane_now = (
                last_lane[i] if last_lane[i] is not None and last_lane[i].shape == frame.shape[:2] else None
            )
            shown = drivable_overlay(frame, drivable) if drivable is not None else frame
            videos[i].write(annotate(shown, tracks, lane_now, class_names), readers[i].fps or 10.0)

    def flush_batch() -> None:
        for log in logs:
            log.flush()

    def status(seconds: float) -> dict[str, Any]:
        return _status(names, readers, processed, seconds)

    # Tracking, drawing, encoding and label writing run in one worker thread (in frame order),
    # overlapping the next tick's inference: OpenCV and onnxruntime release the GIL.
    post = PostProcessor(finish_frame, maxsize=2 * len(readers), on_batch=flush_batch)
    for reader in readers:
        reader.start()
    start = time.monotonic()
    cpu_start, main_cpu_start = time.process_time(), time.thread_time()
    next_status = start + config.status_every_s
    ticks = 0
    shown = ["starting"] * len(readers)
    with _StopSignals(config.handle_signals) as stop:
        write_status(out / "status.json", status(0.0))
        try:
            while not stop.event.is_set():
                now = time.monotonic()
                if config.max_seconds is not None and now - start >= config.max_seconds:
                    break
                if _report_changes(readers, shown, printer):
                    write_status(out / "status.json", status(now - start))
                batch: list[tuple[int, np.ndarray, float, int]] = []
                for i, reader in enumerate(readers):
                    if config.max_frames is not None and processed[i] >= config.max_frames:
                        continue
                    item = reader.take()
                    if item is not None and item[2] != last_index[i]:
                        batch.append((i, *item))
                if not batch:
                    done = all(
                        r.finished or (config.max_frames is not None and processed[i] >= config.max_frames)
                        for i, r in enumerate(readers)
                    )
                    if done:
                        break
                    stop.event.wait(0.002)
                    continue
                ticks += 1
                images = [frame for _, frame, _, _ in batch]
                lanes_now = bool(config.lanes_every) and (ticks - 1) % config.lanes_every == 0
                # the masks are decoded in the post-processing thread, overlapping the next tick's inference
                masks: list[Any] = [None] * len(batch)
                drivables: list[Any] = [None] * len(batch)
                if perception is not None:
                    results = perception.predict_deferred(
                        images, conf=config.conf, iou=config.iou, lanes=lanes_now
                    )
                    detections = [r[0] for r in results]
                    masks = [r[1] for r in results]
                    drivables = [r[2] for r in results]
                else:
                    detections = detector(images, conf=config.conf, iou=config.iou)
                    if lanes is not None and lanes_now:
                        masks = [
                            functools.partial(
                                lane_mask_from_logits,
                                logits,
                                (frame.shape[1], frame.shape[0]),
                                **lanes.decoding,
                            )
                            for logits, frame in zip(lanes.logits(images), images)
                        ]
                for (i, frame, timestamp, index), dets, mask, drivable in zip(
                    batch, detections, masks, drivables
                ):
                    last_index[i] = index
                    processed[i] += 1
                    post.put((i, frame, timestamp, index, dets, mask, drivable))
                post.end_batch()
                post.raise_if_failed()
                now = time.monotonic()
                if now >= next_status:
                    next_status = now + config.status_every_s
                    printer(_status_line(names, processed, now - start, readers))
                    write_status(out / "status.json", status(now - start))
            post.close()
        finally:
            post.close(wait=False)
            for reader in readers:
                reader.stop()
            for reader in readers:
                reader.join(timeout=5)
            for video in videos:
                video.close()
            for log in logs:
                log.close()
        if stop.name:
            printer(f"stopped by {stop.name}; finishing the outputs")
        seconds = time.monotonic() - start
        # where the CPU went: the inference loop (this thread: letterbox, the session call's own
        # share, NMS), the post-processing thread (mask decoding, polygons, tracking, JSON), and the
        # rest (the inference library's worker threads and the camera readers' decoding)
        cpu = {
            "process": time.process_time() - cpu_start,
            "inference_loop": time.thread_time() - main_cpu_start,
            "post_processing": post.cpu_seconds,
        }
        cpu["other_threads"] = cpu["process"] - cpu["inference_loop"] - cpu["post_processing"]
        _report_changes(readers, shown, printer)
        cameras = []
        for i, reader in enumerate(readers):
            labels = logs[i].to_json(out / f"{names[i]}.json")
            segments = [str(p) for p in videos[i].segments]
            cameras.append(
                CameraReport(
                    name=names[i],
                    source=str(reader.source),
                    frames=processed[i],
                    fps=round(processed[i] / seconds, 2) if seconds > 0 else 0.0,
                    status=reader.state.status,
                    error=reader.state.error,
                    video=segments[0] if segments else None,
                    labels=str(labels),
                    jsonl=str(logs[i].path),
                    videos=segments,
                    drops=reader.state.drops,
                    reconnects=reader.state.reconnects,
                )
            )
        write_status(out / "status.json", status(seconds))
    total = sum(processed)
    printer(_status_line(names, processed, seconds, readers))
    if perception is not None:
        extra = {"model_family": "multitask", "models": {"perception": str(perception.path)}}
    else:
        extra = {"model_family": "two_model", "models": {"detector": str(detector_path)}}
        if lanes is not None:
            extra["models"]["lanes"] = str(lanes_path)
    extra["cpu_seconds"] = {key: round(value, 3) for key, value in cpu.items()}
    return StreamReport(
        cameras,
        round(seconds, 2),
        round(total / seconds, 2) if seconds > 0 else 0.0,
        ticks,
        extra=extra,
        stopped_by=stop.name,
    )


#: BGR tint of the drivable area in the annotated videos: direct, alternative.
DRIVABLE_COLORS: tuple[tuple[int, int, int], tuple[int, int, int]] = ((255, 0, 255), (255, 191, 0))


def drivable_overlay(frame: np.ndarray, mask: np.ndarray, alpha: float = 0.35) -> np.ndarray:
    """The frame with its drivable area tinted (direct magenta, alternative light blue)."""
    if mask.shape != frame.shape[:2]:
        return frame
    out = frame.copy()
    for value, color in enumerate(DRIVABLE_COLORS):
        area = mask == value
        if area.any():
            out[area] = ((1 - alpha) * out[area] + alpha * np.asarray(color, np.float32)).astype(np.uint8)
    return out


def _report_changes(
    readers: Sequence[CameraReader], shown: list[str], printer: Callable[[str], None]
) -> bool:
    """Print each camera whose status changed since last shown; whether any did."""
    changed = False
    for k, reader in enumerate(readers):
        state = reader.state
        if state.status == shown[k]:
            continue
        changed = True
        detail = f": {state.error}" if state.error and state.status in ("reconnecting", "failed") else ""
        again = (
            f" again after {state.reconnects} reconnects"
            if state.status == "live" and state.reconnects
            else ""
        )
        if state.status != "live" or again:
            printer(f"{reader.camera} ({reader.source}) {state.status}{again}{detail}")
        shown[k] = state.status
    return changed


def _status(
    names: Sequence[str], readers: Sequence[CameraReader], processed: Sequence[int], seconds: float
) -> dict[str, Any]:
    cameras = {}
    for name, reader, n in zip(names, readers, processed):
        state = reader.state
        cameras[name] = {
            "source": str(reader.source),
            "status": state.status,
            "frames": n,
            "frames_read": state.frames_read,
            "drops": state.drops,
            "reconnects": state.reconnects,
            "backoff_s": state.backoff_s,
            "last_error": state.error,
        }
    return {"time": round(time.time(), 3), "seconds": round(seconds, 2), "cameras": cameras}


def _status_line(
    names: Sequence[str], processed: Sequence[int], seconds: float, readers: Sequence[CameraReader]
) -> str:
    seconds = max(seconds, 1e-6)
    parts = []
    for name, n, r in zip(names, processed, readers):
        s = r.state
        counts = f" drops {s.drops} reconnects {s.reconnects}" if s.drops or s.reconnects else ""
        parts.append(
            f"{name} {n / seconds:5.1f} fps {n} frames"
            + ("" if s.status == "live" else f" ({s.status})")
            + counts
        )
    return " | ".join(parts) + f" | total {sum(processed) / seconds:5.1f} fps"
