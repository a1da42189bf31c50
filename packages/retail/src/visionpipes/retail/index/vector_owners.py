"""The in-memory map from FAISS vector id to product and category that `ProductIndex` keeps beside
the FAISS index: result mapping (vector id → product id) and category selectors (category → ids).

Numpy only; rebuilt from the catalog store on open, never written to disk.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class VectorOwners:
    """In-memory map from vector id to product and category, for result mapping and category selectors."""

    owner: np.ndarray = field(default_factory=lambda: np.full(1024, -1, dtype=np.int64))
    vec_category: np.ndarray = field(default_factory=lambda: np.full(1024, -1, dtype=np.int32))
    slot_pid: list[str] = field(default_factory=list)
    pid_slot: dict[str, int] = field(default_factory=dict)
    pid_vectors: dict[str, np.ndarray] = field(default_factory=dict)
    categories: dict[str, int] = field(default_factory=dict)
    version: int = 0
    vector_count: int = 0
    cache: dict[int, tuple[int, np.ndarray]] = field(default_factory=dict)

    def _grow(self, upto: int) -> None:
        if upto <= len(self.owner):
            return
        size = max(upto, 2 * len(self.owner))
        self.owner = np.concatenate([self.owner, np.full(size - len(self.owner), -1, dtype=np.int64)])
        self.vec_category = np.concatenate(
            [self.vec_category, np.full(size - len(self.vec_category), -1, dtype=np.int32)]
        )

    def add(self, pid: str, category: str, ids: np.ndarray) -> None:
        if len(ids) == 0:
            return
        self._grow(int(ids.max()) + 1)
        slot = len(self.slot_pid)
        self.slot_pid.append(pid)
        self.pid_slot[pid] = slot
        self.pid_vectors[pid] = np.asarray(ids, dtype=np.int64)
        code = self.categories.setdefault(category, len(self.categories))
        self.owner[ids] = slot
        self.vec_category[ids] = code
        self.vector_count += len(ids)
        self.version += 1

    def add_bulk(self, vector_ids: np.ndarray, pids: list[str], cats: list[str]) -> None:
        if len(vector_ids) == 0:
            return
        self._grow(int(vector_ids.max()) + 1)
        grouped: dict[str, list[int]] = {}
        for vid, pid, cat in zip(vector_ids.tolist(), pids, cats):
            if pid not in self.pid_slot:
                self.pid_slot[pid] = len(self.slot_pid)
                self.slot_pid.append(pid)
            self.owner[vid] = self.pid_slot[pid]
            self.vec_category[vid] = self.categories.setdefault(cat, len(self.categories))
            grouped.setdefault(pid, []).append(vid)
        for pid, ids in grouped.items():
            self.pid_vectors[pid] = np.array(ids, dtype=np.int64)
        self.vector_count += len(vector_ids)
        self.version += 1

    def remove(self, pid: str) -> None:
        ids = self.pid_vectors.pop(pid, None)
        self.pid_slot.pop(pid, None)
        if ids is not None and len(ids):
            self.owner[ids] = -1
            self.vec_category[ids] = -1
            self.vector_count -= len(ids)
        self.version += 1

    def category_ids(self, category: str) -> np.ndarray:
        code = self.categories.get(category)
        if code is None:
            return np.zeros(0, dtype=np.int64)
        hit = self.cache.get(code)
        if hit is None or hit[0] != self.version:
            hit = (self.version, np.flatnonzero(self.vec_category == code).astype(np.int64))
            self.cache[code] = hit
        return hit[1]

    def categories_of(self, vector_ids: np.ndarray) -> list[str]:
        """The category of each (live) vector id."""
        names = {code: name for name, code in self.categories.items()}
        return [names[int(c)] for c in self.vec_category[np.asarray(vector_ids, dtype=np.int64)]]

    def product_of(self, vector_id: int) -> str | None:
        if vector_id < 0 or vector_id >= len(self.owner):
            return None
        slot = int(self.owner[vector_id])
        return None if slot < 0 else self.slot_pid[slot]

    def best_products(
        self, scores: np.ndarray, vector_ids: np.ndarray, k: int, *, exclude: str | None = None
    ) -> list[tuple[str, float, int]]:
        """The first `k` distinct products along one ranked row of (score, vector id): each product
        with its best view, deleted vectors and `exclude` left out."""
        hits: list[tuple[str, float, int]] = []
        seen: set[str] = set()
        for score, vid in zip(scores.tolist(), vector_ids.tolist()):
            pid = self.product_of(vid) if vid >= 0 else None
            if pid is None or pid in seen or pid == exclude:
                continue
            seen.add(pid)
            hits.append((pid, score, vid))
            if len(hits) == k:
                break
        return hits
