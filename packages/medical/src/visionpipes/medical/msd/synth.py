"""Generator of a small Task01_BrainTumour-format sample: brain-like 4-modality MRI volumes with tumours
(edema shell 1, non-enhancing core 2, enhancing rim 3), written exactly as the MSD ships them.

It is the pipeline's default data where nothing can be downloaded; it stands in for, never imitates the
statistics of, real BraTS scans. Output is deterministic by seed and written atomically.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from visionpipes.core.config import ConfigModel, Field
from visionpipes.core.errors import UserError
from visionpipes.core.io import atomic_path, write_json

#: Channel order of Task01_BrainTumour (channels last in the files).
MODALITY: dict[str, str] = {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}
#: Label names exactly as Task01_BrainTumour's dataset.json spells them.
LABELS: dict[str, str] = {
    "0": "background",
    "1": "edema",
    "2": "non-enhancing tumor",
    "3": "enhancing tumour",
}

#: Relative intensity of each tissue in (FLAIR, T1w, t1gd, T2w): CSF dark on FLAIR and bright on T2,
#: edema bright on FLAIR/T2, the enhancing rim bright on t1gd only, the necrotic core dark on T1.
_TISSUE = {
    "csf": (0.15, 0.25, 0.27, 1.00),
    "grey": (0.62, 0.55, 0.57, 0.68),
    "white": (0.48, 0.85, 0.86, 0.42),
    "edema": (1.05, 0.48, 0.50, 0.92),
    "non_enhancing": (0.72, 0.30, 0.34, 1.05),
    "enhancing": (0.82, 0.52, 1.45, 0.72),
}


class SynthConfig(ConfigModel):
    """What `write_synthetic_task` generates (`vp-medical synth`'s options, the data stage's sample).

    Attributes:
        cases: training cases (image + label).
        size: edge length in voxels of each cubic volume.
        seed: everything is a function of it.
        test_cases: images in `imagesTs` (no labels, as in the MSD).
        spacing: voxel size in mm.
    """

    cases: int = Field(12, ge=1)
    size: int = Field(48, ge=24, le=256)
    seed: int = 0
    test_cases: int = Field(2, ge=0)
    spacing: float = Field(1.0, gt=0)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], cells: int = 6) -> np.ndarray:
    """Low-frequency noise with unit standard deviation (a coarse grid, cubic-upsampled)."""
    from scipy.ndimage import zoom

    coarse = rng.standard_normal((cells,) * len(shape))
    fine = zoom(coarse, [s / cells for s in shape], order=3, mode="reflect")
    fine = fine[tuple(slice(0, s) for s in shape)]
    return ((fine - fine.mean()) / (fine.std() + 1e-8)).astype(np.float32)


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    return q * np.sign(np.diag(r))


def synth_case(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One brain with one tumour.

    Args:
        rng: the case's random generator.
        size: edge length in voxels.

    Returns:
        `(image, label)`: `(size, size, size, 4)` float32 (FLAIR, T1w, t1gd, T2w; 0 outside the brain)
        and `(size, size, size)` uint8 with 0 background, 1 edema, 2 non-enhancing core, 3 enhancing rim.
    """
    from scipy.ndimage import gaussian_filter

    shape = (size, size, size)
    grid = np.stack(np.meshgrid(*[np.arange(size, dtype=np.float32)] * 3, indexing="ij"), axis=-1)

    # Brain: an ellipsoid with a bumpy surface, grey-matter cortex, white matter, two ventricles.
    centre = np.array(shape, np.float32) / 2 + rng.uniform(-0.03, 0.03, 3) * size
    radii = np.array([0.40, 0.45, 0.36]) * size * rng.uniform(0.94, 1.04, 3)
    d_brain = np.linalg.norm((grid - centre) / radii, axis=-1) + 0.04 * _smooth_noise(rng, shape, 8)
    brain = d_brain < 1.0
    grey = brain & (d_brain > 0.80 + 0.07 * _smooth_noise(rng, shape, 10))
    ventricles = np.zeros(shape, bool)
    for side in (-1, 1):
        v_centre = centre + np.array([side * 0.09, 0.02, 0.05]) * size
        v_radii = np.array([0.05, 0.16, 0.07]) * size * rng.uniform(0.8, 1.2, 3)
        ventricles |= np.linalg.norm((grid - v_centre) / v_radii, axis=-1) < 1.0
    tissue = np.zeros(shape, np.uint8)  # 0 outside, 1 white, 2 grey, 3 csf
    tissue[brain] = 1
    tissue[grey] = 2
    tissue[ventricles & brain] = 3

    # Tumour: irregular nested shells around a random centre inside the white matter.
    inside = np.argwhere(brain & (d_brain < 0.55))
    t_centre = inside[rng.integers(len(inside))].astype(np.float32)
    core_radius = size * rng.uniform(0.07, 0.13)
    edema_radius = core_radius * rng.uniform(1.4, 2.0)
    necrotic_fraction = rng.uniform(0.5, 0.75)
    axes = rng.uniform(0.8, 1.25, 3)
    local = (grid - t_centre) @ _random_rotation(rng).T / axes
    d_tumour = np.linalg.norm(local, axis=-1) * np.exp(0.15 * _smooth_noise(rng, shape, 8))
    label = np.zeros(shape, np.uint8)
    label[d_tumour < edema_radius] = 1
    label[d_tumour < core_radius] = 3
    label[d_tumour < core_radius * necrotic_fraction] = 2
    label[~brain] = 0

    # Intensities per modality, partial-volume blur, a smooth bias field, noise, arbitrary scanner scale.
    names = ["white", "grey", "csf"]
    image = np.zeros((*shape, 4), np.float32)
    for value, name in enumerate(names, start=1):
        image[tissue == value] = _TISSUE[name]
    for value, name in ((1, "edema"), (2, "non_enhancing"), (3, "enhancing")):
        image[label == value] = _TISSUE[name]
    for c in range(4):
        channel = gaussian_filter(image[..., c], sigma=0.7)
        bias = np.exp(0.08 * _smooth_noise(rng, shape, 4))
        channel = channel * bias + rng.normal(0.0, 0.035, shape).astype(np.float32)
        scale = rng.uniform(300.0, 1200.0)
        image[..., c] = np.where(brain, np.clip(channel, 0.0, None) * scale, 0.0)
    return image.astype(np.float32), label


