"""Generator of small CT tumour tasks in the Decathlon's own format: `Task03_Liver` (liver 1, cancer 2),
`Task06_Lung` (cancer 1), `Task07_Pancreas` (pancreas 1, cancer 2) and `Task10_Colon` (colon cancer primaries
1), single-channel CT in Hounsfield units stored as int16 (scl_slope 1, scl_inter 0:
the stored value is the HU), on an anisotropic grid (thin in-plane voxels, thick slices), with the official
`dataset.json` keys, modality `{"0": "CT"}` and label names.

The phantoms follow real CT's intensity scale, not a shortcut through the labels: air -1000, fat -100,
muscle ~50, contrast-enhanced vessels ~170, bone ~700; the portal-venous liver ~100 HU with hypodense
tumours ~55 HU (±15) inside it (and a spleen of nearly the same HU beside it, so intensity alone does not
give the liver, see `HU`); lung parenchyma ~-850 with vessels, and a solid nodule ~30 HU inside a lung; a
pancreas (~100 HU) lying across the midline in front of the aorta and the splenic vein, its head in the
duodenal loop, with a hypodense adenocarcinoma (~60 HU) in the head or neck; a colon frame (ascending,
transverse, descending: a ~40 HU wall around gas or fluid) with one annular or semi-annular mass (~75 HU)
thickening the wall and narrowing the lumen, the only labelled structure as in Task10. Partial-volume
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
from visionpipes.medical.msd.phantom import (
    bezier_points,
    distance_mm,
    ellipsoid_chain,
    ellipsoid_distance,
    lesion_in,
    lumpy_blob,
    smooth_noise,
    tube_mask,
    vessels_in,
    voxel_grid,
)
from visionpipes.medical.msd.synth import write_sample_task

CTTask = Literal["liver", "lung", "pancreas", "colon"]
#: The synthetic CT tasks and their official folder names.
TASK_FOLDERS: dict[str, str] = {
    "liver": "Task03_Liver",
    "lung": "Task06_Lung",
    "pancreas": "Task07_Pancreas",
    "colon": "Task10_Colon",
}
#: Each task's default voxel size (in-plane, slice) in mm, near the official data's median: Task07 ~0.8 x 2.5,
#: Task10 ~0.8 x 5 (thick slices); the liver and lung samples keep 1 x 2.5.
TASK_SPACING: dict[str, tuple[float, float]] = {
    "liver": (1.0, 2.5),
    "lung": (1.0, 2.5),
    "pancreas": (0.8, 2.5),
    "colon": (0.8, 5.0),
}
#: `dataset.json` of each task as the Decathlon ships it (labels and modality exactly; the counts and lists
#: are the sample's). Case files are named `<prefix>_<n>.nii.gz` with the official folders' numbering:
#: `liver_0`, `liver_1`, ... (unpadded, from 0) in Task03, `lung_001`, `pancreas_001`, `colon_001`, ...
#: (three digits, from 1) in the others (`digits`, `first`).
OFFICIAL: dict[str, dict] = {
    "liver": {
        "name": "Liver",
        "description": "Liver and liver tumor segmentation",
        "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "liver", "2": "cancer"},
        "prefix": "liver",
        "digits": 0,
        "first": 0,
    },
    "lung": {
        "name": "Lung",
        "description": "Lung and lung cancer segmentation",
        "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "cancer"},
        "prefix": "lung",
        "digits": 3,
        "first": 1,
    },
    "pancreas": {
        "name": "Pancreas",
        "description": "Pancreas and cancer segmentation",
        "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "pancreas", "2": "cancer"},
        "prefix": "pancreas",
        "digits": 3,
        "first": 1,
    },
    "colon": {
        "name": "Colon",
        "description": "Colon cancer segmentation",
        "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "colon cancer primaries"},
        "prefix": "colon",
        "digits": 3,
        "first": 1,
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
    "pancreas": 100.0,
    "pancreas_tumour": 60.0,
    "colon_wall": 40.0,
    "colon_tumour": 75.0,
    "fluid": 10.0,
    "gas_lumen": -900.0,
}


class CTSynthConfig(ConfigModel):
    """What `write_ct_task` generates (`vp-medical synth --task liver|lung|pancreas|colon`, the data stage's
    CT sample).

    Attributes:
        task: `liver` (Task03_Liver), `lung` (Task06_Lung), `pancreas` (Task07_Pancreas) or `colon`
            (Task10_Colon).
        cases: training cases (image + label).
        size: in-plane edge in voxels (the x and y axes).
        slices: number of axial slices (the z axis).
        spacing: in-plane voxel size in mm; None: the task's (`TASK_SPACING`).
        slice_spacing: slice thickness in mm (anisotropic, as real abdominal/chest CT); None: the task's.
        noise: standard deviation of the Gaussian noise in HU.
        seed: everything is a function of it.
        test_cases: images in `imagesTs` (no labels, as in the MSD).
    """

    task: CTTask = "liver"
    cases: int = Field(20, ge=1)
    size: int = Field(64, ge=24, le=512)
    slices: int = Field(24, ge=8, le=512)
    spacing: float | None = Field(None, gt=0)
    slice_spacing: float | None = Field(None, gt=0)
    noise: float = Field(10.0, ge=0)
    seed: int = 0
    test_cases: int = Field(2, ge=0)

    def zooms(self) -> tuple[float, float, float]:
        """Voxel size in mm along the stored axes (x, y, z), the task's defaults where unset."""
        in_plane, thickness = TASK_SPACING[self.task]
        spacing = in_plane if self.spacing is None else self.spacing
        return (spacing, spacing, thickness if self.slice_spacing is None else self.slice_spacing)


