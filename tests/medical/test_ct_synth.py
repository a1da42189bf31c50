"""`vp-medical synth --task liver|lung|pancreas|colon`: CT tasks in the Decathlon's format (int16 HU on disk,
anisotropic affine, the official dataset.json keys, labels and file names), their anatomy checked from the
written geometry, the task-aware region schemes, and validation of CT tasks."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from visionpipes.core.errors import UserError
from visionpipes.medical import cli
from visionpipes.medical.data_stage import DataStageConfig, prepare_data
from visionpipes.medical.msd.ct_synth import CTSynthConfig, synth_ct_case, write_ct_task
from visionpipes.medical.msd.dataset_json import load_task
from visionpipes.medical.msd.regions import (
    REGION_CONVENTIONS,
    Region,
    detect_scheme,
    labels_to_regions,
    region_convention,
    regions_from_labels,
    regions_to_labels,
)
from visionpipes.medical.msd.validate import validate_task

LIVER = CTSynthConfig(task="liver", cases=2, size=32, slices=10, seed=3, test_cases=1)
LUNG = CTSynthConfig(task="lung", cases=2, size=32, slices=10, seed=3, test_cases=1)
PANCREAS = CTSynthConfig(task="pancreas", cases=2, size=48, slices=16, seed=3, test_cases=1)
COLON = CTSynthConfig(task="colon", cases=2, size=48, slices=16, seed=3, test_cases=1)
#: The keys every Decathlon dataset.json has (the task archives; they spell `release` as `relase`, which
#: `load_task` accepts; the samples spell it right, as the Task01 sample does).
OFFICIAL_KEYS = {
    "name", "description", "reference", "licence", "release", "tensorImageSize", "modality", "labels",
    "numTraining", "numTest", "training", "test",
}  # fmt: skip


@pytest.fixture(scope="module")
def liver_task(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_ct_task(tmp_path_factory.mktemp("ct") / "Task03_Liver", LIVER)


@pytest.fixture(scope="module")
def lung_task(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_ct_task(tmp_path_factory.mktemp("ct") / "Task06_Lung", LUNG)


@pytest.fixture(scope="module")
def pancreas_task(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_ct_task(tmp_path_factory.mktemp("ct") / "Task07_Pancreas", PANCREAS)


@pytest.fixture(scope="module")
def colon_task(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_ct_task(tmp_path_factory.mktemp("ct") / "Task10_Colon", COLON)


@pytest.mark.parametrize(
    ("fixture", "labels", "names", "shape", "zooms"),
    [
        (
            "liver_task",
            {"0": "background", "1": "liver", "2": "cancer"},
            ["liver_0", "liver_1", "liver_2"],  # Task03: unpadded, from 0
            (32, 32, 10),
            (1.0, 1.0, 2.5),
        ),
        (
            "lung_task",
            {"0": "background", "1": "cancer"},
            ["lung_001", "lung_002", "lung_003"],  # Task06, 07, 10: three digits, from 1
            (32, 32, 10),
            (1.0, 1.0, 2.5),
        ),
        (
            "pancreas_task",
            {"0": "background", "1": "pancreas", "2": "cancer"},
            ["pancreas_001", "pancreas_002", "pancreas_003"],
            (48, 48, 16),
            (0.8, 0.8, 2.5),
        ),
        (
            "colon_task",
            {"0": "background", "1": "colon cancer primaries"},
            ["colon_001", "colon_002", "colon_003"],
            (48, 48, 16),
            (0.8, 0.8, 5.0),
        ),
    ],
)
def test_official_dataset_json_and_files(
    fixture: str, labels: dict, names: list, shape: tuple, zooms: tuple, request
) -> None:
    root: Path = request.getfixturevalue(fixture)
    meta = json.loads((root / "dataset.json").read_text())
    assert set(meta) == OFFICIAL_KEYS
    assert meta["tensorImageSize"] == "3D" and meta["modality"] == {"0": "CT"} and meta["labels"] == labels
    assert (meta["numTraining"], meta["numTest"]) == (2, 1)
    assert meta["training"] == [
        {"image": f"./imagesTr/{n}.nii.gz", "label": f"./labelsTr/{n}.nii.gz"} for n in names[:2]
    ]
    assert meta["test"] == [f"./imagesTs/{names[2]}.nii.gz"]
    assert sorted(p.name for p in root.rglob("*.nii.gz")) == sorted(
        [f"{n}.nii.gz" for n in names[:2]] * 2 + [f"{names[2]}.nii.gz"]
    )
    found = set()
    for name in names[:2]:
        image = nib.load(root / "imagesTr" / f"{name}.nii.gz")
        label = nib.load(root / "labelsTr" / f"{name}.nii.gz")
        # int16 on disk, the stored value is the HU (slope 1, intercept 0), read from the raw header
        assert image.get_data_dtype() == np.int16 and label.get_data_dtype() == np.uint8
        with gzip.open(root / "imagesTr" / f"{name}.nii.gz") as fh:
            raw = nib.Nifti1Header.from_fileobj(fh)
        assert (float(raw["scl_slope"]), float(raw["scl_inter"])) == (1.0, 0.0)
        assert int(raw["datatype"]) == 4 and int(raw["bitpix"]) == 16  # NIFTI_TYPE_INT16
        assert image.shape == shape and label.shape == shape
        np.testing.assert_allclose(image.header.get_zooms(), zooms)
        np.testing.assert_allclose(np.abs(np.diag(image.affine))[:3], zooms)
        assert nib.aff2axcodes(image.affine) == ("L", "P", "S")
        np.testing.assert_array_equal(image.affine, label.affine)
        hu = np.asarray(image.dataobj)
        assert hu.min() >= -1024 and (hu <= -950).any()  # Hounsfield units: air around the body
        found |= set(np.unique(np.asarray(label.dataobj)).tolist())
    assert found == {int(k) for k in labels}
    assert validate_task(root) == []


def _case(root: Path, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple]:
    """HU, label map, voxel centres in mm (`(*shape, 3)`, from the affine) and zooms of a written case."""
    image = nib.load(root / "imagesTr" / f"{name}.nii.gz")
    label = np.asarray(nib.load(root / "labelsTr" / f"{name}.nii.gz").dataobj)
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in label.shape], indexing="ij"), axis=-1)
    xyz = nib.affines.apply_affine(image.affine, ijk)
    return np.asarray(image.dataobj), label, xyz, image.header.get_zooms()


@pytest.mark.parametrize("name", ["pancreas_001", "pancreas_002"])
def test_pancreas_anatomy_from_the_written_files(pancreas_task: Path, name: str) -> None:
    from scipy.ndimage import label as components

    hu, label, xyz, zooms = _case(pancreas_task, name)
    gland, tumour = label == 1, label == 2
    voxel = float(np.prod(zooms))
    # one gland, with the tumour inside it: the tumour's voxels all lie in the organ's connected region and
    # its centre is surrounded by gland (in the organ+tumour region, not at its edge)
    organ = label > 0
    assert components(organ)[1] == 1 and tumour.any()
    assert 0.05 < tumour.sum() / organ.sum() < 0.45  # smaller than the gland, as in Task07
    centre = np.round(np.argwhere(tumour).mean(axis=0)).astype(int)
    assert organ[tuple(centre)]
    # small and elongated: the gland's longest principal axis (mm) is >= 2.5x its shortest
    pts = xyz[organ]
    extent = np.sqrt(np.linalg.eigvalsh(np.cov((pts - pts.mean(0)).T)))
    assert extent[-1] >= 2.5 * extent[0]
    assert organ.sum() * voxel < 0.05 * (hu > -500).sum() * voxel  # a few % of the body
    # across the midline, head on the patient's right: RAS x of the gland spans both sides, the tumour-bearing
    # head/neck is right of (x below) the tail end
    x = pts[:, 0]
    assert x.min() < 0 < x.max()
    assert xyz[tumour][:, 0].mean() < np.percentile(x, 90)
    # portal-venous HU: gland ~100, the adenocarcinoma hypodense
    assert 70 <= np.median(hu[gland]) <= 130
    assert np.median(hu[tumour]) < np.median(hu[gland]) - 20


@pytest.mark.parametrize("name", ["colon_001", "colon_002"])
def test_colon_anatomy_from_the_written_files(colon_task: Path, name: str) -> None:
    from scipy.ndimage import binary_dilation, binary_fill_holes
    from scipy.ndimage import label as components

    hu, label, _, zooms = _case(colon_task, name)
    tumour = label == 1
    assert set(np.unique(label).tolist()) == {0, 1}  # only the cancer is labelled
    assert components(tumour)[1] == 1
    assert tumour.sum() < 0.03 * (hu > -500).sum()  # a mass, not the bowel
    # a mass in a tubular, gas-filled organ: gas (< -500 HU) enclosed by the body within 3 voxels in-plane
    # and one slice of it, i.e. the lumen it narrows or the lumen beyond it, and it is soft tissue itself
    body = np.stack([binary_fill_holes(hu[..., z] > -500) for z in range(hu.shape[2])], axis=-1)
    lumen = (hu < -500) & body
    ring = binary_dilation(tumour, np.ones((7, 7, 3), bool)) & ~tumour
    assert (ring & lumen).any()
    # ... and that gas is a tube: its connected lumen runs through most of the slices (not a bowel gas pocket)
    parts, _ = components(lumen)
    touching = np.unique(parts[ring & lumen])
    spans = [len(np.unique(np.argwhere(parts == k)[:, 2])) for k in touching[touching > 0]]
    assert max(spans) >= 0.5 * hu.shape[2]
    assert 30 <= np.median(hu[tumour]) <= 120
    # the cancer spans few of the 5 mm slices (it is longer along the colon than across it)
    slices = np.unique(np.argwhere(tumour)[:, 2])
    assert 1 <= len(slices) <= 8 and zooms[2] == 5.0


def test_liver_hounsfield_units_and_anatomy() -> None:
    config = CTSynthConfig(task="liver", size=64, slices=24, noise=0.0)
    hu, label = synth_ct_case(np.random.default_rng([0, 0, 1]), config)
    assert hu.dtype == np.int16 and hu.min() >= -1024
    assert np.median(hu[label == 1]) == pytest.approx(100, abs=25)  # portal-venous liver parenchyma
    assert 30 <= np.median(hu[label == 2]) <= 80  # hypodense tumour
    assert np.median(hu[label == 2]) < np.median(hu[label == 1]) - 20
    assert (hu == -1000).mean() > 0.2 and hu.max() > 500  # air around the body, bone
    # the tumour lies inside the liver: every tumour voxel has liver (or tumour) around it in-plane
    from scipy.ndimage import binary_dilation

    organ = label > 0
    assert not (binary_dilation(label == 2, iterations=1) & ~organ).sum() > 0.2 * (label == 2).sum()
    # the liver is on the patient's right: RAS x > 0 after applying the affine
    from visionpipes.medical.msd.ct_synth import ct_affine

    centre = np.argwhere(label == 1).mean(axis=0)
    assert (ct_affine(config) @ [*centre, 1])[0] > 0


def test_lung_hounsfield_units() -> None:
    config = CTSynthConfig(task="lung", size=64, slices=24, noise=0.0)
    hu, label = synth_ct_case(np.random.default_rng([0, 0, 2]), config)
    assert set(np.unique(label).tolist()) == {0, 1}
    assert np.percentile(hu, 40) < -700  # air and parenchyma
    assert -60 <= np.median(hu[label == 1]) <= 60  # solid nodule


def test_deterministic_by_seed(tmp_path: Path, liver_task: Path) -> None:
    again = write_ct_task(tmp_path / "again", LIVER)
    for rel in ("imagesTr/liver_0.nii.gz", "labelsTr/liver_1.nii.gz"):
        np.testing.assert_array_equal(
            np.asarray(nib.load(again / rel).dataobj), np.asarray(nib.load(liver_task / rel).dataobj)
        )
    other = write_ct_task(tmp_path / "other", LIVER.model_copy(update={"seed": 4}))
    a = np.asarray(nib.load(other / "labelsTr/liver_0.nii.gz").dataobj)
    assert not np.array_equal(a, np.asarray(nib.load(liver_task / "labelsTr/liver_0.nii.gz").dataobj))


def test_cli_synth_task_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "Task06_Lung"
    args = [
        "synth",
        str(out),
        "--task",
        "lung",
        "--cases",
        "1",
        "--size",
        "24",
        "--slices",
        "8",
        "--test-cases",
        "0",
    ]
    with pytest.raises(SystemExit) as info:
        cli.main(args)
    assert info.value.code == 0
    assert nib.load(out / "imagesTr" / "lung_001.nii.gz").shape == (24, 24, 8)
    with pytest.raises(SystemExit) as info:
        cli.main(["synth", str(tmp_path / "b"), "--slices", "8"])
    assert info.value.code == 2
    assert "--slices and --slice-spacing apply to the CT tasks" in capsys.readouterr().err


def test_data_stage_selects_the_task(tmp_path: Path) -> None:
    config = DataStageConfig(task="liver", cases=2, size=24, slices=8, test_cases=0, seed=1)
    record = prepare_data(config, tmp_path / "raw")
    assert record["task_dir"] == "Task03_Liver" and record["synthetic"]
    task = load_task(tmp_path / "raw" / "Task03_Liver")
    assert task.modality_names == ["CT"] and [r.name for r in task.regions()] == ["liver", "tumour"]


def test_region_schemes_by_label_names() -> None:
    liver = regions_from_labels({"0": "background", "1": "liver", "2": "cancer"})
    assert liver == (Region("liver", frozenset({1, 2})), Region("tumour", frozenset({2})))
    pancreas = regions_from_labels({"0": "background", "1": "pancreas", "2": "cancer"})
    assert pancreas == (Region("pancreas", frozenset({1, 2})), Region("tumour", frozenset({2})))
    assert regions_from_labels({"0": "background", "1": "cancer"}) == (Region("tumour", frozenset({1})),)
    colon = regions_from_labels({"0": "background", "1": "colon cancer primaries"})
    assert colon == (Region("tumour", frozenset({1})),)
    assert detect_scheme({0: "background", 1: "spleen"}) == "per_label"
    assert detect_scheme({0: "background", 1: "Vessel", 2: "Tumour"}) == "per_label"
    assert region_convention(liver) == REGION_CONVENTIONS["liver"]
    assert region_convention(colon) == REGION_CONVENTIONS["tumour_only"]
    # label map -> regions -> label map: the liver region includes the tumour
    label = np.array([0, 1, 2, 2, 1])
    masks = labels_to_regions(label, liver)
    assert masks.astype(int).tolist() == [[0, 1, 1, 1, 1], [0, 0, 1, 1, 0]]
    assert regions_to_labels(masks, liver).tolist() == label.tolist()
    # a tumour predicted outside the predicted liver is still written as tumour (label 2)
    probs = np.array([[0.1, 0.9, 0.2], [0.1, 0.2, 0.9]], np.float32)
    assert regions_to_labels(probs, liver).tolist() == [0, 1, 2]


@pytest.mark.parametrize(
    ("labels", "scheme", "match"),
    [
        ({0: "background", 1: "spleen"}, "liver", "needs exactly two labels, 'liver' and a tumour"),
        ({0: "background", 1: "liver", 2: "cancer"}, "pancreas", "'pancreas' and a tumour"),
        ({0: "background", 1: "liver", 2: "cancer"}, "tumour_only", "also names \\['liver'\\]"),
    ],
)
def test_scheme_that_does_not_fit_is_one_clear_error(labels: dict, scheme: str, match: str) -> None:
    with pytest.raises(UserError, match=match):
        regions_from_labels(labels, scheme=scheme, source="Task03_Liver/dataset.json")  # type: ignore[arg-type]


def test_validate_names_ct_problems(tmp_path: Path, liver_task: Path) -> None:
    import shutil

    root = Path(shutil.copytree(liver_task, tmp_path / "Task03_Liver"))
    label_path = root / "labelsTr" / "liver_0.nii.gz"
    label = nib.load(label_path)
    data = np.asarray(label.dataobj).copy()
    data[0, 0, 0] = 3  # not declared in dataset.json
    nib.save(nib.Nifti1Image(data, label.affine, label.header), label_path)
    image_path = root / "imagesTr" / "liver_1.nii.gz"
    image = nib.load(image_path)
    two = np.stack([np.asarray(image.dataobj)] * 2, axis=-1)
    nib.save(nib.Nifti1Image(two, image.affine), image_path)
    problems = [str(p) for p in validate_task(root)]
    assert any("liver_0.nii.gz" in p and "label values [3] are not declared" in p for p in problems)
    assert any("liver_1.nii.gz" in p and "declares 1 modalities ['CT']" in p for p in problems)


def test_validate_warns_on_ct_without_hounsfield_units(tmp_path: Path, liver_task: Path) -> None:
    """Raw scanner values (0..4095, the -1024 intercept dropped) hold no air: a warning naming the file."""
    import shutil

    root = Path(shutil.copytree(liver_task, tmp_path / "Task03_Liver"))
    image_path = root / "imagesTr" / "liver_0.nii.gz"
    image = nib.load(image_path)
    raw = (np.asarray(image.dataobj).astype(np.int32) + 1024).astype(np.int16)
    nib.save(nib.Nifti1Image(raw, image.affine), image_path)
    problems = validate_task(root)
    assert [(p.severity, p.path.name) for p in problems] == [("warning", "liver_0.nii.gz")]
    assert "no value below -500" in problems[0].message and "scl_slope/scl_inter" in problems[0].message


def test_bundle_export_refuses_a_ct_normalised_model(trained: Path, tmp_path: Path, capsys) -> None:
    """The MONAI Bundle's stock NormalizeIntensityd cannot clip and z-score with dataset statistics."""
    import torch

    ckpt = torch.load(trained / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    ckpt["hyper_parameters"]["normalization"] = [
        {"scheme": "ct", "clip": [-20.0, 200.0], "mean": 99.0, "std": 39.0}
    ] * 4
    ct_ckpt = tmp_path / "ct.ckpt"
    torch.save(ckpt, ct_ckpt)
    with pytest.raises(SystemExit) as info:
        cli.main(["export", "--format", "bundle", "--model", str(ct_ckpt), "--out", str(tmp_path / "b")])
    err = capsys.readouterr().err
    assert info.value.code != 0 and "cannot express" in err and "Traceback" not in err
    assert not (tmp_path / "b").exists()
