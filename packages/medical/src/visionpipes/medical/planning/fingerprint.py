"""The dataset fingerprint an MSD task's plan is made from, computed as nnU-Net computes it.

nnU-Net v2 (`experiment_planning/dataset_fingerprint/fingerprint_extractor.py`, `preprocessing/cropping/
cropping.py`; Isensee et al., Nature Methods 18, 203-211, 2021), per training case:
- crop to the non-zero region: the union over channels of the voxels != 0, holes filled
  (`scipy.ndimage.binary_fill_holes`), its bounding box; the shape after cropping and its share of the
  whole image (`relative_size_after_cropping`);
- the voxel spacing;
- foreground intensities per channel: the voxels of the cropped image where the label is > 0, from
  which `num_samples` are drawn with replacement by `np.random.RandomState(1234)` (a fresh generator per
  case, as nnU-Net), `num_samples = total // number of cases`;
then over the dataset, per channel, from the pooled samples: mean, std, median, min, max and the
0.5 / 99.5 percentiles (CT normalisation clips to these and z-scores with that mean and std).

Differences from nnU-Net, on purpose:
- the pooled sample total is `FOREGROUND_SAMPLES_TOTAL` = 1e7 per channel (nnU-Net: 10e7) so that memory
  stays bounded (40 MB per channel of float32 samples; the volumes are read one case at a time);
- spacings and shapes are given in the pipeline's axis order, RAS (training and inference reorient every
  volume to RAS first), worked out from each file's affine without resampling;
- label frequencies (voxels and cases per label value) and the modality / label names of `dataset.json`
  are added; nnU-Net reads those elsewhere.

Deterministic (fixed seed, cases in `dataset.json` order) and written as JSON, atomically. File I/O with
nibabel, numpy and scipy; no torch.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from visionpipes.core.errors import UserError

__all__ = [
    "FINGERPRINT_VERSION",
    "FOREGROUND_SAMPLES_TOTAL",
    "SAMPLING_SEED",
    "compute_fingerprint",
    "crop_to_nonzero",
    "ras_axes",
    "read_fingerprint",
    "write_fingerprint",
]

#: Version of the fingerprint JSON layout.
FINGERPRINT_VERSION = 1
#: Foreground intensity samples per channel over the whole dataset (nnU-Net: 10e7; see the module docstring).
FOREGROUND_SAMPLES_TOTAL = 10_000_000
#: nnU-Net's seed of each case's foreground sampling.
SAMPLING_SEED = 1234
#: The percentiles nnU-Net records (CT clips to the first and the last).
PERCENTILES = (0.5, 50.0, 99.5)


def nonzero_mask(image: np.ndarray) -> np.ndarray:
    """nnU-Net's `create_nonzero_mask`: voxels != 0 in any channel of `(C, *spatial)`, holes filled."""
    from scipy.ndimage import binary_fill_holes

    mask = np.zeros(image.shape[1:], dtype=bool)
    for channel in image:
        mask |= channel != 0
    return binary_fill_holes(mask)


def crop_to_nonzero(image: np.ndarray) -> tuple[slice, ...]:
    """The bounding box (one slice per spatial axis) of `nonzero_mask(image)`; the whole grid if it is empty."""
    mask = nonzero_mask(image)
    if not mask.any():
        return tuple(slice(0, n) for n in mask.shape)
    box = []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        hit = np.flatnonzero(mask.any(axis=others))
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)


def ras_axes(affine: np.ndarray) -> list[int]:
    """For each RAS axis (x, y, z of the reoriented volume), the file axis it comes from.

    Example:
        >>> ras_axes(np.diag([1.0, 1.0, 1.0, 1.0]))
        [0, 1, 2]
        >>> ras_axes(np.array([[0, 0, 2.5, 0], [0.8, 0, 0, 0], [0, 0.8, 0, 0], [0, 0, 0, 1.0]]))
        [2, 0, 1]
    """
    import nibabel as nib

    ornt = nib.orientations.io_orientation(np.asarray(affine, dtype=np.float64))
    order = [0, 0, 0]
    for file_axis, (ras_axis, _flip) in enumerate(ornt[:3]):
        order[int(ras_axis)] = file_axis
    return order


