"""`vp-medical synth`: a complete, deterministic Task01_BrainTumour-format sample, written atomically."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from visionpipes.core.errors import UserError
from visionpipes.medical import cli
from visionpipes.medical.msd.dataset_json import DATASET_KEYS, load_task
from visionpipes.medical.msd.synth import SynthConfig, write_synthetic_task
from visionpipes.medical.msd.volumes import read_image_volume, read_nifti


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_sample_has_every_key_and_task01_layout(synth_task_readonly: Path) -> None:
    meta = json.loads((synth_task_readonly / "dataset.json").read_text())
    assert set(DATASET_KEYS) <= set(meta) and "release" in meta
    assert meta["modality"] == {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}
    assert meta["labels"] == {
        "0": "background",
        "1": "edema",
        "2": "non-enhancing tumor",
        "3": "enhancing tumour",
    }
    assert meta["training"][0] == {
        "image": "./imagesTr/BRATS_001.nii.gz",
        "label": "./labelsTr/BRATS_001.nii.gz",
    }
    assert meta["test"] == ["./imagesTs/BRATS_004.nii.gz"]
    assert sorted(p.name for p in synth_task_readonly.iterdir()) == [
        "dataset.json",
        "imagesTr",
        "imagesTs",
        "labelsTr",
    ]
    image = nib.load(synth_task_readonly / "imagesTr" / "BRATS_001.nii.gz")
    label = nib.load(synth_task_readonly / "labelsTr" / "BRATS_001.nii.gz")
    assert image.shape == (32, 32, 32, 4) and image.get_data_dtype() == np.float32
    assert label.shape == (32, 32, 32) and label.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(image.affine, label.affine)


def test_tumour_structure_and_modality_contrasts(synth_task_readonly: Path) -> None:
    task = load_task(synth_task_readonly)
    sizes = []
    for case in task.training:
        image, _ = read_image_volume(case.image, 4)
        label, _ = read_nifti(case.label)
        counts = np.bincount(label.ravel(), minlength=4)
        assert (counts[1:] > 0).all(), f"{case.case_id} lacks a tumour sub-region: {counts}"
        sizes.append(int(counts[1:].sum()))
        brain = image[0] > 0
        assert not (label[~brain] > 0).any()  # the tumour lies inside the brain
        assert 0.1 < brain.mean() < 0.5
        mean = {v: image[:, label == v].mean(axis=1) / image[:, brain].mean(axis=1) for v in (1, 2, 3)}
        flair, t1, t1gd, t2 = range(4)
        assert mean[1][flair] > 1.2 and mean[1][t2] > 1.2  # edema bright on FLAIR and T2
        assert mean[3][t1gd] > 1.5 * mean[3][t1]  # the rim enhances with gadolinium
        assert mean[2][t1] < 0.8  # the necrotic / non-enhancing core is dark on T1
    assert len(set(sizes)) == len(sizes)  # tumours differ in size from case to case


def test_deterministic_by_seed(tmp_path: Path, synth_task_readonly: Path, tiny_config: SynthConfig) -> None:
    again = write_synthetic_task(tmp_path / "again", tiny_config)
    assert _files(again) == _files(synth_task_readonly)  # byte for byte
    other = write_synthetic_task(tmp_path / "other", SynthConfig(cases=1, size=32, seed=8, test_cases=0))
    a, _ = read_nifti(other / "imagesTr" / "BRATS_001.nii.gz")
    b, _ = read_nifti(synth_task_readonly / "imagesTr" / "BRATS_001.nii.gz")
    assert not np.array_equal(a, b)


def test_refuses_non_empty_output_and_leaves_it_alone(tmp_path: Path) -> None:
    out = tmp_path / "Task01_BrainTumour"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        write_synthetic_task(out, SynthConfig(cases=1, size=24, test_cases=0))
    assert _files(out) == {"keep.txt": b"mine"}
    write_synthetic_task(out, SynthConfig(cases=1, size=24, test_cases=0), overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "dataset.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["Task01_BrainTumour"]  # no temporary left beside it


def test_failure_midway_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "Task01_BrainTumour"

    def fail(done: int, total: int) -> None:
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_synthetic_task(out, SynthConfig(cases=3, size=24, test_cases=0), progress=fail)
    assert list(tmp_path.iterdir()) == []


def test_cli_synth_then_validate(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "data" / "Task01_BrainTumour"
    with pytest.raises(SystemExit) as info:
        cli.main(["synth", str(out), "--cases", "2", "--size", "24", "--seed", "3", "--test-cases", "1"])
    assert info.value.code == 0
    assert "wrote 2 training cases and 1 test images" in capsys.readouterr().out
    task = load_task(out)
    assert (task.num_training, task.num_test) == (2, 1)
    with pytest.raises(SystemExit) as info:
        cli.main(["validate", str(out)])
    assert info.value.code == 0
    with pytest.raises(SystemExit) as info:
        cli.main(["synth", str(out), "--size", "8"])
    assert info.value.code == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith("error: vp-medical synth: key 'size' = 8: input should be greater than or equal to 24.")
    )
