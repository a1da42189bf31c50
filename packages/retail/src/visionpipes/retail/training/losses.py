"""Metric-learning losses over product ids, from `pytorch-metric-learning`: Proxy-Anchor,
Multi-Similarity (with its pair miner) and ArcFace, selectable by name (`build_loss`) with the
hyper-parameters this project measured (`params.yaml` `train.loss_options` overrides them).

Each returned module takes (embeddings, integer labels) and returns a scalar; its own parameters
(proxies, class weights) are `parameters()` of the module. Batch sampling is `training.data`'s.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from visionpipes.core.errors import UserError
from visionpipes.retail.training.params import LOSSES

#: Our option names and defaults per loss (the papers' values; ArcFace's margin in radians with
#: s = 30, tuned for product sets with few images per id).
DEFAULTS: dict[str, dict[str, float]] = {
    "proxy_anchor": {"margin": 0.1, "alpha": 32.0},
    "multi_similarity": {"alpha": 2.0, "beta": 50.0, "base": 0.5, "margin": 0.1},
    "arcface": {"margin": 0.3, "scale": 30.0},
}


class MinedLoss(nn.Module):
    """A `pytorch-metric-learning` loss preceded by its miner (the miner picks the pairs the loss uses)."""

    def __init__(self, loss: nn.Module, miner: nn.Module) -> None:
        super().__init__()
        self.loss = loss
        self.miner = miner

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.loss(embeddings, labels, self.miner(embeddings, labels))


def metric_learning() -> Any:
    """`pytorch_metric_learning`, imported with FAISS left as it was.

    Importing pytorch-metric-learning imports `faiss.contrib.torch_utils`, which replaces the methods
    of every FAISS index class (and `faiss.knn`) process-wide with torch-aware versions that drop
    arguments: `search(..., params=...)` then fails, in our index and in milvus-lite's embedded
    server alike. FAISS keeps each original as `<name>_numpy`; we pass FAISS numpy arrays only, so
    the originals are put back. The losses, miners and samplers we use never call FAISS.
    """
    import faiss
    import pytorch_metric_learning
    import pytorch_metric_learning.losses
    import pytorch_metric_learning.miners
    import pytorch_metric_learning.samplers

    for owner in [faiss, *(v for v in vars(faiss).values() if isinstance(v, type))]:
        for attr, original in list(vars(owner).items()):
            if not attr.endswith("_numpy"):
                continue
            base = attr[: -len("_numpy")]
            current = vars(owner).get(base)
            if getattr(current, "__name__", "") == f"torch_replacement_{base}":
                setattr(owner, base, original)
    return pytorch_metric_learning


def build_loss(name: str, num_classes: int, dimension: int, **options: float) -> nn.Module:
    """A loss by name (`LOSSES`), with `DEFAULTS` unless `options` override them.

    Args:
        name: 'proxy_anchor', 'multi_similarity' or 'arcface'.
        num_classes: products (proxy / class-weight losses).
        dimension: embedding dimension.
        **options: the loss's options (`DEFAULTS[name]` keys).

    Raises:
        UserError: for an unknown loss or option.
    """
    pml = metric_learning()
    losses, miners = pml.losses, pml.miners

    if name not in DEFAULTS:
        raise UserError(f"unknown loss {name!r}; use one of {', '.join(LOSSES)}.")
    unknown = sorted(set(options) - set(DEFAULTS[name]))
    if unknown:
        raise UserError(
            f"loss_options: {name} has no option {unknown[0]!r}; its options are {', '.join(DEFAULTS[name])}."
        )
    o: Mapping[str, float] = {**DEFAULTS[name], **options}
    if name == "proxy_anchor":
        return losses.ProxyAnchorLoss(num_classes, dimension, margin=o["margin"], alpha=o["alpha"])
    if name == "multi_similarity":
        return MinedLoss(
            losses.MultiSimilarityLoss(alpha=o["alpha"], beta=o["beta"], base=o["base"]),
            miners.MultiSimilarityMiner(epsilon=o["margin"]),
        )
    # pytorch-metric-learning takes ArcFace's margin in degrees.
    return losses.ArcFaceLoss(num_classes, dimension, margin=math.degrees(o["margin"]), scale=o["scale"])
