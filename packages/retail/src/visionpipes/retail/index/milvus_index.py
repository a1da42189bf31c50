"""Milvus as the vector store of the product index (`backend: milvus`), beside FAISS (`faiss_index`).

Milvus keeps every live view vector (primary key: the catalog's int64 vector id), its product's
category (the string, and a 64-bit key of it that filters are written on, so no category text is
ever spliced into a Milvus expression) and deletes. The SQLite catalog and its journal
(`catalog_store`) stay the source of truth, exactly as with FAISS: a write commits to the journal
first, then reaches Milvus. On open, `reconcile` replays the journal into the collection (deletes
of replaced/deleted snapshot vectors, upserts of the journal's vectors: both idempotent), checks
that the collection holds as many vectors as the catalog, removes stray journal-era ids if not, and
rebuilds the collection from the catalog as a last resort.

Where the vectors live:
    - milvus-lite (default): an embedded Milvus in this process, its data in `<index>/milvus.db`
      (a folder), moved with the index folder.
    - a Milvus server or cluster: `uri` (e.g. `http://milvus:19530`) recorded in the snapshot's
      `index.milvus.json`; the token is never written: it is read from `MILVUS_TOKEN` (or passed).
      Each index directory gets its own collection (`vp_retail_<random>`).

Index types (the manifest's `factory` on this backend): `HNSW[,M=16,efConstruction=200]` (default;
search `ef` = max(settings.ef_search, k)), `IVF_FLAT[,nlist=1024]` (search `nprobe`), `FLAT` (exact).
`pymilvus` (and `milvus-lite` for the embedded store) are imported lazily: a FAISS-only install
never needs them (`pip install visionpipes-retail[milvus]`).
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from visionpipes.core.errors import UserError

INDEX_FILE = "index.milvus.json"
LITE_DIR = "milvus.db"
URI_ENV = "MILVUS_URI"
TOKEN_ENV = "MILVUS_TOKEN"
#: Index types and their build parameters' defaults.
INDEX_TYPES: dict[str, dict[str, int]] = {
    "HNSW": {"M": 16, "efConstruction": 200},
    "IVF_FLAT": {"nlist": 1024},
    "FLAT": {},
}
#: Milvus' largest top-k per search.
MAX_TOPK = 16384
_BATCH = 10_000


def category_key(category: str) -> int:
    """A stable signed 64-bit key of a category string (first 8 bytes of its sha256)."""
    return int.from_bytes(hashlib.sha256(category.encode("utf-8")).digest()[:8], "big", signed=True)


def parse_factory(factory: str) -> tuple[str, dict[str, int]]:
    """`'HNSW'`, `'HNSW,M=32'`, `'IVF_FLAT,nlist=256'` or `'FLAT'` -> (index type, build parameters).

    Raises:
        UserError: on an unknown type, an unknown parameter or a non-integer value.
    """
    parts = [p.strip() for p in str(factory).split(",") if p.strip()]
    kind = parts[0].upper() if parts else ""
    if kind not in INDEX_TYPES:
        raise UserError(
            f"Milvus index type {factory!r} is not supported; use one of {', '.join(INDEX_TYPES)} "
            "(e.g. 'HNSW', 'HNSW,M=32,efConstruction=200', 'IVF_FLAT,nlist=256')."
        )
    params = dict(INDEX_TYPES[kind])
    for part in parts[1:]:
        key, _, value = part.partition("=")
        if key not in params:
            raise UserError(f"Milvus index {factory!r}: {kind} has no parameter {key!r} (has: {', '.join(params) or 'none'}).")
        try:
            params[key] = int(value)
        except ValueError:
            raise UserError(f"Milvus index {factory!r}: {key} must be an integer, got {value!r}.") from None
    return kind, params


def resolve_uri(uri: str | None) -> str | None:
    """The Milvus server to use: `uri`, else `$MILVUS_URI`, else None (milvus-lite in the index folder)."""
    return uri or os.environ.get(URI_ENV) or None


@dataclass
class MilvusSpec:
    """Where and how an index's vectors are kept (written to `snapshot-<gen>/index.milvus.json`).

    Attributes:
        collection: the collection name.
        index_type: HNSW, IVF_FLAT or FLAT.
        index_params: its build parameters.
        dimension: vector dimension.
        uri: a Milvus server; None for milvus-lite in `<index>/milvus.db`.
        ntotal: vectors the collection held when this snapshot was written.
    """

    collection: str
    index_type: str
    index_params: dict[str, int]
    dimension: int
    uri: str | None = None
    ntotal: int = 0
    metric: str = "IP"
    backend: str = "milvus"
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def new(cls, factory: str, dimension: int, uri: str | None = None) -> MilvusSpec:
        """A spec for a new index: a fresh collection name, the parsed index type."""
        kind, params = parse_factory(factory)
        return cls(f"vp_retail_{uuid.uuid4().hex[:16]}", kind, params, int(dimension), resolve_uri(uri))

    @classmethod
    def read(cls, path: Path) -> MilvusSpec:
        """Read a spec file.

        Raises:
            UserError: if it is not valid JSON or lacks a field.
        """
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as err:
            raise UserError(f"Milvus index file {path} cannot be read ({err}).") from None

    # -- what `snapshot.write_snapshot_files` needs of a non-FAISS index --
    file_name = INDEX_FILE

    def write_to(self, path: Path) -> None:
        """Write the spec as JSON at `path`."""
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")


def _connect(uri: str, token: str | None) -> Any:
    try:
        from pymilvus import MilvusClient
    except ImportError:
        raise UserError(
            "this index uses the Milvus backend but pymilvus is not installed: "
            "pip install 'visionpipes-retail[milvus]' (pymilvus, milvus-lite)."
        ) from None
    try:
        return MilvusClient(uri=uri, token=token or os.environ.get(TOKEN_ENV, ""))
    except Exception as err:  # pymilvus raises MilvusException or gRPC/connection errors
        raise UserError(f"cannot connect to Milvus at {uri} ({err}).") from None


class MilvusVectorStore:
    """The vector store of a `ProductIndex` on Milvus, with the methods `ProductIndex` uses of
    `faiss_index.VectorIndex` (train/place/tombstones are no-ops: Milvus trains and deletes itself).

    Args:
        directory: the index directory (holds milvus-lite's data when `spec.uri` is None).
        spec: the collection and its index.
        settings: query-time knobs (`ef_search`, `nprobe`) as for FAISS.
        token: Milvus token (default `$MILVUS_TOKEN`); never stored.

    Raises:
        UserError: if pymilvus is missing, Milvus is unreachable, or the collection has another dimension.
    """

    family = "milvus"

    def __init__(self, directory: Path, spec: MilvusSpec, *, settings: Any, token: str | None = None) -> None:
        self.spec = spec
        self.settings = settings
        self.factory = spec.index_type
        self._lite_path = None if spec.uri else str(Path(directory).resolve() / LITE_DIR)
        self._client = _connect(spec.uri or self._lite_path, token)
        self._name = spec.collection
        self._ensure_collection()

    # -- collection ------------------------------------------------------------------------------
    def _ensure_collection(self) -> None:
        from pymilvus import DataType, MilvusClient

        client = self._client
        if client.has_collection(self._name):
            dim = next(
                (f["params"].get("dim") for f in client.describe_collection(self._name)["fields"] if f["name"] == "vector"),
                None,
            )
            if dim is not None and int(dim) != self.spec.dimension:
                raise UserError(
                    f"Milvus collection {self._name} holds {dim}-d vectors, the index {self.spec.dimension}-d."
                )
            client.load_collection(self._name)
            return
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self.spec.dimension)
        schema.add_field("category_key", DataType.INT64)
        schema.add_field("category", DataType.VARCHAR, max_length=1024)
        index = client.prepare_index_params()
        index.add_index(
            field_name="vector", index_type=self.spec.index_type, metric_type="IP", params=dict(self.spec.index_params)
        )
        client.create_collection(self._name, schema=schema, index_params=index, consistency_level="Strong")
        client.load_collection(self._name)

    # -- the VectorIndex surface ProductIndex uses ---------------------------------------------
    @property
    def dimension(self) -> int:
        return self.spec.dimension

    @property
    def ntotal(self) -> int:
        """Vectors in the collection (a `count(*)` query)."""
        rows = self._client.query(self._name, filter="", output_fields=["count(*)"], consistency_level="Strong")
        return int(rows[0]["count(*)"])

    @property
    def tombstones(self) -> np.ndarray:
        return np.zeros(0, dtype=np.int64)

    is_trained = True
    on_gpu = False
    can_remove = True

    @property
    def device(self) -> str:
        return f"milvus:{self.spec.uri}" if self.spec.uri else "milvus-lite"

    def place(self) -> None:
        """Nothing to place: Milvus decides where its segments live."""

    def min_training_vectors(self) -> int:
        return 0

    def train(self, vectors: np.ndarray) -> None:
        """Milvus builds (and trains) its index per segment itself."""

    def mark_tombstones(self, ids: np.ndarray) -> None:
        """Milvus deletes for real: no tombstones."""

    def add(self, vectors: np.ndarray, ids: np.ndarray, categories: Sequence[str] | None = None, *, upsert: bool = False) -> None:
        """Insert (or upsert) normalised vectors under int64 ids with their products' categories."""
        if len(vectors) == 0:
            return
        if categories is None or len(categories) != len(vectors):
            raise ValueError("the Milvus backend needs one category per vector")
        write = self._client.upsert if upsert else self._client.insert
        ids = np.asarray(ids, dtype=np.int64)
        vectors = np.asarray(vectors, dtype=np.float32)
        for s in range(0, len(ids), _BATCH):
            rows = [
                {"id": int(i), "vector": v, "category_key": category_key(c), "category": c}
                for i, v, c in zip(ids[s : s + _BATCH].tolist(), vectors[s : s + _BATCH], categories[s : s + _BATCH])
            ]
            write(self._name, rows)

    def remove(self, ids: np.ndarray) -> None:
        """Delete ids from the collection."""
        ids = np.asarray(ids, dtype=np.int64)
        for s in range(0, len(ids), _BATCH):
            self._client.delete(self._name, ids=ids[s : s + _BATCH].tolist())

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
        """Top-k inner products among the collection's vectors (optionally of one category, filtered in
        Milvus; `allowed` is FAISS's id filter and unused here). Returns (scores, ids) of shape (n, k),
        missing slots -inf / -1; k is capped at Milvus' 16384."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        n = len(queries)
        out_d = np.full((n, k), -np.inf, dtype=np.float32)
        out_i = np.full((n, k), -1, dtype=np.int64)
        limit = min(int(k), MAX_TOPK)
        if n == 0 or limit <= 0 or (allowed is not None and len(allowed) == 0):
            return out_d, out_i
        if self.spec.index_type == "HNSW":
            params = {"ef": max(int(ef_search or self.settings.ef_search), limit)}
        elif self.spec.index_type == "IVF_FLAT":
            params = {"nprobe": int(nprobe or self.settings.nprobe)}
        else:
            params = {}
        expr = f"category_key == {category_key(category)}" if category is not None else ""
        rows = self._client.search(
            self._name, data=list(queries), limit=limit, filter=expr, output_fields=[],
            search_params={"metric_type": "IP", "params": params}, consistency_level="Strong",
        )
        for r, hits in enumerate(rows):
            m = min(len(hits), limit)
            out_i[r, :m] = [h["id"] for h in hits[:m]]
            out_d[r, :m] = [h["distance"] for h in hits[:m]]
        return out_d, out_i

    def snapshot(self) -> tuple[MilvusSpec, np.ndarray]:
        """Flush the collection (its data is on disk, or sealed on the server) and return the spec to
        write into the new snapshot, with its vector count."""
        self._client.flush(self._name)
        self.spec.ntotal = self.ntotal
        return self.spec, self.tombstones

    def compact(self) -> None:
        """Flush; Milvus compacts its segments (drops deleted rows) on its own schedule."""
        self._client.flush(self._name)

    # -- open-time consistency -----------------------------------------------------------------
    def reconcile(self, store: Any, categories_of: Callable[[np.ndarray], list[str]]) -> dict[str, int]:
        """Bring the collection to the catalog's live vectors after a restart (see the module docstring).

        Args:
            store: the open `CatalogStore` (snapshot + journal).
            categories_of: the categories of live vector ids.

        Returns:
            What was done: replayed deletes/upserts, stray ids removed, whether it was rebuilt.
        """
        done = {"deleted": 0, "upserted": 0, "stray": 0, "rebuilt": 0}
        removed = store.removed_snapshot_vector_ids()
        self.remove(removed)
        done["deleted"] = len(removed)
        journal_ids: list[np.ndarray] = []
        for ids, vecs in store.iter_vectors(source="journal"):
            self.add(vecs, ids, categories_of(ids), upsert=True)
            journal_ids.append(ids)
            done["upserted"] += len(ids)
        live = store.count_vectors()
        if self.ntotal == live:
            return done
        # Ids added after the snapshot whose delete never reached Milvus (a crash between the two).
        first = store.snapshot_next_vector_id()
        keep = np.concatenate(journal_ids) if journal_ids else np.zeros(0, dtype=np.int64)
        found = self._ids_from(first)
        stray = np.setdiff1d(found, keep)
        self.remove(stray)
        done["stray"] = len(stray)
        if self.ntotal != live:
            self.rebuild(store.iter_vectors(source="live"), categories_of)
            done["rebuilt"] = 1
        return done

    def _ids_from(self, first: int) -> np.ndarray:
        it = self._client.query_iterator(self._name, batch_size=1000, filter=f"id >= {int(first)}", output_fields=["id"])
        out: list[int] = []
        try:
            while batch := it.next():
                out.extend(int(r["id"]) for r in batch)
        finally:
            it.close()
        return np.array(out, dtype=np.int64)

    def rebuild(self, batches: Iterable[tuple[np.ndarray, np.ndarray]], categories_of: Callable[[np.ndarray], list[str]]) -> None:
        """Drop the collection and re-insert the given (ids, vectors) batches."""
        self._client.drop_collection(self._name)
        self._ensure_collection()
        for ids, vecs in batches:
            self.add(vecs, ids, categories_of(ids))
        self._client.flush(self._name)

    def close(self) -> None:
        """Close the connection; stop the embedded milvus-lite server (releasing its data folder)."""
        client, self._client = self._client, None
        if client is None:
            return
        client.close()
        if self._lite_path is not None:
            from milvus_lite.server_manager import server_manager_instance

            server_manager_instance.release_server(self._lite_path)


def read_spec(directory: Path, manifest: Any) -> MilvusSpec:
    """The snapshot's Milvus spec, checked against the manifest (dimension).

    Raises:
        UserError: if it cannot be read or disagrees with the manifest.
    """
    path = directory / manifest.files["index"].path
    spec = MilvusSpec.read(path)
    if spec.dimension != manifest.dimension:
        raise UserError(f"Milvus index file {path} is {spec.dimension}-d, the manifest says {manifest.dimension}-d.")
    return spec


def open_milvus_store(
    directory: Path, manifest: Any, settings: Any, token: str | None
) -> tuple[Any, Any, MilvusVectorStore]:
    """Open a Milvus-backed index directory's catalog, vector owners and vector store, reconciled.

    Returns:
        (CatalogStore, VectorOwners, MilvusVectorStore) for `ProductIndex`.

    Raises:
        UserError: as `snapshot.open_store`, `read_spec` and `MilvusVectorStore`.
    """
    from visionpipes.retail.index.snapshot import open_store
    from visionpipes.retail.index.vector_owners import VectorOwners

    spec = read_spec(directory, manifest)
    store = open_store(directory, manifest)
    try:
        owners = VectorOwners()
        rows = list(store.vector_owners())
        if rows:
            owners.add_bulk(np.array([r[0] for r in rows], dtype=np.int64), [r[1] for r in rows], [r[2] for r in rows])
        vstore = MilvusVectorStore(directory, spec, settings=settings, token=token)
        try:
            vstore.reconcile(store, owners.categories_of)
        except BaseException:
            vstore.close()
            raise
    except BaseException:
        store.close()
        raise
    return store, owners, vstore
