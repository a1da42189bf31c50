"""Camera readers: one thread per camera (video file, device index or RTSP/HTTP URL) that keeps only
its newest frame, paces files at their frame rate, and reopens a failed source with backoff.

Runtime: OpenCV only; never imports training code.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np


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
