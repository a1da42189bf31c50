"""The query API end to end in-process: real PNG uploads, a small real CNN (core resnet18 backbone,
random init, no weights), real FAISS and SQLite; bad input answered with the right status and a sentence."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw

from visionpipes.core.errors import UserError
from visionpipes.retail.embedding.embedders import ImageEmbedder
from visionpipes.retail.embedding.network import EmbeddingNet
from visionpipes.retail.index.product_index import ProductIndex
from visionpipes.retail.index.records import ProductRecord
from visionpipes.retail.serve.app import create_app
from visionpipes.retail.serve.settings import APIConfig

TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
COLORS = [(220, 30, 30), (30, 200, 40), (40, 60, 230), (240, 220, 20), (200, 40, 200), (20, 210, 210)]


def product_image(i: int, size: int = 64) -> np.ndarray:
    """A distinct synthetic product photo: colour, shape and position depend on i."""
    img = Image.new("RGB", (size, size), (245, 245, 240) if i % 2 else (30, 30, 30))
    draw = ImageDraw.Draw(img)
    c = COLORS[i % len(COLORS)]
    o = 4 + (i * 7) % 20
    if i % 3 == 0:
        draw.ellipse([o, o, o + 30, o + 30], fill=c)
    elif i % 3 == 1:
        draw.rectangle([o, 8, o + 24, 56], fill=c)
    else:
        draw.polygon([(o, 56), (o + 30, 56), (o + 15, 6)], fill=c)
    return np.asarray(img)


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def embedder() -> ImageEmbedder:
    torch.manual_seed(0)
    return ImageEmbedder(EmbeddingNet("resnet18", dimension=32), image_size=64, model_version="cnn-test-1")


@pytest.fixture
def index_dir(tmp_path, embedder):
    images = [product_image(i) for i in range(18)]
    vectors = embedder(images)
    records = [
        ProductRecord(
            f"sku-{i}", title=f"item {i}", category="even" if i % 2 == 0 else "odd", metadata={"i": i}
        )
        for i in range(18)
    ]
    ProductIndex.build(
        tmp_path / "idx",
        records,
        [v[None] for v in vectors],
        dimension=embedder.dimension,
        factory="HNSW16",
        model_version=embedder.model_version,
    ).close()
    return tmp_path / "idx"


def test_search_add_delete_over_http(index_dir, embedder):
    app = create_app(index_dir, embedder, config=APIConfig(max_upload_bytes=200_000, max_k=50, token=TOKEN))
    with TestClient(app, headers=AUTH) as client:
        health = client.get("/health").json()
        assert health["status"] == "ok" and health["products"] == 18 and health["dimension"] == 32

        r = client.post(
            "/search", params={"k": 5}, files={"image": ("q.png", png(product_image(4)), "image/png")}
        )
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert len(results) == 5 and results[0]["product_id"] == "sku-4"
        assert results[0]["score"] == pytest.approx(1.0, abs=1e-4) and results[0]["metadata"] == {"i": 4}

        r = client.post(
            "/search",
            params={"k": 4, "category": "odd"},
            files={"image": ("q.png", png(product_image(4)), "image/png")},
        )
        assert {h["category"] for h in r.json()["results"]} == {"odd"}

        files = [("images", (f"{i}.png", png(product_image(i)), "image/png")) for i in (1, 7)]
        batch = client.post("/search/batch", params={"k": 3}, files=files).json()["results"]
        assert [row[0]["product_id"] for row in batch] == ["sku-1", "sku-7"]

        new = product_image(40, size=80)
        form = {
            "product_id": "new-1",
            "title": "new thing",
            "category": "odd",
            "metadata": '{"color": "teal"}',
        }
        r = client.post("/items", data=form, files=[("images", ("n.png", png(new), "image/png"))])
        assert r.status_code == 201, r.text
        r = client.post("/search", params={"k": 1}, files={"image": ("q.png", png(new), "image/png")})
        assert r.json()["results"][0]["product_id"] == "new-1"
        item = client.get("/items/new-1").json()
        assert item.pop("image_path").startswith("upload:")
        assert item == {
            "product_id": "new-1",
            "title": "new thing",
            "category": "odd",
            "metadata": {"color": "teal"},
            "views": 1,
        }
        # The uploaded photo is kept and served back, byte for byte.
        r = client.get("/items/new-1/image")
        assert r.status_code == 200 and r.content == png(new)
        assert client.get("/items/new-1/image", params={"view": 1}).status_code == 404
        r = client.post("/items", data=form, files=[("images", ("n.png", png(new), "image/png"))])
        assert r.status_code == 409 and "already exists" in r.json()["detail"]
        r = client.post(
            "/items", data={**form, "replace": "true"}, files=[("images", ("n.png", png(new), "image/png"))]
        )
        assert r.status_code == 201 and r.json()["replaced"] is True

        similar = client.get("/items/sku-3/similar", params={"k": 4}).json()["results"]
        assert len(similar) == 4 and "sku-3" not in [h["product_id"] for h in similar]

        assert client.delete("/items/sku-4").json() == {"deleted": "sku-4"}
        r = client.post(
            "/search", params={"k": 18}, files={"image": ("q.png", png(product_image(4)), "image/png")}
        )
        assert "sku-4" not in [h["product_id"] for h in r.json()["results"]]
        assert client.get("/items/sku-4").status_code == 404
        assert client.delete("/items/sku-4").status_code == 404

        assert client.get("/categories").json() == {"categories": ["even", "odd"]}
        page = client.get("/")
        assert page.status_code == 200 and "Visual product search" in page.text
        assert client.get("/docs").status_code == 200
        paths = client.get("/openapi.json").json()["paths"]
        assert {"/search", "/search/batch", "/items", "/items/{product_id}", "/items/{product_id}/similar"} <= set(paths)

        metrics = client.get("/metrics").text
        assert "retail_index_products 18" in metrics
        assert 'retail_http_requests_total{method="POST",route="/search",status="200"}' in metrics
    # Shut down: every acknowledged change is in the directory.
    with ProductIndex.open(index_dir) as idx:
        assert "new-1" in idx and "sku-4" not in idx and len(idx) == 18


def test_bad_requests_get_clear_errors(index_dir, embedder):
    app = create_app(index_dir, embedder, config=APIConfig(max_upload_bytes=3_000, max_k=20, token=TOKEN))
    good = png(product_image(2))
    with TestClient(app, headers=AUTH) as client:
        r = client.post("/search", files={"image": ("x.txt", b"this is not an image", "text/plain")})
        assert r.status_code == 415 and "not an image of an allowed format" in r.json()["detail"]
        r = client.post("/search", files={"image": ("cut.png", good[: len(good) // 2], "image/png")})
        assert r.status_code == 415
        noisy = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
        r = client.post("/search", files={"image": ("big.png", png(noisy), "image/png")})
        assert r.status_code == 413 and "3000-byte limit" in r.json()["detail"]
        for k in (0, -1, 21):
            r = client.post("/search", params={"k": k}, files={"image": ("q.png", good, "image/png")})
            assert r.status_code == 422 and "k must be between 1 and 20" in r.json()["detail"]
        assert client.get("/items/nope").status_code == 404
        assert client.get("/items/nope/similar").status_code == 404
        r = client.post(
            "/items",
            data={"product_id": "z", "metadata": "[1,2"},
            files=[("images", ("z.png", good, "image/png"))],
        )
        assert r.status_code == 422 and "metadata" in r.json()["detail"]


def test_server_refuses_mismatched_model(index_dir, embedder):
    torch.manual_seed(1)
    other = ImageEmbedder(EmbeddingNet("resnet18", dimension=24), image_size=64, model_version="cnn-test-1")
    with pytest.raises(UserError, match="holds 32-d embeddings but the model produces 24-d"):
        create_app(index_dir, other)
    with pytest.raises(UserError, match="built with model 'cnn-test-1', not 'cnn-test-2'"):
        create_app(index_dir, embedder, model_version="cnn-test-2")


def test_metrics_expose_latency_histograms_per_route_and_apps_do_not_share_them(index_dir, embedder, tmp_path):
    import shutil

    from prometheus_client.parser import text_string_to_metric_families

    shutil.copytree(index_dir, tmp_path / "copy")
    first, second = create_app(index_dir, embedder), create_app(tmp_path / "copy", embedder)
    photo = ("q.png", png(product_image(3)), "image/png")
    with TestClient(first) as a, TestClient(second) as b:
        for _ in range(3):
            assert a.post("/search", params={"k": 3}, files={"image": photo}).status_code == 200
        assert a.get("/health").status_code == 200
        assert b.post("/search", params={"k": 3}, files={"image": photo}).status_code == 200
        text_a, text_b = a.get("/metrics").text, b.get("/metrics").text

    def samples(text: str) -> dict[tuple[str, tuple], float]:
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    sa, sb = samples(text_a), samples(text_b)
    inf_search = ("retail_http_request_seconds_bucket", (("le", "+Inf"), ("route", "/search")))
    assert sa[inf_search] == 3 and sb[inf_search] == 1  # one registry per app
    assert sa[("retail_http_request_seconds_bucket", (("le", "+Inf"), ("route", "/health")))] == 1
    buckets = [v for (name, labels), v in sa.items() if name.endswith("_bucket") and ("route", "/search") in labels]
    assert len(buckets) >= 10 and buckets == sorted(buckets)  # cumulative: p50/p99 come from these
    assert sa[("retail_http_request_seconds_count", (("route", "/search"),))] == 3
    assert sa[("retail_http_request_seconds_sum", (("route", "/search"),))] > 0
    key = ("retail_http_requests_total", (("method", "POST"), ("route", "/search"), ("status", "200")))
    assert sa[key] == 3 and sb[key] == 1
    assert sa[("retail_index_products", ())] == 18
