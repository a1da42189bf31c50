"""The index directory's `manifest.json`: binds the FAISS index file, the SQLite snapshot catalog and the
embedding model version by sha256, with the dimension, factory string and counts.

It only reads, writes and verifies the manifest and checksums; it opens neither FAISS nor SQLite.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from visionpipes.core.artifact import sha256_file
from visionpipes.core.errors import UserError
from visionpipes.core.io import atomic_path

MANIFEST_NAME = "manifest.json"
FORMAT_NAME = "visionpipes-retail-index"
FORMAT_VERSION = 1
#: Vector stores an index directory may use (the manifest's `backend`; absent in older manifests: faiss).
BACKENDS = ("faiss", "milvus")


@dataclass
class FileEntry:
    """One file the manifest binds: its path inside the index directory, size and sha256."""

    path: str
    bytes: int
    sha256: str


@dataclass
class Manifest:
    """What an index directory holds. `generation` names the snapshot folder and the journal file.

    Attributes:
        generation: increases on every save; snapshot files live in `snapshot-<generation>/`.
        model_version: the embedding model the vectors came from (refused if a loader expects another).
        dimension: embedding dimension.
        factory: the FAISS `index_factory` string (Milvus backend: its index type, e.g. `HNSW`).
        metric: always 'inner_product' (on L2-normalised vectors, i.e. cosine similarity).
        counts: products, vectors, tombstones (HNSW vectors deleted but still in the graph), index_ntotal.
        files: 'index' and 'catalog' entries.
        journal: file name of the journal of changes made after this snapshot.
        backend: the vector store, 'faiss' (default) or 'milvus' (see `milvus_index`).
    """

    generation: int
    model_version: str
    dimension: int
    factory: str
    metric: str
    counts: dict[str, int]
    files: dict[str, FileEntry]
    journal: str
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)
    backend: str = "faiss"

    def to_json(self) -> dict[str, Any]:
        """The manifest as JSON data."""
        return asdict(self)


def fsync_path(path: Path) -> None:
    """fsync a file, or a directory's entry table, so a rename into it is on disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_entry(directory: Path, path: Path) -> FileEntry:
    """A manifest entry for `path` (inside `directory`)."""
    return FileEntry(
        path=path.relative_to(directory).as_posix(), bytes=path.stat().st_size, sha256=sha256_file(path)
    )


def write_manifest(directory: Path, manifest: Manifest) -> None:
    """Replace `directory/manifest.json` atomically (temp file, fsync, rename, fsync of the folder)."""
    with atomic_path(directory / MANIFEST_NAME) as tmp:
        tmp.write_text(json.dumps(manifest.to_json(), indent=2) + "\n")
    fsync_path(directory)


def read_manifest(directory: Path) -> Manifest:
    """Read and validate the manifest's fields (not the checksums: see `verify_files`).

    Raises:
        UserError: if the directory or manifest is missing, not JSON, of another format, or lacks a field.
    """
    path = directory / MANIFEST_NAME
    if not directory.is_dir():
        raise UserError(f"index directory {directory} does not exist.")
    if not path.is_file():
        raise UserError(f"index directory {directory} has no {MANIFEST_NAME} (not an index, or never saved).")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"manifest {path} is not valid JSON ({err}).") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
        raise UserError(f"manifest {path} is not a {FORMAT_NAME} manifest.")
    if data.get("format_version") != FORMAT_VERSION:
        raise UserError(
            f"manifest {path} has format_version {data.get('format_version')}, expected {FORMAT_VERSION}."
        )
    try:
        files = {name: FileEntry(**entry) for name, entry in data["files"].items()}
        manifest = Manifest(
            generation=int(data["generation"]),
            model_version=str(data["model_version"]),
            dimension=int(data["dimension"]),
            factory=str(data["factory"]),
            metric=str(data["metric"]),
            counts={k: int(v) for k, v in data["counts"].items()},
            files=files,
            journal=str(data["journal"]),
            extra=dict(data.get("extra", {})),
            backend=str(data.get("backend", "faiss")),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise UserError(f"manifest {path} is missing or has a malformed field ({err!r}).") from None
    if manifest.backend not in BACKENDS:
        raise UserError(f"manifest {path} has backend {manifest.backend!r}; known backends: {', '.join(BACKENDS)}.")
    for name in ("index", "catalog"):
        if name not in manifest.files:
            raise UserError(f"manifest {path} does not list the '{name}' file.")
    for key in ("products", "vectors", "tombstones", "index_ntotal"):
        if key not in manifest.counts:
            raise UserError(f"manifest {path} has no counts.{key}.")
    return manifest


def verify_files(directory: Path, manifest: Manifest) -> None:
    """Check every file the manifest lists exists with the recorded size and sha256.

    Raises:
        UserError: naming the first file that is missing, truncated or altered.
    """
    for name, entry in manifest.files.items():
        path = directory / entry.path
        if not path.is_file():
            raise UserError(
                f"index directory {directory}: {name} file {entry.path} listed in the manifest is missing."
            )
        size = path.stat().st_size
        if size != entry.bytes:
            raise UserError(
                f"index directory {directory}: {name} file {entry.path} has {size} bytes, the manifest says {entry.bytes}."
            )
        if sha256_file(path) != entry.sha256:
            raise UserError(
                f"index directory {directory}: {name} file {entry.path} does not match its manifest checksum (corrupted)."
            )
