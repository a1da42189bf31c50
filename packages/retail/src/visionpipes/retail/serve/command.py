"""The serving verbs of `vp-retail`: `serve` (the HTTP API and page, behind a token, a Host allow-list
and upload limits), `reload` (a running server switches to a new deployment, keeping its live
changes), `compact` (fold the journal into a snapshot) and `query` (one photo against an index or a
running server). Runtime only: nothing here imports the training modules.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from visionpipes.core.errors import UserError


def _print(result: Mapping[str, Any]) -> None:
    print(json.dumps(result, indent=2, default=str))


TOKEN_ENV = "VP_RETAIL_TOKEN"


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def api_config(args: argparse.Namespace) -> Any:
    import os

    from visionpipes.core.config import parse_config
    from visionpipes.retail.serve.security import LOOPBACK_HOSTS
    from visionpipes.retail.serve.settings import APIConfig

    token = args.token or os.environ.get(TOKEN_ENV) or None
    hosts = args.allowed_host
    if hosts is None and _is_loopback(args.host):
        hosts = list(LOOPBACK_HOSTS)
    if not _is_loopback(args.host):
        if token is None:
            print(
                f"warning: serving on {args.host}, beyond loopback, without a token: anyone who can reach it can "
                f"read the catalog (writes stay disabled until --token or ${TOKEN_ENV} is set).",
                file=sys.stderr,
                flush=True,
            )
        if hosts is None:
            print(
                "warning: no --allowed-host: every Host header is answered (no DNS-rebinding defence).",
                file=sys.stderr,
                flush=True,
            )
    if args.protect_reads and token is None:
        raise UserError(f"--protect-reads needs a token (--token or ${TOKEN_ENV}).")
    values = {
        "max_upload_bytes": args.max_upload_bytes,
        "max_body_bytes": args.max_body_bytes,
        "max_pixels": args.max_pixels,
        "max_k": args.max_k,
        "max_batch": args.max_batch,
        "max_item_images": args.max_item_images,
        "token": token,
        "protect_reads": args.protect_reads,
        "allowed_hosts": hosts,
        "cors_origins": args.cors_origin or [],
        "compact_every": args.compact_every,
    }
    return parse_config(APIConfig, {k: v for k, v in values.items() if v is not None}, source="vp-retail serve options")


def cmd_serve(args: argparse.Namespace) -> None:
    import uvicorn

    from visionpipes.retail.serve.app import app_for_index

    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be between 0 and 65535, got {args.port}.")
    if args.threads < 1:
        raise UserError(f"--threads must be at least 1, got {args.threads}.")
    import faiss

    faiss.omp_set_num_threads(args.threads)
    app = app_for_index(args.index, model=args.model, config=api_config(args), threads=args.threads)
    print(f"serving {args.index} on http://{args.host}:{args.port}/ (docs at /docs)", file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)


def cmd_compact(args: argparse.Namespace) -> None:
    from visionpipes.retail.index.compaction import compact_index
    from visionpipes.retail.index.product_index import ProductIndex
    from visionpipes.retail.serve.deployment import find_index_dir
    from visionpipes.retail.serve.uploads import UPLOAD_PREFIX, UPLOADS_DIR

    index_dir = find_index_dir(args.index)
    if args.reset_journal:
        from visionpipes.retail.index.snapshot import reset_journal

        _print({"journal_reset": str(reset_journal(index_dir))})
    with ProductIndex.open(index_dir) as index:
        _print(compact_index(index, uploads=index_dir / UPLOADS_DIR, upload_prefix=UPLOAD_PREFIX) | {"index": str(index_dir)})


def cmd_query(args: argparse.Namespace) -> None:
    image = Path(args.image)
    if not image.is_file():
        raise UserError(f"image {image} does not exist.")
    if args.k < 1:
        raise UserError(f"--k must be at least 1, got {args.k}.")
    if args.url:
        _print(_query_http(args.url, image, args.k, args.category))
        return
    if not args.index:
        raise UserError("query needs --index DIR (or --url of a running server).")
    from visionpipes.core.image import read_image
    from visionpipes.retail.embedding.embedders import load_embedder
    from visionpipes.retail.index.product_index import ProductIndex
    from visionpipes.retail.serve.deployment import find_index_dir, manifest_model

    index_dir = find_index_dir(args.index)
    embedder = load_embedder(manifest_model(index_dir, args.model))
    pixels = read_image(image)
    with ProductIndex.open(
        index_dir, dimension=embedder.dimension, model_version=getattr(embedder, "model_version", None)
    ) as index:
        hits = index.search(embedder([pixels]), args.k, category=args.category)[0]
    _print(
        {
            "image": str(image),
            "results": [
                {"product_id": h.product_id, "score": round(h.score, 4), "title": h.title, "category": h.category}
                for h in hits
            ],
        }
    )


def _query_http(url: str, image: Path, k: int, category: str | None) -> dict[str, Any]:
    import httpx

    params: dict[str, Any] = {"k": k}
    if category:
        params["category"] = category
    try:
        r = httpx.post(
            url.rstrip("/") + "/search", params=params, files={"image": (image.name, image.read_bytes())}, timeout=60
        )
    except httpx.HTTPError as err:
        raise UserError(f"server {url} cannot be reached ({err}).") from None
    if r.status_code != 200:
        try:
            detail = r.json().get("detail")
        except ValueError:
            detail = r.text[:200]
        raise UserError(f"server {url} answered {r.status_code}: {detail}")
    return {"image": str(image), **r.json()}



def request_reload(url: str, deployment: str, token: str | None, *, timeout: float = 600) -> dict[str, Any]:
    """Ask the server at `url` to switch to `deployment` (`POST /admin/reload`); its answer.

    Raises:
        UserError: without a token, if the server cannot be reached, or if it refuses (its reason).
    """
    import os

    import httpx

    token = token or os.environ.get(TOKEN_ENV)
    if not token:
        raise UserError(f"reload needs the server's API token (--token or ${TOKEN_ENV}).")
    try:
        r = httpx.post(
            url.rstrip("/") + "/admin/reload",
            json={"deployment": str(Path(deployment).resolve())},
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
        )
    except httpx.HTTPError as err:
        raise UserError(f"server {url} cannot be reached ({err}).") from None
    if r.status_code != 200:
        try:
            detail = r.json().get("detail")
        except ValueError:
            detail = r.text[:200]
        raise UserError(f"server {url} refused the reload ({r.status_code}): {detail}")
    return r.json()


def cmd_reload(args: argparse.Namespace) -> None:
    if not Path(args.deployment).is_dir():
        raise UserError(f"new deployment {args.deployment} does not exist (vp-retail deploy --out it first).")
    _print(request_reload(args.url, args.deployment, args.token))


def add_serving_verbs(verbs: Any) -> None:
    """Add `serve`, `compact` and `query` to the `vp-retail` sub-parsers `verbs`."""
    p = verbs.add_parser("serve", help="serve the search API and page over HTTP (uvicorn)")
    p.add_argument("--index", required=True, help="index directory or deploy folder")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--model", help="ONNX model (default: the one the index manifest names)")
    p.add_argument("--max-upload-bytes", type=int, default=10 * 1024 * 1024, help="largest upload (413 above)")
    p.add_argument("--max-k", type=int, default=100, help="largest k a query may ask (422 above)")
    p.add_argument("--max-batch", type=int, default=64, help="most images per /search/batch")
    p.add_argument("--max-body-bytes", type=int, default=32 * 1024 * 1024,
                   help="largest request body, refused (413) before the form is parsed")
    p.add_argument("--max-pixels", type=int, default=40_000_000, help="largest image decoded, width x height (413 above)")
    p.add_argument("--max-item-images", type=int, default=16, help="most photos per POST /items")
    p.add_argument("--token", help=f"API token every write needs (default: ${TOKEN_ENV}; none: writes disabled)")
    p.add_argument("--protect-reads", action="store_true", help="reads need the token too (page, /health, /docs open)")
    p.add_argument("--allowed-host", action="append",
                   help="Host header name answered (repeatable; default: loopback names when bound to loopback; * for any)")
    p.add_argument("--cors-origin", action="append", help="origin allowed cross-origin requests (repeatable; default none)")
    p.add_argument("--compact-every", type=int, default=0, help="compact the index after this many writes (0: never)")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="onnxruntime and FAISS threads per request (default 1: requests run side by side in the server's "
        "thread pool; more threads per request were 5x slower on a shared 2-core machine)",
    )
    p.add_argument("--log-level", default="warning", help="uvicorn log level")
    p.set_defaults(func=cmd_serve)

    p = verbs.add_parser(
        "reload", help="switch a running server to a new deploy folder beside the served one, keeping its live changes"
    )
    p.add_argument("deployment", help="the new deploy folder (vp-retail deploy --out it beside the served one)")
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the running server (default http://127.0.0.1:8000)")
    p.add_argument("--token", help=f"the server's API token (default: ${TOKEN_ENV})")
    p.set_defaults(func=cmd_reload)

    p = verbs.add_parser("compact", help="fold the journal into a new snapshot, drop tombstones and unused uploads")
    p.add_argument("--index", required=True, help="index directory or deploy folder (no server may have it open)")
    p.add_argument("--reset-journal", action="store_true",
                   help="recovery: set a missing or corrupt journal aside and start an empty one "
                   "(the changes it held since the last snapshot are lost)")
    p.set_defaults(func=cmd_compact)

    p = verbs.add_parser("query", help="search an index (or a running server) with one photo")
    p.add_argument("image", help="the query photo")
    p.add_argument("--index", help="index directory or deploy folder (opened locally)")
    p.add_argument("--url", help="base URL of a running vp-retail serve instead of --index")
    p.add_argument("--model", help="ONNX model (default: the one the index manifest names)")
    p.add_argument("--k", type=int, default=5, help="results (default 5)")
    p.add_argument("--category", help="only this category")
    p.set_defaults(func=cmd_query)
