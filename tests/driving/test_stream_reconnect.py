"""A live camera that drops and comes back: a real MJPEG server on 127.0.0.1 read by OpenCV's FFmpeg
back-end is stopped and restarted on the same port; the reader goes live -> reconnecting -> live, its
frame indices continue without reset or duplicate, and its backoff doubles up to its cap."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np

from visionpipes.driving.streams.cameras import CameraReader


class _MjpegHandler(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        self.end_headers()
        k = 0
        while not self.server.halt.is_set():  # type: ignore[attr-defined]
            _, jpeg = cv2.imencode(".jpg", np.full((48, 64, 3), (k * 20) % 256, dtype=np.uint8))
            head = b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpeg)
            try:
                self.wfile.write(head + jpeg.tobytes() + b"\r\n")
            except OSError:
                return
            k += 1
            time.sleep(0.04)


class MjpegServer:
    """An MJPEG camera on 127.0.0.1 (port 0: any free port; reuse one to restart on it)."""

    def __init__(self, port: int = 0) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", port), _MjpegHandler)
        self.server.daemon_threads = True
        self.server.halt = threading.Event()  # type: ignore[attr-defined]
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.halt.set()  # type: ignore[attr-defined]
        self.server.shutdown()
        self.server.server_close()


def _wait(condition: Callable[[], bool], seconds: float, indices: list[int], reader: CameraReader) -> None:
    """Poll the reader like the run loop does (collecting new frame indices) until `condition()`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        item = reader.take()
        if item is not None and (not indices or item[2] != indices[-1]):
            indices.append(item[2])
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out; reader state {reader.state}")


def test_a_camera_that_drops_and_comes_back() -> None:
    server = MjpegServer()
    reader = CameraReader(
        "cam0", f"http://127.0.0.1:{server.port}/stream.mjpg", backoff_s=0.05, backoff_cap_s=0.2
    )
    assert reader.live
    reader.start()
    indices: list[int] = []
    try:
        _wait(lambda: reader.state.frames_read >= 5, 10, indices, reader)
        before = reader.state.frames_read
        server.stop()
        # down long enough for the wait to double past its cap: 0.05, 0.1, 0.2, 0.2, ...
        _wait(lambda: len(reader.state.backoffs) >= 5, 10, indices, reader)
        assert reader.state.status == "reconnecting" and "127.0.0.1" in (reader.state.error or "")
        server = MjpegServer(server.port)
        _wait(lambda: reader.state.status == "live" and reader.state.frames_read >= before + 5, 10, indices, reader)
    finally:
        reader.stop()
        server.stop()
        reader.join(timeout=5)
    state = reader.state
    assert state.history[:2] == ["starting", "live"]
    assert state.history[2:4] == ["reconnecting", "live"]
    assert state.reconnects == len(state.backoffs) >= 5
    backoffs = state.backoffs
    assert backoffs[:3] == [0.05, 0.1, 0.2] and set(backoffs[3:]) == {0.2}
    # indices continue across the reconnection: no reset, no duplicate, and they count every frame read
    assert indices == sorted(set(indices)) and indices[-1] == state.frames_read - 1
    assert any(i >= before for i in indices) and min(indices) < before