def _affine(size: int, spacing: float) -> np.ndarray:
    """RAS affine of an LPS-stored volume centred on the origin (as scanner exports often are)."""
    affine = np.diag([-spacing, -spacing, spacing, 1.0])
    half = spacing * (size - 1) / 2
    affine[:3, 3] = [half, half, -half]
    return affine


#: Byte offset of `scl_slope` (then `scl_inter`) in a NIfTI-1 header.
SCL_OFFSET = 112
#: What a sample generator makes of one case's random generator: `(image, label)`.
CaseMaker = Callable[[np.random.Generator], tuple[np.ndarray, np.ndarray]]


def save_nifti(data: np.ndarray, affine: np.ndarray, path: Path, *, unit_scaling: bool = False) -> None:
    """Write `data` as NIfTI-1 (`.nii.gz`) with qform/sform (code 1) and mm units, in `data`'s dtype.

    Args:
        unit_scaling: write the header's scl_slope 1 and scl_inter 0 as such (the official CT tasks' int16
            Hounsfield units), where nibabel writes NaN ("unscaled") for an array stored in its own dtype;
            the file is then gzipped here (level 6, mtime 0). False: `nibabel.save` as it is.
    """
    import nibabel as nib

    image = nib.Nifti1Image(data, affine)
    image.header.set_xyzt_units("mm", "sec")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    image.set_data_dtype(data.dtype)
    if not unit_scaling:
        nib.save(image, path)
        return
    import gzip
    import struct

    payload = bytearray(image.to_bytes())
    struct.pack_into(f"{image.header.endianness}ff", payload, SCL_OFFSET, 1.0, 0.0)
    path.write_bytes(gzip.compress(bytes(payload), compresslevel=6, mtime=0))


