"""Visual product search index: FAISS over L2-normalised embeddings (inner product = cosine), with stable
int64 vector ids, online add/delete, category filters and a durable on-disk directory format.

`VectorIndex` is the FAISS layer alone (factory string, training, GPU, tombstones, filtered search);
`ProductIndex` binds it to the SQLite catalog (`visionpipes.retail.store`) and the manifest
(`visionpipes.retail.manifest`). Neither computes embeddings: vectors come from the caller.

Directory format (one index = one folder)::

    manifest.json              binds the snapshot files by sha256 + model version, dimension, factory, counts
    snapshot-<gen>/index.faiss FAISS index (always written from a CPU copy)
    snapshot-<gen>/catalog.sqlite  products, views' image paths and every vector (float32 blobs)
    journal-<gen>.sqlite       changes since that snapshot (SQLite WAL, synchronous=FULL)
    .lock                      held (flock) by the one process that has the index open

Durability: an add or delete commits to the journal (fsynced) before it reaches FAISS and before the
call returns; on open the snapshot index is loaded and the journal replayed into it, so an acknowledged
add survives `kill -9`. `save()` folds the journal into a new snapshot: files written into a temporary
folder, fsynced, renamed to `snapshot-<gen+1>/`, then `manifest.json` is atomically replaced (the commit
point); a crash at any step leaves the previous manifest and its files intact.

Ids: products have string ids; each view vector gets a never-reused int64 id from the catalog. Flat and
HNSW indexes are wrapped in `IndexIDMap2`. IVF indexes keep ids natively (`add_with_ids`): `IndexIDMap2`
over IVF returns wrong ids after `remove_ids` (its id map is compacted while IVF's inverted lists are not).
HNSW cannot remove: deleted vectors become tombstones, excluded at query time by an `IDSelector` and a
post-filter, and dropped when the graph is rebuilt (`compact`).
"""

from __future__ import annotations

import fcntl
import math
import os
import shutil
import threading
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from visionpipes.core.errors import UserError
from visionpipes.core.io import atomic_path
from visionpipes.retail.manifest import (
    Manifest,
    file_entry,
    fsync_path,
    read_manifest,
    verify_files,
    write_manifest,
)
from visionpipes.retail.store import CatalogStore, ProductRecord, StoredProduct, write_empty_snapshot

#: Index families this module supports, by the FAISS class the factory string builds.
FAMILIES = ("flat", "ivf", "hnsw")
#: GPU k-selection limit of FAISS (larger k cannot be asked of a GPU index).
GPU_MAX_K = 2048


@dataclass
class SearchSettings:
    """Query-time knobs.

    Attributes:
        nprobe: IVF lists visited per query (IVF indexes).
        ef_search: HNSW candidate-list size (HNSW indexes); raised to the fetch size when smaller.
        compact_ratio: `save()` rebuilds an HNSW graph when tombstones exceed this share of its vectors.
        selector_filter: exclude tombstones and filtered-out ids inside FAISS with an `IDSelector`
            (CPU only); when False, or on a GPU, results are over-fetched and post-filtered instead.
    """

    nprobe: int = 16
    ef_search: int = 64
    compact_ratio: float = 0.2
    selector_filter: bool = True


