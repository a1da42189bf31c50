"""Global pooling heads: generalised-mean (GeM) pooling of a feature map to one vector per image.

Pure torch modules for any number of spatial dimensions; no training code, no weights fetched.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["GeM"]


class GeM(nn.Module):
    """Generalised-mean pooling over the spatial axes, (mean x^p)^(1/p), with p learnt
    (Radenović et al., TPAMI 2018): p = 1 is average pooling, p → ∞ tends to max pooling.

    Works on (n, c, *spatial) inputs of any number of spatial dimensions and returns (n, c).

    Args:
        p: initial exponent (3, the paper's value).
        eps: inputs are clamped to at least `eps` before the power (the mean of powers of a
            negative number is undefined).

    Example:
        >>> pool = GeM()
        >>> tuple(pool(torch.rand(2, 8, 5, 5)).shape)
        (2, 8)
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim < 3:
            raise ValueError(f"GeM pools (n, c, *spatial) inputs, got shape {tuple(x.shape)}.")
        dims = tuple(range(2, x.ndim))
        return x.clamp(min=self.eps).pow(self.p).mean(dim=dims).pow(1.0 / self.p)
