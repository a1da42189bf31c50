"""The embedding network: a `core` backbone, global pooling of its last feature map (average or
`core.heads.pooling.GeM`), a linear projection and L2 normalisation.

A torch module only: no weights are fetched, nothing is trained here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from visionpipes.core.backbones import build_backbone
from visionpipes.core.heads.pooling import GeM
from visionpipes.retail.embedding.config import POOLINGS, EmbeddingConfig, scaled_spec


class EmbeddingNet(nn.Module):
    """Backbone → global pooling of its last feature map → linear projection → L2 normalisation.

    Args:
        backbone: a preset name of `visionpipes.core.backbones` (e.g. 'resnet18', 'mobilenet_v2').
        dimension: embedding dimension.
        width_multiplier: scales the backbone's widths.
        pooling: 'avg' or 'gem'.

    Example:
        >>> net = EmbeddingNet("resnet18", dimension=64).eval()
        >>> tuple(net(torch.zeros(2, 3, 64, 64)).shape)
        (2, 64)
    """

    def __init__(
        self,
        backbone: str | Mapping[str, Any] = "resnet18",
        dimension: int = 128,
        *,
        width_multiplier: float = 1.0,
        pooling: str = "avg",
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}.")
        self.backbone = build_backbone(scaled_spec(backbone, width_multiplier))
        self.pool = GeM() if pooling == "gem" else None
        self.head = nn.Linear(self.backbone.out_channels[-1], dimension)
        self.dimension = dimension

    @classmethod
    def from_config(cls, config: EmbeddingConfig) -> EmbeddingNet:
        """The network `config` describes (random weights)."""
        return cls(config.backbone, config.dimension, width_multiplier=config.width_multiplier, pooling=config.pooling)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.backbone(x)[-1]
        pooled = self.pool(feat) if self.pool is not None else feat.mean(dim=(2, 3))
        return F.normalize(self.head(pooled), dim=1)
