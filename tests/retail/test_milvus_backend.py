"""The Milvus backend (`backend: milvus`, embedded milvus-lite in the index folder) behind the same
ProductIndex, HTTP API and CLI as FAISS: the API suite of test_api.py and the kill -9 test of
test_server_durability.py rerun on a Milvus index (their fixtures overridden here), results against
FAISS Flat, restart reconciliation, the deploy/index verbs, and a FAISS-only process never loading pymilvus.

Real pymilvus + milvus-lite (an in-process Milvus server on a loopback port), no mocks."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np
import pytest

pytest.importorskip("pymilvus", reason="the milvus extra (pip install 'visionpipes-retail[milvus]')")



def _sibling(name: str):
    """A sibling test module (pytest runs with --import-mode=importlib: tests/ is no package)."""
    spec = importlib.util.spec_from_file_location(f"_milvus_reuse_{name}", Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_api, _durability = _sibling("test_api"), _sibling("test_server_durability")
embedder = _api.embedder
product_image = _api.product_image
# The same test functions, collected here: they see this module's `index_dir` and `deployed` fixtures.
test_search_add_delete_over_http = _api.test_search_add_delete_over_http
test_acknowledged_adds_survive_kill_9 = pytest.mark.slow(_durability.test_acknowledged_adds_survive_kill_9)  # ~30 s

from visionpipes.retail.index.product_index import ProductIndex  # noqa: E402
from visionpipes.retail.index.records import ProductRecord  # noqa: E402


@pytest.fixture
def index_dir(tmp_path, embedder):
    images = [product_image(i) for i in range(18)]
    vectors = embedder(images)
    records = [
        ProductRecord(f"sku-{i}", title=f"item {i}", category="even" if i % 2 == 0 else "odd", metadata={"i": i})
        for i in range(18)
    ]
    ProductIndex.build(
        tmp_path / "idx", records, [v[None] for v in vectors], dimension=embedder.dimension,
        factory="HNSW", model_version=embedder.model_version, backend="milvus",
    ).close()
    assert json.loads((tmp_path / "idx" / "manifest.json").read_text())["backend"] == "milvus"
    return tmp_path / "idx"


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """test_server_durability's deploy folder, deployed on the Milvus backend (`deploy.backend: milvus`)."""
    import torch

    from visionpipes.retail.embedding.config import EmbeddingConfig
    from visionpipes.retail.embedding.model_folder import save_model
    from visionpipes.retail.embedding.network import EmbeddingNet
    from visionpipes.retail.synth import SynthConfig, write_catalog
    from visionpipes.retail.training.deploy import DeployParams, deploy_model

    root = tmp_path_factory.mktemp("deployed-milvus")
    write_catalog(root / "catalog", SynthConfig(products=12, views=2, queries=1, size=64, seed=5))
    torch.manual_seed(0)
    config = EmbeddingConfig(backbone="resnet18", width_multiplier=0.25, dimension=32, image_size=64, pooling="avg")
    save_model(root / "model", EmbeddingNet.from_config(config).eval(), config, {"training": {"params": {"loss": "none"}}})
    summary = deploy_model(
        root / "model", root / "catalog", root / "deploy", DeployParams(backend="milvus"), progress=False
    )
    assert summary["backend"] == "milvus" and summary["factory"] == "HNSW"
    assert summary["deployed_index"]["recall_at_1"] > 0  # the deployed Milvus index answers queries
    return root


def test_deploy_records_the_backend_and_index_type(deployed):
    index = deployed / "deploy" / "index"
    manifest = json.loads((index / "manifest.json").read_text())
    assert manifest["backend"] == "milvus" and manifest["factory"] == "HNSW"
    assert (index / "milvus.db").is_dir() and manifest["files"]["index"]["path"].endswith("index.milvus.json")
    card = (deployed / "deploy" / "MODEL_CARD.md").read_text()
    assert "Index: Milvus `HNSW` (milvus backend)" in card and "FAISS `HNSW`" not in card
    assert json.loads((deployed / "deploy" / "deploy.json").read_text())["vector_store"] == "milvus-lite"


def _unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    v = rng.standard_normal((n, dim)).astype(np.float32)
    faiss.normalize_L2(v)
    return v


