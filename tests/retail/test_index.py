"""ProductIndex / VectorIndex behaviour on real FAISS indexes: exactness, recall, add/delete, filters."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
from faiss.contrib.evaluation import knn_intersection_measure

from visionpipes.core.errors import UserError
from visionpipes.retail.index.faiss_index import (
    SearchSettings,
    VectorIndex,
    build_faiss_index,
    normalize_vectors,
)
from visionpipes.retail.index.product_index import ProductIndex
from visionpipes.retail.index.records import ProductExistsError, ProductRecord

FACTORIES = ["Flat", "IVF8,Flat", "IVF8,PQ4", "HNSW16"]


def brute_force_products(catalog, queries: np.ndarray, k: int, category: str | None = None):
    """Exact per-product best inner product over all views, by numpy."""
    q = normalize_vectors(queries, dimension=queries.shape[-1])
    best = []
    for rec, vecs in zip(catalog.records, catalog.vectors):
        if category is not None and rec.category != category:
            continue
        v = normalize_vectors(vecs, dimension=vecs.shape[1])
        best.append((rec.product_id, (q @ v.T).max(axis=1)))
    ids = [b[0] for b in best]
    scores = np.stack([b[1] for b in best], axis=1)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return [[ids[j] for j in row] for row in order], np.take_along_axis(scores, order, axis=1)


def test_flat_search_equals_brute_force(tmp_path, catalog):
    idx = ProductIndex.build(
        tmp_path / "idx", catalog.records, catalog.vectors, dimension=16, factory="Flat", model_version="m"
    )
    rng = np.random.default_rng(5)
    queries = rng.standard_normal((25, 16)).astype(np.float32)
    hits = idx.search(queries, k=10)
    want_ids, want_scores = brute_force_products(catalog, queries, 10)
    for row, (got, ids, scores) in enumerate(zip(hits, want_ids, want_scores)):
        assert [h.product_id for h in got] == ids, f"query {row}"
        np.testing.assert_allclose([h.score for h in got], scores, rtol=1e-5, atol=1e-5)
    # Filtered exact search equals the filtered brute force too.
    hits = idx.search(queries, k=7, category="bags")
    want_ids, _ = brute_force_products(catalog, queries, 7, category="bags")
    assert [[h.product_id for h in row] for row in hits] == want_ids
    first = hits[0][0]
    assert first.category == "bags" and first.title.startswith("product ") and "n" in first.metadata
    idx.close()


def test_ivf_and_hnsw_recall_on_clustered_vectors():
    rng = np.random.default_rng(1)
    dim, n = 32, 4000
    centres = rng.standard_normal((40, dim)).astype(np.float32)
    x = normalize_vectors(
        centres[rng.integers(0, 40, n)] + 0.5 * rng.standard_normal((n, dim)), dimension=dim
    )
    q = normalize_vectors(
        centres[rng.integers(0, 40, 100)] + 0.5 * rng.standard_normal((100, dim)), dimension=dim
    )
    ids = np.arange(n, dtype=np.int64) * 3 + 11  # ids are not positions
    truth = ids[np.argsort(-(q @ x.T), axis=1)[:, :10]]
    floors = {"Flat": 0.999, "IVF32,Flat": 0.9, "HNSW16": 0.9, "IVF32,PQ8x4": 0.25}
    for factory, floor in floors.items():
        vi = VectorIndex.create(factory, dim, use_gpu=False, settings=SearchSettings(nprobe=8, ef_search=64))
        vi.train(x)
        vi.add(x, ids)
        _, found = vi.search(q, 10)
        assert knn_intersection_measure(found[:, :10], truth[:, :10]) >= floor, factory


@pytest.mark.parametrize("factory", FACTORIES)
def test_add_and_delete_visible_on_next_query(tmp_path, factory, make_catalog):
    cat = make_catalog(300, 16, seed=2)
    settings = SearchSettings(nprobe=8)
    idx = ProductIndex.build(
        tmp_path / "i",
        cat.records,
        cat.vectors,
        dimension=16,
        factory=factory,
        model_version="m",
        settings=settings,
    )
    target = 17
    q = cat.unit(target)
    assert idx.search(q, k=1)[0][0].product_id == "sku-0017"
    assert idx.delete("sku-0017") and not idx.delete("sku-0017")
    for hits in (idx.search(q, k=50)[0], idx.search(q, k=50, category=cat.records[target].category)[0]):
        assert hits and "sku-0017" not in [h.product_id for h in hits]
    if factory.startswith("HNSW"):
        assert len(idx.vector_index.tombstones) == 2  # two views, still in the graph, never returned
    else:
        assert len(idx.vector_index.tombstones) == 0
    idx.add(ProductRecord("new-1", category="hats"), np.stack([q, -q]))
    hits = idx.search(q, k=3)[0]
    assert hits[0].product_id == "new-1" and hits[0].score == pytest.approx(1.0, abs=0.05)
    with pytest.raises(ProductExistsError):
        idx.add(ProductRecord("new-1"), q[None])
    # replace=True swaps its vectors: the old view no longer matches it.
    idx.add(ProductRecord("new-1", category="hats"), -q[None], replace=True)
    assert idx.search(q, k=1)[0][0].product_id != "new-1"
    assert idx.search(-q, k=1)[0][0].product_id == "new-1"
    assert idx.get("new-1").vector_ids and len(idx) == 300
    idx.close()


def test_hnsw_tombstones_never_returned_and_compacted(tmp_path, make_catalog):
    cat = make_catalog(200, 16, views=1, seed=3)
    idx = ProductIndex.build(
        tmp_path / "h", cat.records, cat.vectors, dimension=16, factory="HNSW8", model_version="m"
    )
    gone = {r.product_id for r in cat.records[::2]}
    idx.delete_many(sorted(gone))
    assert len(idx.vector_index.tombstones) == 100 and idx.vector_index.ntotal == 200
    # Ask for every remaining product: none deleted may come back, every live one should.
    for settings_filter in (True, False):
        idx.vector_index.settings.selector_filter = settings_filter
        hits = idx.search(cat.unit(1), k=100)[0]
        got = {h.product_id for h in hits}
        assert not got & gone
        assert len(got) >= 90  # HNSW is approximate
    idx.vector_index.settings.selector_filter = True
    idx.save()  # 50% tombstones > compact_ratio: the graph is rebuilt without them
    assert len(idx.vector_index.tombstones) == 0 and idx.vector_index.ntotal == 100
    assert idx.manifest.counts["tombstones"] == 0
    assert idx.search(cat.unit(1), k=1)[0][0].product_id == "sku-0001"
    idx.close()


@pytest.mark.parametrize("factory", FACTORIES)
def test_category_filter_only_returns_that_category(tmp_path, factory, catalog):
    idx = ProductIndex.build(
        tmp_path / "c",
        catalog.records,
        catalog.vectors,
        dimension=16,
        factory=factory,
        model_version="m",
        settings=SearchSettings(nprobe=8),
    )
    idx.delete_many(["sku-0001", "sku-0004"])  # tombstones too, for HNSW
    rng = np.random.default_rng(9)
    queries = rng.standard_normal((8, 16)).astype(np.float32)
    for category in ("shoes", "bags", "hats"):
        for hits in idx.search(queries, k=15, category=category):
            assert len(hits) >= 5
            assert {h.category for h in hits} == {category}
            assert not {"sku-0001", "sku-0004"} & {h.product_id for h in hits}
    assert idx.search(queries[:2], k=5, category="no-such-category") == [[], []]
    idx.close()


def test_batch_queries_match_single_queries(tmp_path, catalog):
    idx = ProductIndex.build(
        tmp_path / "b", catalog.records, catalog.vectors, dimension=16, factory="HNSW16", model_version="m"
    )
    queries = np.stack([catalog.unit(i) for i in range(0, 60, 6)])
    batch = idx.search(queries, k=5)
    single = [idx.search(q, k=5)[0] for q in queries]
    assert [[h.product_id for h in r] for r in batch] == [[h.product_id for h in r] for r in single]
    assert [r[0].product_id for r in batch] == [f"sku-{i:04d}" for i in range(0, 60, 6)]
    similar = idx.similar("sku-0000", k=5)
    assert len(similar) == 5 and "sku-0000" not in [h.product_id for h in similar]
    idx.close()


def test_bad_factory_dimension_and_vectors_are_refused(tmp_path, catalog):
    with pytest.raises(UserError, match="not a valid FAISS factory"):
        build_faiss_index("IVFxyz,Flat", 16)
    with pytest.raises(UserError, match="leave out IDMap"):
        build_faiss_index("IDMap2,Flat", 16)
    with pytest.raises(UserError, match="supported are"):
        build_faiss_index("PCA8,Flat", 16)
    with pytest.raises(UserError, match="needs at least 64 vectors to train"):
        ProductIndex.build(
            tmp_path / "x",
            catalog.records[:10],
            catalog.vectors[:10],
            dimension=16,
            factory="IVF64,Flat",
            model_version="m",
        )
    assert not (tmp_path / "x").exists()
    idx = ProductIndex.build(
        tmp_path / "y", catalog.records[:20], catalog.vectors[:20], dimension=16, model_version="m"
    )
    with pytest.raises(UserError, match=r"expected \(n, 16\)"):
        idx.add(ProductRecord("z"), np.ones((1, 8)))
    with pytest.raises(UserError, match="all-zero"):
        idx.add(ProductRecord("z"), np.zeros((1, 16)))
    with pytest.raises(UserError, match="NaN"):
        idx.search(np.full(16, np.nan), k=3)
    with pytest.raises(UserError, match="k must be at least 1"):
        idx.search(np.ones(16), k=0)
    with pytest.raises(UserError, match="not in the index"):
        idx.similar("nope")
    idx.close()


@pytest.mark.skipif(faiss.get_num_gpus() == 0, reason="FAISS sees no GPU here")
@pytest.mark.parametrize("factory", ["Flat", "IVF8,Flat"])
def test_gpu_results_equal_cpu(tmp_path, factory, catalog):
    kw = dict(dimension=16, factory=factory, model_version="m", settings=SearchSettings(nprobe=8))
    cpu = ProductIndex.build(tmp_path / "cpu", catalog.records, catalog.vectors, use_gpu=False, **kw)
    gpu = ProductIndex.build(tmp_path / "gpu", catalog.records, catalog.vectors, use_gpu=True, **kw)
    assert gpu.device.startswith("cuda") and cpu.device == "cpu"
    for idx in (cpu, gpu):
        idx.delete("sku-0003")
    queries = np.stack([catalog.unit(i) for i in range(0, 90, 9)])
    for category in (None, "bags"):
        a, b = cpu.search(queries, k=8, category=category), gpu.search(queries, k=8, category=category)
        assert [[h.product_id for h in r] for r in a] == [[h.product_id for h in r] for r in b]
    gpu.save()
    gpu.close()
    reopened = ProductIndex.open(tmp_path / "gpu", use_gpu=False)
    assert reopened.stats()["products"] == 299
    reopened.close()
    cpu.close()


def test_untrained_ivf_trains_on_first_batch_or_refuses_it(tmp_path, catalog):
    idx = ProductIndex.create(tmp_path / "ivf", dimension=16, factory="IVF32,Flat", model_version="m")
    with pytest.raises(UserError, match="needs at least 32 vectors to train, got 20"):
        idx.add_many(catalog.records[:10], catalog.vectors[:10])
    assert len(idx) == 0 and idx.get("sku-0000") is None  # nothing half-added
    idx.add_many(catalog.records[:40], catalog.vectors[:40])  # 80 views: trains, adds, saves
    assert idx.vector_index.is_trained and idx.manifest.counts["vectors"] == 80
    idx.add(ProductRecord("one-more"), catalog.vectors[50])  # later adds need no training
    idx.close()
    with ProductIndex.open(tmp_path / "ivf", settings=SearchSettings(nprobe=32)) as idx:
        assert idx.search(catalog.unit(3), k=1)[0][0].product_id == "sku-0003" and len(idx) == 41
