"""The tables of the SQLite catalog (`catalog_store`): a snapshot database's and a journal's, and the
empty snapshot a new index starts from.

Schema only; no reads or writes of products here.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

#: Bumped when the tables change incompatibly; a catalog of another version is refused. (The
#: `deleted` table was added later without a bump: a snapshot without it is read as "none deleted".)
SCHEMA_VERSION = 1

_TABLES = """
CREATE TABLE IF NOT EXISTS {s}products (
    product_id TEXT PRIMARY KEY,
    title TEXT NOT NULL DEFAULT '',
    category TEXT NOT NULL DEFAULT '',
    metadata TEXT NOT NULL DEFAULT '{{}}',
    image_path TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS {s}products_category ON products (category);
CREATE TABLE IF NOT EXISTS {s}vectors (
    vector_id INTEGER PRIMARY KEY,
    product_id TEXT NOT NULL,
    image_path TEXT NOT NULL DEFAULT '',
    vector BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS {s}vectors_product ON vectors (product_id);
CREATE TABLE IF NOT EXISTS {s}info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS {s}deleted (product_id TEXT PRIMARY KEY);
"""
# `removed`: snapshot products deleted or replaced since the snapshot (the journal's set difference).
# `deleted` (journal and snapshot): ids deleted through `delete_products` since the deployment was
# built, kept across snapshots, so that a new deployment can replay the deletions (`serve.reload`).
_JOURNAL_ONLY = "CREATE TABLE IF NOT EXISTS removed (product_id TEXT PRIMARY KEY);"
_SNAPSHOT_ONLY = "CREATE TABLE IF NOT EXISTS {s}tombstones (vector_id INTEGER PRIMARY KEY);"
PRODUCT_COLUMNS = "product_id, title, category, metadata, image_path"
VECTOR_COLUMNS = "vector_id, product_id, image_path, vector"


def create_tables(conn: sqlite3.Connection, *, schema: str = "main", snapshot: bool = True) -> None:
    """Create the catalog tables in `schema` of `conn` (a snapshot's, or a journal's if not `snapshot`)."""
    prefix = f"{schema}."
    conn.executescript(_TABLES.format(s=prefix) + (_SNAPSHOT_ONLY.format(s=prefix) if snapshot else ""))
    if not snapshot:
        conn.executescript(_JOURNAL_ONLY)


def has_table(conn: sqlite3.Connection, schema: str, table: str) -> bool:
    """Whether database `schema` of `conn` has `table` (a snapshot written before it existed has not)."""
    row = conn.execute(f"SELECT 1 FROM {schema}.sqlite_master WHERE type = 'table' AND name = ?", (table,))
    return row.fetchone() is not None


def write_empty_snapshot(path: Path, *, dimension: int) -> None:
    """Write an empty snapshot catalog (rollback-journal mode: a single self-contained file)."""
    conn = sqlite3.connect(path)
    try:
        create_tables(conn)
        with conn:
            conn.executemany(
                "INSERT INTO info (key, value) VALUES (?, ?)",
                [
                    ("schema_version", str(SCHEMA_VERSION)),
                    ("dimension", str(dimension)),
                    ("next_vector_id", "0"),
                ],
            )
    finally:
        conn.close()