def _label_volume(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    from visionpipes.medical.msd.volumes import read_nifti

    data, _ = read_nifti(path)
    data = np.asarray(data)
    if data.ndim == 4 and data.shape[-1] == 1:
        data = data[..., 0]
    if tuple(data.shape) != tuple(shape):
        raise UserError(f"{path} has shape {tuple(data.shape)}, but its image has {tuple(shape)}.")
    if not np.all(np.isfinite(data)):
        raise UserError(f"{path} holds NaN or infinite label values.")
    return np.rint(data).astype(np.int64)


def analyze_case(
    image: np.ndarray, label: np.ndarray, num_samples: int, seed: int = SAMPLING_SEED
) -> dict[str, Any]:
    """nnU-Net's `analyze_case` on arrays: crop to the non-zero region, sample foreground intensities.

    Args:
        image: `(C, X, Y, Z)` voxels (file axis order).
        label: `(X, Y, Z)` integer labels.
        num_samples: foreground voxels to draw per channel (with replacement).
        seed: the sampling generator's seed (nnU-Net: 1234 for every case).

    Returns:
        `shape_before_crop`, `shape_after_crop` (file axis order), `relative_size_after_cropping` and
        `samples`: one float32 array per channel (empty without foreground).
    """
    box = crop_to_nonzero(image)
    cropped = image[(slice(None), *box)]
    foreground = label[box] > 0
    rs = np.random.RandomState(seed)
    samples = []
    for channel in cropped:
        pixels = channel[foreground]
        samples.append(
            rs.choice(pixels, num_samples, replace=True).astype(np.float32)
            if pixels.size
            else np.zeros(0, np.float32)
        )
    before = tuple(int(s) for s in image.shape[1:])
    after = tuple(int(s) for s in cropped.shape[1:])
    return {
        "shape_before_crop": before,
        "shape_after_crop": after,
        "relative_size_after_cropping": float(
            np.prod(after, dtype=np.float64) / np.prod(before, dtype=np.float64)
        ),
        "samples": samples,
    }


def _channel_statistics(samples: np.ndarray) -> dict[str, float | None]:
    if samples.size == 0:
        return {
            k: None for k in ("mean", "median", "std", "min", "max", "percentile_00_5", "percentile_99_5")
        }
    low, median, high = np.percentile(samples, PERCENTILES)  # float32 samples, no float64 copy
    return {
        "mean": float(np.mean(samples, dtype=np.float64)),
        "median": float(median),
        "std": float(np.std(samples, dtype=np.float64)),
        "min": float(np.min(samples)),
        "max": float(np.max(samples)),
        "percentile_00_5": float(low),
        "percentile_99_5": float(high),
    }


def compute_fingerprint(
    task_dir: str | os.PathLike,
    *,
    samples_total: int = FOREGROUND_SAMPLES_TOTAL,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """The fingerprint of an MSD task folder's training cases (see the module docstring).

    Args:
        task_dir: the `TaskXX_Name` folder (the CLI resolves the data stage's `task.json` to it).
        samples_total: foreground intensity samples per channel over the dataset.
        progress: called as `progress(done, total)` after each case.

    Returns:
        A JSON-ready dict: `name`, `modality` (names in channel order), `labels`, `num_training`,
        `axis_order` ("RAS"), per case `case_ids`, `spacings`, `shapes_before_crop`, `shapes_after_crop`
        (RAS order), `median_relative_size_after_cropping`, `foreground_intensity_properties_per_channel`
        (one dict per channel: mean, median, std, min, max, percentile_00_5, percentile_99_5, plus the
        modality), `label_frequencies` (per declared label: voxels, share of all voxels, cases present).

    Raises:
        UserError: if the folder is not a readable MSD task, lists no training case, or a volume is
            missing, corrupt or does not match its image.
    """
    from visionpipes.medical.msd.dataset_json import load_task
    from visionpipes.medical.msd.volumes import finite_volume, read_image_volume

    task = load_task(task_dir)
    if not task.training:
        raise UserError(f"{task.root / 'dataset.json'} lists no training cases: nothing to fingerprint.")
    n_cases = len(task.training)
    per_case = max(1, int(samples_total // n_cases))
    channels = task.num_channels
    pooled: list[list[np.ndarray]] = [[] for _ in range(channels)]
    spacings, before, after, relative, case_ids = [], [], [], [], []
    label_voxels: dict[int, int] = {int(k): 0 for k in task.labels}
    label_cases: dict[int, int] = {int(k): 0 for k in task.labels}
    total_voxels = 0
    for i, case in enumerate(task.training, start=1):
        image, nifti = read_image_volume(case.image, channels)
        image = finite_volume(image, case.image)
        label = _label_volume(case.label, image.shape[1:])
        result = analyze_case(image, label, per_case)
        order = ras_axes(nifti.affine)
        zooms = np.linalg.norm(np.asarray(nifti.affine, dtype=np.float64)[:3, :3], axis=0)
        spacings.append([round(float(zooms[a]), 6) for a in order])
        before.append([result["shape_before_crop"][a] for a in order])
        after.append([result["shape_after_crop"][a] for a in order])
        relative.append(result["relative_size_after_cropping"])
        case_ids.append(case.case_id)
        for c, samples in enumerate(result["samples"]):
            pooled[c].append(samples)
        values, counts = np.unique(label, return_counts=True)
        for value, count in zip(values.tolist(), counts.tolist()):
            label_voxels[int(value)] = label_voxels.get(int(value), 0) + int(count)
            label_cases[int(value)] = label_cases.get(int(value), 0) + 1
        total_voxels += int(label.size)
        del image, label, result
        if progress:
            progress(i, n_cases)
    stats = []
    for c in range(channels):
        samples = np.concatenate(pooled[c]) if pooled[c] else np.zeros(0, np.float32)
        stats.append({"modality": task.modality_names[c], **_channel_statistics(samples)})
        pooled[c] = []
    return {
        "fingerprint_version": FINGERPRINT_VERSION,
        "name": task.name,
        "task_dir": str(task.root),
        "modality": task.modality_names,
        "labels": {str(k): v for k, v in sorted(task.labels.items())},
        "num_training": n_cases,
        "axis_order": "RAS",
        "case_ids": case_ids,
        "spacings": spacings,
        "shapes_before_crop": before,
        "shapes_after_crop": after,
        "median_relative_size_after_cropping": float(np.median(relative)),
        "foreground_samples_per_case": per_case,
        "foreground_intensity_properties_per_channel": stats,
        "label_frequencies": {
            str(k): {
                "name": task.labels.get(k, "undeclared"),
                "voxels": label_voxels[k],
                "fraction": round(label_voxels[k] / total_voxels, 8) if total_voxels else 0.0,
                "cases": label_cases[k],
            }
            for k in sorted(label_voxels)
        },
    }


def write_fingerprint(path: str | os.PathLike, fingerprint: Mapping[str, Any]) -> Path:
    """Write the fingerprint as indented JSON, atomically (the folder is created)."""
    from visionpipes.core.io import write_json

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_json(target, dict(fingerprint))
    return target


def read_fingerprint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a fingerprint JSON written by `write_fingerprint`.

    Raises:
        UserError: if the file is missing, not JSON, or not a medical fingerprint.
    """
    import json

    p = Path(path)
    if not p.is_file():
        raise UserError(f"fingerprint {p} does not exist; write it with `vp-medical plan`.")
    try:
        data = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"fingerprint {p} is not readable JSON ({err}).") from None
    needed = {"spacings", "shapes_after_crop", "foreground_intensity_properties_per_channel", "modality"}
    if not isinstance(data, dict) or not needed <= set(data):
        raise UserError(f"fingerprint {p} is not a medical dataset fingerprint (missing {sorted(needed)}).")
    return data
