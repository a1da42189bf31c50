"""Geometry of the synthetic CT phantoms (`msd.ct_synth`): voxel grids in mm, ellipsoids, lumpy blobs,
tubes, vessels and lesions clipped to an organ, chains of ellipsoids along Bezier curves, smooth noise and
distances in mm. Shapes only: the tissues' Hounsfield units and the anatomy of each task are `ct_synth`'s.
"""

from __future__ import annotations

import numpy as np


def voxel_grid(shape: tuple[int, int, int], zooms: tuple[float, float, float]) -> np.ndarray:
    """Voxel positions in mm, centred on the volume, along the stored axes: `(*shape, 3)`.

    The files are stored LPS (`ct_synth.ct_affine`): +x is the patient's left, +y posterior, +z superior.
    """
    axes = [(np.arange(n, dtype=np.float32) - (n - 1) / 2) * z for n, z in zip(shape, zooms)]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)


def ellipsoid_distance(grid: np.ndarray, centre, radii) -> np.ndarray:
    """Normalised distance to an axis-aligned ellipsoid (< 1 inside)."""
    return np.linalg.norm((grid - np.asarray(centre, np.float32)) / np.asarray(radii, np.float32), axis=-1)


def lumpy_blob(rng: np.random.Generator, grid: np.ndarray, centre, radius: float) -> np.ndarray:
    """A lumpy sphere of about `radius` mm (three random lobes), as a boolean mask."""
    mask = ellipsoid_distance(grid, centre, radius * rng.uniform(0.8, 1.2, 3)) < 1.0
    for _ in range(2):
        offset = rng.normal(0, radius * 0.45, 3)
        mask |= ellipsoid_distance(grid, np.asarray(centre) + offset, radius * rng.uniform(0.5, 0.8, 3)) < 1.0
    return mask


def tube_mask(grid: np.ndarray, start, direction, radius: float) -> np.ndarray:
    """A straight cylinder through `start` along `direction` (mm), as a boolean mask."""
    d = np.asarray(direction, np.float32)
    d = d / np.linalg.norm(d)
    rel = grid - np.asarray(start, np.float32)
    along = rel @ d
    return np.linalg.norm(rel - along[..., None] * d, axis=-1) < radius


def vessels_in(
    rng: np.random.Generator,
    grid: np.ndarray,
    organ: np.ndarray,
    count: int,
    radius_mm: tuple[float, float],
    *,
    z_scale: float = 1.0,
) -> np.ndarray:
    """`count` straight vessels through random points of `organ`, clipped to it: a boolean mask.

    Args:
        radius_mm: each vessel's radius is drawn uniformly from this range.
        z_scale: shrinks the random direction's z component (< 1: mostly in-plane vessels).
    """
    inside = np.argwhere(organ)
    mask = np.zeros(organ.shape, bool)
    for _ in range(count):
        start = grid[tuple(inside[rng.integers(len(inside))])]
        mask |= tube_mask(grid, start, rng.normal(0, 1, 3) * [1, 1, z_scale], rng.uniform(*radius_mm)) & organ
    return mask


def lesion_in(
    rng: np.random.Generator,
    grid: np.ndarray,
    organ: np.ndarray,
    distance_inside: np.ndarray,
    radius_mm: tuple[float, float],
    *,
    depth: float,
) -> np.ndarray:
    """A lumpy lesion (`lumpy_blob`) of a radius drawn from `radius_mm`, centred where the organ is at least
    `depth` radii deep (the deepest fifth of the organ if nowhere is), clipped to the organ.

    Args:
        distance_inside: `distance_mm(organ, zooms)`, passed in so that several lesions share it.
    """
    radius = rng.uniform(*radius_mm)
    deep = np.argwhere(distance_inside > radius * depth)
    if not len(deep):
        deep = np.argwhere(distance_inside >= distance_inside.max() * 0.8)
    centre = grid[tuple(deep[rng.integers(len(deep))])]
    return lumpy_blob(rng, grid, centre, radius) & organ


def ellipsoid_chain(grid: np.ndarray, points: np.ndarray, radii: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Normalised distance to a chain of axis-aligned ellipsoids centred on `points` `(n, 3)` with semi-axes
    `radii` `(n, 3)` (mm): the smallest over the chain (< 1 inside; equal radii give a tube along the points),
    and the index of the point that gives it."""
    best = np.full(grid.shape[:3], np.inf, np.float32)
    nearest = np.zeros(grid.shape[:3], np.int32)
    for i, (point, radius) in enumerate(zip(points, radii)):
        d = ellipsoid_distance(grid, point, radius)
        closer = d < best
        best[closer] = d[closer]
        nearest[closer] = i
    return best, nearest


def bezier_points(points: np.ndarray, n: int) -> np.ndarray:
    """`n` points along the quadratic Bezier curve of the three control `points` `(3, 3)`."""
    t = np.linspace(0.0, 1.0, n)[:, None]
    return (1 - t) ** 2 * points[0] + 2 * (1 - t) * t * points[1] + t**2 * points[2]


def smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float = 2.0) -> np.ndarray:
    """Gaussian-smoothed noise of unit standard deviation (blobs of about `sigma` voxels)."""
    from scipy.ndimage import gaussian_filter

    noise = gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma=sigma)
    return noise / (noise.std() + 1e-6)


def distance_mm(mask: np.ndarray, zooms: tuple[float, float, float]) -> np.ndarray:
    from scipy.ndimage import distance_transform_edt

    return distance_transform_edt(mask, sampling=zooms)
