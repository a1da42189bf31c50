"""HTTP query API over a `ProductIndex`: search by photo, similar items, live add/delete, product
images, the search page at `/`, health and Prometheus metrics. `create_app(index_dir, embedder)` opens
(and verifies) the index before it returns, so a bad index or a model of another dimension/version
stops the server from starting at all; `app_for_index` does the same for a deployed index, finding
its ONNX model and catalog images through the index manifest.

It does not train or embed catalogs in bulk; the embedder is any callable from images to embeddings.
Uploaded product photos (`POST /items`) are kept in `<index>/uploads/`, written and fsynced before
the add is committed, so an acknowledged product always has its image.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
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
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse
from pydantic import BaseModel

from visionpipes.core.errors import UserError
from visionpipes.retail.catalog import IMAGE_SUFFIXES
from visionpipes.retail.index import ProductIndex, SearchHit, SearchSettings
from visionpipes.retail.manifest import fsync_path, read_manifest
from visionpipes.retail.page import SEARCH_PAGE
from visionpipes.retail.store import ProductExistsError, ProductRecord

Embedder = Callable[[Sequence[np.ndarray]], np.ndarray]
#: Prefix of the image path of a photo uploaded through POST /items (kept in <index>/uploads/).
UPLOAD_PREFIX = "upload:"
UPLOADS_DIR = "uploads"


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


def _image_url(product_id: str, image_path: str) -> str | None:
    from urllib.parse import quote

    return f"/items/{quote(product_id, safe='')}/image" if image_path else None


def _hit(h: SearchHit) -> Hit:
    return Hit(
        product_id=h.product_id,
        score=h.score,
        title=h.title,
        category=h.category,
        metadata=h.metadata,
        image_path=h.image_path,
        image_url=_image_url(h.product_id, h.image_path),
    )


@dataclass
class Upload:
    """A decoded upload: the RGB pixels, the bytes as sent and PIL's name of their format."""

    pixels: np.ndarray
    data: bytes
    format: str