def normalize_vectors(vectors: np.ndarray, *, dimension: int, what: str = "vectors") -> np.ndarray:
    """Validate and L2-normalise a (n, dimension) or (dimension,) array as float32 rows.

    Raises:
        UserError: on a wrong shape, a non-finite value or a zero vector.
    """
    arr = np.asarray(vectors, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != dimension:
        raise UserError(f"{what} have shape {tuple(np.shape(vectors))}, expected (n, {dimension}).")
    if not np.isfinite(arr).all():
        raise UserError(f"{what} contain NaN or infinite values.")
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    if (norms == 0).any():
        raise UserError(f"{what} contain an all-zero vector, which has no direction to compare.")
    return np.ascontiguousarray(arr / norms, dtype=np.float32)


def _family_of(base: faiss.Index, factory: str) -> str:
    if isinstance(base, faiss.IndexIVF):
        return "ivf"
    if isinstance(base, faiss.IndexHNSW):
        return "hnsw"
    if isinstance(base, faiss.IndexFlat):
        return "flat"
    raise UserError(
        f"index factory {factory!r} builds a {type(base).__name__}; supported are Flat, IVF<n>,... and HNSW<M>,...."
    )


def build_faiss_index(factory: str, dimension: int) -> tuple[faiss.Index, str]:
    """Build an empty inner-product CPU index with ids from a FAISS `index_factory` string.

    Returns:
        The index (Flat/HNSW wrapped in IndexIDMap2, IVF bare: it keeps ids itself) and its family.

    Raises:
        UserError: if the factory string is invalid or of an unsupported family.
    """
    if not isinstance(factory, str) or not factory.strip():
        raise UserError("index factory string must be a non-empty string such as 'Flat' or 'HNSW32'.")
    factory = factory.strip()
    if factory.upper().startswith("IDMAP"):
        raise UserError(f"index factory {factory!r}: leave out IDMap, ids are added by the index itself.")
    if dimension <= 0:
        raise UserError(f"embedding dimension must be positive, got {dimension}.")
    try:
        # index_factory's result is already of its concrete class (and owns its memory: no downcast_index).
        base = faiss.index_factory(dimension, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else "rejected"
        raise UserError(f"index factory {factory!r} is not a valid FAISS factory string ({first}).") from None
    family = _family_of(base, factory)
    if family == "ivf":
        if isinstance(base, faiss.IndexIVFPQ):
            # Polysemous codes (simulated annealing at train time) only serve Hamming pre-filtering, which
            # this index never uses; skipping it makes IVF-PQ training seconds instead of minutes.
            base.do_polysemous_training = False
        return base, family
    return faiss.index_factory(dimension, "IDMap2," + factory, faiss.METRIC_INNER_PRODUCT), family


def _inner(index: faiss.Index) -> faiss.Index:
    return faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index


def min_training_vectors(index: faiss.Index) -> int:
    """How many vectors `index` needs to train (0 if it needs no training)."""
    if index.is_trained:
        return 0
    need = 1
    inner = _inner(index)
    if isinstance(inner, faiss.IndexIVF):
        need = max(need, int(inner.nlist))
    for owner in (inner, getattr(inner, "storage", None)):
        if owner is None:
            continue
        owner = faiss.downcast_index(owner) if isinstance(owner, faiss.Index) else owner
        pq = getattr(owner, "pq", None)
        if pq is not None:
            need = max(need, int(pq.ksub))
    return need


class VectorIndex:
    """A FAISS index of float32 vectors with int64 ids: train, add, remove (or tombstone), filtered search.

    Args:
        index: a CPU index from `build_faiss_index` or `faiss.read_index`.
        factory: its factory string (for messages and rebuilds).
        use_gpu: True to require a GPU, False for CPU, None to use one when `faiss.get_num_gpus() > 0`.
        settings: query-time knobs.

    Raises:
        UserError: if `use_gpu` is True and FAISS has no GPU.
    """

    def __init__(
        self,
        index: faiss.Index,
        factory: str,
        *,
        use_gpu: bool | None = None,
        settings: SearchSettings | None = None,
    ) -> None:
        self.factory = factory
        self.settings = settings or SearchSettings()
        self.family = _family_of(_inner(index), factory)
        self._index = index
        self._gpu_resources: Any = None
        self._tombstones: set[int] = set()
        self._tomb_array: np.ndarray | None = np.zeros(0, dtype=np.int64)
        self._use_gpu = use_gpu
        if use_gpu and faiss.get_num_gpus() == 0:
            raise UserError("a GPU index was asked for but FAISS sees no GPU (faiss.get_num_gpus() == 0).")

    @classmethod
    def create(
        cls,
        factory: str,
        dimension: int,
        *,
        use_gpu: bool | None = None,
        settings: SearchSettings | None = None,
    ) -> VectorIndex:
        """An empty index built from `factory` (see `build_faiss_index`)."""
        index, _ = build_faiss_index(factory, dimension)
        out = cls(index, factory.strip(), use_gpu=use_gpu, settings=settings)
        out.place()
        return out

    # -- state ----------------------------------------------------------------------------------
    @property
    def dimension(self) -> int:
        return int(self._index.d)

    @property
    def ntotal(self) -> int:
        """Vectors in the FAISS index, tombstones included."""
        return int(self._index.ntotal)

    @property
    def tombstones(self) -> np.ndarray:
        """Ids deleted but still inside the index (HNSW, or a GPU index)."""
        if self._tomb_array is None:
            self._tomb_array = np.fromiter(self._tombstones, dtype=np.int64, count=len(self._tombstones))
            self._tomb_array.sort()
        return self._tomb_array

    @property
    def is_trained(self) -> bool:
        return bool(self._index.is_trained)

    @property
    def on_gpu(self) -> bool:
        return self._gpu_resources is not None

    @property
    def device(self) -> str:
        return "cuda:0" if self.on_gpu else "cpu"

    @property
    def can_remove(self) -> bool:
        """Whether deletes remove from FAISS (else they become tombstones)."""
        return self.family != "hnsw" and not self.on_gpu

    def place(self) -> None:
        """Move the index to the GPU when one is wanted and FAISS supports this family there (not HNSW)."""
        wanted = self._use_gpu if self._use_gpu is not None else faiss.get_num_gpus() > 0
        if self.on_gpu or not wanted or self.family == "hnsw" or not self.is_trained:
            return
        try:
            res = faiss.StandardGpuResources()
            self._index = faiss.index_cpu_to_gpu(res, 0, self._index)
            self._gpu_resources = res
        except (RuntimeError, AttributeError) as err:
            if self._use_gpu:
                raise UserError(
                    f"index factory {self.factory!r} cannot be placed on the GPU ({err})."
                ) from None
            warnings.warn(f"FAISS GPU placement failed, staying on CPU: {err}", RuntimeWarning, stacklevel=2)

    def cpu_index(self) -> faiss.Index:
        """A CPU index with the same content (the index itself when on CPU, else a GPU→CPU copy)."""
        return faiss.index_gpu_to_cpu(self._index) if self.on_gpu else self._index

    # -- training and mutation -------------------------------------------------------------------
    def min_training_vectors(self) -> int:
        """Vectors needed to train (0 when trained)."""
        return min_training_vectors(self._index)

    def train(self, vectors: np.ndarray) -> None:
        """Train (IVF coarse quantizer, PQ/SQ codebooks); no-op when already trained.

        Raises:
            UserError: if there are fewer vectors than the index needs to train.
        """
        need = self.min_training_vectors()
        if need == 0:
            return
        if len(vectors) < need:
            raise UserError(
                f"index factory {self.factory!r} needs at least {need} vectors to train, got {len(vectors)}: "
                "add more products in the first batch, or use a smaller IVF/PQ setting or 'Flat'."
            )
        self._index.train(np.ascontiguousarray(vectors, dtype=np.float32))
        self.place()

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Add normalised float32 vectors under int64 ids (training first if needed)."""
        if len(vectors) == 0:
            return
        if not self.is_trained:
            self.train(vectors)
        self._index.add_with_ids(
            np.ascontiguousarray(vectors, dtype=np.float32), np.asarray(ids, dtype=np.int64)
        )

    def remove(self, ids: np.ndarray) -> None:
        """Delete ids: removed from FAISS where it can, else recorded as tombstones."""
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids) == 0:
            return
        if self.can_remove:
            self._index.remove_ids(ids)
        else:
            self._tombstones.update(int(i) for i in ids)
            self._tomb_array = None

    def mark_tombstones(self, ids: np.ndarray) -> None:
        """Record ids that are inside the index but deleted (as read back from a snapshot)."""
        self._tombstones.update(int(i) for i in ids)
        self._tomb_array = None

    def snapshot(self) -> tuple[faiss.Index, np.ndarray]:
        """A CPU index to write, with the tombstones it still holds (removed where the CPU index can)."""
        cpu = self.cpu_index()
        tomb = self.tombstones
        if len(tomb) and self.family != "hnsw":
            if cpu is self._index:
                cpu = faiss.clone_index(cpu)
            cpu.remove_ids(tomb)
            tomb = np.zeros(0, dtype=np.int64)
        return cpu, tomb

    def rebuild(self, batches: Iterable[tuple[np.ndarray, np.ndarray]]) -> None:
        """Compaction: empty the index (keeping its training) and re-add the given (ids, vectors) batches."""
        fresh = faiss.clone_index(self.cpu_index())
        fresh.reset()
        for ids, vecs in batches:
            fresh.add_with_ids(vecs, ids)
        self._index = fresh
        self._gpu_resources = None
        self._tombstones.clear()
        self._tomb_array = None
        self.place()

    # -- search ----------------------------------------------------------------------------------
    def _params(self, k: int, sel: Any, nprobe: int | None, ef_search: int | None) -> Any:
        if self.family == "ivf":
            return faiss.SearchParametersIVF(sel=sel, nprobe=int(nprobe or self.settings.nprobe))
        if self.family == "hnsw":
            return faiss.SearchParametersHNSW(
                sel=sel, efSearch=max(int(ef_search or self.settings.ef_search), k)
            )
        return faiss.SearchParameters(sel=sel)

    def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        allowed: np.ndarray | None = None,
        nprobe: int | None = None,
        ef_search: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k inner products of each query among live vectors (optionally only ids in `allowed`).

        Tombstones and ids outside `allowed` are excluded by an `IDSelector` inside FAISS on CPU, and in
        every case by a post-filter (with over-fetch where FAISS could not filter, e.g. on a GPU).

        Returns:
            (scores, ids) of shape (n, k), best first; missing slots are -inf / -1.
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        n = len(queries)
        out_d = np.full((n, k), -np.inf, dtype=np.float32)
        out_i = np.full((n, k), -1, dtype=np.int64)
        if n == 0 or k <= 0 or self.ntotal == 0 or not self.is_trained:
            return out_d, out_i
        tomb = self.tombstones
        if allowed is not None:
            allowed = np.asarray(allowed, dtype=np.int64)
            if len(tomb):
                allowed = np.setdiff1d(allowed, tomb, assume_unique=False)
            if len(allowed) == 0:
                return out_d, out_i
        sel: Any = None
        use_sel = self.settings.selector_filter and not self.on_gpu
        if use_sel and allowed is not None:
            sel = faiss.IDSelectorBatch(allowed)
        elif use_sel and len(tomb):
            sel = faiss.IDSelectorNot(faiss.IDSelectorBatch(tomb))
        candidates = len(allowed) if allowed is not None else self.ntotal - len(tomb)
        limit = min(self.ntotal, GPU_MAX_K) if self.on_gpu else self.ntotal
        fetch = k if use_sel else min(limit, k + (len(tomb) if allowed is None else 4 * k))
        pending = np.arange(n)
        while len(pending):
            params = self._params(fetch, sel, nprobe, ef_search)
            if self.on_gpu and self.family == "ivf":
                faiss.GpuParameterSpace().set_index_parameter(self._index, "nprobe", params.nprobe)
                params = None
            elif self.on_gpu:
                params = None
            dist, ids = self._index.search(queries[pending], fetch, params=params)
            keep = ids >= 0
            if len(tomb):
                keep &= ~np.isin(ids, tomb)
            if allowed is not None and not use_sel:
                keep &= np.isin(ids, allowed)
            short = []
            for row, q in enumerate(pending):
                good = np.flatnonzero(keep[row])[:k]
                out_d[q, : len(good)] = dist[row, good]
                out_i[q, : len(good)] = ids[row, good]
                if not use_sel and len(good) < min(k, candidates) and fetch < limit:
                    short.append(q)
            pending = np.array(short, dtype=np.int64)
            fetch = min(limit, fetch * 2)
        return out_d, out_i


@dataclass(frozen=True)
class SearchHit:
    """One product in a search result: its best-matching view's score and its catalog fields."""

    product_id: str
    score: float
    title: str
    category: str
    metadata: dict[str, Any]
    image_path: str
    vector_id: int


@dataclass
class _Owners:
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

    def product_of(self, vector_id: int) -> str | None:
        if vector_id < 0 or vector_id >= len(self.owner):
            return None
        slot = int(self.owner[vector_id])
        return None if slot < 0 else self.slot_pid[slot]


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


class ProductIndex:
    """Products (string ids, several view vectors each) searchable by image embedding, on disk in one folder.

    Use `ProductIndex.create`, `ProductIndex.build` or `ProductIndex.open`; see the module docstring
    for the directory format and durability. Thread-safe (one lock); one process per directory.

    Example:
        >>> idx = ProductIndex.create(tmp / "idx", dimension=4, factory="Flat", model_version="m1")
        >>> idx.add(ProductRecord("sku-1", title="mug", category="kitchen"), np.eye(4)[:2])
        >>> idx.search(np.eye(4)[0], k=1)[0][0].product_id
        'sku-1'
    """

    def __init__(self) -> None:  # use create/open
        raise TypeError("use ProductIndex.create(...), ProductIndex.build(...) or ProductIndex.open(...).")

    # -- construction ----------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        directory: str | os.PathLike,
        *,
        dimension: int,
        factory: str = "Flat",
        model_version: str,
        use_gpu: bool | None = None,
        settings: SearchSettings | None = None,
        extra: dict[str, Any] | None = None,
    ) -> ProductIndex:
        """Create an empty index directory and open it.

        IVF/PQ indexes are trained on the first `add_many` batch (which must hold enough vectors).
        `extra` (JSON data, e.g. where the model and the catalog images are) is kept in the manifest
        across saves.

        Raises:
            UserError: if `directory` already exists, or on a bad factory string or dimension.
        """
        directory = Path(directory)
        if directory.exists():
            raise UserError(f"index directory {directory} already exists; open it or choose a new path.")
        if directory.parent and not directory.parent.is_dir():
            raise UserError(f"folder {directory.parent} for the index directory does not exist.")
        index, _ = build_faiss_index(factory, dimension)
        with atomic_path(directory, is_dir=True) as tmp:
            cls._write_snapshot_files(
                tmp, 1, index, writer=lambda p: write_empty_snapshot(p, dimension=dimension)
            )
            counts = {"products": 0, "vectors": 0, "tombstones": 0, "index_ntotal": 0}
            manifest = cls._make_manifest(tmp, 1, model_version, dimension, factory.strip(), counts)
            manifest.extra = dict(extra or {})
            write_manifest(tmp, manifest)
        fsync_path(directory.parent)
        return cls.open(
            directory, dimension=dimension, model_version=model_version, use_gpu=use_gpu, settings=settings
        )

    @classmethod
    def build(
        cls,
        directory: str | os.PathLike,
        records: Sequence[ProductRecord],
        vectors: Sequence[np.ndarray],
        *,
        dimension: int,
        factory: str = "Flat",
        model_version: str,
        use_gpu: bool | None = None,
        settings: SearchSettings | None = None,
        extra: dict[str, Any] | None = None,
    ) -> ProductIndex:
        """Create an index directory from a whole catalog in one go (training on it) and save it.

        Raises:
            UserError: as `create`, or if an IVF/PQ factory gets too few vectors to train.
        """
        directory = Path(directory)
        dim = int(dimension)
        # Check trainability before anything is written.
        probe, _ = build_faiss_index(factory, dim)
        need = min_training_vectors(probe)
        total = int(sum(len(np.atleast_2d(v)) for v in vectors))
        if need and total < need:
            raise UserError(
                f"index factory {factory!r} needs at least {need} vectors to train, got {total}: "
                "index more products, or use a smaller IVF/PQ setting or 'Flat'."
            )
        idx = cls.create(
            directory,
            dimension=dim,
            factory=factory,
            model_version=model_version,
            use_gpu=use_gpu,
            settings=settings,
            extra=extra,
        )
        try:
            idx.add_many(records, vectors)
            if idx._store.journal_size():
                idx.save()
        except BaseException:
            idx.close()
            shutil.rmtree(directory, ignore_errors=True)
            raise
        return idx

    @classmethod
    def open(
        cls,
        directory: str | os.PathLike,
        *,
        dimension: int | None = None,
        model_version: str | None = None,
        use_gpu: bool | None = None,
        settings: SearchSettings | None = None,
    ) -> ProductIndex:
        """Open an index directory: verify the manifest and checksums, load the snapshot, replay the journal.

        Args:
            directory: the index directory.
            dimension: the embedding dimension the caller's model produces; refused if different.
            model_version: the model the caller embeds queries with; refused if different.
            use_gpu: see `VectorIndex`.
            settings: query-time knobs.

        Raises:
            UserError: on a missing/garbled manifest, a missing/corrupted file, a count or dimension mismatch,
                another model version, or if another process has the directory open.
        """
        self = object.__new__(cls)
        self.directory = Path(directory)
        self._lock = threading.RLock()
        self._settings = settings or SearchSettings()
        manifest = read_manifest(self.directory)
        if dimension is not None and int(dimension) != manifest.dimension:
            raise UserError(
                f"index directory {self.directory} holds {manifest.dimension}-d embeddings but the model "
                f"produces {dimension}-d ones; rebuild the index with this model."
            )
        if model_version is not None and model_version != manifest.model_version:
            raise UserError(
                f"index directory {self.directory} was built with model {manifest.model_version!r}, "
                f"not {model_version!r}; rebuild the index with this model."
            )
        self._lock_fd = self._take_lock()
        try:
            manifest = read_manifest(self.directory)  # re-read under the lock
            verify_files(self.directory, manifest)
            self._remove_orphans(manifest)
            self._load(manifest, use_gpu)
        except BaseException:
            self._release_lock()
            raise
        return self

    def _take_lock(self) -> int:
        fd = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UserError(f"index directory {self.directory} is open in another process.") from None
        return fd

    def _release_lock(self) -> None:
        fd = getattr(self, "_lock_fd", None)
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            self._lock_fd = None

    def _remove_orphans(self, manifest: Manifest) -> None:
        """Drop files of other generations (left by a save that crashed, or finished before cleanup)."""
        keep_snapshot = f"snapshot-{manifest.generation}"
        for entry in self.directory.iterdir():
            name = entry.name
            if name.startswith(("snapshot-", ".snapshot-")) and name != keep_snapshot:
                shutil.rmtree(entry, ignore_errors=True)
            elif name.startswith("journal-") and not name.startswith(manifest.journal):
                entry.unlink(missing_ok=True)

    def _load(self, manifest: Manifest, use_gpu: bool | None) -> None:
        index_path = self.directory / manifest.files["index"].path
        try:
            index = faiss.read_index(str(index_path))
        except RuntimeError as err:
            raise UserError(
                f"index file {index_path} cannot be read by FAISS ({str(err).splitlines()[0]})."
            ) from None
        if index.d != manifest.dimension:
            raise UserError(
                f"index file {index_path} is {index.d}-d, the manifest says {manifest.dimension}-d."
            )
        if index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise UserError(f"index file {index_path} does not use inner product.")
        if index.ntotal != manifest.counts["index_ntotal"]:
            raise UserError(
                f"index file {index_path} holds {index.ntotal} vectors, the manifest says {manifest.counts['index_ntotal']}."
            )
        store = CatalogStore(
            self.directory / manifest.files["catalog"].path,
            self.directory / manifest.journal,
            dimension=manifest.dimension,
        )
        try:
            snap = store.snapshot_counts()
            for key in ("products", "vectors", "tombstones"):
                if snap[key] != manifest.counts[key]:
                    raise UserError(
                        f"catalog {manifest.files['catalog'].path} holds {snap[key]} {key}, the manifest says {manifest.counts[key]}."
                    )
            vindex = VectorIndex(index, manifest.factory, use_gpu=use_gpu, settings=self._settings)
            vindex.mark_tombstones(store.snapshot_tombstones())
            vindex.remove(store.removed_snapshot_vector_ids())
            if not vindex.is_trained and store.journal_size():
                # A crash between the first (training) add and its save: train on the journal's vectors.
                vindex.train(np.concatenate([v for _, v in store.iter_vectors(source="journal")]))
            for ids, vecs in store.iter_vectors(source="journal"):
                vindex.add(vecs, ids)
            vindex.place()
        except BaseException:
            store.close()
            raise
        owners = _Owners()
        rows = list(store.vector_owners())
        if rows:
            owners.add_bulk(
                np.array([r[0] for r in rows], dtype=np.int64), [r[1] for r in rows], [r[2] for r in rows]
            )
        self._manifest = manifest
        self._store = store
        self._vindex = vindex
        self._owners = owners

    @staticmethod
    def _write_snapshot_files(folder: Path, generation: int, index: faiss.Index, *, writer: Any) -> Path:
        snap = folder / f"snapshot-{generation}"
        snap.mkdir()
        faiss.write_index(index, str(snap / "index.faiss"))
        writer(snap / "catalog.sqlite")
        for name in ("index.faiss", "catalog.sqlite"):
            _fsync_file(snap / name)
        fsync_path(snap)
        return snap

    @staticmethod
    def _make_manifest(
        directory: Path,
        generation: int,
        model_version: str,
        dimension: int,
        factory: str,
        counts: dict[str, int],
    ) -> Manifest:
        snap = directory / f"snapshot-{generation}"
        return Manifest(
            generation=generation,
            model_version=str(model_version),
            dimension=int(dimension),
            factory=factory,
            metric="inner_product",
            counts=counts,
            files={
                "index": file_entry(directory, snap / "index.faiss"),
                "catalog": file_entry(directory, snap / "catalog.sqlite"),
            },
            journal=f"journal-{generation}.sqlite",
        )

    # -- properties ------------------------------------------------------------------------------
    @property
    def dimension(self) -> int:
        return self._manifest.dimension

    @property
    def factory(self) -> str:
        return self._manifest.factory

    @property
    def model_version(self) -> str:
        return self._manifest.model_version

    @property
    def manifest(self) -> Manifest:
        return self._manifest

    @property
    def device(self) -> str:
        return self._vindex.device

    @property
    def vector_index(self) -> VectorIndex:
        return self._vindex

    def __len__(self) -> int:
        return len(self._owners.pid_vectors)

    def __contains__(self, product_id: object) -> bool:
        return product_id in self._owners.pid_vectors

    def stats(self) -> dict[str, Any]:
        """Counts and settings, for /health and /metrics."""
        with self._lock:
            return {
                "products": len(self._owners.pid_vectors),
                "vectors": self._owners.vector_count,
                "index_ntotal": self._vindex.ntotal,
                "tombstones": len(self._vindex.tombstones),
                "journal_changes": self._store.journal_size(),
                "generation": self._manifest.generation,
                "factory": self.factory,
                "dimension": self.dimension,
                "model_version": self.model_version,
                "device": self.device,
            }

    # -- mutation --------------------------------------------------------------------------------
    def add(self, record: ProductRecord, vectors: np.ndarray, *, replace: bool = False) -> np.ndarray:
        """Add one product with its view vectors; durable when it returns. Returns the vector ids.

        Raises:
            ProductExistsError: if the product exists and `replace` is false.
            UserError: on vectors of the wrong shape or values.
        """
        return self.add_many([record], [vectors], replace=replace)[0]

    def add_many(
        self, records: Sequence[ProductRecord], vectors: Sequence[np.ndarray], *, replace: bool = False
    ) -> list[np.ndarray]:
        """Add products in one durable transaction, then to FAISS (training it first if it is untrained).

        Returns:
            Per product, the int64 ids of its vectors.

        Raises:
            ProductExistsError: if a product exists and `replace` is false.
            UserError: on bad vectors, or too few vectors to train an untrained IVF/PQ index.
        """
        if len(records) != len(vectors):
            raise UserError(f"add got {len(records)} products but {len(vectors)} vector arrays.")
        normed = [
            normalize_vectors(v, dimension=self.dimension, what=f"vectors of product {r.product_id!r}")
            for r, v in zip(records, vectors)
        ]
        if not normed:
            return []
        with self._lock:
            trained_now = False
            if not self._vindex.is_trained:
                self._vindex.train(np.concatenate(normed))
                trained_now = True
            new_ids, removed = self._store.add_products(records, normed, replace=replace)
            if removed:
                self._vindex.remove(np.asarray(removed, dtype=np.int64))
                for rec in records:
                    if rec.product_id in self._owners.pid_vectors:
                        self._owners.remove(rec.product_id)
            self._vindex.add(np.concatenate(normed), np.concatenate(new_ids))
            for rec, ids in zip(records, new_ids):
                self._owners.add(rec.product_id, rec.category, ids)
            if trained_now:
                self.save()  # persist the trained index, so a reload searches with the same training
        return new_ids

    def delete(self, product_id: str) -> bool:
        """Delete a product (durable when it returns); False if it was not in the index."""
        return bool(self.delete_many([product_id]))

    def delete_many(self, product_ids: Iterable[str]) -> list[str]:
        """Delete products durably; returns the ids that were there."""
        with self._lock:
            deleted = self._store.delete_products(list(product_ids))
            ids = [i for v in deleted.values() for i in v]
            self._vindex.remove(np.asarray(ids, dtype=np.int64))
            for pid in deleted:
                self._owners.remove(pid)
        return list(deleted)

    # -- queries ---------------------------------------------------------------------------------
    def get(self, product_id: str) -> StoredProduct | None:
        """A product's catalog entry, or None."""
        with self._lock:
            return self._store.get(product_id)

    def vectors_of(self, product_id: str) -> np.ndarray:
        """A product's stored (normalised) view vectors."""
        with self._lock:
            return self._store.vectors_of(product_id)

    def view_paths(self, product_id: str) -> list[str]:
        """The image path recorded for each view of a product (empty if unknown)."""
        with self._lock:
            return self._store.view_paths(product_id)

    def categories(self) -> list[str]:
        """Distinct categories of the products in the index, sorted."""
        with self._lock:
            return self._store.categories()

    def list_products(self, *, category: str | None = None, limit: int = 100, offset: int = 0) -> list[str]:
        """Product ids in id order, optionally of one category."""
        with self._lock:
            return self._store.product_ids(category=category, limit=limit, offset=offset)

    def search(
        self,
        queries: np.ndarray,
        k: int = 10,
        *,
        category: str | None = None,
        exclude: Sequence[str | None] | None = None,
        nprobe: int | None = None,
        ef_search: int | None = None,
    ) -> list[list[SearchHit]]:
        """The k most similar products for each query embedding (best view per product).

        Args:
            queries: (n, dimension) or (dimension,) embeddings; normalised here.
            k: products per query.
            category: only products of this category.
            exclude: per query, a product id to leave out (e.g. the product itself for "similar").
            nprobe: IVF lists to visit (default from settings).
            ef_search: HNSW candidate list size (default from settings).

        Returns:
            Per query, up to k hits, best first.

        Raises:
            UserError: on a wrong query shape or k < 1.
        """
        if int(k) < 1:
            raise UserError(f"k must be at least 1, got {k}.")
        k = int(k)
        q = normalize_vectors(queries, dimension=self.dimension, what="query embeddings")
        exclude = list(exclude) if exclude is not None else [None] * len(q)
        with self._lock:
            owners = self._owners
            allowed = owners.category_ids(category) if category is not None else None
            candidates = len(allowed) if allowed is not None else owners.vector_count
            fetch = min(max(candidates, 1), 2 * k + 8)
            found: list[list[tuple[str, float, int]]] = [[] for _ in range(len(q))]
            pending = np.arange(len(q))
            while len(pending):
                dist, ids = self._vindex.search(
                    q[pending], fetch, allowed=allowed, nprobe=nprobe, ef_search=ef_search
                )
                short = []
                for row, qi in enumerate(pending):
                    hits: list[tuple[str, float, int]] = []
                    seen: set[str] = set()
                    for score, vid in zip(dist[row].tolist(), ids[row].tolist()):
                        pid = owners.product_of(vid) if vid >= 0 else None
                        if pid is None or pid in seen or pid == exclude[qi]:
                            continue
                        seen.add(pid)
                        hits.append((pid, score, vid))
                        if len(hits) == k:
                            break
                    found[qi] = hits
                    if len(hits) < k and fetch < candidates and (ids[row] >= 0).sum() == fetch:
                        short.append(qi)
                pending = np.array(short, dtype=np.int64)
                fetch = min(candidates, fetch * 4)
            products = self._store.get_many([pid for hits in found for pid, _, _ in hits])
        return [
            [
                SearchHit(
                    product_id=pid,
                    score=float(score),
                    title=products[pid].title,
                    category=products[pid].category,
                    metadata=products[pid].metadata,
                    image_path=products[pid].image_path,
                    vector_id=int(vid),
                )
                for pid, score, vid in hits
                if pid in products
            ]
            for hits in found
        ]

    def similar(self, product_id: str, k: int = 10, *, category: str | None = None) -> list[SearchHit]:
        """Products most similar to a catalog product (its mean view embedding), itself left out.

        Raises:
            UserError: if `product_id` is not in the index, or k < 1.
        """
        vecs = self.vectors_of(product_id)
        if len(vecs) == 0:
            raise UserError(f"product_id {product_id!r} is not in the index.")
        return self.search(vecs.mean(axis=0), k, category=category, exclude=[product_id])[0]

    # -- persistence -----------------------------------------------------------------------------
    def compact(self) -> None:
        """Rebuild the FAISS index from the catalog's live vectors (drops HNSW tombstones)."""
        with self._lock:
            self._vindex.rebuild(self._store.iter_vectors(source="live"))

    def save(self, *, compact: bool | None = None) -> Manifest:
        """Fold the journal into a new snapshot generation, atomically; returns the new manifest.

        Args:
            compact: rebuild the FAISS index first (drops tombstones); default when tombstones exceed
                `settings.compact_ratio` of the index.
        """
        with self._lock:
            tomb = self._vindex.tombstones
            if compact is None:
                compact = len(tomb) > self._settings.compact_ratio * max(self._vindex.ntotal, 1)
            if compact and len(tomb):
                self.compact()
            cpu, tomb = self._vindex.snapshot()
            old = self._manifest
            gen = old.generation + 1
            tmp = self.directory / f".snapshot-{gen}.tmp"
            final = self.directory / f"snapshot-{gen}"
            for stale in (tmp, final):
                if stale.exists():
                    shutil.rmtree(stale)
            tmp.mkdir()
            counts: dict[str, int] = {}

            def write_catalog(path: Path) -> None:
                counts.update(self._store.write_snapshot(path, tombstones=tomb))

            built = self._write_snapshot_files(tmp, gen, cpu, writer=write_catalog)
            os.replace(built, final)
            shutil.rmtree(tmp)
            fsync_path(self.directory)
            counts["index_ntotal"] = int(cpu.ntotal)
            manifest = self._make_manifest(
                self.directory, gen, old.model_version, old.dimension, old.factory, counts
            )
            manifest.extra = dict(old.extra)
            write_manifest(self.directory, manifest)  # the commit point
            # The new snapshot holds everything; switch to it and an empty journal, then drop the old files.
            self._store.close()
            self._store = CatalogStore(
                final / "catalog.sqlite", self.directory / manifest.journal, dimension=old.dimension
            )
            self._manifest = manifest
            self._remove_orphans(manifest)
            return manifest

    def close(self) -> None:
        """Close the catalog and release the directory (no save: the journal already holds every change)."""
        with self._lock:
            store = getattr(self, "_store", None)
            if store is not None:
                store.close()
                self._store = None  # type: ignore[assignment]
            self._release_lock()

    def __enter__(self) -> ProductIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def iter_batches(
    ids: np.ndarray, vectors: np.ndarray, batch: int = 65536
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Split (ids, vectors) into batches (for `VectorIndex.rebuild`)."""
    for start in range(0, len(ids), batch):
        yield ids[start : start + batch], vectors[start : start + batch]


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean share of the true top-k ids found in the returned top-k (recall@k as used for ANN benchmarks)."""
    hits = 0
    for f, t in zip(found[:, :k], truth[:, :k]):
        hits += len(np.intersect1d(f[f >= 0], t[t >= 0]))
    return hits / (len(truth) * k) if len(truth) else math.nan
