"""Batch augmentation for metric learning on product photos, on the batch's own device (one
`grid_sample`, vectorised colour, blur and erasing), and the ImageNet normalisation of tensors.

Pure torch; no data loading, no Lightning.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from visionpipes.retail.embedding.preprocess import MEAN, STD
from visionpipes.retail.training.params import AUGMENTATIONS


class BatchAugment(torch.nn.Module):
    """Augmentation of a whole batch at once (one `grid_sample`, vectorised colour and erasing), on
    whatever device the batch is: float images in [0, 1], (n, 3, H, W) in and out.

    'strong': random zoom-crop (area 35-100 %), aspect change, rotation (+-30 deg on half the images),
    translation; brightness, contrast, saturation and a per-channel colour cast (lighting; no hue
    shift: colour is part of a product's identity); Gaussian blur on 30 %; sensor noise; a random
    occluding rectangle on 30 %. 'light': milder zoom and colour only. 'none': identity.

    Args:
        strength: 'strong', 'light' or 'none'.
    """

    def __init__(self, strength: str = "strong") -> None:
        super().__init__()
        if strength not in AUGMENTATIONS:
            raise ValueError(f"augmentation must be one of {', '.join(AUGMENTATIONS)}, got {strength!r}.")
        self.strength = strength

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.strength == "none":
            return x
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self._augment(x.float())

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        strong = self.strength == "strong"
        n, dev = x.shape[0], x.device

        def uniform(lo: float, hi: float, *shape: int) -> torch.Tensor:
            return torch.empty(n, *shape, device=dev).uniform_(lo, hi)

        # Geometry: output pixel -> input coordinate in [-1, 1] (affine_grid), zooming into a crop.
        area = uniform(0.35 if strong else 0.7, 1.0)
        aspect = torch.exp(uniform(math.log(0.75), math.log(1.33)))
        sx = (area * aspect).sqrt().clamp(max=1.0)
        sy = (area / aspect).sqrt().clamp(max=1.0)
        angle = uniform(-math.pi / 6, math.pi / 6) * (torch.rand(n, device=dev) < 0.5) if strong else torch.zeros(n, device=dev)
        cos, sin = torch.cos(angle), torch.sin(angle)
        tx, ty = uniform(-1, 1) * (1 - sx), uniform(-1, 1) * (1 - sy)
        theta = torch.stack(
            [torch.stack([sx * cos, -sy * sin, tx], 1), torch.stack([sx * sin, sy * cos, ty], 1)], 1
        )
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        # Lighting and colour.
        jitter = 0.4 if strong else 0.2
        x = x * uniform(1 - jitter, 1 + jitter, 1, 1, 1)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * uniform(1 - jitter, 1 + jitter, 1, 1, 1) + mean
        gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
        x = gray + (x - gray) * uniform(1 - jitter * 0.75, 1 + jitter * 0.75, 1, 1, 1)
        if strong:
            x = x * uniform(0.92, 1.08, 3, 1, 1)
            blur = torch.rand(n, device=dev) < 0.3
            if blur.any():
                x[blur] = _gaussian_blur(x[blur], uniform(0.3, 1.5)[blur])
            x = x + torch.randn_like(x[:, :1]) * uniform(0.0, 0.03, 1, 1, 1)  # grey sensor noise
            x = _erase(x, torch.rand(n, device=dev) < 0.3)
        return x.clamp(0.0, 1.0)


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, size: int = 5) -> torch.Tensor:
    """Blur each image with its own Gaussian sigma (one grouped conv)."""
    n, c, h, w = x.shape
    r = torch.arange(size, device=x.device, dtype=x.dtype) - size // 2
    k1 = torch.exp(-(r[None] ** 2) / (2 * sigma[:, None] ** 2))
    k1 = k1 / k1.sum(dim=1, keepdim=True)
    k2 = (k1[:, :, None] * k1[:, None, :]).repeat_interleave(c, dim=0)[:, None]
    out = F.conv2d(F.pad(x.reshape(1, n * c, h, w), [size // 2] * 4, mode="reflect"), k2, groups=n * c)
    return out.reshape(n, c, h, w)


def _erase(x: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
    """Paint a random rectangle (2-15 % of the image) of a random colour on the images in `which`."""
    n, _, h, w = x.shape
    dev = x.device
    area = torch.empty(n, device=dev).uniform_(0.02, 0.15)
    aspect = torch.exp(torch.empty(n, device=dev).uniform_(math.log(0.3), math.log(3.3)))
    eh = (area / aspect).sqrt().clamp(max=1.0)
    ew = (area * aspect).sqrt().clamp(max=1.0)
    y0 = torch.rand(n, device=dev) * (1 - eh)
    x0 = torch.rand(n, device=dev) * (1 - ew)
    ys = (torch.arange(h, device=dev) + 0.5) / h
    xs = (torch.arange(w, device=dev) + 0.5) / w
    inside_y = (ys[None] >= y0[:, None]) & (ys[None] < (y0 + eh)[:, None])
    inside_x = (xs[None] >= x0[:, None]) & (xs[None] < (x0 + ew)[:, None])
    mask = (inside_y[:, :, None] & inside_x[:, None, :] & which[:, None, None])[:, None]
    colour = torch.rand(n, 3, 1, 1, device=dev)
    return torch.where(mask, colour, x)


def normalize_tensor(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] float images → ImageNet-normalised (as `embedding.prepare_images` does)."""
    mean = torch.as_tensor(MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.as_tensor(STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std
