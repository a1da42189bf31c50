"""Segmentation quality per region (TC, WT, ET, or a generic task's labels): Dice and HD95 from MONAI's
metric functions, made NaN-aware so that a case without a region neither scores nor sinks the mean.

It compares masks it is given; it does not threshold probabilities or read files.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from visionpipes.medical.msd.regions import Region


def case_metrics(
    pred: np.ndarray | torch.Tensor,
    truth: np.ndarray | torch.Tensor,
    regions: Sequence[Region],
    *,
    spacing: Sequence[float] | None = None,
) -> dict[str, dict[str, float]]:
    """Dice and HD95 (mm when `spacing` is given, else voxels) of one case, per region.

    Conventions for empty regions: truth and prediction both empty -> Dice and HD95 NaN (nothing to
    measure; left out of means); only one empty -> Dice 0 and HD95 NaN (a distance to nothing is
    undefined, the Dice already counts the miss or the false alarm).

    Args:
        pred: `(R, *spatial)` predicted region masks.
        truth: `(R, *spatial)` true region masks.
        regions: the regions, in channel order (names the result).
        spacing: voxel size per spatial axis.

    Returns:
        `{region_name: {"dice": d, "hd95": h}}`.

    Raises:
        ValueError: if shapes differ or the channel count is not `len(regions)`.

    Example:
        >>> m = np.zeros((1, 8, 8, 8), bool); m[0, 2:5, 2:5, 2:5] = True
        >>> case_metrics(m, m, [Region("WT", frozenset({1}))])["WT"]
        {'dice': 1.0, 'hd95': 0.0}
    """
    from monai.metrics import compute_dice, compute_hausdorff_distance

    p = torch.as_tensor(np.asarray(pred) if not torch.is_tensor(pred) else pred).bool()
    t = torch.as_tensor(np.asarray(truth) if not torch.is_tensor(truth) else truth).bool()
    if p.shape != t.shape:
        raise ValueError(f"prediction shape {tuple(p.shape)} differs from truth shape {tuple(t.shape)}.")
    if p.shape[0] != len(regions):
        raise ValueError(f"got {p.shape[0]} channels for {len(regions)} regions.")
    p, t = p[None].float(), t[None].float()
    dice = compute_dice(p, t, include_background=True, ignore_empty=False)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI warns for every empty channel; NaN says it already
        hd95 = compute_hausdorff_distance(
            p, t, include_background=True, percentile=95, spacing=list(spacing) if spacing else None
        )[0]
    out = {}
    for i, region in enumerate(regions):
        has_p, has_t = bool(p[0, i].any()), bool(t[0, i].any())
        d = float("nan") if not (has_p or has_t) else float(dice[i])
        h = float(hd95[i]) if (has_p and has_t) else float("nan")
        out[region.name] = {"dice": d, "hd95": h if math.isfinite(h) else float("nan")}
    return out


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def summarize(
    per_case: Sequence[Mapping[str, Mapping[str, float]]], region_names: Sequence[str]
) -> dict[str, dict[str, float]]:
    """Mean over cases per region (ignoring NaN), and the mean over regions under `"mean"`.

    Also counts, per region, the cases that had something to measure (`n_dice`, `n_hd95`).

    Args:
        per_case: results of `case_metrics`.
        region_names: the regions in order.

    Returns:
        `{region: {"dice", "hd95", "n_dice", "n_hd95"}, "mean": {"dice", "hd95"}}`.
    """
    result: dict[str, dict[str, float]] = {}
    for name in region_names:
        dice = [c[name]["dice"] for c in per_case]
        hd = [c[name]["hd95"] for c in per_case]
        result[name] = {
            "dice": _nanmean(dice),
            "hd95": _nanmean(hd),
            "n_dice": sum(not math.isnan(v) for v in dice),
            "n_hd95": sum(not math.isnan(v) for v in hd),
        }
    result["mean"] = {
        "dice": _nanmean([result[n]["dice"] for n in region_names]),
        "hd95": _nanmean([result[n]["hd95"] for n in region_names]),
    }
    return result
