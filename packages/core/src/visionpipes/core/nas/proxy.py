"""The proxy task for architecture search and the architecture study: a small image
classification set generated on the fly, so that a search runs on a CPU in minutes.

Eight classes of shapes and textures, drawn at random scale, place, colour and rotation over a
cluttered background with noise. Some classes differ only in global layout (two blobs far apart
vs close together), so receptive field matters, not only local texture. Deterministic by seed.

A second, two-class set (`make_context_dataset`) needs context by construction: two identical
small discs far apart, labelled by the orientation of the pair, which a unit that sees only one
disc cannot tell. Generation only: no training or model code here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

CLASSES = (
    "disc",
    "square",
    "triangle",
    "cross",
    "ring",
    "stripes",
    "checker",
    "two_blobs_far",
)

CONTEXT_CLASSES = ("pair_horizontal", "pair_vertical")


@dataclass(frozen=True)
class ProxyConfig:
    """Size of the proxy set: `per_class` images of `size` x `size` per class."""

    per_class: int = 200
    size: int = 64
    seed: int = 0
    noise: float = 0.15


def _draw(cls: str, rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    scale = rng.uniform(0.18, 0.34)
    cy, cx = rng.uniform(scale, 1 - scale, size=2)
    angle = rng.uniform(0, np.pi)
    dy, dx = yy - cy, xx - cx
    ry = dy * np.cos(angle) - dx * np.sin(angle)
    rx = dy * np.sin(angle) + dx * np.cos(angle)
    r = np.hypot(dy, dx)
    if cls == "disc":
        mask = r < scale
    elif cls == "square":
        mask = (np.abs(ry) < scale * 0.8) & (np.abs(rx) < scale * 0.8)
    elif cls == "triangle":
        mask = (ry < scale * 0.6) & (ry > -scale * 0.9 + 1.6 * np.abs(rx))
    elif cls == "cross":
        arm = scale * 0.28
        mask = ((np.abs(ry) < arm) & (np.abs(rx) < scale)) | ((np.abs(rx) < arm) & (np.abs(ry) < scale))
    elif cls == "ring":
        mask = (r < scale) & (r > scale * 0.6)
    elif cls == "stripes":
        period = rng.uniform(0.08, 0.16)
        mask = (np.sin(2 * np.pi * ry / period) > 0) & (r < scale * 1.3)
    elif cls == "checker":
        period = rng.uniform(0.08, 0.16)
        mask = ((np.sin(2 * np.pi * ry / period) > 0) ^ (np.sin(2 * np.pi * rx / period) > 0)) & (r < scale * 1.3)
    elif cls == "two_blobs_far":
        # two small discs at opposite sides: a class defined by the layout of the whole image
        small = scale * 0.35
        a = rng.uniform(0.1, 0.3, size=2)
        b = 1 - rng.uniform(0.1, 0.3, size=2)
        if rng.random() < 0.5:
            a[1], b[1] = b[1], a[1]
        mask = (np.hypot(yy - a[0], xx - a[1]) < small) | (np.hypot(yy - b[0], xx - b[1]) < small)
    else:  # pragma: no cover - CLASSES is closed
        raise ValueError(cls)
    return mask


def _distractor(rng: np.random.Generator, size: int) -> np.ndarray:
    """One small blob close to another: the negative of `two_blobs_far` appears in every class."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    small = rng.uniform(0.05, 0.08)
    c = rng.uniform(0.15, 0.85, size=2)
    return np.hypot(yy - c[0], xx - c[1]) < small


