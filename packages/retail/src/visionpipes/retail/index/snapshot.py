"""The on-disk folder of a product index: snapshot generations, the manifest that commits them, the
directory lock, and the checks made when a snapshot is loaded.

Directory format (one index = one folder)::

    manifest.json              binds the snapshot files by sha256 + backend, model version, dimension, factory, counts
    snapshot-<gen>/index.faiss FAISS index (always written from a CPU copy); with the Milvus backend
                               index.milvus.json instead (the collection, its index type and server)
    milvus.db/                 milvus-lite's data (Milvus backend without a server; see `milvus_index`)
    snapshot-<gen>/catalog.sqlite  products, views' image paths and every vector (float32 blobs)
    journal-<gen>.sqlite       changes since that snapshot (SQLite WAL, synchronous=FULL)
    .lock                      held (flock) by the one process that has the index open

A new snapshot is written into a temporary folder, fsynced, renamed to `snapshot-<gen+1>/`, its
empty journal created and fsynced, then `manifest.json` is atomically replaced (the commit point); a
crash at any step leaves the previous manifest and its files intact. A journal the manifest names is
therefore always on disk: a missing one is an error (`open_store`), never silently recreated empty;
`reset_journal` is the explicit recovery. This module does not search or mutate an index (see `product_index`).
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss

from visionpipes.core.errors import UserError
from visionpipes.core.io import atomic_path
from visionpipes.retail.index.catalog_schema import write_empty_snapshot
from visionpipes.retail.index.catalog_store import CatalogStore
from visionpipes.retail.index.manifest import Manifest, file_entry, fsync_path, write_manifest

INDEX_FILE = "index.faiss"
CATALOG_FILE = "catalog.sqlite"
COUNT_KEYS = ("products", "vectors", "tombstones")


def fsync_file(path: Path) -> None:
    """fsync a file's bytes."""
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


class DirectoryLock:
    """An exclusive `flock` on `<directory>/.lock`: one process has an index directory open.

    Raises:
        UserError: if another process holds it.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UserError(f"index directory {directory} is open in another process.") from None
        self._fd: int | None = fd

    def release(self) -> None:
        """Release the lock (idempotent)."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def create_journal(directory: Path, manifest: Manifest) -> None:
    """Create the manifest's empty journal beside its snapshot, fsynced (before the manifest commits)."""
    journal = directory / manifest.journal
    for stale in (journal, Path(f"{journal}-wal"), Path(f"{journal}-shm")):
        stale.unlink(missing_ok=True)  # left by a save that crashed before its commit
    CatalogStore(directory / manifest.files["catalog"].path, journal, dimension=manifest.dimension).close()
    fsync_file(journal)
    fsync_path(directory)


def reset_journal(directory: Path) -> Path:
    """Recovery from a missing or corrupt journal: set the journal (and its WAL files) aside as
    `<journal>.broken-<time>` and start an empty one; the index then holds its last snapshot only.

    Returns:
        The new (empty) journal.

    Raises:
        UserError: if another process has the index open, or its manifest is unreadable.
    """
    import time

    from visionpipes.retail.index.manifest import read_manifest

    lock = DirectoryLock(directory)
    try:
        manifest = read_manifest(directory)
        journal = directory / manifest.journal
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for part in (journal, Path(f"{journal}-wal"), Path(f"{journal}-shm")):
            if part.exists():
                os.replace(
                    part, part.with_name(f"{manifest.journal}.broken-{stamp}{part.name[len(journal.name) :]}")
                )
        create_journal(directory, manifest)
    finally:
        lock.release()
    return journal


def index_file_name(index: Any) -> str:
    """The snapshot file name of `index`: `index.faiss` for FAISS, else the index's own `file_name`."""
    return INDEX_FILE if isinstance(index, faiss.Index) else str(index.file_name)


def write_snapshot_files(
    folder: Path, generation: int, index: Any, *, writer: Callable[[Path], object]
) -> Path:
    """Write `folder/snapshot-<generation>/` (the FAISS index, or another backend's description of its
    index through its `write_to`, and the catalog through `writer`), fsynced; return the snapshot folder."""
    snap = folder / f"snapshot-{generation}"
    snap.mkdir()
    name = index_file_name(index)
    if isinstance(index, faiss.Index):
        faiss.write_index(index, str(snap / name))
    else:
        index.write_to(snap / name)
    writer(snap / CATALOG_FILE)
    for written in (name, CATALOG_FILE):
        fsync_file(snap / written)
    fsync_path(snap)
    return snap


def make_manifest(
    directory: Path,
    generation: int,
    model_version: str,
    dimension: int,
    factory: str,
    counts: dict[str, int],
    *,
    index_file: str = INDEX_FILE,
    backend: str = "faiss",
) -> Manifest:
    """The manifest binding `directory/snapshot-<generation>/` (checksums computed here)."""
    snap = directory / f"snapshot-{generation}"
    return Manifest(
        generation=generation,
        model_version=str(model_version),
        dimension=int(dimension),
        factory=factory,
        metric="inner_product",
        counts=counts,
        files={
            "index": file_entry(directory, snap / index_file),
            "catalog": file_entry(directory, snap / CATALOG_FILE),
        },
        journal=f"journal-{generation}.sqlite",
        backend=backend,
    )


