"""The routes of the query API: search by photo (one or a batch), similar items, live add/delete,
product records and photos, categories, health, the search page at `/`.

Each route validates its request (limits from `APIConfig`) and answers one sentence on bad input;
the index, embedder and folders come from the served deployment `add_routes` is given (no global
state), taken once per request so that a reload (`serve.reload`) never mixes two deployments.
"""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, File, Form, HTTPException, Query, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, HTMLResponse

from visionpipes.retail.index.records import ProductExistsError, ProductRecord
from visionpipes.retail.serve.maintenance import WriteGate
from visionpipes.retail.serve.page import SEARCH_PAGE
from visionpipes.retail.serve.schemas import AddResponse, BatchSearchResponse, Item, SearchResponse, to_hit
from visionpipes.retail.serve.security import check_lookup_id, check_new_product_id, parse_metadata
from visionpipes.retail.serve.served import Served, ServedDeployment
from visionpipes.retail.serve.settings import APIConfig
from visionpipes.retail.serve.uploads import Upload, decode_upload, resolve_image, save_uploads


def add_routes(
    app: FastAPI,
    *,
    served: ServedDeployment,
    config: APIConfig,
    gate: WriteGate,
) -> None:
    """Register every route of the API on `app`.

    Args:
        app: the FastAPI app.
        served: the deployment served (its index, embedder, uploads and catalog photo folder).
        config: upload/k/batch limits.
        gate: serialises writes with compaction and reloads.
    """

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
            name = f.filename or "image"
            # Decoded in the thread pool: a large photo never blocks the event loop.
            images.append(await run_in_threadpool(decode_upload, data, name, max_pixels=config.max_pixels))
        return images

    def check_id(product_id: str) -> str:
        problem = check_lookup_id(product_id)
        if problem:
            raise HTTPException(422, problem)
        return product_id

    async def read_images(files: list[UploadFile]) -> list[np.ndarray]:
        return [u.pixels for u in await read_uploads(files)]

    def search_with(images: list[np.ndarray], k: int, category: str | None) -> list:
        with served.use() as s:  # one deployment embeds and searches
            return s.index.search(s.embed(images), k, category=category)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        """The search page: drop or choose a photo, see the top products with their scores."""
        return SEARCH_PAGE

    @app.get("/health")
    def health() -> dict[str, Any]:
        """Liveness and index counts."""
        with served.use() as s:
            return {"status": "ok", **s.index.stats(), "deployment": str(s.root)}

    @app.get("/categories")
    def categories() -> dict[str, list[str]]:
        """The categories a search can be filtered by."""
        with served.use() as s:
            return {"categories": s.index.categories()}

    @app.post("/search", response_model=SearchResponse)
    async def search(
        image: Annotated[UploadFile, File(description="query photo")],
        k: Annotated[int, Query()] = 10,
        category: Annotated[str | None, Query()] = None,
    ) -> SearchResponse:
        """The k most similar products to an uploaded photo (optionally within one category)."""
        check_k(k)
        images = await read_images([image])
        hits = (await run_in_threadpool(search_with, images, k, category))[0]
        return SearchResponse(results=[to_hit(h) for h in hits])

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
        hits = await run_in_threadpool(search_with, arrays, k, category)
        return BatchSearchResponse(results=[[to_hit(h) for h in row] for row in hits])

    @app.get("/items/{product_id}", response_model=Item)
    def get_item(product_id: str) -> Item:
        """A product's stored record."""
        with served.use() as s:
            p = s.index.get(check_id(product_id))
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
        with served.use() as s:
            paths = s.index.view_paths(check_id(product_id))
            uploads, images_root = s.uploads, s.images_root
        if not paths:
            raise HTTPException(404, f"product_id {product_id!r} is not in the index.")
        if view >= len(paths):
            raise HTTPException(
                404, f"product_id {product_id!r} has {len(paths)} view(s); view {view} does not exist."
            )
        file = resolve_image(paths[view], catalog_root=images_root, uploads=uploads)
        if file is None:
            raise HTTPException(404, f"the image of product_id {product_id!r} view {view} is not available.")
        return FileResponse(file)

    @app.get("/items/{product_id}/similar", response_model=SearchResponse)
    def similar(product_id: str, k: int = 10, category: str | None = None) -> SearchResponse:
        """Products most similar to a catalog product, itself left out."""
        check_k(k)
        with served.use() as s:
            if check_id(product_id) not in s.index:
                raise HTTPException(404, f"product_id {product_id!r} is not in the index.")
            return SearchResponse(
                results=[to_hit(h) for h in s.index.similar(product_id, k, category=category)]
            )

    @app.post("/items", response_model=AddResponse, status_code=201)
    async def add_item(
        product_id: Annotated[str, Form()],
        images: Annotated[list[UploadFile], File(description="one or more views of the product")],
        title: Annotated[str, Form()] = "",
        category: Annotated[str, Form()] = "",
        metadata: Annotated[str, Form(description="JSON object of extra fields")] = "{}",
        replace: Annotated[bool, Form()] = False,
    ) -> AddResponse:
        """Add a product (visible to the next query; durable once this returns). Needs the API token."""
        problem = check_new_product_id(product_id)
        if problem:
            raise HTTPException(422, problem)
        try:
            meta = parse_metadata(
                metadata, max_bytes=config.max_metadata_bytes, max_depth=config.max_metadata_depth
            )
        except ValueError as err:
            raise HTTPException(422, str(err)) from None
        if len(images) > config.max_item_images:
            raise HTTPException(
                422, f"at most {config.max_item_images} images per product, got {len(images)}."
            )
        with served.use() as s:
            existed = product_id in s.index
        if existed and not replace:
            raise HTTPException(
                409, f"product_id {product_id!r} already exists (send replace=true to overwrite it)."
            )
        decoded = await read_uploads(images)
        pixels = [u.pixels for u in decoded]

        def embed_now() -> tuple[Served, np.ndarray]:
            with served.use() as s:
                return s, s.embed(pixels)

        embedded_by, vectors = await run_in_threadpool(embed_now)

        def save_and_add(s: Served) -> np.ndarray:
            # A reload between the embedding and the gate: the new deployment's model embeds again.
            vecs = vectors if s is embedded_by else s.embed(pixels)
            paths = save_uploads(s.uploads, decoded)
            record = ProductRecord(
                product_id, title=title, category=category, metadata=meta, image_paths=paths
            )
            return s.index.add(record, vecs, replace=replace)

        try:
            ids = await run_in_threadpool(gate.write, save_and_add)
        except ProductExistsError as err:
            raise HTTPException(409, str(err)) from None
        return AddResponse(product_id=product_id, vector_ids=[int(i) for i in ids], replaced=existed)

    @app.delete("/items/{product_id}")
    def delete_item(product_id: str) -> dict[str, str]:
        """Delete a product (durable once this returns). Needs the API token."""
        check_id(product_id)
        if not gate.write(lambda s: s.index.delete(product_id)):
            raise HTTPException(404, f"product_id {product_id!r} is not in the index.")
        return {"deleted": product_id}

    @app.post("/admin/compact")
    def compact() -> dict[str, Any]:
        """Fold the journal into a new snapshot, drop tombstones and unreferenced uploads. Needs the API token."""
        return gate.compact()
