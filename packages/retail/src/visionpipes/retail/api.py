"""HTTP query API over a `ProductIndex`: search by photo, similar items, live add/delete, health and
Prometheus metrics. `create_app(index_dir, embedder)` opens (and verifies) the index before it returns,
so a bad index or a model of another dimension/version stops the server from starting at all.

It does not train or embed catalogs in bulk; the embedder is any callable from images to embeddings.
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel

from visionpipes.core.errors import UserError
from visionpipes.retail.index import ProductIndex, SearchHit, SearchSettings
from visionpipes.retail.store import ProductExistsError, ProductRecord

Embedder = Callable[[Sequence[np.ndarray]], np.ndarray]


@dataclass
class APIConfig:
    """Server limits.

    Attributes:
        max_upload_bytes: largest accepted image upload (413 above it).
        max_k: largest `k` a query may ask for (422 above it).
        max_batch: most images in one /search/batch request.
    """

    max_upload_bytes: int = 10 * 1024 * 1024
    max_k: int = 100
    max_batch: int = 64


class Hit(BaseModel):
    """One product in a result list."""

    product_id: str
    score: float
    title: str
    category: str
    metadata: dict[str, Any]
    image_path: str


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


class _Metrics:
    """Request counters and latency sums for /metrics (per app, not global)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: Counter[tuple[str, str, int]] = Counter()
        self.seconds: Counter[str] = Counter()

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        with self.lock:
            self.requests[(method, route, status)] += 1
            self.seconds[route] += seconds


def _hit(h: SearchHit) -> Hit:
    return Hit(
        product_id=h.product_id,
        score=h.score,
        title=h.title,
        category=h.category,
        metadata=h.metadata,
        image_path=h.image_path,
    )


