"""HTTP query API over a `ProductIndex`: `create_app(index_dir, embedder)` opens (and verifies) the
index before it returns, so a bad index or a model of another dimension/version stops the server
from starting at all; `app_for_index` does the same for a deployed index, finding its ONNX model
(through its `model.json` record) and catalog images through the index manifest.

It does not train or embed catalogs in bulk, and never imports the training stack; the embedder is
any callable from images to embeddings. Routes are in `routes`, metrics in `metrics`, the token /
Host / body guards in `security`; `/docs` is served from the `swagger-ui-bundle` package (no CDN).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from visionpipes.core.errors import UserError
from visionpipes.retail.embedding.embedders import Embedder, load_embedder
from visionpipes.retail.index.faiss_index import SearchSettings
from visionpipes.retail.serve.deployment import find_index_dir, manifest_model
from visionpipes.retail.serve.maintenance import WriteGate
from visionpipes.retail.serve.metrics import ServerMetrics
from visionpipes.retail.serve.reload import add_reload_route
from visionpipes.retail.serve.routes import add_routes
from visionpipes.retail.serve.security import RequestGuard
from visionpipes.retail.serve.served import ServedDeployment, open_served
from visionpipes.retail.serve.settings import APIConfig


def create_app(
    index_dir: str | Path,
    embedder: Embedder,
    *,
    model_version: str | None = None,
    config: APIConfig | None = None,
    settings: SearchSettings | None = None,
    catalog_root: str | Path | None = None,
    root: str | Path | None = None,
    threads: int | None = None,
) -> FastAPI:
    """Open the index at `index_dir` and build the FastAPI app serving it.

    Args:
        index_dir: an index directory (see `visionpipes.retail.index.product_index`).
        embedder: images (HxWx3 uint8 arrays) → (n, dimension) embeddings.
        model_version: the embedder's model version (default: `embedder.model_version` if it has one);
            an index built with another version is refused.
        config: upload/k/batch limits.
        settings: FAISS query settings (nprobe, efSearch).
        catalog_root: the folder catalog image paths are relative to (default: the manifest's
            `catalog_root`, relative to the index directory), for `GET /items/{id}/image`.
        root: the deployment folder served (default `index_dir`): what `POST /admin/reload` swaps.
        threads: onnxruntime threads of the models a reload loads.

    Returns:
        The app; the index is closed when the app shuts down.

    Raises:
        UserError: if the index is missing, corrupted, or its dimension or model version differ from the embedder's.
    """
    config = config or APIConfig()
    index_path = Path(index_dir)
    first = open_served(
        Path(root) if root is not None else index_path,
        index_path,
        embedder,
        model_version=model_version,
        settings=settings,
        catalog_root=catalog_root,
    )
    served = ServedDeployment(first, settings=settings, threads=threads)
    metrics = ServerMetrics(lambda: served.current.index.stats())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        served.close()

    app = FastAPI(
        title="visionpipes retail search",
        description="Visual product search: upload a photo, get the most similar products.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    # Swagger UI 4 (the bundled assets) renders OpenAPI 3.0 documents only; the schema FastAPI
    # generates is read the same way by it.
    app.openapi_version = "3.0.3"
    _offline_docs(app)
    app.state.index = first.index  # the deployment opened at start (`app.state.served`: the current one)
    app.state.served = served
    app.state.config = config
    app.state.metrics = metrics

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

    gate = WriteGate(served, config.compact_every)
    app.state.gate = gate
    add_routes(app, served=served, config=config, gate=gate)
    add_reload_route(app, served=served, gate=gate)

    @app.get("/metrics")
    def prometheus_metrics() -> Response:
        """Prometheus text exposition: index gauges, request counts and per-route latency histograms."""
        return Response(metrics.exposition(), media_type=metrics.content_type)

    app.add_middleware(
        RequestGuard,
        token=config.token,
        protect_reads=config.protect_reads,
        allowed_hosts=config.allowed_hosts,
        max_body_bytes=config.max_body_bytes,
    )
    if config.cors_origins:  # outermost, so that refusals carry the CORS headers too
        app.add_middleware(
            CORSMiddleware,
            allow_origins=config.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "X-API-Token", "Content-Type"],
        )
    return app


def _offline_docs(app: FastAPI) -> None:
    """`/docs` from the Swagger UI files of the `swagger-ui-bundle` package, under `/docs-assets/`."""
    import swagger_ui_bundle

    app.mount("/docs-assets", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - docs",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/docs-assets/favicon-32x32.png",
        )


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
    index_dir = find_index_dir(index)
    embedder = load_embedder(manifest_model(index_dir, model), threads=threads)
    return create_app(index_dir, embedder, config=config, settings=settings, root=index, threads=threads)
