"""The MSD reader (dataset.json + NIfTI) and the label <-> region mapping."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel.testing import data_path as NIBABEL_DATA

from visionpipes.core.errors import UserError
from visionpipes.medical.msd.dataset_json import load_task
from visionpipes.medical.msd.regions import (
    Region,
    brain_tumour_class,
    labels_to_regions,
    regions_from_labels,
    regions_to_labels,
)
from visionpipes.medical.msd.validate import validate_task
from visionpipes.medical.msd.volumes import read_image_volume, read_nifti

TASK01_LABELS = {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"}


def _save(data: np.ndarray, affine: np.ndarray, path: Path) -> None:
    nib.save(nib.Nifti1Image(data, affine), path)


def _write_spleen_task(root: Path, *, with_release: bool) -> Path:
    """A Task09_Spleen-style task: single-channel 3-D CT (int16, anisotropic), labels 0/1."""
    for folder in ("imagesTr", "labelsTr", "imagesTs"):
        (root / folder).mkdir(parents=True)
    rng = np.random.default_rng(3)
    affine = np.diag([0.8, 0.8, 5.0, 1.0])
    shape = (40, 36, 20)  # not cubic, so an axis mix-up shows
    training = []
    for i in (2, 3):
        ct = rng.integers(-1000, 1000, shape).astype(np.int16)
        label = np.zeros(shape, np.uint8)
        label[10:20, 8:18, 5 : 5 + i] = 1
        _save(ct, affine, root / f"imagesTr/spleen_{i}.nii.gz")
        _save(label, affine, root / f"labelsTr/spleen_{i}.nii.gz")
        training.append({"image": f"./imagesTr/spleen_{i}.nii.gz", "label": f"./labelsTr/spleen_{i}.nii.gz"})
    _save(rng.integers(-1000, 1000, shape).astype(np.int16), affine, root / "imagesTs/spleen_1.nii.gz")
    meta = {
        "name": "Spleen",
        "description": "Spleen Segmentation",
        "reference": "Memorial Sloan Kettering Cancer Center",
        "licence": "CC-BY-SA 4.0",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "spleen"},
        "numTraining": 2,
        "numTest": 1,
        "training": training,
        "test": ["./imagesTs/spleen_1.nii.gz"],
    }
    if with_release:
        meta["release"] = "1.0 06/08/2018"
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


# --- reader -----------------------------------------------------------------------------------------


def test_reads_synthetic_task01(synth_task_readonly: Path) -> None:
    task = load_task(synth_task_readonly)
    assert task.name == "BRATS"
    assert task.tensor_image_size == "4D"
    assert task.modality_names == ["FLAIR", "T1w", "t1gd", "T2w"]
    assert task.labels == {0: "background", 1: "edema", 2: "non-enhancing tumor", 3: "enhancing tumour"}
    assert task.num_training == len(task.training) == 3
    assert task.num_test == len(task.test) == 1
    case = task.training[0]
    assert case.case_id == "BRATS_001"
    assert case.image == synth_task_readonly / "imagesTr" / "BRATS_001.nii.gz"
    assert case.label == synth_task_readonly / "labelsTr" / "BRATS_001.nii.gz"
    assert task.test[0].label is None and task.test[0].image.parent.name == "imagesTs"

    image, nii = read_image_volume(case.image, task.num_channels)
    assert image.shape == (4, 32, 32, 32) and image.dtype == np.float32
    raw, _ = read_nifti(case.image)
    assert raw.shape == (32, 32, 32, 4)  # channels last on disk
    np.testing.assert_array_equal(image[2], raw[..., 2])
    label, label_nii = read_nifti(case.label)
    assert label.dtype == np.uint8 and set(np.unique(label)) == {0, 1, 2, 3}
    np.testing.assert_array_equal(nii.affine, label_nii.affine)

    items = task.datalist()
    assert items[0]["image"] == str(case.image) and items[0]["label"] == str(case.label)
    assert "label" not in task.datalist("test")[0]


def test_release_key_optional_and_misspelt(synth_task: Path) -> None:
    meta = json.loads((synth_task / "dataset.json").read_text())
    meta["relase"] = meta.pop("release")  # as in the real Task01_BrainTumour/dataset.json
    (synth_task / "dataset.json").write_text(json.dumps(meta))
    assert load_task(synth_task).release == meta["relase"]
    del meta["relase"]
    (synth_task / "dataset.json").write_text(json.dumps(meta))
    assert load_task(synth_task).release is None
    assert validate_task(synth_task) == []


def test_reads_single_channel_ct_task(tmp_path: Path) -> None:
    root = _write_spleen_task(tmp_path / "Task09_Spleen", with_release=False)
    task = load_task(root)
    assert task.num_channels == 1 and task.modality_names == ["CT"]
    assert task.release is None
    assert [c.case_id for c in task.training] == ["spleen_2", "spleen_3"]
    image, nii = read_image_volume(task.training[0].image, task.num_channels)
    assert image.shape == (1, 40, 36, 20)
    np.testing.assert_allclose(nii.header.get_zooms(), (0.8, 0.8, 5.0))
    assert task.regions() == (Region("spleen", frozenset({1})),)
    assert validate_task(root) == []


def test_reads_real_nifti_from_nibabel_test_data(tmp_path: Path, require) -> None:
    """Real files from other scanners/tools: a 4-D 2-volume series and a big-endian uncompressed .nii."""
    example4d = Path(NIBABEL_DATA) / "example4d.nii.gz"
    anatomical = Path(NIBABEL_DATA) / "anatomical.nii"
    require(example4d.is_file() and anatomical.is_file(), "nibabel's bundled test data is not installed")
    image, _ = read_image_volume(example4d, num_channels=2)
    assert image.shape == (2, 128, 96, 24) and image.dtype == np.float32
    with pytest.raises(UserError, match="2 channels"):
        read_image_volume(example4d, num_channels=4)

    # A one-case single-channel task around the real anatomical scan, with a label on its grid.
    root = tmp_path / "Task99_Anatomy"
    for folder in ("imagesTr", "labelsTr"):
        (root / folder).mkdir(parents=True)
    shutil.copyfile(anatomical, root / "imagesTr" / "anat_1.nii")
    anat = nib.load(anatomical)
    label = np.zeros(anat.shape, np.uint8)
    label[10:20, 10:20, 10:15] = 1
    nib.save(nib.Nifti1Image(label, anat.affine), root / "labelsTr" / "anat_1.nii.gz")
    meta = {
        "name": "Anatomy", "description": "d", "reference": "nibabel", "licence": "MIT",
        "tensorImageSize": "3D", "modality": {"0": "T1"}, "labels": {"0": "background", "1": "box"},
        "numTraining": 1, "numTest": 0,
        "training": [{"image": "./imagesTr/anat_1.nii", "label": "./labelsTr/anat_1.nii.gz"}], "test": [],
    }  # fmt: skip
    (root / "dataset.json").write_text(json.dumps(meta))
    task = load_task(root)
    image, _ = read_image_volume(task.training[0].image, 1)
    assert image.shape == (1, 33, 41, 25)
    np.testing.assert_array_equal(image[0], np.asanyarray(anat.dataobj))
    assert validate_task(root) == []


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda m: m.pop("training"), "'training' is missing"),
        (lambda m: m.pop("labels"), "'labels' is missing"),
        (lambda m: m.update(test="./imagesTs/x.nii.gz"), "'test' must be a list"),
        (lambda m: m["training"][0].pop("label"), "has no 'label'"),
        (lambda m: m.update(modality={"1": "FLAIR"}), "'modality' indices"),
        (lambda m: m.update(labels={"1": "edema"}), "label 0"),
        (lambda m: m.update(numTraining="3"), "'numTraining' must be"),
    ],
)
def test_load_task_rejects_malformed_dataset_json(synth_task: Path, edit, match: str) -> None:
    meta = json.loads((synth_task / "dataset.json").read_text())
    edit(meta)
    (synth_task / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match=match) as info:
        load_task(synth_task)
    assert "dataset.json" in str(info.value)


def test_load_task_missing_folder_and_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        load_task(tmp_path / "nope")
    with pytest.raises(UserError, match=r"dataset\.json does not exist"):
        load_task(tmp_path)
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        load_task(tmp_path)


def test_read_nifti_errors_name_the_file(synth_task: Path) -> None:
    path = synth_task / "imagesTr" / "BRATS_001.nii.gz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="truncated") as info:
        read_nifti(path)
    assert str(path) in str(info.value)
    path.write_bytes(b"\0" * 400)
    with pytest.raises(UserError, match="not gzip"):
        read_nifti(path)
    with pytest.raises(UserError, match="does not exist"):
        read_nifti(synth_task / "imagesTr" / "missing.nii.gz")
    label = synth_task / "labelsTr" / "BRATS_001.nii.gz"
    with pytest.raises(UserError, match="3-D volume with 1 channel, but 4 modalities"):
        read_image_volume(label, 4)


# --- regions ----------------------------------------------------------------------------------------


def test_task01_regions_from_names() -> None:
    regions = regions_from_labels(TASK01_LABELS)
    assert regions == (
        Region("TC", frozenset({2, 3})),
        Region("WT", frozenset({1, 2, 3})),
        Region("ET", frozenset({3})),
    )


def test_brats2021_numbering_is_mapped_by_name_not_number() -> None:
    labels = {
        0: "background",
        1: "necrotic tumor core",
        2: "peritumoral edematous/invaded tissue",
        4: "GD-enhancing tumor",
    }
    regions = regions_from_labels(labels)
    assert [(r.name, set(r.labels)) for r in regions] == [("TC", {1, 4}), ("WT", {1, 2, 4}), ("ET", {4})]


def test_generic_tasks_get_one_region_per_label() -> None:
    assert regions_from_labels({"0": "background", "1": "spleen"}) == (Region("spleen", frozenset({1})),)
    liver = regions_from_labels({"0": "background", "1": "liver", "2": "cancer"}, scheme="per_label")
    assert [(r.name, set(r.labels)) for r in liver] == [("liver", {1}), ("cancer", {2})]
    # Task08's "Tumour" is a generic label, not a brain-tumour sub-region.
    assert len(regions_from_labels({"0": "background", "1": "Vessel", "2": "Tumour"})) == 2


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        ({0: "background", 1: "edema", 2: "cyst", 3: "enhancing tumour"}, "label 2 'cyst' is not a known"),
        ({0: "background", 1: "edema", 2: "enhancing tumour"}, "name no non-enhancing"),
        ({0: "background", 1: "necrosis", 2: "enhancing tumour"}, "name no edema"),
        ({0: "background"}, "no foreground label"),
    ],
)
def test_unmappable_label_names_raise(labels: dict, match: str) -> None:
    with pytest.raises(UserError, match=match) as info:
        regions_from_labels(labels, source="Task01/dataset.json")
    assert "Task01/dataset.json" in str(info.value)


def test_task_regions_error_names_dataset_json(synth_task: Path) -> None:
    meta = json.loads((synth_task / "dataset.json").read_text())
    meta["labels"]["2"] = "cyst"
    (synth_task / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match=r"dataset\.json: label 2 'cyst'"):
        load_task(synth_task).regions()


def test_brain_tumour_class_spellings() -> None:
    assert brain_tumour_class("Oedema") == "edema"
    assert brain_tumour_class("non-enhancing tumour") == "non_enhancing"
    assert brain_tumour_class("NCR/NET") == "non_enhancing"
    assert brain_tumour_class("enhancing tumor") == "enhancing"
    assert brain_tumour_class("spleen") is None


def test_labels_regions_round_trip() -> None:
    regions = regions_from_labels(TASK01_LABELS)
    label = np.random.default_rng(0).integers(0, 4, (9, 8, 7)).astype(np.uint8)
    masks = labels_to_regions(label, regions)
    assert masks.shape == (3, 9, 8, 7) and masks.dtype == bool
    np.testing.assert_array_equal(masks[0], (label == 2) | (label == 3))  # TC
    np.testing.assert_array_equal(masks[1], label > 0)  # WT
    np.testing.assert_array_equal(masks[2], label == 3)  # ET
    np.testing.assert_array_equal(regions_to_labels(masks, regions), label)
    # Probabilities: thresholded, nested painting ET inside TC inside WT.
    probs = masks.astype(np.float32) * 0.4 + 0.3  # 0.7 inside, 0.3 outside
    np.testing.assert_array_equal(regions_to_labels(probs, regions), label)
    np.testing.assert_array_equal(regions_to_labels(probs, regions, threshold=0.8), np.zeros_like(label))


def test_regions_to_labels_disjoint_regions_take_the_more_probable() -> None:
    regions = regions_from_labels({0: "background", 1: "liver", 2: "cancer"}, scheme="per_label")
    probs = np.array([[0.9, 0.6, 0.2, 0.7], [0.1, 0.8, 0.3, 0.6]], np.float32)
    assert regions_to_labels(probs, regions).tolist() == [1, 2, 0, 1]


def test_regions_to_labels_rejects_bad_input() -> None:
    regions = regions_from_labels(TASK01_LABELS)
    with pytest.raises(ValueError, match="2 region channels for 3 regions"):
        regions_to_labels(np.zeros((2, 4, 4, 4)), regions)
    overlapping = (Region("A", frozenset({1, 2})), Region("B", frozenset({2, 3})))
    with pytest.raises(ValueError, match="partly overlap"):
        regions_to_labels(np.zeros((2, 4), bool), overlapping)
