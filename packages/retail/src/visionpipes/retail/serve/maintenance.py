"""The server's write gate: one write (saving uploaded photos, then the index add or delete) at a time
against compaction and reloads, and compaction every `compact_every` writes (`vp-retail serve --compact-every`).

Runs in the thread pool (the routes call it through `run_in_threadpool`); no routes here.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from visionpipes.retail.index.compaction import compact_index
from visionpipes.retail.serve.served import Served, ServedDeployment
from visionpipes.retail.serve.uploads import UPLOAD_PREFIX

T = TypeVar("T")


class WriteGate:
    """Serialises writes with compaction and reloads, so compaction never deletes a photo saved by an
    add that has not reached the index yet, and a reload replays every acknowledged write.

    Args:
        served: the deployment being served (each write runs on the current one).
        compact_every: compact after this many writes (0: never automatically).
    """

    def __init__(self, served: ServedDeployment, compact_every: int = 0) -> None:
        self.served = served
        self.compact_every = compact_every
        self._lock = threading.Lock()
        self._writes = 0
        self.last_compaction: dict[str, Any] | None = None

    def write(self, fn: Callable[[Served], T]) -> T:
        """Run one write on the current deployment under the gate (then compact if `compact_every`
        writes have passed)."""
        with self._lock:
            result = fn(self.served.current)
            self._writes += 1
            if self.compact_every and self._writes >= self.compact_every:
                self._compact_locked()
            return result

    def compact(self) -> dict[str, Any]:
        """Compact now (waits for the write in progress)."""
        with self._lock:
            return self._compact_locked()

    @contextmanager
    def paused(self) -> Iterator[None]:
        """No write (nor compaction) runs inside this block; the writes arriving meanwhile wait."""
        with self._lock:
            yield

    def _compact_locked(self) -> dict[str, Any]:
        self._writes = 0
        served = self.served.current
        self.last_compaction = compact_index(
            served.index, uploads=served.uploads, upload_prefix=UPLOAD_PREFIX
        )
        print(f"compacted the index: {self.last_compaction}", file=sys.stderr, flush=True)
        return self.last_compaction
