"""The server's write gate: one write (saving uploaded photos, then the index add or delete) at a time
against compaction, and compaction every `compact_every` writes (`vp-retail serve --compact-every`).

Runs in the thread pool (the routes call it through `run_in_threadpool`); no routes here.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from visionpipes.retail.index.compaction import compact_index
from visionpipes.retail.index.product_index import ProductIndex
from visionpipes.retail.serve.uploads import UPLOAD_PREFIX

T = TypeVar("T")


class WriteGate:
    """Serialises writes with compaction, so compaction never deletes a photo saved by an add that
    has not reached the index yet.

    Args:
        index: the open index.
        uploads: the uploads folder.
        compact_every: compact after this many writes (0: never automatically).
    """

    def __init__(self, index: ProductIndex, uploads: Path, compact_every: int = 0) -> None:
        self.index = index
        self.uploads = uploads
        self.compact_every = compact_every
        self._lock = threading.Lock()
        self._writes = 0
        self.last_compaction: dict[str, Any] | None = None

    def write(self, fn: Callable[[], T]) -> T:
        """Run one write under the gate (then compact if `compact_every` writes have passed)."""
        with self._lock:
            result = fn()
            self._writes += 1
            if self.compact_every and self._writes >= self.compact_every:
                self._compact_locked()
            return result

    def compact(self) -> dict[str, Any]:
        """Compact now (waits for the write in progress)."""
        with self._lock:
            return self._compact_locked()

    def _compact_locked(self) -> dict[str, Any]:
        self._writes = 0
        self.last_compaction = compact_index(self.index, uploads=self.uploads, upload_prefix=UPLOAD_PREFIX)
        print(f"compacted the index: {self.last_compaction}", file=sys.stderr, flush=True)
        return self.last_compaction
