"""What the index stores per product: the record a caller adds (`ProductRecord`), the product as
stored (`StoredProduct`), one search result (`SearchHit`), the duplicate-id error, and the grouping of embedded catalog views into
records (`catalog_records`).

Plain data; no FAISS, no SQLite, no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from visionpipes.core.errors import UserError
from visionpipes.retail.catalog import Catalog


class ProductExistsError(UserError):
    """An add named a product id that is already in the catalog (and `replace` was not asked for)."""


@dataclass
class ProductRecord:
    """One catalog product as the caller describes it.

    Attributes:
        product_id: the retailer's product id (any non-empty string).
        title: display title.
        category: category used by the query-time filter ('' for none).
        metadata: any extra fields (JSON-serialisable), e.g. the extra catalog.csv columns.
        image_paths: one path per view, aligned with the vectors given to the index.
    """

    product_id: str
    title: str = ""
    category: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    image_paths: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class StoredProduct:
    """A product as it is in the catalog, with the ids of its vectors in the index."""

    product_id: str
    title: str
    category: str
    metadata: dict[str, Any]
    image_path: str
    vector_ids: tuple[int, ...]


@dataclass(frozen=True)
class SearchHit:
    """One product in a search result: its best-matching view's score and its catalog fields."""

    product_id: str
    score: float
    title: str
    category: str
    metadata: dict[str, Any]
    image_path: str
    vector_id: int


def catalog_records(
    catalog: Catalog, labels: list[str], relpaths: list[str], vectors: np.ndarray
) -> tuple[list[ProductRecord], list[np.ndarray]]:
    """Group embedded views by product (catalog order) into index records and per-product vectors."""
    rows: dict[str, list[int]] = {}
    for i, pid in enumerate(labels):
        rows.setdefault(pid, []).append(i)
    records, grouped = [], []
    for pid, product in catalog.products.items():
        idx = rows.get(pid)
        if not idx:
            continue
        records.append(
            ProductRecord(
                pid,
                title=product.title,
                category=product.category,
                metadata=dict(product.metadata),
                image_paths=[relpaths[i] for i in idx],
            )
        )
        grouped.append(vectors[idx])
    return records, grouped
