"""Compaction of an index directory: fold the journal into a new snapshot generation (rebuilding the
FAISS index, which drops HNSW tombstones), then delete the files no generation refers to any more:
old snapshots and journals, and uploaded photos no live product names.

Crash-safe at every step: the new generation is written and fsynced, the manifest replaced (the
commit point), and only then is anything deleted. It embeds nothing and never touches the catalog photos.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from visionpipes.retail.index.manifest import fsync_path
from visionpipes.retail.index.product_index import ProductIndex


def compact_index(index: ProductIndex, *, uploads: Path | None = None, upload_prefix: str = "upload:") -> dict[str, Any]:
    """Compact an open index (the caller holds it: a server, or `vp-retail compact`).

    Args:
        index: the open index; writers must be paused by the caller while this runs.
        uploads: the folder of photos added through the API (None: no photo is deleted).
        upload_prefix: how the catalog names a photo of that folder (`upload:<file name>`).

    Returns:
        What was done: generations, journal changes folded, tombstones dropped, uploads removed, seconds.
    """
    t0 = time.perf_counter()
    before = index.stats()
    manifest = index.save(compact=True)
    removed = 0
    if uploads is not None and uploads.is_dir():
        keep = {p[len(upload_prefix) :] for p in index.image_paths(prefix=upload_prefix)}
        for entry in uploads.iterdir():
            if entry.is_file() and entry.name not in keep:
                entry.unlink(missing_ok=True)
                removed += 1
        fsync_path(uploads)
    return {
        "generation_before": before["generation"],
        "generation": manifest.generation,
        "journal_changes_folded": before["journal_changes"],
        "tombstones_dropped": before["tombstones"],
        "uploads_removed": removed,
        "seconds": round(time.perf_counter() - t0, 3),
    }
