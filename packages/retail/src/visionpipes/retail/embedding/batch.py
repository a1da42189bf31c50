"""Batch embedding of catalogs and query sets with progress: unreadable images are reported with
their row and left out, the rest embedded in batches by any embedder.

It neither trains, scores nor indexes (see `training.evaluate`, `index`).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from visionpipes.core.errors import UserError
from visionpipes.retail.catalog import Catalog, CatalogProblem, QuerySet
from visionpipes.retail.embedding.embedders import Embedder
from visionpipes.retail.embedding.preprocess import read_view


@dataclass
class EmbeddedImages:
    """Embeddings of a list of images, the images that could not be read left out."""

    vectors: np.ndarray
    labels: list[str]
    relpaths: list[str]
    problems: list[CatalogProblem] = field(default_factory=list)
    seconds: float = 0.0


def embed_images(
    embedder: Embedder,
    items: Sequence[tuple[Path, str, str, int]],
    *,
    source: str,
    batch_size: int = 64,
    progress: bool = True,
    what: str = "images",
) -> EmbeddedImages:
    """Embed (path, label, relpath, row) items in batches, printing progress to stderr; unreadable
    images are reported with their row and left out."""
    from tqdm import tqdm

    size = int(getattr(embedder, "image_size", 0)) or None
    vectors, labels, relpaths, problems = [], [], [], []
    start = time.perf_counter()
    bar = tqdm(total=len(items), desc=f"embedding {what}", unit="img", disable=not progress, file=sys.stderr)
    for lo in range(0, len(items), batch_size):
        chunk = items[lo : lo + batch_size]
        images = []
        for path, label, rel, row in chunk:
            try:
                images.append(read_view(path, size))
            except UserError as err:
                problems.append(CatalogProblem(source, row, str(err)))
                continue
            labels.append(label)
            relpaths.append(rel)
        if images:
            vectors.append(np.asarray(embedder(images), dtype=np.float32))
        bar.update(len(chunk))
    bar.close()
    dim = vectors[0].shape[1] if vectors else 0
    return EmbeddedImages(
        np.concatenate(vectors) if vectors else np.zeros((0, dim), np.float32),
        labels,
        relpaths,
        problems,
        time.perf_counter() - start,
    )


def embed_catalog(embedder: Embedder, catalog: Catalog, *, progress: bool = True, batch_size: int = 64) -> EmbeddedImages:
    """Embed every view of a catalog (see `embed_images`)."""
    items = [(v.path, pid, v.relpath, v.row) for pid, v in catalog.views()]
    return embed_images(
        embedder, items, source=catalog.source, batch_size=batch_size, progress=progress, what="catalog"
    )


def embed_queries(embedder: Embedder, queries: QuerySet, *, progress: bool = True) -> EmbeddedImages:
    """Embed every query photo (see `embed_images`)."""
    items = [(q.path, q.product_id, q.relpath, q.row) for q in queries.queries]
    return embed_images(embedder, items, source=str(queries.root / "queries.csv"), progress=progress, what="queries")