def create_directory(
    directory: Path,
    index: Any,
    *,
    dimension: int,
    factory: str,
    model_version: str,
    extra: dict[str, object] | None,
    backend: str = "faiss",
) -> None:
    """Write a new index directory holding an empty generation-1 snapshot, atomically.

    Raises:
        UserError: if `directory` exists or its parent folder does not.
    """
    if directory.exists():
        raise UserError(f"index directory {directory} already exists; open it or choose a new path.")
    if directory.parent and not directory.parent.is_dir():
        raise UserError(f"folder {directory.parent} for the index directory does not exist.")
    with atomic_path(directory, is_dir=True) as tmp:
        write_snapshot_files(tmp, 1, index, writer=lambda p: write_empty_snapshot(p, dimension=dimension))
        counts = {"products": 0, "vectors": 0, "tombstones": 0, "index_ntotal": 0}
        manifest = make_manifest(
            tmp,
            1,
            model_version,
            dimension,
            factory,
            counts,
            index_file=index_file_name(index),
            backend=backend,
        )
        manifest.extra = dict(extra or {})
        create_journal(tmp, manifest)
        write_manifest(tmp, manifest)
    fsync_path(directory.parent)


def commit_snapshot(
    directory: Path, old: Manifest, index: Any, write_catalog: Callable[[Path], dict[str, int]]
) -> Manifest:
    """Write generation `old.generation + 1` (FAISS `index` and the catalog via `write_catalog`, which
    returns its counts) and commit it by replacing the manifest; return the new manifest."""
    gen = old.generation + 1
    tmp = directory / f".snapshot-{gen}.tmp"
    final = directory / f"snapshot-{gen}"
    for stale in (tmp, final):
        if stale.exists():
            shutil.rmtree(stale)
    tmp.mkdir()
    counts: dict[str, int] = {}
    built = write_snapshot_files(tmp, gen, index, writer=lambda p: counts.update(write_catalog(p)))
    os.replace(built, final)
    shutil.rmtree(tmp)
    fsync_path(directory)
    counts["index_ntotal"] = int(index.ntotal)
    manifest = make_manifest(
        directory,
        gen,
        old.model_version,
        old.dimension,
        old.factory,
        counts,
        index_file=index_file_name(index),
        backend=old.backend,
    )
    manifest.extra = dict(old.extra)
    create_journal(directory, manifest)
    write_manifest(directory, manifest)  # the commit point
    return manifest


def remove_orphans(directory: Path, manifest: Manifest) -> None:
    """Drop files of other generations (left by a save that crashed, or finished before cleanup);
    journals set aside by `reset_journal` are kept for the operator."""
    keep_snapshot = f"snapshot-{manifest.generation}"
    for entry in directory.iterdir():
        name = entry.name
        if name.startswith(("snapshot-", ".snapshot-")) and name != keep_snapshot:
            shutil.rmtree(entry, ignore_errors=True)
        elif name.startswith("journal-") and not name.startswith(manifest.journal) and ".broken-" not in name:
            entry.unlink(missing_ok=True)


def read_snapshot_index(directory: Path, manifest: Manifest) -> faiss.Index:
    """The snapshot's FAISS index, checked against the manifest (dimension, metric, count).

    Raises:
        UserError: if FAISS cannot read it or it disagrees with the manifest.
    """
    index_path = directory / manifest.files["index"].path
    try:
        index = faiss.read_index(str(index_path))
    except RuntimeError as err:
        raise UserError(
            f"index file {index_path} cannot be read by FAISS ({str(err).splitlines()[0]})."
        ) from None
    if index.d != manifest.dimension:
        raise UserError(f"index file {index_path} is {index.d}-d, the manifest says {manifest.dimension}-d.")
    if index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise UserError(f"index file {index_path} does not use inner product.")
    if index.ntotal != manifest.counts["index_ntotal"]:
        raise UserError(
            f"index file {index_path} holds {index.ntotal} vectors, the manifest says {manifest.counts['index_ntotal']}."
        )
    return index


def open_store(directory: Path, manifest: Manifest) -> CatalogStore:
    """The snapshot catalog with its journal, its counts checked against the manifest.

    Raises:
        UserError: if a count disagrees with the manifest.
    """
    journal = directory / manifest.journal
    recovery = (
        f"restore it from a backup, or run `vp-retail compact --index {directory} --reset-journal` to serve "
        f"snapshot generation {manifest.generation} without the changes made since (they are lost)"
    )
    if not journal.is_file():
        raise UserError(f"journal {journal} of index {directory} is missing; {recovery}.")
    try:
        store = CatalogStore(
            directory / manifest.files["catalog"].path, journal, dimension=manifest.dimension
        )
    except UserError as err:
        raise UserError(f"{err} Recovery: {recovery}.") from None
    snap = store.snapshot_counts()
    for key in COUNT_KEYS:
        if snap[key] != manifest.counts[key]:
            store.close()
            raise UserError(
                f"catalog {manifest.files['catalog'].path} holds {snap[key]} {key}, the manifest says {manifest.counts[key]}."
            )
    return store