def write_sample_task(
    out_dir: str | os.PathLike,
    meta: dict,
    make_case: CaseMaker,
    affine: np.ndarray,
    *,
    seed: int,
    overwrite: bool = False,
    unit_scaling: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write a synthetic MSD task folder atomically: `imagesTr`/`labelsTr`/`imagesTs` with the files that
    `meta` (its `dataset.json`) lists, each case made by `make_case` from its own random generator
    (`default_rng([seed, 0, n])` for the n-th training case, `[seed, 1, n]` for a test image, n counting on
    from the training cases), then `dataset.json` itself.

    Args:
        out_dir: the task folder to create.
        meta: the `dataset.json` content (its `training` and `test` lists name the files).
        make_case: the case generator; test images drop its label.
        affine: every volume's affine.
        seed: the sample's seed.
        overwrite: replace `out_dir` if it exists and is not empty.
        unit_scaling: see `save_nifti`.
        progress: called as `progress(done, total)` after each case.

    Returns:
        `out_dir`.

    Raises:
        UserError: if `out_dir` is a file, or exists, is not empty and `overwrite` is False.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"output {out} exists and is not a folder.")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(f"output folder {out} is not empty; pass --overwrite to replace it.")
    out.parent.mkdir(parents=True, exist_ok=True)
    items = [(e["image"], e["label"], 0) for e in meta["training"]] + [(t, None, 1) for t in meta["test"]]
    with atomic_path(out, is_dir=True) as tmp:
        for folder in ("imagesTr", "labelsTr", "imagesTs"):
            (tmp / folder).mkdir()
        for done, (image_rel, label_rel, split) in enumerate(items, start=1):
            image, label = make_case(np.random.default_rng([seed, split, done]))
            save_nifti(image, affine, tmp / image_rel, unit_scaling=unit_scaling)
            if label_rel is not None:
                save_nifti(label, affine, tmp / label_rel, unit_scaling=unit_scaling)
            if progress:
                progress(done, len(items))
        write_json(tmp / "dataset.json", meta)
    return out


def dataset_json(config: SynthConfig) -> dict:
    """The `dataset.json` of a synthetic sample: every key of Task01_BrainTumour's, `release` spelt right."""
    train_ids = [f"BRATS_{i:03d}" for i in range(1, config.cases + 1)]
    test_ids = [f"BRATS_{i:03d}" for i in range(config.cases + 1, config.cases + config.test_cases + 1)]
    return {
        "name": "BRATS",
        "description": "Synthetic gliomas (edema, non-enhancing and enhancing tumour) on brain-like MRI, "
        "in Task01_BrainTumour format",
        "reference": "visionpipes synthetic sample (format: http://medicaldecathlon.com)",
        "licence": "CC0 1.0",
        "release": f"synthetic seed={config.seed} size={config.size}",
        "tensorImageSize": "4D",
        "modality": dict(MODALITY),
        "labels": dict(LABELS),
        "numTraining": config.cases,
        "numTest": config.test_cases,
        "training": [
            {"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in train_ids
        ],
        "test": [f"./imagesTs/{c}.nii.gz" for c in test_ids],
    }


def write_synthetic_task(
    out_dir: str | os.PathLike,
    config: SynthConfig | None = None,
    *,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write a complete Task01_BrainTumour-format sample into `out_dir`, atomically.

    Args:
        out_dir: the task folder to create (e.g. `data/medical/Task01_BrainTumour`).
        config: sizes and seed; default `SynthConfig()`.
        overwrite: replace `out_dir` if it exists and is not empty.
        progress: called as `progress(done, total)` after each volume.

    Returns:
        `out_dir`.

    Raises:
        UserError: if `out_dir` exists, is not empty and `overwrite` is False.

    Example:
        >>> from visionpipes.medical.msd.dataset_json import load_task
        >>> task = load_task(write_synthetic_task(tmp / "Task01_BrainTumour", SynthConfig(cases=2, size=32)))  # doctest: +SKIP
    """
    config = config or SynthConfig()
    return write_sample_task(
        out_dir,
        dataset_json(config),
        lambda rng: synth_case(rng, config.size),
        _affine(config.size, config.spacing),
        seed=config.seed,
        overwrite=overwrite,
        progress=progress,
    )
