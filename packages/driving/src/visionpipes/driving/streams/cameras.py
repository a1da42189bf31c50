"""Camera readers: one thread per camera (video file, device, URL or GStreamer pipeline) that keeps only
its newest frame, paces files at their frame rate, and reconnects a live source with capped backoff.

Runtime: OpenCV only; never imports training code. A reader never raises into the run: an error in
its thread marks the camera `failed` with the error.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

LIVE_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://")
MAX_HISTORY = 64  # status transitions and backoff delays kept per camera (bounded on a long run)


def parse_source(source: str) -> int | str:
    """A camera index (`0`) as an int; a file path, device, URL or GStreamer pipeline as given."""
    return int(source) if source.isdigit() else source


def is_live_source(source: int | str) -> bool:
    """Whether `source` is a live camera, reconnected when it drops, rather than a file that ends.

    Camera indices, `/dev/video*` devices, network URLs (RTSP, HTTP(S), RTMP, UDP, TCP, SRT) and
    GStreamer pipeline strings (they contain `!`) are live.
    """
    if isinstance(source, int):
        return True
    text = source.strip()
    return text.startswith("/dev/video") or text.lower().startswith(LIVE_SCHEMES) or "!" in text


def _is_file_source(source: int | str) -> bool:
    return not is_live_source(source)


@dataclass
class CameraState:
    """What a reader thread reports about its camera (read by the run loop; written by the thread).

    Attributes:
        status: starting, live, reconnecting, ended or failed.
        error: the last error (kept after the camera is live again).
        frames_read: frames read from the source.
        drops: frames of a live source replaced by a newer one before the run took them.
        reconnects: reconnection attempts.
        backoff_s: the wait before the current (or last) reconnection attempt.
        history: the last status transitions, oldest first.
        backoffs: the last backoff waits in seconds, oldest first.
    """

    status: str = "starting"
    error: str | None = None
    frames_read: int = 0
    drops: int = 0
    reconnects: int = 0
    backoff_s: float = 0.0
    history: list[str] = field(default_factory=lambda: ["starting"])
    backoffs: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class CameraReader(threading.Thread):
    """Reads one camera in its own thread and keeps only the newest frame (with its timestamp and index).

    A live source (see `is_live_source`, or `live=True`) that cannot be opened or stops delivering
    frames is `reconnecting`: it is reopened after a wait that doubles from `backoff_s` up to
    `backoff_cap_s`, for ever, or until it has been down for `reconnect_max_s` seconds (then `failed`).
    Frame indices continue across reconnections. A video file that reaches its end is `ended` (or
    replayed with `loop`); one that cannot be opened or has no frames is `failed`.
    Video files are paced at their own frame rate when `realtime` is set, as a live camera would be;
    otherwise each file frame waits until the consumer has taken the previous one (`mark_taken`), so
    that no frame is dropped. Live cameras always keep only their newest frame (older ones count as
    `drops`).

    Args:
        name: the camera's name in outputs (`cam0`).
        source: camera index, file path, device, URL or GStreamer pipeline.
        realtime: pace video files at their frame rate.
        loop: replay a video file when it ends.
        live: treat the source as live (None: decide by `is_live_source`).
        reconnect_max_s: give a live source up after this long without frames (None: never).
        backoff_s: first wait before reconnecting.
        backoff_cap_s: longest wait between attempts.
        capture_factory: opens a source (default `cv2.VideoCapture`); for other back-ends.
    """

    def __init__(
        self,
        name: str,
        source: int | str,
        *,
        realtime: bool = True,
        loop: bool = False,
        live: bool | None = None,
        reconnect_max_s: float | None = None,
        backoff_s: float = 0.5,
        backoff_cap_s: float = 30.0,
        capture_factory: Callable[[int | str], Any] | None = None,
    ) -> None:
        super().__init__(name=f"camera-{name}", daemon=True)
        self.camera = name
        self.source = source
        self.realtime = realtime
        self.loop = loop
        self.live = is_live_source(source) if live is None else live
        self.reconnect_max_s = reconnect_max_s
        self.backoff_s = backoff_s
        self.backoff_cap_s = max(backoff_cap_s, backoff_s)
        self._factory = capture_factory
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self._taken = threading.Event()
        self._taken.set()
        self.wait_for_consumer = not realtime and not self.live
        self._frame: np.ndarray | None = None
        self._timestamp = 0.0
        self._index = -1
        self._taken_index = -1  # the index of the newest frame `take` handed out
        self.fps = 0.0
        self.state = CameraState()

    def _open(self) -> Any:
        if self._factory is not None:
            return self._factory(self.source)
        import cv2

        if isinstance(self.source, str) and self.source.lower().startswith(LIVE_SCHEMES):
            # a network camera that accepts the connection but sends nothing must not block for ever
            timeouts = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, 10000, cv2.CAP_PROP_READ_TIMEOUT_MSEC, 10000]
            return cv2.VideoCapture(self.source, cv2.CAP_FFMPEG, timeouts)
        return cv2.VideoCapture(self.source)

    def latest(self) -> tuple[np.ndarray, float, int] | None:
        """The newest frame, its capture time (time.time()) and its index, or None before the first."""
        with self._lock:
            if self._frame is None:
                return None
            return self._frame, self._timestamp, self._index

    def take(self) -> tuple[np.ndarray, float, int] | None:
        """`latest()`, marked taken in the same step (a newer frame cannot slip in between).

        Only the first take of a frame marks it taken: the run polls every camera each tick, and a poll
        that finds the frame it already has must not release a non-realtime file's reader again (the
        reader would read on past the frame it is about to publish, which then nobody takes).
        """
        with self._lock:
            if self._frame is None:
                return None
            if self._index != self._taken_index:
                self._taken_index = self._index
                self._taken.set()
            return self._frame, self._timestamp, self._index

    def mark_taken(self) -> None:
        """Tell the reader that its newest frame was taken (lets a non-realtime file read on)."""
        self._taken.set()

    def stop(self) -> None:
        """Ask the thread to end (it releases its source)."""
        self._halt.set()

    @property
    def finished(self) -> bool:
        """Whether the camera will deliver no more frames (ended or failed)."""
        return self.state.status in ("ended", "failed")

    def _set(self, status: str, error: str | None = None) -> None:
        if error is not None:
            self.state.error = error
        if status != self.state.status:
            self.state.history = [*self.state.history[-(MAX_HISTORY - 1) :], status]
        self.state.status = status

    def run(self) -> None:
        try:
            self._run()
        except BaseException as err:  # reported as the camera's state; the run goes on
            self._set("failed", f"reader error: {type(err).__name__}: {err}")

    def _read_until_stopped(self, capture: Any) -> bool:
        """Read frames until the source stops or the reader is halted; whether any frame came."""
        fps = float(capture.get(5) or 0.0)  # cv2.CAP_PROP_FPS
        self.fps = fps if 0 < fps < 240 else 0.0
        period = 1.0 / self.fps if self.realtime and self.fps and not self.live else 0.0
        next_time = time.monotonic()
        got_any = False
        while not self._halt.is_set():
            if self.wait_for_consumer:
                while not self._taken.wait(0.05):
                    if self._halt.is_set():
                        return got_any
                self._taken.clear()
            ok, frame = capture.read()
            if not ok or frame is None:
                break
            got_any = True
            with self._lock:
                if not self.wait_for_consumer:
                    if self._frame is not None and not self._taken.is_set():
                        self.state.drops += 1
                    self._taken.clear()
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
        return got_any

    def _run(self) -> None:
        delay = self.backoff_s
        down_since: float | None = None  # monotonic time a live source went down
        while not self._halt.is_set():
            capture = self._open()
            opened = capture is not None and capture.isOpened()
            got_any = False
            try:
                if opened:
                    got_any = self._read_until_stopped(capture)
            finally:
                if capture is not None:
                    capture.release()
            if self._halt.is_set():
                return
            error = f"cannot open {self.source!r}" if not opened else f"{self.source!r} stopped delivering frames"
            if not self.live:
                if got_any and self.loop:
                    continue
                if got_any:
                    self._set("ended")
                else:
                    self._set("failed", error if not opened else f"{self.source!r} delivers no frames")
                return
            now = time.monotonic()
            if got_any or down_since is None:
                down_since, delay = now, self.backoff_s
            if self.reconnect_max_s is not None and now - down_since >= self.reconnect_max_s:
                self._set("failed", f"{error}; gave up after {now - down_since:.1f} s of reconnecting")
                return
            self._set("reconnecting", error)
            self.state.reconnects += 1
            self.state.backoff_s = delay
            self.state.backoffs = [*self.state.backoffs[-(MAX_HISTORY - 1) :], delay]
            self._halt.wait(delay)
            delay = min(delay * 2, self.backoff_cap_s)
