"""Retrieval evaluation: rank the catalog for each held-out query photo and score product-level
Recall@K (as the API answers) and mAP (over catalog images); write `metrics.json`, the recall curve
and a PNG of sample queries with their top-5.

Embedders come from `embedding.embedders.load_embedder` (a trained model folder, an exported ONNX
model or a deploy folder); nothing here trains or exports.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from visionpipes.core.errors import UserError
from visionpipes.core.io import write_json
from visionpipes.retail.catalog import check_queries_against, load_catalog, read_queries
from visionpipes.retail.embedding.batch import embed_catalog, embed_queries
from visionpipes.retail.embedding.embedders import load_embedder
from visionpipes.retail.training.plots import plot_recall_curve, plot_sample_queries

RECALL_KS = (1, 5, 10)


@dataclass
class RetrievalResult:
    """Scores of a query set against a catalog, and every query's top products."""

    metrics: dict[str, float]
    recall_curve: list[tuple[int, float]]
    top_products: list[list[tuple[str, float, int]]]  # per query: (product_id, score, gallery index)


def score_retrieval(
    queries: np.ndarray,
    query_labels: Sequence[str],
    gallery: np.ndarray,
    gallery_labels: Sequence[str],
    *,
    max_k: int = 20,
    chunk: int = 1024,
) -> RetrievalResult:
    """Recall@K and mAP of cosine retrieval.

    Recall@K: share of queries whose product is among the K best *products* (a product scores with
    its best view, as `ProductIndex.search` answers). mAP: mean over queries of the average precision
    of the full ranking of catalog *images*, every view of the query's product being relevant.

    Written here rather than taken from `faiss.contrib.evaluation`: FAISS's helpers
    (`knn_intersection_measure`, the range/knn result comparisons) measure how well an approximate
    search reproduces the exact one over *vector ids*; they have no notion of labels, so none
    computes product-level Recall@K (a query hits if any view of its product ranks within K
    products) or label-relevance mAP. The index's recall against exact search does come from
    FAISS (see `benchmarks/retail_index.py`).

    Raises:
        UserError: if either side is empty.
    """
    if len(queries) == 0 or len(gallery) == 0:
        raise UserError("retrieval needs at least one query and one catalog image.")
    products = sorted(set(gallery_labels))
    code = {p: i for i, p in enumerate(products)}
    g_code = np.array([code[p] for p in gallery_labels])
    q_code = np.array([code.get(p, -1) for p in query_labels])
    curve_k = min(max_k, len(products))
    hits_at = np.zeros(curve_k, dtype=np.int64)
    aps = []
    tops: list[list[tuple[str, float, int]]] = []
    for lo in range(0, len(queries), chunk):
        sims = queries[lo : lo + chunk] @ gallery.T
        for row, qc in zip(sims, q_code[lo : lo + chunk]):
            order = np.argsort(-row, kind="stable")
            # Product ranking: first occurrence of each product along the image ranking.
            _, first = np.unique(g_code[order], return_index=True)
            ranked = order[np.sort(first)]
            prod_rank = g_code[ranked]
            tops.append([(products[g_code[i]], float(row[i]), int(i)) for i in ranked[:10]])
            where = np.flatnonzero(prod_rank == qc)
            if len(where) and where[0] < curve_k:
                hits_at[where[0] :] += 1
            relevant = g_code[order] == qc
            n_rel = relevant.sum()
            if n_rel:
                ranks = np.flatnonzero(relevant) + 1
                aps.append(float(np.mean(np.arange(1, n_rel + 1) / ranks)))
            else:
                aps.append(0.0)
    n = len(queries)
    curve = [(k + 1, float(hits_at[k] / n)) for k in range(curve_k)]
    metrics = {f"recall_at_{k}": float(hits_at[min(k, curve_k) - 1] / n) for k in RECALL_KS}
    metrics["mAP"] = float(np.mean(aps))
    metrics["queries"] = float(n)
    metrics["catalog_images"] = float(len(gallery))
    metrics["products"] = float(len(products))
    return RetrievalResult(metrics, curve, tops)


def evaluate_model(
    model: str | os.PathLike,
    catalog_path: str | os.PathLike,
    queries_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    progress: bool = True,
    threads: int | None = None,
) -> dict[str, Any]:
    """Embed catalog and queries with `model`, score retrieval, write `metrics.json`, `recall.json`
    (the curve, for `dvc plots`) and `plots/recall_curve.png`, `plots/sample_queries.png` in `out_dir`.

    Returns:
        The metrics (Recall@1/5/10, mAP, counts) with the skipped rows.

    Raises:
        UserError: on a bad model, catalog or query file.
    """
    embedder = load_embedder(model, threads=threads)
    catalog = load_catalog(catalog_path)
    queries = read_queries(queries_path)
    unknown = check_queries_against(queries, catalog)
    gallery = embed_catalog(embedder, catalog, progress=progress)
    qs = embed_queries(embedder, queries, progress=progress)
    result = score_retrieval(qs.vectors, qs.labels, gallery.vectors, gallery.labels)
    out = Path(out_dir)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    skipped = [str(p) for p in (*catalog.problems, *gallery.problems, *queries.problems, *qs.problems, *unknown)]
    metrics = {k: round(v, 5) if isinstance(v, float) else v for k, v in result.metrics.items()}
    metrics["embed_images_per_second"] = round(
        (len(gallery.labels) + len(qs.labels)) / max(gallery.seconds + qs.seconds, 1e-9), 1
    )
    write_json(out / "metrics.json", metrics)
    write_json(out / "recall.json", {"recall": [{"k": k, "recall": round(r, 5)} for k, r in result.recall_curve]})
    if skipped:
        write_json(out / "skipped.json", {"skipped_rows": skipped})
    plot_recall_curve(
        result.recall_curve,
        out / "plots" / "recall_curve.png",
        title=f"{len(qs.labels)} held-out queries, {int(result.metrics['products'])} products: "
        f"R@1 {result.metrics['recall_at_1']:.3f}, mAP {result.metrics['mAP']:.3f}",
    )
    root = Path(catalog.root)
    query_root = Path(queries.root)
    plot_sample_queries(
        [query_root / r for r in qs.relpaths],
        qs.labels,
        result.top_products,
        [root / r for r in gallery.relpaths],
        out / "plots" / "sample_queries.png",
    )
    for line in skipped:
        print(f"skipped {line}", file=sys.stderr)
    return {**metrics, "skipped_rows": skipped}
