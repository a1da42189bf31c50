"""`vp-medical synth --task liver|lung`: CT tasks in the Decathlon's format (int16 HU on disk, anisotropic
affine, the official dataset.json keys and labels), the task-aware region schemes, and validation of CT tasks."""

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
from visionpipes.medical.msd.dataset_json import DATASET_KEYS, load_task
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


@pytest.fixture(scope="module")
def liver_task(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_ct_task(tmp_path_factory.mktemp("ct") / "Task03_Liver", LIVER)


@pytest.fixture(scope="module")
def lung_task(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_ct_task(tmp_path_factory.mktemp("ct") / "Task06_Lung", LUNG)


@pytest.mark.parametrize(
    ("fixture", "labels", "prefix"),
    [
        ("liver_task", {"0": "background", "1": "liver", "2": "cancer"}, "liver"),
        ("lung_task", {"0": "background", "1": "cancer"}, "lung"),
    ],
)
def test_official_dataset_json_and_files(fixture: str, labels: dict, prefix: str, request) -> None:
    root: Path = request.getfixturevalue(fixture)
    meta = json.loads((root / "dataset.json").read_text())
    assert set(DATASET_KEYS) <= set(meta)
    assert meta["tensorImageSize"] == "3D" and meta["modality"] == {"0": "CT"} and meta["labels"] == labels
    assert (meta["numTraining"], meta["numTest"]) == (2, 1)
    assert meta["training"][1] == {
        "image": f"./imagesTr/{prefix}_1.nii.gz",
        "label": f"./labelsTr/{prefix}_1.nii.gz",
    }
    assert meta["test"] == [f"./imagesTs/{prefix}_2.nii.gz"]
    image = nib.load(root / "imagesTr" / f"{prefix}_0.nii.gz")
    label = nib.load(root / "labelsTr" / f"{prefix}_0.nii.gz")
    # int16 on disk, the stored value is the HU (slope 1, intercept 0)
    assert image.get_data_dtype() == np.int16 and label.get_data_dtype() == np.uint8
    with gzip.open(root / "imagesTr" / f"{prefix}_0.nii.gz") as fh:
        raw = nib.Nifti1Header.from_fileobj(fh)
    assert (float(raw["scl_slope"]), float(raw["scl_inter"])) == (1.0, 0.0)
    assert image.shape == (32, 32, 10) and label.shape == (32, 32, 10)
    np.testing.assert_allclose(image.header.get_zooms(), (1.0, 1.0, 2.5))
    np.testing.assert_allclose(np.abs(np.diag(image.affine))[:3], (1.0, 1.0, 2.5))
    assert nib.aff2axcodes(image.affine) == ("L", "P", "S")
    np.testing.assert_array_equal(image.affine, label.affine)
    assert validate_task(root) == []
    values = np.unique(np.asarray(label.dataobj))
    assert set(values.tolist()) == {int(k) for k in labels}


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
    assert nib.load(out / "imagesTr" / "lung_0.nii.gz").shape == (24, 24, 8)
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
