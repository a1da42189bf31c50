"""Deployment of a trained embedding model: ONNX export with the parity check, batch embedding of the
catalog with that ONNX model, the FAISS index + SQLite catalog + manifest that `vp-retail serve` loads,
a check of the deployed index on the held-out queries, and a model card.

The deploy folder (written beside its target and renamed into place, so never half-written)::

    model.onnx      the embedding model (input `image` (n, 3, S, S), output `embedding` (n, dimension))
    model.json      its configuration, version (sha256 of model.onnx) and parity-check result
    index/          the `ProductIndex` directory; its manifest names ../model.onnx and the catalog root
    deploy.json     counts, timings and the deployed index's Recall@K on the held-out queries
    MODEL_CARD.md   what the model is, how it was trained and measured, and its limits

It trains nothing and serves nothing.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from visionpipes.core.errors import UserError
from visionpipes.core.io import atomic_path, dataclass_from_params
from visionpipes.retail.catalog import Catalog, load_catalog, read_queries
from visionpipes.retail.embedding import (
    MODEL_CONFIG,
    EmbeddingConfig,
    OnnxEmbedder,
    file_version,
    load_model,
    normalize_batch,
)
from visionpipes.retail.evaluate import embed_catalog, embed_queries
from visionpipes.retail.index import ProductIndex, SearchSettings
from visionpipes.retail.store import ProductRecord

MODEL_ONNX = "model.onnx"
INDEX_DIR = "index"


@dataclass
class DeployParams:
    """The `deploy` section of `params.yaml`.

    Attributes:
        factory: FAISS `index_factory` string ('Flat', 'IVF64,Flat', 'IVF64,PQ16', 'HNSW32', ...).
        nprobe: IVF lists searched per query.
        ef_search: HNSW candidate-list size.
        parity_atol: absolute tolerance of the ONNX parity check (plus the same relative tolerance).
        batch_size: images per ONNX run when embedding the catalog.
        check_queries: search the deployed index with the catalog's queries.csv, if it has one.
    """

    factory: str = "Flat"
    nprobe: int = 16
    ef_search: int = 64
    parity_atol: float = 1e-4
    batch_size: int = 64
    check_queries: bool = True

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "deploy params") -> DeployParams:
        """Raises: UserError on an unknown key."""
        return dataclass_from_params(cls, data, source=source)

    def search_settings(self) -> SearchSettings:
        return SearchSettings(nprobe=self.nprobe, ef_search=self.ef_search)


def export_model(model: torch.nn.Module, config: EmbeddingConfig, sample: np.ndarray, path: Path, *, atol: float) -> Any:
    """Export `model` to ONNX (dynamic batch) and check it against the eager model on `sample`
    ((n, S, S, 3) uint8 catalog images). Returns the `ExportReport`.

    Raises:
        UserError: if the ONNX model's embeddings differ beyond tolerance (nothing is written).
    """
    from visionpipes.core.export import ExportParityError, export_onnx

    x = torch.from_numpy(normalize_batch(sample))
    try:
        return export_onnx(
            model,
            x,
            path,
            input_names=["image"],
            output_names=["embedding"],
            dynamic_axes={"image": {0: "batch"}, "embedding": {0: "batch"}},
            atol=atol,
            rtol=atol,
        )
    except ExportParityError as err:
        raise UserError(f"ONNX export of the {config.backbone} embedding model failed its parity check: {err}") from None


def catalog_records(catalog: Catalog, labels: list[str], relpaths: list[str], vectors: np.ndarray) -> tuple[
    list[ProductRecord], list[np.ndarray]
]:
    """Group embedded views by product (catalog order) into index records and per-product vectors."""
    rows: dict[str, list[int]] = {}
    for i, pid in enumerate(labels):
        rows.setdefault(pid, []).append(i)
    records, grouped = [], []
    for pid, product in catalog.products.items():
        idx = rows.get(pid)
        if not idx:
            continue
        records.append(
            ProductRecord(
                pid,
                title=product.title,
                category=product.category,
                metadata=dict(product.metadata),
                image_paths=[relpaths[i] for i in idx],
            )
        )
        grouped.append(vectors[idx])
    return records, grouped


def deploy_model(
    model_dir: str | os.PathLike,
    catalog_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    params: DeployParams,
    *,
    eval_metrics: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Export, embed the catalog with the ONNX model, build the index and write the deploy folder.

    Args:
        model_dir: a trained model folder (`vp-retail train`).
        catalog_path: the catalog to index.
        out_dir: the deploy folder to write (replaced if it exists).
        params: index and export settings.
        eval_metrics: the `metrics.json` of `vp-retail evaluate`, quoted in the model card.
        progress: show the embedding progress bar.

    Returns:
        The deploy summary (also written to `deploy.json`).

    Raises:
        UserError: on a bad model, catalog, factory string, or a failed parity check.
    """
    from visionpipes.retail.train import read_view

    start = time.perf_counter()
    model, config, meta = load_model(model_dir)
    catalog = load_catalog(catalog_path)
    out = Path(out_dir)
    if out.parent and not out.parent.is_dir():
        raise UserError(f"folder {out.parent} for the deploy output does not exist.")
    # Fail on a bad factory string, or one the catalog is too small to train, before the long work.
    from visionpipes.retail.index import build_faiss_index, min_training_vectors

    need = min_training_vectors(build_faiss_index(params.factory, config.dimension)[0])
    if need > catalog.num_views:
        raise UserError(
            f"index factory {params.factory!r} needs at least {need} vectors to train, the catalog has "
            f"{catalog.num_views} images: use a smaller IVF/PQ setting or 'Flat'."
        )
    sample_views = [v.path for _, v in catalog.views()[:8]]
    sample = np.stack([read_view(p, config.image_size) for p in sample_views])
    final_index = (out / INDEX_DIR).resolve()
    with atomic_path(out, is_dir=True) as tmp:
        t0 = time.perf_counter()
        report = export_model(model, config, sample, tmp / MODEL_ONNX, atol=params.parity_atol)
        export_seconds = time.perf_counter() - t0
        version = file_version(tmp / MODEL_ONNX)
        model_json = {
            "config": asdict(config),
            "version": version,
            "format": "onnx",
            "input": {"name": "image", "shape": ["batch", 3, config.image_size, config.image_size],
                      "preprocessing": "RGB, bilinear resize to image_size x image_size, /255, ImageNet mean/std"},
            "output": {"name": "embedding", "shape": ["batch", config.dimension], "normalised": "L2"},
            "parity": {"max_abs_diff": report.max_abs_diff, "max_rel_diff": report.max_rel_diff,
                       "atol": report.atol, "rtol": report.rtol, "exporter": report.exporter, "opset": report.opset},
            "trained_model_version": meta.get("version"),
            "training": meta.get("training", {}),
        }
        (tmp / MODEL_CONFIG).write_text(json.dumps(model_json, indent=2) + "\n")
        embedder = OnnxEmbedder(tmp / MODEL_ONNX, image_size=config.image_size, model_version=version,
                                batch_size=params.batch_size)
        embedded = embed_catalog(embedder, catalog, progress=progress, batch_size=params.batch_size)
        records, vectors = catalog_records(catalog, embedded.labels, embedded.relpaths, embedded.vectors)
        if not records:
            raise UserError(f"catalog {catalog.source} has no readable image to index.")
        extra = {
            "model": f"../{MODEL_ONNX}",
            "model_config": f"../{MODEL_CONFIG}",
            "image_size": config.image_size,
            "catalog_root": os.path.relpath(Path(catalog.root).resolve(), final_index),
            "catalog_root_absolute": str(Path(catalog.root).resolve()),
        }
        t0 = time.perf_counter()
        index = ProductIndex.build(
            tmp / INDEX_DIR,
            records,
            vectors,
            dimension=config.dimension,
            factory=params.factory,
            model_version=version,
            settings=params.search_settings(),
            extra=extra,
        )
        index_seconds = time.perf_counter() - t0
        check: dict[str, Any] = {}
        queries_csv = Path(catalog.root) / "queries.csv"
        if params.check_queries and queries_csv.is_file():
            check = _check_deployed(index, embedder, queries_csv, progress=progress)
        stats = index.stats()
        index.close()
        skipped = [str(p) for p in (*catalog.problems, *embedded.problems)]
        summary = {
            "products": stats["products"],
            "vectors": stats["vectors"],
            "factory": params.factory,
            "dimension": config.dimension,
            "model_version": version,
            "parity_max_abs_diff": report.max_abs_diff,
            "export_seconds": round(export_seconds, 2),
            "embed_seconds": round(embedded.seconds, 2),
            "embed_images_per_second": round(len(embedded.labels) / max(embedded.seconds, 1e-9), 1),
            "index_seconds": round(index_seconds, 2),
            "deployed_index": check,
            "skipped_rows": skipped,
        }
        metrics = _read_metrics(eval_metrics)
        (tmp / "MODEL_CARD.md").write_text(model_card(config, model_json, summary, metrics, params))
        summary["seconds"] = round(time.perf_counter() - start, 2)
        (tmp / "deploy.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _check_deployed(index: ProductIndex, embedder: OnnxEmbedder, queries_csv: Path, *, progress: bool) -> dict[str, Any]:
    """Recall@1/5/10 of the deployed index (the search path the API uses) on the held-out queries."""
    queries = read_queries(queries_csv)
    embedded = embed_queries(embedder, queries, progress=progress)
    if not len(embedded.labels):
        return {}
    hits = index.search(embedded.vectors, k=10)
    found = [[h.product_id for h in row] for row in hits]
    out = {
        f"recall_at_{k}": round(float(np.mean([t in f[:k] for t, f in zip(embedded.labels, found)])), 5)
        for k in (1, 5, 10)
    }
    out["queries"] = len(embedded.labels)
    return out


def _read_metrics(path: str | os.PathLike | None) -> dict[str, Any]:
    if path is None:
        return {}
    p = Path(path)
    if not p.is_file():
        raise UserError(f"evaluation metrics {p} do not exist (run vp-retail evaluate first).")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"evaluation metrics {p} are not valid JSON ({err}).") from None


