"""Per-channel intensity normalisation as a plan describes it: one function shared by training
transforms and runtime prediction, so that both apply exactly the same arithmetic.

Schemes (one entry per channel, nnU-Net's `preprocessing/normalization/default_normalization_schemes.py`):
- `ct`: clip to the dataset's foreground `[percentile_00_5, percentile_99_5]`, then subtract the
  dataset's foreground `mean` and divide by its `std` (`max(std, 1e-8)`): the same numbers for every
  image, since Hounsfield units are quantitative;
- `zscore`: per image, subtract the channel's mean and divide by its std; with `use_nonzero_mask` the
  statistics are taken over the channel's non-zero voxels and zero voxels stay 0 (MONAI's
  `NormalizeIntensity(nonzero=True, channel_wise=True)`, which this pipeline used before plans; nnU-Net
  takes the union of the channels' non-zero voxels, the same set for skull-stripped MRI). A std of 0
  divides by 1, as MONAI does;
- `none`: the values as stored.

Entries are plain dicts (`{"scheme": "ct", "clip": [lo, hi], "mean": m, "std": s}`,
`{"scheme": "zscore", "use_nonzero_mask": true}`), as written in `plan.json` and recorded in checkpoints
and deployed models. Pure numpy: no torch or MONAI import; `NormalizeChannelsd` follows MONAI's
dictionary-transform protocol (a callable on a dict, `keys`) and keeps a MetaTensor's metadata.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_SCHEME",
    "SCHEME_NAMES",
    "NormalizeChannelsd",
    "check_normalization",
    "ct_entry",
    "expand_normalization",
    "normalize_channels",
]

#: Names a `params.yaml` may give for all channels at once (`auto` is resolved from the plan before).
SCHEME_NAMES: tuple[str, ...] = ("zscore_nonzero", "zscore", "ct", "none")
#: What the pipeline did before plans: z-score over each channel's non-zero voxels.
DEFAULT_SCHEME = "zscore_nonzero"
_EPS = 1e-8


def check_normalization(
    entries: Any, num_channels: int | None = None, source: str = "normalization"
) -> list[dict]:
    """Validate per-channel entries; returns them as plain dicts.

    Raises:
        ValueError: naming the entry and key at fault (an unknown scheme, a `ct` entry without finite
            `clip`, `mean` and a positive `std`, or a count that differs from `num_channels`).
    """
    if not isinstance(entries, Sequence) or isinstance(entries, str) or not entries:
        raise ValueError(f"{source} must be a non-empty list of per-channel entries, not {entries!r}")
    out = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, Mapping) or "scheme" not in entry:
            raise ValueError(f"{source}[{i}] must be a mapping with a 'scheme', not {entry!r}")
        scheme = entry["scheme"]
        if scheme == "ct":
            clip = entry.get("clip")
            ok = (
                isinstance(clip, Sequence)
                and len(clip) == 2
                and all(isinstance(v, int | float) for v in clip)
            )
            if not ok or not clip[0] <= clip[1]:
                raise ValueError(
                    f"{source}[{i}] (ct) needs 'clip': [low, high] with low <= high, not {clip!r}"
                )
            for key in ("mean", "std"):
                value = entry.get(key)
                if (
                    not isinstance(value, int | float)
                    or not np.isfinite(value)
                    or (key == "std" and value < 0)
                ):
                    raise ValueError(
                        f"{source}[{i}] (ct) needs a finite '{key}'{' >= 0' if key == 'std' else ''}, not {value!r}"
                    )
        elif scheme == "zscore":
            if not isinstance(entry.get("use_nonzero_mask", False), bool):
                raise ValueError(f"{source}[{i}] 'use_nonzero_mask' must be true or false")
        elif scheme != "none":
            raise ValueError(f"{source}[{i}] has the unknown scheme {scheme!r} (ct, zscore or none)")
        out.append(dict(entry))
    if num_channels is not None and len(out) != num_channels:
        raise ValueError(f"{source} has {len(out)} entries but the images have {num_channels} channels")
    return out


def ct_entry(statistics: Mapping[str, Any]) -> dict[str, Any]:
    """A `ct` entry from one channel's fingerprint statistics (`percentile_00_5`, `percentile_99_5`,
    `mean`, `std` of the dataset's foreground voxels).

    Raises:
        ValueError: if the statistics are missing (no foreground voxels in the dataset).
    """
    keys = ("percentile_00_5", "percentile_99_5", "mean", "std")
    if any(statistics.get(k) is None for k in keys):
        raise ValueError(
            f"ct normalisation needs the foreground {', '.join(keys)} of the dataset, not {dict(statistics)}"
        )
    return {
        "scheme": "ct",
        "clip": [float(statistics["percentile_00_5"]), float(statistics["percentile_99_5"])],
        "mean": float(statistics["mean"]),
        "std": float(statistics["std"]),
    }


def expand_normalization(
    spec: str | Sequence[Mapping[str, Any]],
    num_channels: int,
    statistics: Sequence[Mapping[str, Any]] | None = None,
) -> list[dict]:
    """Per-channel entries from a scheme name for all channels (`zscore_nonzero`, `zscore`, `none`,
    `ct`) or a list of entries.

    Args:
        spec: the name or the entries.
        num_channels: the image channels.
        statistics: per channel, the fingerprint's foreground statistics (needed by `ct` given as a name).

    Raises:
        ValueError: on an unknown name, `ct` without statistics, or a list that does not fit.
    """
    if isinstance(spec, str):
        if spec == "zscore_nonzero":
            return [{"scheme": "zscore", "use_nonzero_mask": True} for _ in range(num_channels)]
        if spec == "zscore":
            return [{"scheme": "zscore", "use_nonzero_mask": False} for _ in range(num_channels)]
        if spec == "none":
            return [{"scheme": "none"} for _ in range(num_channels)]
        if spec == "ct":
            if statistics is None or len(statistics) != num_channels:
                raise ValueError(
                    "normalization 'ct' needs the dataset statistics of a plan (train with --plan PLAN.json)"
                )
            return [ct_entry(s) for s in statistics]
        raise ValueError(f"unknown normalization {spec!r}; choose one of {', '.join(SCHEME_NAMES)} or auto")
    return check_normalization(spec, num_channels)


def _normalize_channel(channel: np.ndarray, entry: Mapping[str, Any]) -> np.ndarray:
    scheme = entry["scheme"]
    if scheme == "none":
        return channel
    if scheme == "ct":
        low, high = (float(v) for v in entry["clip"])
        clipped = np.clip(channel, low, high)
        return (clipped - np.float32(entry["mean"])) / np.float32(max(float(entry["std"]), _EPS))
    if entry.get("use_nonzero_mask", False):
        mask = channel != 0
        if not mask.any():
            return channel
        values = channel[mask]
        std = float(values.std())
        out = channel.copy()
        out[mask] = (values - np.float32(values.mean())) / np.float32(std if std != 0.0 else 1.0)
        return out
    std = float(channel.std())
    return (channel - np.float32(channel.mean())) / np.float32(std if std != 0.0 else 1.0)


def normalize_channels(image: np.ndarray, plan_normalization: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """Normalise an image `(C, X, Y, Z)` channel by channel as `plan_normalization` says.

    Args:
        image: the voxels, channels first (any real dtype; CT in Hounsfield units).
        plan_normalization: one entry per channel (see the module docstring).

    Returns:
        A new float32 array of the same shape.

    Raises:
        ValueError: if the entries are malformed or their number differs from the channels.

    Example:
        >>> ct = np.array([[[[-1000.0, 0.0, 40.0, 3000.0]]]])
        >>> normalize_channels(ct, [{"scheme": "ct", "clip": [-100, 200], "mean": 50, "std": 25}]).ravel().tolist()
        [-6.0, -2.0, -0.4000000059604645, 6.0]
    """
    entries = check_normalization(plan_normalization, int(image.shape[0]))
    data = np.asarray(image, dtype=np.float32)
    return np.stack(
        [_normalize_channel(data[c], e).astype(np.float32, copy=False) for c, e in enumerate(entries)]
    )


class NormalizeChannelsd:
    """MONAI-style dictionary transform applying `normalize_channels` to `keys` (usually `image`).

    Works on numpy arrays and on torch tensors / MONAI MetaTensors (the result keeps the tensor's
    type, device and metadata); usable inside `monai.transforms.Compose`.

    Args:
        keys: the keys of the images to normalise.
        normalization: per-channel entries, or a scheme name for all channels (`expand_normalization`).
        allow_missing_keys: skip absent keys instead of raising `KeyError`.
    """

    def __init__(
        self,
        keys: Hashable | Sequence[Hashable],
        normalization: str | Sequence[Mapping[str, Any]],
        allow_missing_keys: bool = False,
    ) -> None:
        self.keys = tuple(keys) if isinstance(keys, list | tuple) else (keys,)
        if not isinstance(normalization, str):
            check_normalization(normalization)
        self.normalization = normalization
        self.allow_missing_keys = allow_missing_keys

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.keys:
            if key not in d:
                if self.allow_missing_keys:
                    continue
                raise KeyError(f"key {key!r} is not in the data")
            img = d[key]
            entries = expand_normalization(self.normalization, int(img.shape[0]))
            if isinstance(img, np.ndarray):
                d[key] = normalize_channels(img, entries)
                continue
            # a torch tensor (MetaTensor: metadata kept by clone); no torch import needed
            values = normalize_channels(np.asarray(img.detach().cpu()), entries)
            out = img.detach().float().clone()
            out.copy_(out.new_tensor(values))
            d[key] = out
        return d