def decode_upload(data: bytes, name: str) -> Upload:
    """Decode uploaded bytes to an HxWx3 uint8 RGB array.

    Raises:
        HTTPException: 415 if the bytes are not a complete image in a format PIL reads.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # a truncated file fails here, not later
            return Upload(np.asarray(img.convert("RGB")), data, (img.format or "png").lower())
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError, ImportError) as err:
        # ImportError: ultralytics, once imported in the same process, patches Image.open to try
        # an optional HEIF plugin on unknown bytes; without the plugin that is still "not an image".
        raise HTTPException(415, f"upload {name!r} is not a readable image ({err}).") from None


def decode_image(data: bytes, name: str) -> np.ndarray:
    """Decode uploaded bytes to an HxWx3 uint8 RGB array (see `decode_upload`)."""
    return decode_upload(data, name).pixels


def save_uploads(folder: Path, uploads: Sequence[Upload]) -> list[str]:
    """Write uploaded photos into `folder` under content-hash names, fsynced (file and folder) before
    returning their image paths (`upload:<name>`)."""
    folder.mkdir(exist_ok=True)
    paths = []
    for up in uploads:
        suffix = {"jpeg": "jpg"}.get(up.format, up.format)
        name = f"{hashlib.sha256(up.data).hexdigest()[:32]}.{suffix}"
        target = folder / name
        if not target.exists():
            tmp = folder / f".{name}.tmp"
            with open(tmp, "wb") as fh:
                fh.write(up.data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        paths.append(UPLOAD_PREFIX + name)
    fsync_path(folder)
    return paths


def resolve_image(image_path: str, *, catalog_root: Path | None, uploads: Path) -> Path | None:
    """The file of a stored image path, or None when there is none (no catalog root, a path outside
    it, or a missing file). Paths never escape the catalog root or the uploads folder."""
    if not image_path:
        return None
    if image_path.startswith(UPLOAD_PREFIX):
        name = image_path[len(UPLOAD_PREFIX) :]
        base, candidate = uploads.resolve(), (uploads / name).resolve()
    elif os.path.isabs(image_path):
        # A catalog that names its images by absolute path (`vp-retail data --source`); such paths come
        # only from the deployed catalog: uploads are always stored under the upload prefix.
        path = Path(image_path)
        return path if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES else None
    elif catalog_root is not None:
        base = catalog_root.resolve()
        candidate = (base / image_path).resolve()
    else:
        return None
    if candidate != base and base not in candidate.parents:
        return None
    return candidate if candidate.is_file() else None


def create_app(
    index_dir: str | Path,
    embedder: Embedder,
    *,
    model_version: str | None = None,
    config: APIConfig | None = None,
    settings: SearchSettings | None = None,
    catalog_root: str | Path | None = None,
) -> FastAPI:
    """Open the index at `index_dir` and build the FastAPI app serving it.

    Args:
        index_dir: an index directory (see `visionpipes.retail.index`).
        embedder: images (HxWx3 uint8 arrays) → (n, dimension) embeddings.
        model_version: the embedder's model version (default: `embedder.model_version` if it has one);
            an index built with another version is refused.
        config: upload/k/batch limits.
        settings: FAISS query settings (nprobe, efSearch).
        catalog_root: the folder catalog image paths are relative to (default: the manifest's
            `catalog_root`, relative to the index directory), for `GET /items/{id}/image`.

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
    index_path = Path(index_dir)
    uploads = index_path / UPLOADS_DIR
    if catalog_root is None:
        catalog_root = manifest_catalog_root(index_path, index.manifest.extra)
    images_root = Path(catalog_root) if catalog_root is not None else None
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

    async def read_uploads(files: list[UploadFile]) -> list[Upload]:
        images = []
        for f in files:
            data = await f.read(config.max_upload_bytes + 1)
            if len(data) > config.max_upload_bytes:
                raise HTTPException(
                    413, f"upload {f.filename!r} is over the {config.max_upload_bytes}-byte limit."
                )
            if not data:
                raise HTTPException(422, f"upload {f.filename!r} is empty.")
            images.append(decode_upload(data, f.filename or "image"))
        return images

    async def read_images(files: list[UploadFile]) -> list[np.ndarray]:
        return [u.pixels for u in await read_uploads(files)]

    def embed(images: list[np.ndarray]) -> np.ndarray:
        return np.asarray(embedder(images), dtype=np.float32)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        """The search page: drop or choose a photo, see the top products with their scores."""
        return SEARCH_PAGE

    @app.get("/health")
    def health() -> dict[str, Any]:
        """Liveness and index counts."""
        return {"status": "ok", **index.stats()}

    @app.get("/categories")
    def categories() -> dict[str, list[str]]:
        """The categories a search can be filtered by."""
        return {"categories": index.categories()}

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

    @app.get("/items/{product_id}/image")
    def item_image(product_id: str, view: Annotated[int, Query(ge=0)] = 0) -> FileResponse:
        """A product's photo (its view number `view`), from the catalog or the uploads."""
        paths = index.view_paths(product_id)
        if not paths:
            raise HTTPException(404, f"product_id {product_id!r} is not in the index.")
        if view >= len(paths):
            raise HTTPException(404, f"product_id {product_id!r} has {len(paths)} view(s); view {view} does not exist.")
        file = resolve_image(paths[view], catalog_root=images_root, uploads=uploads)
        if file is None:
            raise HTTPException(404, f"the image of product_id {product_id!r} view {view} is not available.")
        return FileResponse(file)

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
        decoded = await read_uploads(images)
        vectors = await run_in_threadpool(lambda: embed([u.pixels for u in decoded]))
        paths = await run_in_threadpool(lambda: save_uploads(uploads, decoded))
        record = ProductRecord(product_id, title=title, category=category, metadata=meta, image_paths=paths)
        try:
            ids = await run_in_threadpool(lambda: index.add(record, vectors, replace=replace))
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


def manifest_catalog_root(index_dir: Path, extra: dict[str, Any]) -> Path | None:
    """The catalog image folder a deployed index names in its manifest (relative to the index
    directory, or absolute), or None when it names none or the folder is gone."""
    for key in ("catalog_root", "catalog_root_absolute"):
        value = extra.get(key)
        if value:
            root = Path(value) if os.path.isabs(value) else index_dir / value
            if root.is_dir():
                return root
    return None


def find_index_dir(path: str | Path) -> Path:
    """An index directory given itself or a deploy folder holding `index/`.

    Raises:
        UserError: if neither holds a manifest.
    """
    path = Path(path)
    if (path / "manifest.json").is_file():
        return path
    if (path / "index" / "manifest.json").is_file():
        return path / "index"
    if not path.exists():
        raise UserError(f"index directory {path} does not exist.")
    raise UserError(f"{path} is neither an index directory (manifest.json) nor a deploy folder holding index/.")


def app_for_index(
    index: str | Path,
    *,
    model: str | Path | None = None,
    config: APIConfig | None = None,
    settings: SearchSettings | None = None,
    threads: int | None = None,
) -> FastAPI:
    """The app for a deployed index: its ONNX model (from `model`, else the manifest's `model`
    entry) embeds the queries.

    Raises:
        UserError: if the index or model is missing, corrupted, or they do not match.
    """
    from visionpipes.retail.evaluate import load_embedder

    index_dir = find_index_dir(index)
    manifest = read_manifest(index_dir)
    if model is None:
        named = manifest.extra.get("model")
        if not named:
            raise UserError(f"index directory {index_dir} names no model in its manifest; pass --model.")
        model = Path(named) if os.path.isabs(named) else index_dir / named
        if not Path(model).is_file():
            raise UserError(f"model {model} named by the manifest of {index_dir} does not exist; pass --model.")
    embedder = load_embedder(model, threads=threads)
    return create_app(index_dir, embedder, config=config, settings=settings)
