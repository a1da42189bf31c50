"""The API's guards, in-process (FastAPI test client; a real server where the network is the point):
the token on writes (and reads with protect_reads), the Host allow-list, CORS, the body and pixel
budgets, the format allow-list, the id grammar, metadata limits, and /docs served without a CDN."""

from __future__ import annotations

import io
import json
import re

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from tests.retail import test_api as _api
from visionpipes.retail.serve.app import create_app
from visionpipes.retail.serve.settings import APIConfig

TOKEN, png, product_image = _api.TOKEN, _api.png, _api.product_image
embedder, index_dir = _api.embedder, _api.index_dir  # the fixtures of test_api
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _encoded(arr: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def _add(client: TestClient, pid: str, *, headers: dict | None = None, metadata: str = "{}", n: int = 1, photo=None):
    photo = photo if photo is not None else png(product_image(50))
    files = [("images", (f"{i}.png", photo, "image/png")) for i in range(n)]
    return client.post("/items", data={"product_id": pid, "metadata": metadata}, files=files, headers=headers or {})


def test_writes_need_the_token_reads_are_open_unless_protected(index_dir, embedder):
    photo = ("q.png", png(product_image(3)), "image/png")
    with TestClient(create_app(index_dir, embedder)) as client:  # no token: writes disabled
        assert _add(client, "w-1").status_code == 403
        assert client.delete("/items/sku-1").status_code == 403
        assert client.post("/search", files={"image": photo}).status_code == 200
    with TestClient(create_app(index_dir, embedder, config=APIConfig(token=TOKEN))) as client:
        r = _add(client, "w-1")
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert _add(client, "w-1", headers={"Authorization": "Bearer " + TOKEN[:-1] + "x"}).status_code == 401
        assert client.delete("/items/sku-1").status_code == 401
        assert client.post("/admin/compact").status_code == 401
        assert _add(client, "w-1", headers=AUTH).status_code == 201
        assert _add(client, "w-2", headers={"X-API-Token": TOKEN}).status_code == 201
        assert client.delete("/items/sku-1", headers=AUTH).status_code == 200
        assert client.get("/items/w-1").status_code == 200  # reads open
    config = APIConfig(token=TOKEN, protect_reads=True)
    with TestClient(create_app(index_dir, embedder, config=config)) as client:
        assert client.post("/search", files={"image": photo}).status_code == 401
        assert client.get("/items/w-1").status_code == 401 and client.get("/metrics").status_code == 401
        assert client.post("/search", files={"image": photo}, headers=AUTH).status_code == 200
        for open_path in ("/", "/health", "/docs"):  # the page, liveness and docs stay open
            assert client.get(open_path).status_code == 200, open_path


def test_host_allow_list_and_cors(index_dir, embedder):
    config = APIConfig(allowed_hosts=["127.0.0.1", "localhost"])
    with TestClient(create_app(index_dir, embedder, config=config), base_url="http://127.0.0.1:8000") as client:
        assert client.get("/health").status_code == 200
        r = client.get("/health", headers={"Host": "rebind.attacker.example:8000"})
        assert r.status_code == 400 and "not allowed" in r.json()["detail"]
        # No CORS by default: a cross-origin page gets no allow-origin header.
        r = client.get("/categories", headers={"Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in r.headers
    config = APIConfig(cors_origins=["http://shop.example"])
    with TestClient(create_app(index_dir, embedder, config=config)) as client:
        r = client.get("/categories", headers={"Origin": "http://shop.example"})
        assert r.headers["access-control-allow-origin"] == "http://shop.example"
        r = client.get("/categories", headers={"Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in r.headers


def test_body_budget_is_enforced_before_the_form_is_parsed(index_dir, embedder):
    config = APIConfig(token=TOKEN, max_body_bytes=20_000, max_upload_bytes=10_000_000)
    big = _encoded(np.random.default_rng(0).integers(0, 255, (120, 120, 3), dtype=np.uint8), "PNG")
    assert len(big) > 20_000
    with TestClient(create_app(index_dir, embedder, config=config), headers=AUTH) as client:
        r = client.post("/search", files={"image": ("big.png", big, "image/png")})
        assert r.status_code == 413 and "20000-byte limit" in r.json()["detail"]

        def chunks():  # no Content-Length: the bytes are counted as they stream
            yield b"--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"x.png\"\r\n\r\n"
            for _ in range(40):
                yield b"\0" * 1000

        r = client.post("/search", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=b"})
        assert r.status_code == 413, r.text


def test_pixel_budget_formats_and_images_per_item(index_dir, embedder):
    config = APIConfig(token=TOKEN, max_pixels=100 * 100, max_item_images=2)
    with TestClient(create_app(index_dir, embedder, config=config), headers=AUTH) as client:
        large = png(np.full((200, 150, 3), 90, dtype=np.uint8))
        r = client.post("/search", files={"image": ("l.png", large, "image/png")})
        assert r.status_code == 413 and "30,000 pixels, over the limit of 10,000" in r.json()["detail"]
        for fmt in ("GIF", "BMP", "TIFF"):
            data = _encoded(product_image(3), fmt)
            r = client.post("/search", files={"image": (f"q.{fmt.lower()}", data, "application/octet-stream")})
            assert r.status_code == 415 and "not an image of an allowed format (JPEG, PNG, WEBP)" in r.json()["detail"], fmt
        for fmt in ("JPEG", "WEBP", "PNG"):
            r = client.post("/search", files={"image": ("q", _encoded(product_image(3), fmt), "image/x")})
            assert r.status_code == 200, (fmt, r.text)
        r = _add(client, "three", n=3)
        assert r.status_code == 422 and "at most 2 images per product" in r.json()["detail"]
        assert _add(client, "two", n=2).status_code == 201


def test_id_grammar_and_metadata_limits(index_dir, embedder):
    with TestClient(create_app(index_dir, embedder, config=APIConfig(token=TOKEN)), headers=AUTH) as client:
        assert _add(client, "").status_code == 422  # FastAPI's own: the field is missing
        for bad in ("a/b", "x" * 129, "bell\x07", ".hidden", "sp ace", "caf\u00e9"):
            r = _add(client, bad)
            assert r.status_code == 422 and "not valid" in r.json()["detail"], repr(bad)
        assert _add(client, "Ok_id-1.v2").status_code == 201 and _add(client, "x" * 128).status_code == 201
        assert client.get("/items/" + "y" * 129).status_code == 422
        assert client.delete("/items/" + "y" * 129).status_code == 422
        assert client.get("/items/a%01b").status_code == 422
        deep = "[" * 100_000 + "]" * 100_000  # 500 (RecursionError) before
        for meta, words in (
            (json.dumps({"a": deep}), "bytes"),
            ('{"a":' * 20 + "1" + "}" * 20, "nested 20 levels"),
            (json.dumps({"k": "v" * 20_000}), "bytes"),
            ("[1, 2]", "JSON object"),
        ):
            r = _add(client, "meta-bad", metadata=meta)
            assert r.status_code == 422 and words in r.json()["detail"], (meta[:30], r.text[:200])
        assert _add(client, "meta-ok", metadata='{"a": {"b": [1, {"c": "]"}]}}').status_code == 201


def test_docs_work_offline(index_dir, embedder):
    with TestClient(create_app(index_dir, embedder)) as client:
        r = client.get("/docs")
        assert r.status_code == 200
        urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", r.text) + re.findall(r"url: ?['\"]([^'\"]+)['\"]", r.text)
        assert urls and all(u.startswith("/") and not u.startswith("//") for u in urls), urls
        assert "http" not in r.text.replace("http-equiv", "")
        for u in urls:
            assert client.get(u).status_code == 200, u
        assert client.get("/openapi.json").json()["paths"]["/search"]
