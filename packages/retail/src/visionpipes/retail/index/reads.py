"""The read side of `ProductIndex` (a mixin): counts, product records, view paths, categories, the
live changes made since the index was built, and search by embedding (best view per product).

It holds no state of its own: `ProductIndex` (product_index.py) owns the store, the vector index and
the lock these methods use.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from visionpipes.core.errors import UserError
from visionpipes.retail.index.faiss_index import normalize_vectors
from visionpipes.retail.index.records import SearchHit, StoredProduct

if TYPE_CHECKING:
    import threading

    from visionpipes.retail.index.catalog_store import CatalogStore
    from visionpipes.retail.index.manifest import Manifest
    from visionpipes.retail.index.vector_owners import VectorOwners


class ProductReads:
    """Reads of a product index; mixed into `ProductIndex`."""

    _lock: threading.RLock
    _store: CatalogStore
    _owners: VectorOwners
    _vindex: Any
    _manifest: Manifest
    dimension: int
    factory: str
    model_version: str
    device: str

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
                "backend": self._manifest.backend,
            }

    def live_changes(self, image_prefix: str) -> tuple[list[str], list[str]]:
        """What was changed through the API since the index was built (kept across snapshots): the
        products whose views include an image path starting with `image_prefix` (added or replaced
        with uploaded photos) and the ids deleted since (and not added again), each sorted."""
        with self._lock:
            return self._store.product_ids_with_images(image_prefix), self._store.deleted_ids()

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

    def image_paths(self, *, prefix: str = "") -> set[str]:
        """The image paths of every live view that start with `prefix` (compaction keeps their files)."""
        with self._lock:
            return self._store.image_paths(prefix=prefix)

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
                    q[pending], fetch, allowed=allowed, category=category, nprobe=nprobe, ef_search=ef_search
                )
                short = []
                for row, qi in enumerate(pending):
                    hits = owners.best_products(dist[row], ids[row], k, exclude=exclude[qi])
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
