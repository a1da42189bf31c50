"""Visual product search index: products (string ids, several view vectors each) searchable by image
embedding, with online add/delete, category filters, and a durable on-disk folder.

`ProductIndex` binds a vector store to the SQLite catalog (`catalog_store`) and the snapshot folder
(`snapshot`, `manifest`): FAISS (`faiss_index.VectorIndex`, the default) or Milvus
(`milvus_index.MilvusVectorStore`), chosen by the manifest's `backend`. It computes no embeddings:
vectors come from the caller.

Durability: an add or delete commits to the journal (fsynced) before it reaches FAISS and before the
call returns; on open the snapshot index is loaded and the journal replayed into it, so an acknowledged
add survives `kill -9`. `save()` folds the journal into a new snapshot generation (`snapshot.commit_snapshot`).
Ids: products have string ids; each view vector gets a never-reused int64 id from the catalog.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from visionpipes.core.errors import UserError
from visionpipes.retail.index.catalog_store import CatalogStore
from visionpipes.retail.index.faiss_index import (
    SearchSettings,
    VectorIndex,
    build_faiss_index,
    min_training_vectors,
    normalize_vectors,
)
from visionpipes.retail.index.manifest import BACKENDS, Manifest, read_manifest, verify_files
from visionpipes.retail.index.milvus_index import MilvusSpec, open_milvus_store
from visionpipes.retail.index.reads import ProductReads
from visionpipes.retail.index.records import ProductRecord
from visionpipes.retail.index.snapshot import (
    DirectoryLock,
    commit_snapshot,
    create_directory,
    open_store,
    read_snapshot_index,
    remove_orphans,
)
from visionpipes.retail.index.vector_owners import VectorOwners


class ProductIndex(ProductReads):
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
        backend: str = "faiss",
        milvus_uri: str | None = None,
    ) -> ProductIndex:
        """Create an empty index directory and open it.

        IVF/PQ indexes are trained on the first `add_many` batch (which must hold enough vectors).
        `extra` (JSON data, e.g. where the model and the catalog images are) is kept in the manifest
        across saves. `backend='milvus'` keeps the vectors in Milvus: `factory` is then a Milvus index
        type ('HNSW', 'IVF_FLAT,nlist=256', 'FLAT'), `milvus_uri` a server (default `$MILVUS_URI`, else
        milvus-lite inside the directory).

        Raises:
            UserError: if `directory` already exists, or on a bad backend, factory string or dimension.
        """
        directory = Path(directory)
        if backend not in BACKENDS:
            raise UserError(f"index backend {backend!r} is not one of {', '.join(BACKENDS)}.")
        index = (
            MilvusSpec.new(factory, dimension, milvus_uri)
            if backend == "milvus"
            else build_faiss_index(factory, dimension)[0]
        )
        create_directory(
            directory,
            index,
            dimension=dimension,
            factory=factory.strip(),
            model_version=model_version,
            extra=extra,
            backend=backend,
        )
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
        backend: str = "faiss",
        milvus_uri: str | None = None,
    ) -> ProductIndex:
        """Create an index directory from a whole catalog in one go (training on it) and save it.

        Raises:
            UserError: as `create`, or if an IVF/PQ factory gets too few vectors to train.
        """
        directory = Path(directory)
        dim = int(dimension)
        # Check trainability before anything is written (Milvus trains per segment itself).
        need = min_training_vectors(build_faiss_index(factory, dim)[0]) if backend == "faiss" else 0
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
            backend=backend,
            milvus_uri=milvus_uri,
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
        milvus_token: str | None = None,
        lock: DirectoryLock | None = None,
    ) -> ProductIndex:
        """Open an index directory: verify the manifest and checksums, load the snapshot, replay the journal.

        Args:
            directory: the index directory.
            dimension: the embedding dimension the caller's model produces; refused if different.
            model_version: the model the caller embeds queries with; refused if different.
            use_gpu: see `VectorIndex`.
            settings: query-time knobs.
            milvus_token: token of a Milvus server (Milvus backend; default `$MILVUS_TOKEN`).
            lock: the directory's lock, already held by this process (`detach_lock`); taken otherwise.

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
        self._dir_lock = lock if lock is not None else DirectoryLock(self.directory)
        try:
            manifest = read_manifest(self.directory)  # re-read under the lock
            verify_files(self.directory, manifest)
            remove_orphans(self.directory, manifest)
            self._load(manifest, use_gpu, milvus_token)
        except BaseException:
            self._dir_lock.release()
            raise
        return self

    def _load(self, manifest: Manifest, use_gpu: bool | None, milvus_token: str | None = None) -> None:
        if manifest.backend == "milvus":
            self._manifest = manifest
            self._store, self._owners, self._vindex = open_milvus_store(
                self.directory, manifest, self._settings, milvus_token
            )
            return
        index = read_snapshot_index(self.directory, manifest)
        store = open_store(self.directory, manifest)
        try:
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
        owners = VectorOwners()
        rows = list(store.vector_owners())
        if rows:
            owners.add_bulk(
                np.array([r[0] for r in rows], dtype=np.int64), [r[1] for r in rows], [r[2] for r in rows]
            )
        self._manifest = manifest
        self._store = store
        self._vindex = vindex
        self._owners = owners

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
            cats = [r.category for r, ids in zip(records, new_ids) for _ in range(len(ids))]
            self._vindex.add(np.concatenate(normed), np.concatenate(new_ids), cats)
            for rec, ids in zip(records, new_ids):
                self._owners.add(rec.product_id, rec.category, ids)
            if trained_now:
                self.save()  # persist the trained index, so a reload searches with the same training
        return new_ids

    def delete(self, product_id: str) -> bool:
        """Delete a product (durable when it returns); False if it was not in the index."""
        return bool(self.delete_many([product_id]))

    def delete_many(self, product_ids: Iterable[str], *, remember_all: bool = False) -> list[str]:
        """Delete products durably; returns the ids that were there. The deletions are remembered
        (`live_changes`), with `remember_all` also those of ids that were not there."""
        with self._lock:
            deleted = self._store.delete_products(list(product_ids), remember_all=remember_all)
            ids = [i for v in deleted.values() for i in v]
            self._vindex.remove(np.asarray(ids, dtype=np.int64))
            for pid in deleted:
                self._owners.remove(pid)
        return list(deleted)

    # -- persistence -----------------------------------------------------------------------------
    def compact(self) -> None:
        """Rebuild the FAISS index from the catalog's live vectors (drops HNSW tombstones); Milvus: flush."""
        with self._lock:
            if self._manifest.backend == "milvus":
                self._vindex.compact()
            else:
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
            manifest = commit_snapshot(
                self.directory, old, cpu, lambda path: self._store.write_snapshot(path, tombstones=tomb)
            )
            # The new snapshot holds everything; switch to it and an empty journal, then drop the old files.
            self._store.close()
            self._store = CatalogStore(
                self.directory / manifest.files["catalog"].path,
                self.directory / manifest.journal,
                dimension=old.dimension,
            )
            self._manifest = manifest
            remove_orphans(self.directory, manifest)
            return manifest

    def freeze(self) -> None:
        """Stop writing: the journal is checkpointed and leaves WAL mode (its -wal/-shm files removed), so
        the directory can be renamed while the index still answers reads (`serve.reload`)."""
        with self._lock:
            self._store.leave_wal()

    def detach_lock(self) -> DirectoryLock:
        """Close the index but keep its directory locked: the returned lock (still held) is handed to
        `open(lock=...)`, e.g. after the directory was renamed, so that no other process opens it meanwhile."""
        with self._lock:
            lock, self._dir_lock = self._dir_lock, None
            self.close()
            return lock

    def close(self) -> None:
        """Close the catalog and release the directory (no save: the journal already holds every change)."""
        with self._lock:
            vindex = getattr(self, "_vindex", None)
            if vindex is not None and hasattr(vindex, "close"):
                vindex.close()
            store = getattr(self, "_store", None)
            if store is not None:
                store.close()
                self._store = None  # type: ignore[assignment]
            lock = getattr(self, "_dir_lock", None)
            if lock is not None:
                lock.release()

    def __enter__(self) -> ProductIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