def model_card(
    config: EmbeddingConfig,
    model_json: dict[str, Any],
    summary: dict[str, Any],
    metrics: dict[str, Any],
    params: DeployParams,
) -> str:
    """The model card (Markdown): model, training, evaluation, deployment, intended use and limits."""
    training = model_json.get("training", {})
    tparams = training.get("params", {})

    def fmt(v: Any) -> str:
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    lines = [
        "# Model card: visionpipes retail product embedding",
        "",
        "## Model",
        f"- Architecture: core `{config.backbone}` backbone (width x{config.width_multiplier:g}), "
        f"{config.pooling} pooling, linear projection to {config.dimension}-d, L2-normalised.",
        f"- Input: RGB {config.image_size}x{config.image_size}, bilinear resize, ImageNet mean/std.",
        f"- File: `model.onnx` ({model_json['parity']['exporter']}, opset {model_json['parity']['opset']}), "
        f"version `{model_json['version']}`.",
        f"- Export parity vs eager PyTorch on catalog images: max abs diff "
        f"{model_json['parity']['max_abs_diff']:.2e} (tolerance {params.parity_atol:g} + {params.parity_atol:g} x scale).",
        "",
        "## Training",
        f"- Loss: `{tparams.get('loss', '?')}`; {tparams.get('epochs', '?')} epochs, batches of "
        f"{tparams.get('products_per_batch', '?')} products x {tparams.get('views_per_product', '?')} views, "
        f"augmentation `{tparams.get('augment', '?')}`, seed {tparams.get('seed', '?')}.",
        f"- Pretrained backbone: {tparams.get('pretrained') or 'none (random initialisation)'}.",
        f"- Data: {training.get('products', '?')} products, {training.get('train_views', '?')} training views, "
        f"{training.get('val_views', '?')} held-out validation views; {training.get('seconds', '?')} s.",
        f"- Final training metrics: {', '.join(f'{k} {fmt(v)}' for k, v in training.get('metrics', {}).items()) or 'n/a'}.",
        "",
        "## Evaluation (held-out query photos, `vp-retail evaluate`)",
    ]
    if metrics:
        for key in ("recall_at_1", "recall_at_5", "recall_at_10", "mAP", "queries", "products"):
            if key in metrics:
                lines.append(f"- {key}: {fmt(metrics[key])}")
    else:
        lines.append("- not given to this deploy run.")
    check = summary.get("deployed_index") or {}
    lines += [
        "",
        "## Deployment",
        f"- Index: FAISS `{params.factory}` (inner product on L2-normalised vectors), {summary['products']} products, "
        f"{summary['vectors']} view vectors; SQLite catalog; manifest with sha256 checksums.",
        f"- Catalog embedded with the ONNX model at {summary['embed_images_per_second']} images/s.",
    ]
    if check:
        lines.append(
            "- Deployed index on the held-out queries: "
            + ", ".join(f"{k} {fmt(v)}" for k, v in check.items())
            + "."
        )
    lines += [
        "",
        "## Intended use and limits",
        "- Visual search within the catalog it was trained on: a shopper's photo in, similar products out.",
        "- Trained from scratch on the given catalog only; products unlike the training products (new kinds",
        "  of object, styles, photo conditions) are embedded less reliably. Retrain, or seed the backbone",
        "  from a local pretrained checkpoint, when the catalog changes substantially.",
        "- Scores are cosine similarities, comparable within one model version only.",
        "- The default data is synthetic (`vp-retail synth`); its numbers say nothing about real photos.",
        "",
    ]
    return "\n".join(lines)