def decode_image(data: bytes, name: str) -> np.ndarray:
    """Decode uploaded bytes to an HxWx3 uint8 RGB array.

    Raises:
        HTTPException: 415 if the bytes are not a complete image in a format PIL reads.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # a truncated file fails here, not later
            return np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
        raise HTTPException(415, f"upload {name!r} is not a readable image ({err}).") from None


def create_app(
    index_dir: str | Path,
    embedder: Embedder,
    *,
    model_version: str | None = None,
    config: APIConfig | None = None,
    settings: SearchSettings | None = None,
) -> FastAPI:
    """Open the index at `index_dir` and build the FastAPI app serving it.

    Args:
        index_dir: an index directory (see `visionpipes.retail.index`).
        embedder: images (HxWx3 uint8 arrays) → (n, dimension) embeddings.
        model_version: the embedder's model version (default: `embedder.model_version` if it has one);
            an index built with another version is refused.
        config: upload/k/batch limits.
        settings: FAISS query settings (nprobe, efSearch).

    Returns:
        The app; the index is closed when the app shuts down.

    Raises:
        UserError: if the index is missing, corrupted, or its dimension or model version differ from the embedder's.
    """
    config = config or APIConfig()
    version = model_version if model_version is not None else getattr(embedder, "model_version", None)
    probe = np.asarray(embedder([np.zeros((32, 32, 3), dtype=np.uint8)]))
    if probe.ndim != 2 or probe.shape[0] != 1:
        raise UserError(f"the embedder returned shape {probe.shape} for one image, expected (1, dimension).")
    index = ProductIndex.open(
        index_dir, dimension=int(probe.shape[1]), model_version=version, settings=settings
    )
    metrics = _Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        index.close()

    app = FastAPI(
        title="visionpipes retail search",
        description="Visual product search: upload a photo, get the most similar products.",
        lifespan=lifespan,
    )
    app.state.index = index
    app.state.config = config

    @app.middleware("http")
    async def count_requests(request: Request, call_next: Callable) -> Any:
        t0 = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        metrics.observe(request.method, path, response.status_code, time.perf_counter() - t0)
        return response

    @app.exception_handler(UserError)
    async def user_error(request: Request, err: UserError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": str(err)})

    def check_k(k: int) -> int:
        if not 1 <= k <= config.max_k:
            raise HTTPException(422, f"k must be between 1 and {config.max_k}, got {k}.")
        return k

    async def read_images(files: list[UploadFile]) -> list[np.ndarray]:
        images = []
        for f in files:
            data = await f.read(config.max_upload_bytes + 1)
            if len(data) > config.max_upload_bytes:
                raise HTTPException(
                    413, f"upload {f.filename!r} is over the {config.max_upload_bytes}-byte limit."
                )
            if not data:
                raise HTTPException(422, f"upload {f.filename!r} is empty.")
            images.append(decode_image(data, f.filename or "image"))
        return images

    def embed(images: list[np.ndarray]) -> np.ndarray:
        return np.asarray(embedder(images), dtype=np.float32)

    @app.get("/health")
    def health() -> dict[str, Any]:
        """Liveness and index counts."""
        return {"status": "ok", **index.stats()}

    @app.post("/search", response_model=SearchResponse)
    async def search(
        image: Annotated[UploadFile, File(description="query photo")],
        k: Annotated[int, Query()] = 10,
        category: Annotated[str | None, Query()] = None,
    ) -> SearchResponse:
        """The k most similar products to an uploaded photo (optionally within one category)."""
        check_k(k)
        images = await read_images([image])
        hits = (await run_in_threadpool(lambda: index.search(embed(images), k, category=category)))[0]
        return SearchResponse(results=[_hit(h) for h in hits])

    @app.post("/search/batch", response_model=BatchSearchResponse)
    async def search_batch(
        images: Annotated[list[UploadFile], File(description="query photos")],
        k: Annotated[int, Query()] = 10,
        category: Annotated[str | None, Query()] = None,
    ) -> BatchSearchResponse:
        """Search several photos in one request (one embedding batch, one FAISS call)."""
        check_k(k)
        if len(images) > config.max_batch:
            raise HTTPException(422, f"at most {config.max_batch} images per batch, got {len(images)}.")
        arrays = await read_images(images)
        hits = await run_in_threadpool(lambda: index.search(embed(arrays), k, category=category))
        return BatchSearchResponse(results=[[_hit(h) for h in row] for row in hits])

    @app.get("/items/{product_id}", response_model=Item)
    def get_item(product_id: str) -> Item:
        """A product's stored record."""
        p = index.get(product_id)
        if p is None:
            raise HTTPException(404, f"product_id {product_id!r} is not in the index.")
        return Item(
            product_id=p.product_id,
            title=p.title,
            category=p.category,
            metadata=p.metadata,
            image_path=p.image_path,
            views=len(p.vector_ids),
        )

    @app.get("/items/{product_id}/similar", response_model=SearchResponse)
    def similar(product_id: str, k: int = 10, category: str | None = None) -> SearchResponse:
        """Products most similar to a catalog product, itself left out."""
        check_k(k)
        if product_id not in index:
            raise HTTPException(404, f"product_id {product_id!r} is not in the index.")
        return SearchResponse(results=[_hit(h) for h in index.similar(product_id, k, category=category)])

    @app.post("/items", response_model=AddResponse, status_code=201)
    async def add_item(
        product_id: Annotated[str, Form()],
        images: Annotated[list[UploadFile], File(description="one or more views of the product")],
        title: Annotated[str, Form()] = "",
        category: Annotated[str, Form()] = "",
        metadata: Annotated[str, Form(description="JSON object of extra fields")] = "{}",
        replace: Annotated[bool, Form()] = False,
    ) -> AddResponse:
        """Add a product (visible to the next query; durable once this returns)."""
        try:
            meta = json.loads(metadata)
        except json.JSONDecodeError as err:
            raise HTTPException(422, f"metadata is not valid JSON ({err}).") from None
        if not isinstance(meta, dict):
            raise HTTPException(422, "metadata must be a JSON object.")
        if not product_id.strip():
            raise HTTPException(422, "product_id must not be empty.")
        existed = product_id in index
        if existed and not replace:
            raise HTTPException(
                409, f"product_id {product_id!r} already exists (send replace=true to overwrite it)."
            )
        arrays = await read_images(images)
        record = ProductRecord(
            product_id,
            title=title,
            category=category,
            metadata=meta,
            image_paths=[f.filename or "" for f in images],
        )
        try:
            ids = await run_in_threadpool(lambda: index.add(record, embed(arrays), replace=replace))
        except ProductExistsError as err:
            raise HTTPException(409, str(err)) from None
        return AddResponse(product_id=product_id, vector_ids=[int(i) for i in ids], replaced=existed)

    @app.delete("/items/{product_id}")
    def delete_item(product_id: str) -> dict[str, str]:
        """Delete a product (durable once this returns)."""
        if not index.delete(product_id):
            raise HTTPException(404, f"product_id {product_id!r} is not in the index.")
        return {"deleted": product_id}

    @app.get("/metrics", response_class=PlainTextResponse)
    def prometheus_metrics() -> str:
        """Prometheus text exposition: index gauges, request counts and latency sums."""
        s = index.stats()
        lines = [
            "# HELP retail_index_products Products in the index.",
            "# TYPE retail_index_products gauge",
            f"retail_index_products {s['products']}",
            "# HELP retail_index_vectors Live view vectors in the index.",
            "# TYPE retail_index_vectors gauge",
            f"retail_index_vectors {s['vectors']}",
            "# HELP retail_index_tombstones Deleted vectors still inside the FAISS index.",
            "# TYPE retail_index_tombstones gauge",
            f"retail_index_tombstones {s['tombstones']}",
            "# HELP retail_index_journal_changes Changes not yet folded into a snapshot.",
            "# TYPE retail_index_journal_changes gauge",
            f"retail_index_journal_changes {s['journal_changes']}",
            "# HELP retail_http_requests_total HTTP requests by method, route and status.",
            "# TYPE retail_http_requests_total counter",
        ]
        with metrics.lock:
            for (method, route, status), n in sorted(metrics.requests.items()):
                lines.append(
                    f'retail_http_requests_total{{method="{method}",route="{route}",status="{status}"}} {n}'
                )
            lines += [
                "# HELP retail_http_request_seconds_sum Total seconds spent serving each route.",
                "# TYPE retail_http_request_seconds_sum counter",
            ]
            for route, sec in sorted(metrics.seconds.items()):
                lines.append(f'retail_http_request_seconds_sum{{route="{route}"}} {sec:.6f}')
        return "\n".join(lines) + "\n"

    return app
