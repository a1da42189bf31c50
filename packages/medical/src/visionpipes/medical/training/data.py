"""Training data of an MSD task: MONAI transforms from file paths to normalised images and region channels,
random positive/negative crops, the seeded hold-out split, a header-only check of the volumes, and the
cached datasets.

Data only: no model, loss or Lightning here (see `module`, `fit`).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import MapTransform

from visionpipes.core.errors import UserError
from visionpipes.medical.msd.dataset_json import MSDCase, MSDTask
from visionpipes.medical.msd.regions import Region, labels_to_regions
from visionpipes.medical.runtime.predictor import AXCODES, AXIS_LABELS
from visionpipes.medical.training.config import DataConfig


class LabelToRegionsd(MapTransform):
    """Turn an MSD label map `(1, *spatial)` into float region channels `(R, *spatial)` (TC, WT, ET ...)."""

    def __init__(self, keys: Sequence[Hashable] | Hashable, regions: Sequence[Region]) -> None:
        super().__init__(keys)
        self.regions = tuple(regions)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            label = d[key]
            masks = labels_to_regions(np.asarray(label[0]), self.regions).astype(np.float32)
            out = torch.from_numpy(masks)
            if hasattr(label, "copy_meta_from"):
                from monai.data import MetaTensor

                out = MetaTensor(out, meta=label.meta, applied_operations=label.applied_operations)
            d[key] = out
        return d


def spatial_transforms(keys: Sequence[str], pixdim: Sequence[float] | None) -> list:
    """Orientation to RAS and optional resampling: shared by training, validation and inference."""
    from monai.transforms import Orientationd, Spacingd

    out: list = [Orientationd(keys=keys, axcodes=AXCODES, labels=AXIS_LABELS)]
    if pixdim is not None:
        modes = ["bilinear" if k == "image" else "nearest" for k in keys]
        out.append(Spacingd(keys=keys, pixdim=tuple(float(p) for p in pixdim), mode=modes))
    return out


def resolve_normalization(task: MSDTask, config: DataConfig) -> list[dict[str, Any]]:
    """Per-channel normalisation entries for `config.normalization` (see `DataConfig`).

    `auto` gives CT channels the dataset-wide clip + z-score of nnU-Net, with statistics of the training
    cases' foreground (label > 0) voxels from `planning.fingerprint.compute_fingerprint`, and every other
    channel the per-image z-score of its non-zero voxels.

    Raises:
        UserError: if explicit entries are malformed or their number differs from the task's channels, or
            a CT channel has no foreground voxel to take statistics from.
    """
    from visionpipes.medical.planning.normalization import check_normalization, expand_normalization

    spec = config.normalization
    source = "train.data.normalization"
    n = task.num_channels
    try:
        if isinstance(spec, list):
            return check_normalization(spec, n, source=source)
        if spec != "auto":
            return expand_normalization(spec, n)
    except ValueError as err:
        raise UserError(f"{err}.") from None
    entries = expand_normalization("zscore_nonzero", n)
    ct = [c for c, name in enumerate(task.modality_names) if name.strip().casefold() == "ct"]
    if ct:
        from visionpipes.medical.planning.fingerprint import compute_fingerprint

        stats = compute_fingerprint(task.root)["foreground_intensity_properties_per_channel"]
        for c in ct:
            s = stats[c]
            if s.get("mean") is None:
                raise UserError(
                    f"{task.root / 'dataset.json'}: channel {c} (CT) has no foreground voxel in the training "
                    "labels, so its clip window and z-score cannot be computed."
                )
            entries[c] = {
                "scheme": "ct",
                "clip": [round(s["percentile_00_5"], 4), round(s["percentile_99_5"], 4)],
                "mean": round(s["mean"], 4),
                "std": round(s["std"], 4),
            }
    return entries


def _normalize_step(normalization: Sequence[Mapping[str, Any]] | None):
    """MONAI's non-zero z-score for the default entries (as before), `NormalizeChannelsd` otherwise."""
    from monai.transforms import NormalizeIntensityd

    from visionpipes.medical.runtime.predictor import is_nonzero_zscore

    if normalization is None or is_nonzero_zscore(normalization):
        return NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True)
    from visionpipes.medical.planning.normalization import NormalizeChannelsd

    return NormalizeChannelsd(keys="image", normalization=list(normalization))


