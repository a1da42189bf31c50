"""The JSON payloads of the query API (pydantic models FastAPI documents at `/docs`), and the
conversion of an index hit into one.

No routes and no index access here.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from pydantic import BaseModel

from visionpipes.retail.index.records import SearchHit


class Hit(BaseModel):
    """One product in a result list."""

    product_id: str
    score: float
    title: str
    category: str
    metadata: dict[str, Any]
    image_path: str
    image_url: str | None = None


class SearchResponse(BaseModel):
    results: list[Hit]


class BatchSearchResponse(BaseModel):
    results: list[list[Hit]]


class Item(BaseModel):
    """A product as stored."""

    product_id: str
    title: str
    category: str
    metadata: dict[str, Any]
    image_path: str
    views: int


class AddResponse(BaseModel):
    product_id: str
    vector_ids: list[int]
    replaced: bool


def image_url(product_id: str, image_path: str) -> str | None:
    """The API URL of a product's photo, or None when it has none."""
    return f"/items/{quote(product_id, safe='')}/image" if image_path else None


def to_hit(h: SearchHit) -> Hit:
    """An index hit as a response item."""
    return Hit(
        product_id=h.product_id,
        score=h.score,
        title=h.title,
        category=h.category,
        metadata=h.metadata,
        image_path=h.image_path,
        image_url=image_url(h.product_id, h.image_path),
    )