def _spleen_and_kidneys(
    rng: np.random.Generator, grid: np.ndarray, hu: np.ndarray, fov: float, depth: float, where: np.ndarray
) -> None:
    """Paint the spleen (nearly the liver's HU) on the patient's left and the two kidneys posterior, within
    `where`, into `hu`."""
    spleen = ellipsoid_distance(
        grid, (0.30 * fov, 0.05 * fov, rng.uniform(-0.1, 0.1) * depth), (0.08 * fov, 0.11 * fov, 0.3 * depth)
    )
    hu[(spleen < 1.0) & where] = HU["spleen"] + rng.normal(0, 3)
    for side in (-1, 1):
        kidney = ellipsoid_distance(
            grid, (side * 0.2 * fov, 0.17 * fov, -0.15 * depth), (0.06 * fov, 0.08 * fov, 0.25 * depth)
        )
        hu[(kidney < 1.0) & where] = HU["kidney"]


def _body(
    rng: np.random.Generator, grid: np.ndarray, fov: float, *, abdomen: bool
) -> tuple[np.ndarray, np.ndarray]:
    """An elliptic trunk: subcutaneous fat, a muscle wall, the spine with the psoas muscles, the aorta and,
    for an abdomen, the inside filled with mesenteric fat and bowel loops (soft tissue with gas pockets);
    a chest is filled with mediastinal soft tissue. Returns HU and the body mask."""
    shape = grid.shape[:3]
    hu = np.full(shape, HU["air"], np.float32)
    radii = (0.46 * fov * rng.uniform(0.95, 1.02), 0.36 * fov * rng.uniform(0.95, 1.02), 1e6)
    d = ellipsoid_distance(grid, (0, 0, 0), radii)
    body = d < 1.0
    hu[body] = HU["fat"]
    wall = 1.0 - 0.10 * rng.uniform(0.8, 1.2)
    hu[d < wall] = HU["muscle"]
    if abdomen:
        inside = d < wall - 0.07
        hu[inside] = HU["fat"] + 10
        field = smooth_noise(rng, shape, sigma=1.5)
        bowel = inside & (field > 0.1)
        hu[bowel] = HU["bowel"] + 10 * rng.standard_normal()
        hu[inside & (field > 1.6)] = HU["gas"]
    spine_centre = np.array([rng.normal(0, 0.01 * fov), 0.24 * fov, 0])
    for side in (-1, 1):  # psoas muscles beside the spine
        psoas = ellipsoid_distance(
            grid, spine_centre + np.array([side * 0.11 * fov, -0.02 * fov, 0]), (0.05 * fov, 0.06 * fov, 1e6)
        )
        hu[psoas < 1.0] = HU["muscle"]
    hu[ellipsoid_distance(grid, spine_centre, (0.07 * fov, 0.07 * fov, 1e6)) < 1.0] = HU["bone"]
    aorta_centre = (0.04 * fov, 0.12 * fov, 0)
    hu[ellipsoid_distance(grid, aorta_centre, (0.035 * fov, 0.035 * fov, 1e6)) < 1.0] = HU["vessel"]
    return hu, body


