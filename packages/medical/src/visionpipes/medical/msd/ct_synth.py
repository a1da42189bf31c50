"""Generator of small CT tumour tasks in the Decathlon's own format: `Task03_Liver` (liver 1, cancer 2) and
`Task06_Lung` (cancer 1), single-channel CT in Hounsfield units stored as int16 (scl_slope 1, scl_inter 0:
the stored value is the HU), on an anisotropic grid (thin in-plane voxels, thick slices), with the official
`dataset.json` keys, modality `{"0": "CT"}` and label names.

The phantoms follow real CT's intensity scale, not a shortcut through the labels: air -1000, fat -100,
muscle ~50, contrast-enhanced vessels ~170, bone ~700; the portal-venous liver ~100 HU with hypodense
tumours ~55 HU (±15) inside it (and a spleen of nearly the same HU beside it, so intensity alone does not
give the liver, see `HU`); lung parenchyma ~-850 with vessels, and a solid nodule ~30 HU inside a lung. Partial-volume
blur and Gaussian noise (~10 HU) are added before rounding to int16. It stands in for, and never imitates
the statistics of, real scans. Deterministic by seed; written atomically.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np

from visionpipes.core.config import ConfigModel, Field
from visionpipes.medical.msd.synth import write_sample_task

CTTask = Literal["liver", "lung"]
#: The synthetic CT tasks and their official folder names.
TASK_FOLDERS: dict[str, str] = {"liver": "Task03_Liver", "lung": "Task06_Lung"}
#: `dataset.json` of each task as the Decathlon ships it (labels and modality exactly; the counts and lists
#: are the sample's). Case files are named `liver_<n>.nii.gz` / `lung_<n>.nii.gz` as in the official folders.
OFFICIAL: dict[str, dict] = {
    "liver": {
        "name": "Liver",
        "description": "Liver and liver tumor segmentation",
        "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "liver", "2": "cancer"},
        "prefix": "liver",
    },
    "lung": {
        "name": "Lung",
        "description": "Lung and lung cancer segmentation",
        "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "cancer"},
        "prefix": "lung",
    },
}
#: Hounsfield units of the tissues in the portal-venous phase that most of LiTS/Task03 was scanned in: the
#: liver enhances to ~100 HU (nnU-Net's Task03 fingerprint: foreground mean ~99 HU, 0.5/99.5 percentiles
#: ~-17/201), hypovascular tumours stay ~40-70 HU, the spleen enhances like the liver, muscle ~50.
HU: dict[str, float] = {
    "air": -1000.0,
    "fat": -100.0,
    "muscle": 50.0,
    "liver": 100.0,
    "tumour": 55.0,
    "spleen": 105.0,
    "kidney": 160.0,
    "vessel": 170.0,
    "bowel": 30.0,
    "gas": -600.0,
    "bone": 700.0,
    "lung": -850.0,
    "nodule": 30.0,
}


class CTSynthConfig(ConfigModel):
    """What `write_ct_task` generates (`vp-medical synth --task liver|lung`, the data stage's CT sample).

    Attributes:
        task: `liver` (Task03_Liver) or `lung` (Task06_Lung).
        cases: training cases (image + label).
        size: in-plane edge in voxels (the x and y axes).
        slices: number of axial slices (the z axis).
        spacing: in-plane voxel size in mm.
        slice_spacing: slice thickness in mm (anisotropic, as real abdominal/chest CT).
        noise: standard deviation of the Gaussian noise in HU.
        seed: everything is a function of it.
        test_cases: images in `imagesTs` (no labels, as in the MSD).
    """

    task: CTTask = "liver"
    cases: int = Field(20, ge=1)
    size: int = Field(64, ge=24, le=512)
    slices: int = Field(24, ge=8, le=512)
    spacing: float = Field(1.0, gt=0)
    slice_spacing: float = Field(2.5, gt=0)
    noise: float = Field(10.0, ge=0)
    seed: int = 0
    test_cases: int = Field(2, ge=0)


def _grid(shape: tuple[int, int, int], zooms: tuple[float, float, float]) -> np.ndarray:
    """Voxel positions in mm, centred on the volume, along the stored axes: `(*shape, 3)`.

    The files are stored LPS (`ct_affine`): +x is the patient's left, +y posterior, +z superior.
    """
    axes = [(np.arange(n, dtype=np.float32) - (n - 1) / 2) * z for n, z in zip(shape, zooms)]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)


def _ellipsoid(grid: np.ndarray, centre, radii) -> np.ndarray:
    """Normalised distance to an axis-aligned ellipsoid (< 1 inside)."""
    return np.linalg.norm((grid - np.asarray(centre, np.float32)) / np.asarray(radii, np.float32), axis=-1)


def _blob(rng: np.random.Generator, grid: np.ndarray, centre, radius: float) -> np.ndarray:
    """A lumpy sphere of about `radius` mm (three random lobes), as a boolean mask."""
    mask = _ellipsoid(grid, centre, radius * rng.uniform(0.8, 1.2, 3)) < 1.0
    for _ in range(2):
        offset = rng.normal(0, radius * 0.45, 3)
        mask |= _ellipsoid(grid, np.asarray(centre) + offset, radius * rng.uniform(0.5, 0.8, 3)) < 1.0
    return mask


def _tube(grid: np.ndarray, start, direction, radius: float) -> np.ndarray:
    """A straight cylinder through `start` along `direction` (mm), as a boolean mask."""
    d = np.asarray(direction, np.float32)
    d = d / np.linalg.norm(d)
    rel = grid - np.asarray(start, np.float32)
    along = rel @ d
    return np.linalg.norm(rel - along[..., None] * d, axis=-1) < radius


def _vessels(
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
        mask |= _tube(grid, start, rng.normal(0, 1, 3) * [1, 1, z_scale], rng.uniform(*radius_mm)) & organ
    return mask


def _lesion_in(
    rng: np.random.Generator,
    grid: np.ndarray,
    organ: np.ndarray,
    distance_inside: np.ndarray,
    radius_mm: tuple[float, float],
    *,
    depth: float,
) -> np.ndarray:
    """A lumpy lesion (`_blob`) of a radius drawn from `radius_mm`, centred where the organ is at least
    `depth` radii deep (the deepest fifth of the organ if nowhere is), clipped to the organ.

    Args:
        distance_inside: `_distance_mm(organ, zooms)`, passed in so that several lesions share it.
    """
    radius = rng.uniform(*radius_mm)
    deep = np.argwhere(distance_inside > radius * depth)
    if not len(deep):
        deep = np.argwhere(distance_inside >= distance_inside.max() * 0.8)
    centre = grid[tuple(deep[rng.integers(len(deep))])]
    return _blob(rng, grid, centre, radius) & organ


def _body(
    rng: np.random.Generator, grid: np.ndarray, fov: float, *, abdomen: bool
) -> tuple[np.ndarray, np.ndarray]:
    """An elliptic trunk: subcutaneous fat, a muscle wall, the spine with the psoas muscles, the aorta and,
    for an abdomen, the inside filled with mesenteric fat and bowel loops (soft tissue with gas pockets);
    a chest is filled with mediastinal soft tissue. Returns HU and the body mask."""
    shape = grid.shape[:3]
    hu = np.full(shape, HU["air"], np.float32)
    radii = (0.46 * fov * rng.uniform(0.95, 1.02), 0.36 * fov * rng.uniform(0.95, 1.02), 1e6)
    d = _ellipsoid(grid, (0, 0, 0), radii)
    body = d < 1.0
    hu[body] = HU["fat"]
    wall = 1.0 - 0.10 * rng.uniform(0.8, 1.2)
    hu[d < wall] = HU["muscle"]
    if abdomen:
        inside = d < wall - 0.07
        hu[inside] = HU["fat"] + 10
        field = _smooth(rng, shape, sigma=1.5)
        bowel = inside & (field > 0.1)
        hu[bowel] = HU["bowel"] + 10 * rng.standard_normal()
        hu[inside & (field > 1.6)] = HU["gas"]
    spine_centre = np.array([rng.normal(0, 0.01 * fov), 0.24 * fov, 0])
    for side in (-1, 1):  # psoas muscles beside the spine
        psoas = _ellipsoid(
            grid, spine_centre + np.array([side * 0.11 * fov, -0.02 * fov, 0]), (0.05 * fov, 0.06 * fov, 1e6)
        )
        hu[psoas < 1.0] = HU["muscle"]
    hu[_ellipsoid(grid, spine_centre, (0.07 * fov, 0.07 * fov, 1e6)) < 1.0] = HU["bone"]
    aorta_centre = (0.04 * fov, 0.12 * fov, 0)
    hu[_ellipsoid(grid, aorta_centre, (0.035 * fov, 0.035 * fov, 1e6)) < 1.0] = HU["vessel"]
    return hu, body


def synth_liver_case(
    rng: np.random.Generator, shape: tuple[int, int, int], zooms: tuple[float, float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """One abdomen with a liver holding 1-3 hypodense tumours (labels: 1 liver, 2 cancer).

    Returns:
        `(hu, label)`: float32 HU before noise and rounding, uint8 labels, both `shape`.
    """
    grid = _grid(shape, zooms)
    fov = shape[0] * zooms[0]
    depth = shape[2] * zooms[2]
    hu, body = _body(rng, grid, fov, abdomen=True)
    # Liver: in the patient's right (image x < 0 in RAS), a large lobe tapering towards both ends in z.
    centre = np.array([-0.16 * fov, -0.02 * fov, rng.uniform(-0.08, 0.08) * depth], np.float32)
    radii = np.array([0.24 * fov, 0.26 * fov, 0.46 * depth]) * rng.uniform(0.9, 1.1, 3)
    wobble = 0.06 * np.sin(grid[..., 0] / fov * rng.uniform(8, 14) + rng.uniform(0, 6))
    liver = (_ellipsoid(grid, centre, radii) + wobble < 1.0) & body
    # the left lobe, reaching across the midline
    left = (
        _ellipsoid(grid, centre + np.array([0.22 * fov, -0.06 * fov, 0.1 * depth]), radii * [0.55, 0.45, 0.6])
        < 1.0
    )
    liver |= left & body
    # Spleen (nearly the liver's HU) on the other side, kidneys posterior.
    spleen = _ellipsoid(
        grid, (0.30 * fov, 0.05 * fov, rng.uniform(-0.1, 0.1) * depth), (0.08 * fov, 0.11 * fov, 0.3 * depth)
    )
    hu[(spleen < 1.0) & ~liver] = HU["spleen"] + rng.normal(0, 3)
    for side in (-1, 1):
        kidney = _ellipsoid(
            grid, (side * 0.2 * fov, 0.17 * fov, -0.15 * depth), (0.06 * fov, 0.08 * fov, 0.25 * depth)
        )
        hu[(kidney < 1.0) & ~liver] = HU["kidney"]
    liver_hu = HU["liver"] + rng.normal(0, 8)  # enhancement varies with the contrast timing
    hu[liver] = liver_hu
    # Hepatic/portal veins: bright tubes through the liver, mostly in-plane.
    hu[_vessels(rng, grid, liver, 2, (1.0, 1.8), z_scale=0.3)] = HU["vessel"]
    # Tumours: hypodense lumps fully inside the liver (1-3, 5-10 mm radius).
    label = np.zeros(shape, np.uint8)
    label[liver] = 1
    distance_inside = _distance_mm(liver, zooms)
    for _ in range(int(rng.integers(1, 4))):
        tumour = _lesion_in(rng, grid, liver, distance_inside, (5.0, 10.0), depth=0.8)
        hu[tumour] = HU["tumour"] + rng.uniform(-15, 15)
        label[tumour] = 2
    return hu, label


def synth_lung_case(
    rng: np.random.Generator, shape: tuple[int, int, int], zooms: tuple[float, float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """One chest with two lungs, their vessels and one solid nodule (label 1 cancer).

    Returns:
        `(hu, label)`: float32 HU before noise and rounding, uint8 labels, both `shape`.
    """
    grid = _grid(shape, zooms)
    fov = shape[0] * zooms[0]
    depth = shape[2] * zooms[2]
    hu, body = _body(rng, grid, fov, abdomen=False)
    lungs = np.zeros(shape, bool)
    for side in (-1, 1):
        d = _ellipsoid(
            grid,
            (side * 0.19 * fov, 0.02 * fov, 0),
            np.array([0.15 * fov, 0.24 * fov, 0.7 * depth]) * rng.uniform(0.92, 1.05, 3),
        )
        lungs |= (d < 1.0) & body
    hu[lungs] = HU["lung"] + 25 * _smooth(rng, shape)[lungs]
    # Pulmonary vessels: thin soft-tissue tubes in the lungs (they look like nodules on one slice).
    hu[_vessels(rng, grid, lungs, 6, (0.7, 1.3))] = HU["muscle"]
    distance_inside = _distance_mm(lungs, zooms)
    nodule = _lesion_in(rng, grid, lungs, distance_inside, (5.0, 10.0), depth=1.0)
    hu[nodule] = HU["nodule"] + rng.uniform(-10, 10)
    label = nodule.astype(np.uint8)
    return hu, label


def _smooth(rng: np.random.Generator, shape: tuple[int, ...], sigma: float = 2.0) -> np.ndarray:
    """Gaussian-smoothed noise of unit standard deviation (blobs of about `sigma` voxels)."""
    from scipy.ndimage import gaussian_filter

    noise = gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma=sigma)
    return noise / (noise.std() + 1e-6)


def _distance_mm(mask: np.ndarray, zooms: tuple[float, float, float]) -> np.ndarray:
    from scipy.ndimage import distance_transform_edt

    return distance_transform_edt(mask, sampling=zooms)


def synth_ct_case(rng: np.random.Generator, config: CTSynthConfig) -> tuple[np.ndarray, np.ndarray]:
    """One case of `config.task`: int16 HU (blurred, noisy) and uint8 labels, `(size, size, slices)`."""
    from scipy.ndimage import gaussian_filter

    shape = (config.size, config.size, config.slices)
    zooms = (config.spacing, config.spacing, config.slice_spacing)
    make = synth_liver_case if config.task == "liver" else synth_lung_case
    hu, label = make(rng, shape, zooms)
    # Partial volume: the scanner's point spread (~1 mm in-plane, the slice profile along z).
    hu = gaussian_filter(hu, sigma=(0.7, 0.7, 0.4))
    hu += rng.normal(0.0, config.noise, shape).astype(np.float32)
    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16), label


def ct_affine(config: CTSynthConfig) -> np.ndarray:
    """RAS affine of an LPS-stored axial series (x, y negated), centred on the origin."""
    zooms = np.array([config.spacing, config.spacing, config.slice_spacing])
    shape = np.array([config.size, config.size, config.slices])
    affine = np.diag([-zooms[0], -zooms[1], zooms[2], 1.0])
    half = zooms * (shape - 1) / 2
    affine[:3, 3] = [half[0], half[1], -half[2]]
    return affine


def case_ids(config: CTSynthConfig) -> tuple[list[str], list[str]]:
    """Training and test case ids (`liver_0`, `liver_1`, ... as the official files are numbered)."""
    prefix = OFFICIAL[config.task]["prefix"]
    train = [f"{prefix}_{i}" for i in range(config.cases)]
    test = [f"{prefix}_{i}" for i in range(config.cases, config.cases + config.test_cases)]
    return train, test


def ct_dataset_json(config: CTSynthConfig) -> dict:
    """The `dataset.json` of a synthetic CT task: the official keys, modality and labels of the task."""
    official = OFFICIAL[config.task]
    train_ids, test_ids = case_ids(config)
    return {
        "name": official["name"],
        "description": f"{official['description']} (synthetic CT phantoms in {TASK_FOLDERS[config.task]} format)",
        "reference": "visionpipes synthetic sample (format: http://medicaldecathlon.com)",
        "licence": "CC0 1.0",
        "release": f"synthetic seed={config.seed} grid={config.size}x{config.size}x{config.slices} "
        f"spacing={config.spacing}x{config.spacing}x{config.slice_spacing}",
        "tensorImageSize": "3D",
        "modality": dict(official["modality"]),
        "labels": dict(official["labels"]),
        "numTraining": config.cases,
        "numTest": config.test_cases,
        "training": [
            {"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in train_ids
        ],
        "test": [f"./imagesTs/{c}.nii.gz" for c in test_ids],
    }


def write_ct_task(
    out_dir: str | os.PathLike,
    config: CTSynthConfig | None = None,
    *,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write a complete `Task03_Liver` / `Task06_Lung`-format sample into `out_dir`, atomically.

    Args:
        out_dir: the task folder to create (e.g. `data/medical/Task03_Liver`).
        config: task, sizes and seed; default `CTSynthConfig()` (liver).
        overwrite: replace `out_dir` if it exists and is not empty.
        progress: called as `progress(done, total)` after each volume.

    Returns:
        `out_dir`.

    Raises:
        UserError: if `out_dir` exists, is not empty and `overwrite` is False.
    """
    config = config or CTSynthConfig()
    return write_sample_task(
        out_dir,
        ct_dataset_json(config),
        lambda rng: synth_ct_case(rng, config),
        ct_affine(config),
        seed=config.seed,
        overwrite=overwrite,
        unit_scaling=True,
        progress=progress,
    )
