"""The model card of a retail deploy folder (`MODEL_CARD.md`), rendered by `core.artifact.ModelCard`:
model, training, evaluation, deployment, intended use and limits.

Text only; it reads nothing from disk.
"""

from __future__ import annotations

from typing import Any

from visionpipes.core.artifact import ModelCard
from visionpipes.retail.embedding.config import EmbeddingConfig


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def model_card(
    config: EmbeddingConfig,
    record: dict[str, Any],
    summary: dict[str, Any],
    metrics: dict[str, Any],
    *,
    factory: str,
    parity_atol: float,
) -> ModelCard:
    """The card of a deploy folder.

    Args:
        config: the model's architecture.
        record: the deploy folder's `model.json` record (parity, version, training summary).
        summary: the deploy summary (counts, speeds, the deployed index's recall).
        metrics: `vp-retail evaluate`'s metrics (empty when not given).
        factory: the FAISS factory string of the index.
        parity_atol: the export parity tolerance.
    """
    training = record.get("training", {})
    tparams = training.get("params", {})
    parity = record["parity"]
    card = ModelCard("Model card: visionpipes retail product embedding")
    card.section(
        "Model",
        bullets=[
            f"Architecture: core `{config.backbone}` backbone (width x{config.width_multiplier:g}), "
            f"{config.pooling} pooling, linear projection to {config.dimension}-d, L2-normalised.",
            f"Input: RGB {config.image_size}x{config.image_size}, bilinear resize, ImageNet mean/std.",
            f"File: `model.onnx` ({parity['exporter']}, opset {parity['opset']}), version `{record['version']}`.",
            f"Export parity vs eager PyTorch on catalog images: max abs diff {parity['max_abs_diff']:.2e} "
            f"(tolerance {parity_atol:g} + {parity_atol:g} x scale).",
        ],
    )
    final = ", ".join(f"{k} {_fmt(v)}" for k, v in training.get("metrics", {}).items()) or "n/a"
    card.section(
        "Training",
        bullets=[
            f"Loss: `{tparams.get('loss', '?')}` (pytorch-metric-learning); {tparams.get('epochs', '?')} epochs, "
            f"batches of {tparams.get('products_per_batch', '?')} products x {tparams.get('views_per_product', '?')} "
            f"views, augmentation `{tparams.get('augment', '?')}`, seed {tparams.get('seed', '?')}.",
            f"Pretrained backbone: {tparams.get('pretrained') or 'none (random initialisation)'}.",
            f"Data: {training.get('products', '?')} products, {training.get('train_views', '?')} training views, "
            f"{training.get('val_views', '?')} held-out validation views; {training.get('seconds', '?')} s.",
            f"Final training metrics: {final}.",
        ],
    )
    keys = ("recall_at_1", "recall_at_5", "recall_at_10", "mAP", "queries", "products")
    evaluated = [f"{k}: {_fmt(metrics[k])}" for k in keys if k in metrics]
    card.section(
        "Evaluation (held-out query photos, `vp-retail evaluate`)",
        bullets=evaluated or ["not given to this deploy run."],
    )
    check = summary.get("deployed_index") or {}
    deployment = [
        f"Index: {_index_name(summary.get('backend', 'faiss'), factory)} (inner product on L2-normalised vectors), "
        f"{summary['products']} products, "
        f"{summary['vectors']} view vectors; SQLite catalog; manifest with sha256 checksums.",
        f"Catalog embedded with the ONNX model at {summary['embed_images_per_second']} images/s.",
    ]
    if check:
        deployment.append(
            "Deployed index on the held-out queries: " + ", ".join(f"{k} {_fmt(v)}" for k, v in check.items()) + "."
        )
    card.section("Deployment", bullets=deployment)
    card.section(
        "Intended use and limits",
        bullets=[
            "Visual search within the catalog it was trained on: a shopper's photo in, similar products out.",
            "Trained from scratch on the given catalog only; products unlike the training products (new kinds "
            "of object, styles, photo conditions) are embedded less reliably. Retrain, or seed the backbone "
            "from a local pretrained checkpoint, when the catalog changes substantially.",
            "Scores are cosine similarities, comparable within one model version only.",
            "The default data is synthetic (`vp-retail synth`); its numbers say nothing about real photos.",
        ],
    )
    return card


def _index_name(backend: str, factory: str) -> str:
    """How the card names the vector index: FAISS's factory string, or the Milvus index type."""
    return f"FAISS `{factory}`" if backend == "faiss" else f"Milvus `{factory}` ({backend} backend)"