def make_proxy_dataset(config: ProxyConfig = ProxyConfig()) -> tuple[torch.Tensor, torch.Tensor]:
    """Generate the proxy set.

    Returns:
        `(images, labels)`: float32 `(N, 3, size, size)` in [0, 1] and int64 `(N,)`, shuffled.

    Example:
        >>> x, y = make_proxy_dataset(ProxyConfig(per_class=2, size=32))
        >>> tuple(x.shape), int(y.max())
        ((16, 3, 32, 32), 7)
    """
    rng = np.random.default_rng(config.seed)
    n = config.per_class * len(CLASSES)
    images = np.empty((n, 3, config.size, config.size), dtype=np.float32)
    labels = np.repeat(np.arange(len(CLASSES)), config.per_class)
    for i, label in enumerate(labels):
        background = rng.uniform(0.0, 0.6, size=3).astype(np.float32)
        colour = rng.uniform(0.0, 1.0, size=3).astype(np.float32)
        while np.abs(colour - background).sum() < 0.6:
            colour = rng.uniform(0.0, 1.0, size=3).astype(np.float32)
        img = np.broadcast_to(background[:, None, None], images.shape[1:]).copy()
        img[:, _distractor(rng, config.size)] = rng.uniform(0, 1, size=(3, 1)).astype(np.float32)
        img[:, _draw(CLASSES[label], rng, config.size)] = colour[:, None]
        img += rng.normal(0, config.noise, size=img.shape).astype(np.float32)
        images[i] = np.clip(img, 0, 1)
    order = rng.permutation(n)
    return torch.from_numpy(images[order]), torch.from_numpy(labels[order]).long()


def make_context_dataset(
    config: ProxyConfig = ProxyConfig(), distance: tuple[float, float] = (0.5, 0.7)
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generate the large-context set: two identical small discs whose centres are `distance`
    (a fraction of the image side) apart, the pair tilted up to 25 degrees off the horizontal
    (`pair_horizontal`) or off the vertical (`pair_vertical`) axis, over a noisy background.

    A disc alone tells next to nothing (only its place in the frame hints weakly at the label); a
    unit has to see both discs, i.e. have a receptive field of at least about `distance * size`
    pixels. Horizontal flips keep the label.

    Returns:
        `(images, labels)` as `make_proxy_dataset`, labels indexing `CONTEXT_CLASSES`.

    Raises:
        ValueError: if `distance` is not within (0, 0.8].

    Example:
        >>> x, y = make_context_dataset(ProxyConfig(per_class=3, size=32))
        >>> tuple(x.shape), sorted(set(y.tolist()))
        ((6, 3, 32, 32), [0, 1])
    """
    lo, hi = distance
    if not 0 < lo <= hi <= 0.8:
        raise ValueError(f"distance must satisfy 0 < low <= high <= 0.8, got {distance}.")
    rng = np.random.default_rng(config.seed)
    size = config.size
    n = config.per_class * len(CONTEXT_CLASSES)
    images = np.empty((n, 3, size, size), dtype=np.float32)
    labels = np.repeat(np.arange(len(CONTEXT_CLASSES)), config.per_class)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for i, label in enumerate(labels):
        background = rng.uniform(0.0, 0.6, size=3).astype(np.float32)
        colour = rng.uniform(0.0, 1.0, size=3).astype(np.float32)
        while np.abs(colour - background).sum() < 0.6:
            colour = rng.uniform(0.0, 1.0, size=3).astype(np.float32)
        radius = rng.uniform(0.05, 0.08)
        d = rng.uniform(lo, hi)
        angle = np.deg2rad(rng.uniform(-25, 25)) + (np.pi / 2 if label == 1 else 0.0)
        half = 0.5 * d * np.array([np.sin(angle), np.cos(angle)])  # (dy, dx)
        margin = radius + 0.02
        low = margin + np.abs(half)
        centre = rng.uniform(low, 1 - low)
        img = np.broadcast_to(background[:, None, None], images.shape[1:]).copy()
        for sign in (-1.0, 1.0):
            cy, cx = centre + sign * half
            img[:, np.hypot(yy - cy, xx - cx) < radius] = colour[:, None]
        img += rng.normal(0, config.noise, size=img.shape).astype(np.float32)
        images[i] = np.clip(img, 0, 1)
    order = rng.permutation(n)
    return torch.from_numpy(images[order]), torch.from_numpy(labels[order]).long()