def build_transforms(
    regions: Sequence[Region],
    config: DataConfig,
    *,
    train: bool,
    seed: int = 0,
    normalization: Sequence[Mapping[str, Any]] | None = None,
    previous_stage_labels: Sequence[int] | None = None,
):
    """MONAI transforms from `{"image": path, "label": path}` to normalised image and region channels.

    Training adds foreground cropping, `num_samples` positive/negative crops of `roi_size`, flips and
    intensity jitter; validation keeps whole volumes. `normalization` holds per-channel entries
    (`resolve_normalization`); None z-scores each channel's non-zero voxels. A CT image (not zero outside
    the body) is neither cropped to its non-zero box nor restricted to it for negative crops.

    `previous_stage_labels` (a 3d_cascade_fullres stage: the foreground labels): the items also hold
    `prev`, the low-resolution stage's label map, which follows the label through the spatial steps
    (nearest neighbour), crops and flips, and is appended to the image as one channel per foreground
    label (`training.cascade.PrevStageOneHotd`, with nnU-Net's mask augmentations when training).
    """
    from monai.transforms import (
        Compose,
        CropForegroundd,
        EnsureChannelFirstd,
        LoadImaged,
        RandCropByPosNegLabeld,
        RandFlipd,
        RandScaleIntensityd,
        RandShiftIntensityd,
        SpatialPadd,
    )

    keys = ["image", "label"] + (["prev"] if previous_stage_labels is not None else [])
    steps: list = [
        LoadImaged(keys=keys, image_only=True),
        EnsureChannelFirstd(keys=keys),
        *spatial_transforms(keys, config.pixdim),
        _normalize_step(normalization),
    ]
    zero_background = normalization is None or all(
        e.get("scheme") == "zscore" and e.get("use_nonzero_mask") for e in normalization
    )
    if train:
        roi = tuple(int(s) for s in config.roi_size)
        if zero_background:
            steps.append(CropForegroundd(keys=keys, source_key="image", allow_smaller=True))
        steps += [
            SpatialPadd(keys=keys, spatial_size=roi),
            RandCropByPosNegLabeld(
                keys=keys,
                label_key="label",
                spatial_size=roi,
                pos=config.pos,
                neg=config.neg,
                num_samples=config.num_samples,
                image_key="image" if zero_background else None,
                image_threshold=0.0,
            ),
        ]
        if config.augment:
            steps += [RandFlipd(keys=keys, prob=0.5, spatial_axis=axis) for axis in range(3)]
            steps += [
                RandScaleIntensityd(keys="image", factors=0.1, prob=1.0),
                RandShiftIntensityd(keys="image", offsets=0.1, prob=1.0),
            ]
    if previous_stage_labels is not None:
        from visionpipes.medical.training.cascade import PrevStageOneHotd

        steps.append(PrevStageOneHotd(previous_stage_labels, augment=train and config.augment))
    steps.append(LabelToRegionsd(keys="label", regions=regions))
    transform = Compose(steps)
    transform.set_random_state(seed=seed)
    return transform


def split_cases(
    cases: Sequence[MSDCase], val_fraction: float, seed: int
) -> tuple[list[MSDCase], list[MSDCase]]:
    """Deterministic hold-out split: a seeded shuffle, `ceil(val_fraction * n)` cases for validation.

    At least one case stays in training; with `val_fraction > 0` and two cases or more, at least one
    goes to validation.
    """
    order = np.random.default_rng(seed).permutation(len(cases))
    n_val = (
        0
        if val_fraction <= 0 or len(cases) < 2
        else min(len(cases) - 1, math.ceil(val_fraction * len(cases)))
    )
    val = sorted((cases[i] for i in order[:n_val]), key=lambda c: c.case_id)
    train_ = sorted((cases[i] for i in order[n_val:]), key=lambda c: c.case_id)
    return train_, val


def check_volume_headers(task: MSDTask, cases: Sequence[MSDCase]) -> None:
    """Header-only check (cheap) that images have the task's channel count and labels their shape.

    Raises:
        UserError: naming the first file that does not fit (run `vp-medical validate` for all).
    """
    import nibabel as nib

    n = task.num_channels
    for case in cases:
        for path in (case.image, case.label):
            if path is not None and not path.is_file():
                raise UserError(f"{path} does not exist (listed in {task.root / 'dataset.json'}).")
        try:
            shape = nib.load(case.image).shape
            label_shape = nib.load(case.label).shape if case.label is not None else None
        except Exception as err:  # nibabel raises several types for unreadable headers
            raise UserError(f"{case.image} or its label is not a readable NIfTI file ({err}).") from None
        channels = 1 if len(shape) == 3 else shape[-1] if len(shape) == 4 else None
        if channels != n:
            raise UserError(
                f"{case.image} has shape {shape}, but {task.root / 'dataset.json'} declares {n} modalities."
            )
        if label_shape is not None and tuple(label_shape[:3]) != tuple(shape[:3]):
            raise UserError(f"{case.label} has shape {label_shape}, but its image {case.image} has {shape}.")


def make_dataset(items: list[dict], transform: Any, config: DataConfig, out_dir: Path, name: str) -> Any:
    """A MONAI dataset of `items` as `config.cache` says: in memory, on disk under `out_dir`, or none."""
    from monai.data import CacheDataset, Dataset, PersistentDataset

    if config.cache == "memory":
        return CacheDataset(items, transform=transform, cache_rate=1.0, num_workers=None, progress=False)
    if config.cache == "disk":
        cache_dir = Path(config.cache_dir) if config.cache_dir else out_dir / "cache" / name
        cache_dir.mkdir(parents=True, exist_ok=True)
        return PersistentDataset(items, transform=transform, cache_dir=cache_dir)
    return Dataset(items, transform=transform)
