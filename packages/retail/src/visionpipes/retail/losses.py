"""Metric-learning losses over product ids for L2-normalised embeddings: Proxy-Anchor, Multi-Similarity
and ArcFace, each as written in its paper, selectable by name (`build_loss`).

They take a batch of embeddings and integer labels and return a scalar; they neither normalise the
model's output for it (the embedding model does) nor sample batches (see `train.PKBatchSampler`).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

LOSSES = ("proxy_anchor", "multi_similarity", "arcface")


def _log1p_sum_exp(logits: torch.Tensor, mask: torch.Tensor, dim: int) -> torch.Tensor:
    """log(1 + sum_{mask} exp(logits)) along `dim`, stable (logsumexp with an extra zero term)."""
    masked = logits.masked_fill(~mask, float("-inf"))
    zero = torch.zeros_like(masked.narrow(dim, 0, 1))
    return torch.logsumexp(torch.cat([zero, masked], dim=dim), dim=dim)


class ProxyAnchorLoss(nn.Module):
    """Proxy-Anchor loss (Kim et al., CVPR 2020): one learnable proxy per class; each proxy pulls all
    its positives and pushes all negatives in the batch, weighted by their hardness.

    Args:
        num_classes: number of products.
        dimension: embedding dimension.
        margin: delta of the paper (0.1).
        alpha: scaling of the paper (32).

    Example:
        >>> loss = ProxyAnchorLoss(10, 8)
        >>> float(loss(F.normalize(torch.randn(6, 8), dim=1), torch.tensor([0, 0, 1, 1, 2, 2]))) > 0
        True
    """

    def __init__(self, num_classes: int, dimension: int, *, margin: float = 0.1, alpha: float = 32.0) -> None:
        super().__init__()
        self.proxies = nn.Parameter(torch.empty(num_classes, dimension))
        nn.init.kaiming_normal_(self.proxies, mode="fan_out")
        self.margin = margin
        self.alpha = alpha

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos = F.linear(embeddings, F.normalize(self.proxies, dim=1))  # (batch, classes)
        pos = F.one_hot(labels, cos.shape[1]).bool()
        with_pos = pos.any(dim=0)
        pos_term = _log1p_sum_exp(-self.alpha * (cos - self.margin), pos, dim=0)[with_pos].sum()
        neg_term = _log1p_sum_exp(self.alpha * (cos + self.margin), ~pos, dim=0).sum()
        return pos_term / with_pos.sum().clamp_min(1) + neg_term / cos.shape[1]


class MultiSimilarityLoss(nn.Module):
    """Multi-Similarity loss with its pair mining (Wang et al., CVPR 2019), over the pairs of a batch
    (batches must hold several views per product).

    Args:
        alpha: positive scale (2).
        beta: negative scale (50).
        base: similarity offset lambda (0.5 in the authors' code; 1 in the paper's notation).
        margin: mining margin epsilon (0.1).
    """

    def __init__(self, *, alpha: float = 2.0, beta: float = 50.0, base: float = 0.5, margin: float = 0.1) -> None:
        super().__init__()
        self.alpha, self.beta, self.base, self.margin = alpha, beta, base, margin

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        sim = embeddings @ embeddings.T
        same = labels[:, None] == labels[None, :]
        eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
        pos_mask, neg_mask = same & ~eye, ~same
        inf = torch.tensor(float("inf"), device=sim.device, dtype=sim.dtype)
        # Mining: keep negatives harder than the hardest positive, positives harder than the hardest negative.
        hardest_pos = torch.where(pos_mask, sim, inf).amin(dim=1, keepdim=True)
        hardest_neg = torch.where(neg_mask, sim, -inf).amax(dim=1, keepdim=True)
        neg_keep = neg_mask & (sim + self.margin > hardest_pos)
        pos_keep = pos_mask & (sim - self.margin < hardest_neg)
        valid = pos_keep.any(dim=1) & neg_keep.any(dim=1)
        if not valid.any():
            return (embeddings * 0).sum()
        pos_loss = _log1p_sum_exp(-self.alpha * (sim - self.base), pos_keep, dim=1) / self.alpha
        neg_loss = _log1p_sum_exp(self.beta * (sim - self.base), neg_keep, dim=1) / self.beta
        return (pos_loss + neg_loss)[valid].sum() / len(labels)


class ArcFaceLoss(nn.Module):
    """ArcFace (additive angular margin, Deng et al., CVPR 2019): softmax over class weights with the
    margin added to the angle of the true class.

    Args:
        num_classes: number of products.
        dimension: embedding dimension.
        margin: angular margin m in radians (0.3: the paper's 0.5 is for face sets with many images per id).
        scale: logit scale s (30).
    """

    def __init__(self, num_classes: int, dimension: int, *, margin: float = 0.3, scale: float = 30.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, dimension))
        nn.init.xavier_uniform_(self.weight)
        self.margin, self.scale = margin, scale
        self._cos_m, self._sin_m = math.cos(margin), math.sin(margin)
        self._threshold = math.cos(math.pi - margin)
        self._mm = math.sin(math.pi - margin) * margin

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos = F.linear(embeddings, F.normalize(self.weight, dim=1)).clamp(-1 + 1e-7, 1 - 1e-7)
        sin = torch.sqrt(1.0 - cos * cos)
        phi = cos * self._cos_m - sin * self._sin_m  # cos(theta + m)
        phi = torch.where(cos > self._threshold, phi, cos - self._mm)  # keep it monotonic past pi - m
        target = F.one_hot(labels, cos.shape[1]).bool()
        return F.cross_entropy(self.scale * torch.where(target, phi, cos), labels)


def build_loss(name: str, num_classes: int, dimension: int, **kwargs: float) -> nn.Module:
    """A loss by name (`LOSSES`), with its paper's hyper-parameters unless given.

    Raises:
        ValueError: for an unknown name.
    """
    if name == "proxy_anchor":
        return ProxyAnchorLoss(num_classes, dimension, **kwargs)
    if name == "multi_similarity":
        return MultiSimilarityLoss(**kwargs)
    if name == "arcface":
        return ArcFaceLoss(num_classes, dimension, **kwargs)
    raise ValueError(f"unknown loss {name!r}; use one of {', '.join(LOSSES)}.")