def test_recall_at_10_against_exact_faiss_flat_with_and_without_category(tmp_path):
    n, dim, nq = 8000, 128, 200
    rng = np.random.default_rng(0)
    base, queries = _unit(rng, n, dim), _unit(rng, nq, dim)
    cats = [("a", "b", "c")[i % 3] for i in range(n)]
    records = [ProductRecord(f"p{i}", category=cats[i]) for i in range(n)]
    idx = ProductIndex.build(tmp_path / "m", records, [v[None] for v in base], dimension=dim,
                             factory="HNSW", model_version="m", backend="milvus")
    try:
        exact = faiss.IndexFlatIP(dim)
        exact.add(base)
        _, truth = exact.search(queries, 10)
        got = [[int(h.product_id[1:]) for h in row] for row in idx.search(queries, k=10)]
        recall = np.mean([len(set(g) & set(t)) / 10 for g, t in zip(got, truth)])
        assert recall >= 0.99, recall
        # Category filter inside Milvus: exact top-10 among category "b" only.
        sub = np.flatnonzero(np.array(cats) == "b")
        exact_b = faiss.IndexFlatIP(dim)
        exact_b.add(base[sub])
        _, truth_b = exact_b.search(queries, 10)
        got_b = idx.search(queries, k=10, category="b")
        assert all(h.category == "b" for row in got_b for h in row)
        recall_b = np.mean([len({int(h.product_id[1:]) for h in g} & set(sub[t].tolist())) / 10
                            for g, t in zip(got_b, truth_b)])
        assert recall_b >= 0.99, recall_b
    finally:
        idx.close()


def test_restart_replays_the_journal_into_milvus_and_drops_strays(tmp_path, catalog):
    """A write whose Milvus half was lost (crash between journal and Milvus) is repaired on open; an id
    Milvus holds but the catalog does not (a lost delete) is removed."""
    idx = ProductIndex.build(tmp_path / "i", catalog.records[:100], catalog.vectors[:100], dimension=16,
                             factory="HNSW", model_version="m", backend="milvus")
    added = idx.add(catalog.records[100], catalog.vectors[100])  # journal + Milvus
    idx.delete(catalog.records[0].product_id)
    idx.vector_index.remove(added)  # Milvus loses the add ...
    idx.vector_index.add(catalog.vectors[0][:1], np.array([10_000]), ["shoes"])  # ... and holds a stray id
    assert idx.vector_index.ntotal == 2 * 99 + 1
    idx.close()
    with ProductIndex.open(tmp_path / "i") as idx:
        assert idx.vector_index.ntotal == idx.stats()["vectors"] == 2 * 100
        top = idx.search(catalog.unit(100), k=1)[0][0]
        assert top.product_id == catalog.records[100].product_id and top.score > 0.99
        assert catalog.records[0].product_id not in [h.product_id for h in idx.search(catalog.unit(0), k=5)[0]]
        idx.save()  # the journal folded into a snapshot; Milvus keeps its data
    with ProductIndex.open(tmp_path / "i") as idx:
        assert len(idx) == 100 and idx.stats()["journal_changes"] == 0 and idx.vector_index.ntotal == 200


def test_cli_index_backend_milvus(deployed, tmp_path):
    from visionpipes.retail.cli import main

    npz, out = tmp_path / "e.npz", tmp_path / "idx"
    for argv in (
        ["embed", "--model", str(deployed / "deploy"), "--catalog", str(deployed / "catalog"), "--out", str(npz),
         "--no-progress"],
        ["index", "--embeddings", str(npz), "--catalog", str(deployed / "catalog"), "--out", str(out),
         "--backend", "milvus", "--factory", "IVF_FLAT,nlist=4"],
    ):
        with pytest.raises(SystemExit) as done:
            main(argv)
        assert done.value.code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["backend"] == "milvus" and manifest["factory"] == "IVF_FLAT,nlist=4"
    with ProductIndex.open(out) as idx:
        assert len(idx) == 12 and idx.stats()["device"] == "milvus-lite"


def test_faiss_only_process_never_imports_pymilvus(tmp_path):
    code = (
        "import sys, numpy as np\n"
        "from visionpipes.retail.index.product_index import ProductIndex\n"
        "from visionpipes.retail.index.records import ProductRecord\n"
        f"i = ProductIndex.build(r'{tmp_path / 'f'}', [ProductRecord('a')], [np.eye(4)[:1]], dimension=4,"
        " model_version='m')\n"
        "i.search(np.eye(4)[0]); i.close()\n"
        "assert 'pymilvus' not in sys.modules and 'milvus_lite' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
