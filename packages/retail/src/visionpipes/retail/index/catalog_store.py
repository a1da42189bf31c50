"""The product catalog in SQLite: product metadata, image paths, and every view's embedding vector.

A live catalog is an immutable snapshot database (checksummed by the index manifest, opened read-only)
plus a journal database of the changes made since, in WAL mode with `synchronous=FULL`: a change is on
disk before `add_products`/`delete_products` return, so an acknowledged add survives `kill -9`. This
module knows nothing of FAISS; `visionpipes.retail.index.product_index` replays the journal into the vector index.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from urllib.parse import quote

import numpy as np

from visionpipes.core.errors import UserError
from visionpipes.retail.index import catalog_schema as tables
from visionpipes.retail.index.records import ProductExistsError, ProductRecord, StoredProduct


class CatalogStore:
    """The live catalog: a read-only snapshot database plus a durable journal of later changes.

    The live view is `journal.products ∪ (snapshot.products − journal.removed)`, and the same for
    vectors. A product replaced or deleted after the snapshot is listed in `removed`; ids of vectors
    are never reused, so the vector index can replay the journal as a set difference.

    Args:
        snapshot_path: the snapshot catalog (never written).
        journal_path: the journal database; created if missing.
        dimension: the embedding dimension every stored vector must have.

    Raises:
        UserError: if either database is unreadable, of another schema version or dimension.
    """

    def __init__(self, snapshot_path: Path, journal_path: Path, *, dimension: int) -> None:
        self.snapshot_path = Path(snapshot_path)
        self.journal_path = Path(journal_path)
        self.dimension = int(dimension)
        try:
            conn = sqlite3.connect(
                f"file:{quote(str(journal_path))}", uri=True, check_same_thread=False, isolation_level=None
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            check = conn.execute("PRAGMA quick_check").fetchone()[0]
        except sqlite3.DatabaseError as err:
            raise UserError(
                f"journal database {journal_path} is not a readable SQLite file ({err})."
            ) from None
        if check != "ok":
            conn.close()
            raise UserError(f"journal database {journal_path} is corrupted (quick_check: {check}).")
        self._conn = conn
        try:
            conn.execute("ATTACH DATABASE ? AS base", (f"file:{quote(str(self.snapshot_path))}?immutable=1",))
        except sqlite3.DatabaseError as err:
            conn.close()
            raise UserError(f"snapshot catalog {snapshot_path} cannot be opened ({err}).") from None
        self._check_info("base", self.snapshot_path)
        base_deleted = (
            "UNION SELECT product_id FROM base.deleted" if tables.has_table(conn, "base", "deleted") else ""
        )
        tables.create_tables(conn, snapshot=False)
        with self._transaction():
            if self._info("main", "schema_version") is None:
                conn.executemany(
                    "INSERT INTO main.info (key, value) VALUES (?, ?)",
                    [
                        ("schema_version", str(tables.SCHEMA_VERSION)),
                        ("dimension", str(self.dimension)),
                        ("next_vector_id", self._info("base", "next_vector_id") or "0"),
                    ],
                )
        self._check_info("main", self.journal_path)
        conn.executescript(
            f"""
            CREATE TEMP VIEW live_products AS
                SELECT {tables.PRODUCT_COLUMNS} FROM main.products
                UNION ALL
                SELECT {tables.PRODUCT_COLUMNS} FROM base.products
                WHERE product_id NOT IN (SELECT product_id FROM main.removed);
            CREATE TEMP VIEW live_vectors AS
                SELECT {tables.VECTOR_COLUMNS} FROM main.vectors
                UNION ALL
                SELECT {tables.VECTOR_COLUMNS} FROM base.vectors
                WHERE product_id NOT IN (SELECT product_id FROM main.removed);
            CREATE TEMP VIEW live_deleted AS
                SELECT product_id FROM main.deleted {base_deleted}
                EXCEPT SELECT product_id FROM live_products;
            """
        )

    # -- plumbing -------------------------------------------------------------------------------
    def _info(self, schema: str, key: str) -> str | None:
        row = self._conn.execute(f"SELECT value FROM {schema}.info WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def _check_info(self, schema: str, path: Path) -> None:
        try:
            version = self._info(schema, "schema_version")
            dim = self._info(schema, "dimension")
        except sqlite3.DatabaseError as err:
            raise UserError(f"catalog database {path} is not a visionpipes catalog ({err}).") from None
        if version is None:
            return
        if int(version) != tables.SCHEMA_VERSION:
            raise UserError(
                f"catalog database {path} has schema version {version}, expected {tables.SCHEMA_VERSION}."
            )
        if dim is not None and int(dim) != self.dimension:
            raise UserError(f"catalog database {path} holds {dim}-d vectors, expected {self.dimension}-d.")

    class _Tx:
        def __init__(self, conn: sqlite3.Connection) -> None:
            self.conn = conn

        def __enter__(self) -> sqlite3.Connection:
            self.conn.execute("BEGIN IMMEDIATE")
            return self.conn

        def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
            self.conn.execute("ROLLBACK" if exc_type else "COMMIT")

    def _transaction(self) -> CatalogStore._Tx:
        return CatalogStore._Tx(self._conn)

    def close(self) -> None:
        """Close the databases (a checkpoint folds the WAL into the journal file)."""
        with contextlib.suppress(sqlite3.DatabaseError):
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._conn.close()

    def leave_wal(self) -> None:
        """Checkpoint the journal and switch it to rollback-journal mode (its -wal/-shm files go)."""
        mode = self._conn.execute("PRAGMA journal_mode=DELETE").fetchone()[0]
        if str(mode).lower() != "delete":
            raise UserError(f"journal database {self.journal_path} cannot leave WAL mode (it is busy).")

    # -- writes ---------------------------------------------------------------------------------
    def add_products(
        self, records: Sequence[ProductRecord], vectors: Sequence[np.ndarray], *, replace: bool = False
    ) -> tuple[list[np.ndarray], list[int]]:
        """Add products with their view vectors in one durable transaction.

        Args:
            records: the products.
            vectors: per product, a float32 (views, dimension) array.
            replace: replace products that already exist instead of refusing.

        Returns:
            Per product the int64 ids given to its vectors, and the ids of vectors removed by replacing.

        Raises:
            ProductExistsError: if a product id exists (or repeats in `records`) and `replace` is false.
            UserError: on an empty product id or vectors of the wrong shape.
        """
        seen: set[str] = set()
        metadata_json: list[str] = []
        for rec, vecs in zip(records, vectors, strict=True):
            if not rec.product_id:
                raise UserError("product_id must be a non-empty string.")
            if rec.product_id in seen:
                raise ProductExistsError(f"product_id {rec.product_id!r} appears twice in one add.")
            seen.add(rec.product_id)
            try:
                metadata_json.append(json.dumps(rec.metadata))
            except (TypeError, ValueError) as err:
                raise UserError(
                    f"product {rec.product_id!r}: metadata is not JSON-serialisable ({err})."
                ) from None
            if vecs.ndim != 2 or vecs.shape[1] != self.dimension or len(vecs) == 0:
                raise UserError(
                    f"product {rec.product_id!r}: vectors of shape {tuple(vecs.shape)}, expected (views, {self.dimension})."
                )
        new_ids: list[np.ndarray] = []
        removed_ids: list[int] = []
        with self._transaction() as conn:
            existing = self._existing(list(seen))
            if existing and not replace:
                raise ProductExistsError(
                    f"product_id {sorted(existing)[0]!r} is already in the catalog (use replace to overwrite it)."
                )
            for pid in existing:
                removed_ids.extend(self._delete_in_tx(pid))
            next_id = int(self._info("main", "next_vector_id") or 0)
            for rec, vecs, meta in zip(records, vectors, metadata_json):
                paths = list(rec.image_paths) + [""] * (len(vecs) - len(rec.image_paths))
                conn.execute(
                    f"INSERT INTO main.products ({tables.PRODUCT_COLUMNS}) VALUES (?, ?, ?, ?, ?)",
                    (rec.product_id, rec.title, rec.category, meta, paths[0]),
                )
                ids = np.arange(next_id, next_id + len(vecs), dtype=np.int64)
                conn.executemany(
                    f"INSERT INTO main.vectors ({tables.VECTOR_COLUMNS}) VALUES (?, ?, ?, ?)",
                    [
                        (int(i), rec.product_id, str(p), np.ascontiguousarray(v, dtype=np.float32).tobytes())
                        for i, p, v in zip(ids, paths, vecs)
                    ],
                )
                next_id += len(vecs)
                new_ids.append(ids)
            conn.execute("UPDATE main.info SET value = ? WHERE key = 'next_vector_id'", (str(next_id),))
        return new_ids, removed_ids

    def delete_products(
        self, product_ids: Iterable[str], *, remember_all: bool = False
    ) -> dict[str, list[int]]:
        """Delete products durably; returns, per deleted product, the ids of its vectors (unknown ids skipped).

        The deleted ids are remembered (`deleted_ids`) across snapshots; with `remember_all` the
        unknown ones too (a deletion replayed into a new deployment that lacks the product).
        """
        out: dict[str, list[int]] = {}
        ids = list(product_ids)
        with self._transaction() as conn:
            existing = self._existing(ids)
            for pid in dict.fromkeys(ids):  # in the request's order (a set's order varies per process)
                if pid in existing:
                    out[pid] = self._delete_in_tx(pid)
            remember = ids if remember_all else list(out)
            conn.executemany(
                "INSERT OR IGNORE INTO main.deleted (product_id) VALUES (?)", [(p,) for p in remember]
            )
        return out

    def _existing(self, product_ids: list[str]) -> set[str]:
        found: set[str] = set()
        for start in range(0, len(product_ids), 500):
            chunk = product_ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._conn.execute(
                f"SELECT product_id FROM live_products WHERE product_id IN ({marks})", chunk
            )
            found.update(r[0] for r in rows)
        return found

    def _delete_in_tx(self, pid: str) -> list[int]:
        conn = self._conn
        ids = [r[0] for r in conn.execute("SELECT vector_id FROM live_vectors WHERE product_id = ?", (pid,))]
        conn.execute("DELETE FROM main.vectors WHERE product_id = ?", (pid,))
        conn.execute("DELETE FROM main.products WHERE product_id = ?", (pid,))
        if conn.execute("SELECT 1 FROM base.products WHERE product_id = ?", (pid,)).fetchone():
            conn.execute("INSERT OR IGNORE INTO main.removed (product_id) VALUES (?)", (pid,))
        return ids

    # -- reads ----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM live_products").fetchone()[0])

    def __contains__(self, product_id: object) -> bool:
        return bool(
            self._conn.execute("SELECT 1 FROM live_products WHERE product_id = ?", (product_id,)).fetchone()
        )

    def count_vectors(self) -> int:
        """Number of live vectors."""
        return int(self._conn.execute("SELECT COUNT(*) FROM live_vectors").fetchone()[0])

    def next_vector_id(self) -> int:
        """The id the next added vector will get."""
        return int(self._info("main", "next_vector_id") or 0)

    def snapshot_next_vector_id(self) -> int:
        """The first vector id added after the snapshot (ids below it are the snapshot's)."""
        return int(self._info("base", "next_vector_id") or 0)

    def get(self, product_id: str) -> StoredProduct | None:
        """One product, or None if it is not in the catalog."""
        found = self.get_many([product_id])
        return found.get(product_id)

    def get_many(self, product_ids: Sequence[str]) -> dict[str, StoredProduct]:
        """The products among `product_ids` that are in the catalog, by id."""
        out: dict[str, StoredProduct] = {}
        ids = list(dict.fromkeys(product_ids))
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            vec_ids: dict[str, list[int]] = {}
            for pid, vid in self._conn.execute(
                f"SELECT product_id, vector_id FROM live_vectors WHERE product_id IN ({marks}) ORDER BY vector_id",
                chunk,
            ):
                vec_ids.setdefault(pid, []).append(vid)
            for pid, title, category, metadata, image in self._conn.execute(
                f"SELECT {tables.PRODUCT_COLUMNS} FROM live_products WHERE product_id IN ({marks})", chunk
            ):
                out[pid] = StoredProduct(
                    pid, title, category, json.loads(metadata), image, tuple(vec_ids.get(pid, ()))
                )
        return out

    def vectors_of(self, product_id: str) -> np.ndarray:
        """The (views, dimension) float32 vectors of one product (empty if unknown)."""
        rows = self._conn.execute(
            "SELECT vector FROM live_vectors WHERE product_id = ? ORDER BY vector_id", (product_id,)
        ).fetchall()
        return self._decode([r[0] for r in rows])

    def _decode(self, blobs: list[bytes]) -> np.ndarray:
        if not blobs:
            return np.zeros((0, self.dimension), dtype=np.float32)
        width = 4 * self.dimension
        bad = next((len(b) for b in blobs if len(b) != width), None)
        if bad is not None:
            raise UserError(
                f"catalog {self.journal_path} holds a vector of {bad // 4} values, expected {self.dimension}."
            )
        return np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(blobs), self.dimension).copy()

    def view_paths(self, product_id: str) -> list[str]:
        """The image path of each view of a product, in view order (empty if unknown)."""
        rows = self._conn.execute(
            "SELECT image_path FROM live_vectors WHERE product_id = ? ORDER BY vector_id", (product_id,)
        )
        return [r[0] for r in rows]

    def iter_vectors(
        self, *, source: str = "live", batch: int = 65536
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (ids, vectors) batches of `source`: 'live', 'journal' (added since the snapshot) or 'snapshot'."""
        table = {"live": "live_vectors", "journal": "main.vectors", "snapshot": "base.vectors"}[source]
        cur = self._conn.execute(f"SELECT vector_id, vector FROM {table} ORDER BY vector_id")
        while rows := cur.fetchmany(batch):
            yield np.array([r[0] for r in rows], dtype=np.int64), self._decode([r[1] for r in rows])

    def removed_snapshot_vector_ids(self) -> np.ndarray:
        """Ids of snapshot vectors whose products were deleted or replaced since the snapshot."""
        rows = self._conn.execute(
            "SELECT v.vector_id FROM base.vectors v JOIN main.removed r ON v.product_id = r.product_id"
        ).fetchall()
        return np.array([r[0] for r in rows], dtype=np.int64)

    def snapshot_tombstones(self) -> np.ndarray:
        """Vector ids the snapshot's index still holds though their products were deleted (HNSW)."""
        rows = self._conn.execute("SELECT vector_id FROM base.tombstones").fetchall()
        return np.array([r[0] for r in rows], dtype=np.int64)

    def vector_owners(self) -> Iterator[tuple[int, str, str]]:
        """(vector_id, product_id, category) for every live vector."""
        yield from self._conn.execute(
            "SELECT v.vector_id, v.product_id, p.category FROM live_vectors v "
            "JOIN live_products p ON v.product_id = p.product_id"
        )

    def product_ids(self, *, category: str | None = None, limit: int = 100, offset: int = 0) -> list[str]:
        """Product ids in id order (optionally one category), paged."""
        if category is None:
            rows = self._conn.execute(
                "SELECT product_id FROM live_products ORDER BY product_id LIMIT ? OFFSET ?", (limit, offset)
            )
        else:
            rows = self._conn.execute(
                "SELECT product_id FROM live_products WHERE category = ? ORDER BY product_id LIMIT ? OFFSET ?",
                (category, limit, offset),
            )
        return [r[0] for r in rows]

    def image_paths(self, *, prefix: str = "") -> set[str]:
        """Image paths of the live views starting with `prefix`."""
        rows = self._conn.execute(
            "SELECT DISTINCT image_path FROM live_vectors WHERE substr(image_path, 1, ?) = ?",
            (len(prefix), prefix),
        )
        return {r[0] for r in rows}

    def deleted_ids(self) -> list[str]:
        """Ids deleted through `delete_products` since the index was built and not added again, sorted."""
        return [r[0] for r in self._conn.execute("SELECT product_id FROM live_deleted ORDER BY product_id")]

    def product_ids_with_images(self, prefix: str) -> list[str]:
        """Ids of the live products with a view whose image path starts with `prefix`, sorted."""
        rows = self._conn.execute(
            "SELECT DISTINCT product_id FROM live_vectors WHERE substr(image_path, 1, ?) = ? ORDER BY product_id",
            (len(prefix), prefix),
        )
        return [r[0] for r in rows]

    def categories(self) -> list[str]:
        """Distinct categories of the live products, sorted."""
        rows = self._conn.execute("SELECT DISTINCT category FROM live_products ORDER BY category")
        return [r[0] for r in rows]

    def journal_size(self) -> int:
        """Changes held in the journal (products added plus snapshot products removed)."""
        row = self._conn.execute(
            "SELECT (SELECT COUNT(*) FROM main.products) + (SELECT COUNT(*) FROM main.removed)"
        ).fetchone()
        return int(row[0])

    def write_snapshot(self, path: Path, *, tombstones: np.ndarray) -> dict[str, int]:
        """Write the live catalog as a new self-contained snapshot database at `path` (a new file).

        Returns:
            Its counts: products, vectors, tombstones.
        """
        conn = self._conn
        conn.execute("ATTACH DATABASE ? AS snap", (str(path),))
        try:
            tables.create_tables(conn, schema="snap")
            with self._transaction():
                conn.execute(
                    f"INSERT INTO snap.products ({tables.PRODUCT_COLUMNS}) SELECT {tables.PRODUCT_COLUMNS} FROM live_products"
                )
                conn.execute(
                    f"INSERT INTO snap.vectors ({tables.VECTOR_COLUMNS}) SELECT {tables.VECTOR_COLUMNS} FROM live_vectors"
                )
                conn.executemany(
                    "INSERT INTO snap.tombstones (vector_id) VALUES (?)", [(int(t),) for t in tombstones]
                )
                conn.execute("INSERT INTO snap.deleted (product_id) SELECT product_id FROM live_deleted")
                conn.executemany(
                    "INSERT INTO snap.info (key, value) VALUES (?, ?)",
                    [
                        ("schema_version", str(tables.SCHEMA_VERSION)),
                        ("dimension", str(self.dimension)),
                        ("next_vector_id", str(self.next_vector_id())),
                    ],
                )
            counts = {
                "products": conn.execute("SELECT COUNT(*) FROM snap.products").fetchone()[0],
                "vectors": conn.execute("SELECT COUNT(*) FROM snap.vectors").fetchone()[0],
                "tombstones": len(tombstones),
            }
        finally:
            conn.execute("DETACH DATABASE snap")
        return counts

    def snapshot_counts(self) -> dict[str, int]:
        """Counts of the snapshot database alone (checked against the manifest on load)."""
        c = self._conn
        return {
            "products": c.execute("SELECT COUNT(*) FROM base.products").fetchone()[0],
            "vectors": c.execute("SELECT COUNT(*) FROM base.vectors").fetchone()[0],
            "tombstones": c.execute("SELECT COUNT(*) FROM base.tombstones").fetchone()[0],
        }
