"""The box the sliding windows run over when `InferenceConfig.crop_foreground` is on (nnU-Net crops every
case to its non-zero region and pads the prediction with background; so do we, at prediction time).

- MRI (every channel z-scored over its non-zero voxels, e.g. skull-stripped BraTS): the box of the voxels
  non-zero in any channel (`foreground_box`), taken from the normalised input, as before;
- CT (a channel normalised with the `ct` scheme): a CT has no zero background (air is about -1000 HU), so
  the non-zero box is the whole grid. `body_box` takes the box of the voxels above
  `InferenceConfig.body_threshold_hu` (-500 by default: air is ~-1000 HU, fat ~-100, soft tissue 0..100;
  the lungs, ~-850 HU, lie inside the chest wall's box) in the CT channels' RAW Hounsfield units, before
  normalisation (after the clip to the foreground percentiles, air and fat are one value).

Outside the box every region is absent. Pure torch; no MONAI or training import.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

__all__ = ["body_box", "box_of", "ct_channels", "foreground_box"]


def box_of(mask: torch.Tensor, margin: int) -> tuple[slice, ...]:
    """Bounding box (one slice per axis) of the true voxels of `mask`, grown by `margin` and clipped to the
    grid; the whole grid if no voxel is true."""
    if not bool(mask.any()):
        return tuple(slice(0, n) for n in mask.shape)
    box = []
    for axis, n in enumerate(mask.shape):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        hit = torch.nonzero(mask.any(dim=others)).flatten()
        box.append(slice(max(0, int(hit[0]) - margin), min(n, int(hit[-1]) + 1 + margin)))
    return tuple(box)


def foreground_box(image: torch.Tensor, margin: int) -> tuple[slice, ...]:
    """Bounding box (one slice per spatial axis) of the voxels non-zero in any channel of `(C, *spatial)`,
    grown by `margin`; the whole grid if every voxel is zero."""
    return box_of((image != 0).any(dim=0), margin)


def body_box(image: torch.Tensor, threshold_hu: float, margin: int) -> tuple[slice, ...]:
    """Bounding box of the body in raw CT `(C, *spatial)` (Hounsfield units): the voxels above
    `threshold_hu` in any channel, grown by `margin`; the whole grid if no voxel is above it.

    Example:
        >>> ct = torch.full((1, 6, 5, 4), -1000.0)
        >>> ct[0, 2:4, 1:3, :] = 40.0
        >>> body_box(ct, -500.0, 1)
        (slice(1, 5, None), slice(0, 4, None), slice(0, 4, None))
    """
    return box_of((torch.as_tensor(image) > threshold_hu).any(dim=0), margin)


def ct_channels(normalization: Sequence[Mapping[str, Any]] | None) -> list[int]:
    """Indices of the channels normalised with the `ct` scheme (none for MRI or no recorded scheme)."""
    return [i for i, e in enumerate(normalization or []) if e.get("scheme") == "ct"]