def synth_liver_case(
    rng: np.random.Generator, shape: tuple[int, int, int], zooms: tuple[float, float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """One abdomen with a liver holding 1-3 hypodense tumours (labels: 1 liver, 2 cancer).

    Returns:
        `(hu, label)`: float32 HU before noise and rounding, uint8 labels, both `shape`.
    """
    grid = voxel_grid(shape, zooms)
    fov = shape[0] * zooms[0]
    depth = shape[2] * zooms[2]
    hu, body = _body(rng, grid, fov, abdomen=True)
    # Liver: in the patient's right (image x < 0 in RAS), a large lobe tapering towards both ends in z.
    centre = np.array([-0.16 * fov, -0.02 * fov, rng.uniform(-0.08, 0.08) * depth], np.float32)
    radii = np.array([0.24 * fov, 0.26 * fov, 0.46 * depth]) * rng.uniform(0.9, 1.1, 3)
    wobble = 0.06 * np.sin(grid[..., 0] / fov * rng.uniform(8, 14) + rng.uniform(0, 6))
    liver = (ellipsoid_distance(grid, centre, radii) + wobble < 1.0) & body
    # the left lobe, reaching across the midline
    left = (
        ellipsoid_distance(
            grid, centre + np.array([0.22 * fov, -0.06 * fov, 0.1 * depth]), radii * [0.55, 0.45, 0.6]
        )
        < 1.0
    )
    liver |= left & body
    _spleen_and_kidneys(rng, grid, hu, fov, depth, ~liver)
    liver_hu = HU["liver"] + rng.normal(0, 8)  # enhancement varies with the contrast timing
    hu[liver] = liver_hu
    # Hepatic/portal veins: bright tubes through the liver, mostly in-plane.
    hu[vessels_in(rng, grid, liver, 2, (1.0, 1.8), z_scale=0.3)] = HU["vessel"]
    # Tumours: hypodense lumps fully inside the liver (1-3, 5-10 mm radius).
    label = np.zeros(shape, np.uint8)
    label[liver] = 1
    distance_inside = distance_mm(liver, zooms)
    for _ in range(int(rng.integers(1, 4))):
        tumour = lesion_in(rng, grid, liver, distance_inside, (5.0, 10.0), depth=0.8)
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
    grid = voxel_grid(shape, zooms)
    fov = shape[0] * zooms[0]
    depth = shape[2] * zooms[2]
    hu, body = _body(rng, grid, fov, abdomen=False)
    lungs = np.zeros(shape, bool)
    for side in (-1, 1):
        d = ellipsoid_distance(
            grid,
            (side * 0.19 * fov, 0.02 * fov, 0),
            np.array([0.15 * fov, 0.24 * fov, 0.7 * depth]) * rng.uniform(0.92, 1.05, 3),
        )
        lungs |= (d < 1.0) & body
    hu[lungs] = HU["lung"] + 25 * smooth_noise(rng, shape)[lungs]
    # Pulmonary vessels: thin soft-tissue tubes in the lungs (they look like nodules on one slice).
    hu[vessels_in(rng, grid, lungs, 6, (0.7, 1.3))] = HU["muscle"]
    distance_inside = distance_mm(lungs, zooms)
    nodule = lesion_in(rng, grid, lungs, distance_inside, (5.0, 10.0), depth=1.0)
    hu[nodule] = HU["nodule"] + rng.uniform(-10, 10)
    label = nodule.astype(np.uint8)
    return hu, label


def synth_pancreas_case(
    rng: np.random.Generator, shape: tuple[int, int, int], zooms: tuple[float, float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """One upper abdomen with a pancreas holding one hypodense adenocarcinoma (labels: 1 pancreas, 2 cancer).

    The pancreas is an elongated gland lying across the midline: the head (thickest) in the duodenal loop on
    the patient's right, the neck in front of the aorta and the superior mesenteric vein, the body and tail
    rising towards the spleen with the splenic vein along their back. The tumour (3.5-5.5 mm radius, lumpy)
    sits in the head or neck, inside the gland, ~40 HU darker than it.

    Returns:
        `(hu, label)`: float32 HU before noise and rounding, uint8 labels, both `shape`.
    """
    grid = voxel_grid(shape, zooms)
    fov = shape[0] * zooms[0]
    depth = shape[2] * zooms[2]
    hu, body = _body(rng, grid, fov, abdomen=True)
    # The liver's lower right lobe (lateral, clear of the pancreas), spleen and kidneys.
    liver = ellipsoid_distance(
        grid, (-0.32 * fov, -0.04 * fov, 0.1 * depth), np.array([0.11 * fov, 0.2 * fov, 0.5 * depth])
    )
    hu[(liver < 1.0) & body] = HU["liver"] + rng.normal(0, 8)
    _spleen_and_kidneys(rng, grid, hu, fov, depth, body)
    # The gland's centre line: head (x < 0, patient's right, lowest), neck (anterior), tail (left, higher).
    z0 = rng.uniform(-0.08, 0.08) * depth
    control = np.array(
        [
            [-0.11 * fov, -0.01 * fov, z0 - 0.10 * depth],
            [0.02 * fov, -0.10 * fov, z0],
            [0.23 * fov, 0.06 * fov, z0 + 0.12 * depth],
        ]
    ) + rng.normal(0, 0.015 * fov, (3, 3)) * [1, 1, 0]
    line = bezier_points(control, 32)
    t = np.linspace(0.0, 1.0, len(line))
    thickness = (0.10 - 0.045 * t) * fov * rng.uniform(0.9, 1.1)  # head to tail
    radii = np.stack([thickness, thickness, np.full_like(t, 0.15 * depth)], axis=1)
    gland, _ = ellipsoid_chain(grid, line, radii)
    # Splenic vein along the back of the body and tail, the superior mesenteric vein behind the neck, the
    # duodenum (fluid-filled, ~bowel HU) curving round the head: drawn first, the gland over them.
    posterior = np.array([0.0, 1.0, 0.0], np.float32)  # +y: towards the back
    body_tail = t > 0.35
    vein = line[body_tail] + (thickness[body_tail, None] + 1.5) * posterior
    hu[(ellipsoid_chain(grid, vein, np.full((len(vein), 3), 1.3))[0] < 1.0) & body] = HU["vessel"]
    neck = int(0.35 * len(line))
    hu[tube_mask(grid, line[neck] + (thickness[neck] + 2.0) * posterior, (0, 0, 1), 1.8) & body] = HU[
        "vessel"
    ]
    angles = np.linspace(0.6 * np.pi, 1.6 * np.pi, 16)
    loop = line[0] + (thickness[0] + 2.5) * np.stack([np.cos(angles), np.sin(angles), 0 * angles], 1)
    hu[(ellipsoid_chain(grid, loop, np.full((len(loop), 3), [2.5, 2.5, 7.5]))[0] < 1.0) & body] = HU["bowel"]
    pancreas = (gland < 1.0) & body
    hu[pancreas] = HU["pancreas"] + rng.normal(0, 6)
    label = np.zeros(shape, np.uint8)
    label[pancreas] = 1
    # The tumour: a lump centred on the centre line in the head or neck, clipped to the gland.
    centre = line[int(rng.integers(0, int(0.5 * len(line))))]
    tumour = lumpy_blob(rng, grid, centre, rng.uniform(3.5, 5.5)) & pancreas
    hu[tumour] = HU["pancreas_tumour"] + rng.uniform(-10, 10)
    label[tumour] = 2
    return hu, label


def synth_colon_case(
    rng: np.random.Generator, shape: tuple[int, int, int], zooms: tuple[float, float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """One abdomen with the colon frame and one primary colon cancer (label 1 only, as in Task10).

    The colon is a tube (outer radius ~0.1 of the field of view, a ~1.6 mm wall of ~40 HU around gas over a
    layer of fluid) running up the patient's right (ascending), across the front (transverse) and down the
    left (descending). The cancer is a 12-24 mm long segment of thickened wall (~75 HU), annular (an
    "apple core") or on one side, narrowing the lumen and reaching just outside the wall.

    Returns:
        `(hu, label)`: float32 HU before noise and rounding, uint8 labels, both `shape`.
    """
    grid = voxel_grid(shape, zooms)
    fov = shape[0] * zooms[0]
    depth = shape[2] * zooms[2]
    hu, body = _body(rng, grid, fov, abdomen=True)
    radius = 0.10 * fov * rng.uniform(0.9, 1.1)
    top = rng.uniform(0.25, 0.4) * depth
    x, y = 0.30 * fov, rng.normal(0, 0.02 * fov)
    step = radius / 2  # centre-line points: the tube's surface stays within 0.04 radius of a cylinder's
    segments = [
        ((-x, y, -0.6 * depth), (-x, y, top)),  # ascending
        ((-x, y, top), (-0.1 * fov, -0.17 * fov, top + 0.05 * depth)),  # hepatic flexure, transverse
        ((-0.1 * fov, -0.17 * fov, top + 0.05 * depth), (0.1 * fov, -0.17 * fov, top + 0.05 * depth)),
        ((0.1 * fov, -0.17 * fov, top + 0.05 * depth), (x, y, top)),
        ((x, y, top), (x, y, -0.6 * depth)),  # descending
    ]
    line = np.concatenate(
        [
            np.linspace(a, b, max(2, int(np.linalg.norm(np.subtract(b, a)) / step)), dtype=np.float32)
            for a, b in segments
        ]
    )
    tube, nearest = ellipsoid_chain(
        grid, line, np.full((len(line), 3), radius)
    )  # distance from the line / radius
    wall_inner = 1.0 - 1.6 / radius
    lumen = (tube < wall_inner) & body
    hu[(tube < 1.0) & body] = HU["colon_wall"] + rng.normal(0, 4)
    # gas with an air-fluid level: fluid in the dependent (posterior, +y) part of the lumen
    level = rng.uniform(0.0, 0.5) * radius
    dependent = grid[..., 1] - line[nearest, 1] > level
    hu[lumen] = np.where(dependent[lumen], HU["fluid"], HU["gas_lumen"])
    # The cancer: a segment of the frame around a random point (away from the ends), the wall thickened
    # inwards (the lumen narrowed to 20-50 % of the radius) and 0.1 radius outwards.
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(line, axis=0), axis=1))])
    centre_arc = rng.uniform(0.15, 0.85) * arc[-1]
    length = rng.uniform(12.0, 24.0)
    near = np.abs(arc - centre_arc) < length / 2
    local, _ = ellipsoid_chain(grid, line[near], np.full((int(near.sum()), 3), radius))
    tumour = (local < 1.1) & (local > rng.uniform(0.2, 0.5)) & body
    if rng.random() < 0.5:  # semi-annular: the half facing a random side
        centre = line[np.argmin(np.abs(arc - centre_arc))]
        side = rng.normal(0, 1, 3) * [1, 1, 0]
        tumour &= (grid - centre) @ (side / np.linalg.norm(side)).astype(np.float32) > -0.3 * radius
    hu[tumour] = HU["colon_tumour"] + rng.uniform(-10, 10)
    return hu, tumour.astype(np.uint8)


def synth_ct_case(rng: np.random.Generator, config: CTSynthConfig) -> tuple[np.ndarray, np.ndarray]:
    """One case of `config.task`: int16 HU (blurred, noisy) and uint8 labels, `(size, size, slices)`."""
    from scipy.ndimage import gaussian_filter

    shape = (config.size, config.size, config.slices)
    make = {
        "liver": synth_liver_case,
        "lung": synth_lung_case,
        "pancreas": synth_pancreas_case,
        "colon": synth_colon_case,
    }[config.task]
    hu, label = make(rng, shape, config.zooms())
    # Partial volume: the scanner's point spread (~1 mm in-plane, the slice profile along z).
    hu = gaussian_filter(hu, sigma=(0.7, 0.7, 0.4))
    hu += rng.normal(0.0, config.noise, shape).astype(np.float32)
    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16), label


def ct_affine(config: CTSynthConfig) -> np.ndarray:
    """RAS affine of an LPS-stored axial series (x, y negated), centred on the origin."""
    zooms = np.array(config.zooms())
    shape = np.array([config.size, config.size, config.slices])
    affine = np.diag([-zooms[0], -zooms[1], zooms[2], 1.0])
    half = zooms * (shape - 1) / 2
    affine[:3, 3] = [half[0], half[1], -half[2]]
    return affine


def case_ids(config: CTSynthConfig) -> tuple[list[str], list[str]]:
    """Training and test case ids, numbered as the official files are (`liver_0`, `liver_1`, ...;
    `pancreas_001`, `pancreas_002`, ...): `OFFICIAL[task]`'s `prefix`, `digits` and `first`."""
    official = OFFICIAL[config.task]
    ids = [
        f"{official['prefix']}_{i:0{official['digits']}d}"
        if official["digits"]
        else f"{official['prefix']}_{i}"
        for i in range(official["first"], official["first"] + config.cases + config.test_cases)
    ]
    return ids[: config.cases], ids[config.cases :]


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
        "spacing={}x{}x{}".format(*config.zooms()),
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
    """Write a complete `Task03_Liver` / `Task06_Lung` / `Task07_Pancreas` / `Task10_Colon`-format sample into `out_dir`, atomically.

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
