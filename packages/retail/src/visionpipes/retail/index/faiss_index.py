"""The FAISS layer of the product index: `index_factory` strings, training, GPU placement, ids,
remove-or-tombstone, and filtered search over L2-normalised float32 vectors (inner product = cosine).

Flat and HNSW indexes are wrapped in `IndexIDMap2`. IVF indexes keep ids natively (`add_with_ids`):
`IndexIDMap2` over IVF returns wrong ids after `remove_ids` (its id map is compacted while IVF's
inverted lists are not). HNSW cannot remove: deleted vectors become tombstones, excluded at query time
by an `IDSelector` and a post-filter, and dropped when the graph is rebuilt (`rebuild`).

It knows nothing of products, SQLite or files on disk (see `product_index`, `catalog_store`, `snapshot`).
A new index family goes here: `build_faiss_index`, `_family_of` and `VectorIndex._params`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import faiss
import numpy as np

from visionpipes.core.config import ConfigModel, Field
from visionpipes.core.errors import UserError

#: Index families this module supports, by the FAISS class the factory string builds.
FAMILIES = ("flat", "ivf", "hnsw")
#: GPU k-selection limit of FAISS (larger k cannot be asked of a GPU index).
GPU_MAX_K = 2048


class SearchSettings(ConfigModel):
    """Query-time knobs.

    Attributes:
        nprobe: IVF lists visited per query (IVF indexes).
        ef_search: HNSW candidate-list size (HNSW indexes); raised to the fetch size when smaller.
        compact_ratio: `save()` rebuilds an HNSW graph when tombstones exceed this share of its vectors.
        selector_filter: exclude tombstones and filtered-out ids inside FAISS with an `IDSelector`
            (CPU only); when False, or on a GPU, results are over-fetched and post-filtered instead.
    """

    nprobe: int = Field(16, ge=1)
    ef_search: int = Field(64, ge=1)
    compact_ratio: float = Field(0.2, ge=0.0)
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

    def add(self, vectors: np.ndarray, ids: np.ndarray, categories: Sequence[str] | None = None) -> None:
        """Add normalised float32 vectors under int64 ids (training first if needed). `categories` is
        unused here (FAISS filters by id sets, `allowed`); the Milvus store keeps them."""
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
        category: str | None = None,
        nprobe: int | None = None,
        ef_search: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k inner products of each query among live vectors (optionally only ids in `allowed`;
        `category` is the Milvus store's filter, unused here: `allowed` already holds its ids).

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
            # `faiss.contrib.torch_utils` (imported by pytorch-metric-learning) replaces `search` process-wide
            # with a torch-aware one that takes no `params`; FAISS keeps the numpy original as `search_numpy`.
            search = getattr(self._index, "search_numpy", self._index.search)
            dist, ids = search(queries[pending], fetch, params=params)
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




def iter_batches(
    ids: np.ndarray, vectors: np.ndarray, batch: int = 65536
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Split (ids, vectors) into batches (for `VectorIndex.rebuild`)."""
    for start in range(0, len(ids), batch):
        yield ids[start : start + batch], vectors[start : start + batch]


