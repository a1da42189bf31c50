"""The stream's post-processing thread (`streams.run.run_streams`): tracking, drawing and writing of each
frame run here, in order, while the inference loop reads and infers the next tick."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

#: The queue item that marks the end of one tick's frames.
_BATCH_END = ("batch-end",)


class PostProcessor:
    """A worker thread that applies `fn` to queued items in order and calls `on_batch` at each
    `end_batch()`; the first error is kept and re-raised in the caller by `raise_if_failed` or `close`."""

    def __init__(
        self, fn: Callable[..., None], maxsize: int, on_batch: Callable[[], None] | None = None
    ) -> None:
        import queue

        self._fn = fn
        self._on_batch = on_batch
        self._queue: queue.Queue[tuple[Any, ...] | None] = queue.Queue(maxsize=maxsize)
        self._error: BaseException | None = None
        #: CPU seconds this worker thread has used (its own thread clock, read when it stops).
        self.cpu_seconds = 0.0
        self._thread = threading.Thread(target=self._run, name="stream-post", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._work()
        finally:
            self.cpu_seconds = time.thread_time()

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._error is None:
                try:
                    if item is _BATCH_END:
                        if self._on_batch is not None:
                            self._on_batch()
                    else:
                        self._fn(*item)
                except BaseException as err:  # handed to the caller
                    self._error = err

    def put(self, item: tuple[Any, ...]) -> None:
        self._queue.put(item)

    def end_batch(self) -> None:
        """Mark the end of one tick's frames (`on_batch` runs after them, in order)."""
        self._queue.put(_BATCH_END)

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
