"""Retrieval evaluation and batch embedding: embed a catalog (with progress), rank the catalog for each
held-out query photo, and score Recall@K (product level, as the API answers) and mAP (over catalog
images); write `metrics.json`, the recall curve and a PNG of sample queries with their top-5.

Embedders come from `load_embedder` (a trained model folder, an exported ONNX model or a deploy folder);
nothing here trains or exports.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from visionpipes.core.errors import UserError
from visionpipes.core.io import atomic_path, write_json
from visionpipes.retail.catalog import (
    Catalog,
    CatalogProblem,
    QuerySet,
    check_queries_against,
    load_catalog,
    read_queries,
)
from visionpipes.retail.embedding import Embedder

RECALL_KS = (1, 5, 10)


def load_embedder(path: str | os.PathLike, *, threads: int | None = None) -> Any:
    """An embedder for `path`: a deploy folder or `.onnx` file (onnxruntime), or a trained model
    folder holding `model.pt` (torch). The image size comes from the `model.json` beside the model.

    Raises:
        UserError: if `path` is none of these, or its files are unreadable.
    """
    from visionpipes.retail.embedding import MODEL_CONFIG, ImageEmbedder, OnnxEmbedder, load_model

    path = Path(path)
    onnx = path if path.suffix == ".onnx" else path / "model.onnx"
    meta_path = onnx.parent / MODEL_CONFIG
    if onnx.is_file():
        if not meta_path.is_file():
            raise UserError(f"ONNX model {onnx} has no {MODEL_CONFIG} beside it giving its image size.")
        try:
            meta = json.loads(meta_path.read_text())
            size = int(meta["config"]["image_size"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise UserError(f"model description {meta_path} is unreadable ({err!r}).") from None
        return OnnxEmbedder(onnx, image_size=size, model_version=meta.get("version"), threads=threads)
    if (path / "model.pt").is_file():
        model, config, meta = load_model(path)
        return ImageEmbedder(model, image_size=config.image_size, model_version=meta["version"], batch_size=64)
    raise UserError(f"model {path} is neither an .onnx file nor a folder holding model.onnx or model.pt.")


@dataclass
class EmbeddedImages:
    """Embeddings of a list of images, the images that could not be read left out."""

    vectors: np.ndarray
    labels: list[str]
    relpaths: list[str]
    problems: list[CatalogProblem] = field(default_factory=list)
    seconds: float = 0.0


def embed_images(
    embedder: Embedder,
    items: Sequence[tuple[Path, str, str, int]],
    *,
    source: str,
    batch_size: int = 64,
    progress: bool = True,
    what: str = "images",
) -> EmbeddedImages:
    """Embed (path, label, relpath, row) items in batches, printing progress to stderr; unreadable
    images are reported with their row and left out."""
    from tqdm import tqdm

    from visionpipes.retail.train import read_view

    size = int(getattr(embedder, "image_size", 0)) or None
    vectors, labels, relpaths, problems = [], [], [], []
    start = time.perf_counter()
    bar = tqdm(total=len(items), desc=f"embedding {what}", unit="img", disable=not progress, file=sys.stderr)
    for lo in range(0, len(items), batch_size):
        chunk = items[lo : lo + batch_size]
        images = []
        for path, label, rel, row in chunk:
            try:
                images.append(read_view(path, size) if size else _read(path))
            except UserError as err:
                problems.append(CatalogProblem(source, row, str(err)))
                continue
            labels.append(label)
            relpaths.append(rel)
        if images:
            vectors.append(np.asarray(embedder(images), dtype=np.float32))
        bar.update(len(chunk))
    bar.close()
    dim = vectors[0].shape[1] if vectors else 0
    return EmbeddedImages(
        np.concatenate(vectors) if vectors else np.zeros((0, dim), np.float32),
        labels,
        relpaths,
        problems,
        time.perf_counter() - start,
    )


def _read(path: Path) -> np.ndarray:
    from visionpipes.core.image import read_image

    return read_image(path)


def embed_catalog(embedder: Embedder, catalog: Catalog, *, progress: bool = True, batch_size: int = 64) -> EmbeddedImages:
    """Embed every view of a catalog (see `embed_images`)."""
    items = [(v.path, pid, v.relpath, v.row) for pid, v in catalog.views()]
    return embed_images(
        embedder, items, source=catalog.source, batch_size=batch_size, progress=progress, what="catalog"
    )


def embed_queries(embedder: Embedder, queries: QuerySet, *, progress: bool = True) -> EmbeddedImages:
    """Embed every query photo (see `embed_images`)."""
    items = [(q.path, q.product_id, q.relpath, q.row) for q in queries.queries]
    return embed_images(embedder, items, source=str(queries.root / "queries.csv"), progress=progress, what="queries")


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


def plot_recall_curve(curve: Sequence[tuple[int, float]], path: Path, *, title: str) -> None:
    """Recall@K against K, as a PNG (written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=100)
    ks, rs = zip(*curve)
    ax.plot(ks, rs, marker="o", ms=3)
    ax.set_xlabel("K (products returned)")
    ax.set_ylabel("Recall@K")
    ax.set_ylim(0, 1.02)
    ax.set_xlim(1, max(ks))
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def plot_sample_queries(
    query_paths: Sequence[Path],
    query_labels: Sequence[str],
    tops: Sequence[Sequence[tuple[str, float, int]]],
    gallery_paths: Sequence[Path],
    path: Path,
    *,
    rows: int = 8,
    thumb: int = 96,
    seed: int = 0,
) -> None:
    """A PNG grid: each row a query photo then its top-5 products (their best-matching catalog image),
    framed green when the product is the query's, red otherwise, with the cosine score."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    picks = sorted(rng.choice(len(query_paths), min(rows, len(query_paths)), replace=False).tolist())
    pad, label_h = 4, 14
    width = 6 * (thumb + pad) + pad + 8
    canvas = Image.new("RGB", (width, len(picks) * (thumb + label_h + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)

    def tile(p: Path) -> Image.Image:
        with Image.open(p) as im:
            return im.convert("RGB").resize((thumb, thumb), Image.BILINEAR)

    for r, qi in enumerate(picks):
        y = pad + r * (thumb + label_h + pad)
        canvas.paste(tile(query_paths[qi]), (pad, y))
        draw.text((pad, y + thumb), f"query {query_labels[qi]}", fill=(0, 0, 0))
        for c, (pid, score, gi) in enumerate(tops[qi][:5]):
            x = pad + 8 + (c + 1) * (thumb + pad)
            ok = pid == query_labels[qi]
            colour = (30, 160, 60) if ok else (210, 40, 40)
            draw.rectangle([x - 2, y - 2, x + thumb + 1, y + thumb + 1], outline=colour, width=3)
            canvas.paste(tile(gallery_paths[gi]), (x, y))
            draw.text((x, y + thumb), f"{pid} {score:.2f}", fill=colour)
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")


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
