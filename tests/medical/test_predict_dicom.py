"""`vp-medical predict` on a folder of DICOM series (#16): four MR series as the four channels of the tiny
trained model, NIfTI out on the series' grid equal to predicting the same volumes as NIfTI, DICOM SEG out
that reads back equal to the NIfTI label map voxel for voxel, and `--series` overrides.

Series are synthesised by dicom_fixtures.py (pydicom); the model is the session's tiny checkpoint.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from visionpipes.medical.dicom.seg import read_seg
from visionpipes.medical.dicom.series import find_series


def _load_fixtures():
    spec = importlib.util.spec_from_file_location(
        "dicom_fixtures", Path(__file__).with_name("dicom_fixtures.py")
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


fx = _load_fixtures()
TASK01_LABELS = {1: "edema", 2: "non-enhancing tumor", 3: "enhancing tumour"}


def _cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    from visionpipes.medical import cli

    with pytest.raises(SystemExit) as info:
        cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return info.value.code, out, err


@pytest.fixture(scope="module")
def model(trained: Path) -> Path:
    return trained / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The four-series MR study as DICOM, and the same four volumes as one 4-D NIfTI (channels last)."""
    root = tmp_path_factory.mktemp("study")
    volumes, affine = fx.write_mr_study(root / "dicom")
    stacked = np.stack([volumes[m] for m in fx.MR_DESCRIPTIONS], axis=-1).astype(np.float32)
    nifti = root / "study.nii.gz"
    nib.save(nib.Nifti1Image(stacked, affine), nifti)
    return root / "dicom", nifti


def test_dicom_input_predicts_as_the_same_volumes_in_nifti(
    model: Path, study: tuple[Path, Path], tmp_path: Path, capsys
) -> None:
    dicom, nifti = study
    from_dicom, from_nifti = tmp_path / "dicom.nii.gz", tmp_path / "nifti.nii.gz"
    code, out, err = _cli(["predict", "--model", model, "--input", dicom, "--output", from_dicom], capsys)
    assert code == 0 and out.strip() == f"wrote {from_dicom}"
    assert "FLAIR: series 'AX FLAIR'" in err and "t1gd: series 'T1 post-contrast t1gd'" in err
    assert _cli(["predict", "--model", model, "--input", nifti, "--output", from_nifti], capsys)[0] == 0
    got, want = nib.load(from_dicom), nib.load(from_nifti)
    np.testing.assert_allclose(got.affine, want.affine, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(got.dataobj), np.asarray(want.dataobj))
    assert got.shape == (24, 28, 10)


def test_seg_output_reads_back_equal_to_the_nifti_label_map(
    model: Path, study: tuple[Path, Path], tmp_path: Path, capsys
) -> None:
    dicom, _ = study
    out = tmp_path / "pred.nii.gz"
    code, stdout, _ = _cli(
        ["predict", "--model", model, "--input", dicom, "--output", out, "--output-format", "both"], capsys
    )
    seg_path = tmp_path / "pred.dcm"
    assert code == 0 and stdout.split() == ["wrote", str(seg_path), "wrote", str(out)]
    labels = np.asarray(nib.load(out).dataobj)
    present = sorted(set(np.unique(labels).tolist()) - {0})
    assert present, "the tiny model predicted no tumour: the round trip would prove nothing"
    flair = next(s for s in find_series(dicom) if s.description == "AX FLAIR")
    np.testing.assert_array_equal(read_seg(seg_path, flair, TASK01_LABELS), labels)
    seg = pydicom.dcmread(seg_path)
    assert seg.Modality == "SEG" and seg.ReferencedSeriesSequence[0].SeriesInstanceUID == flair.uid
    assert [s.SegmentLabel for s in seg.SegmentSequence] == [TASK01_LABELS[v] for v in (1, 2, 3)]
    # --output-format seg alone writes exactly the .dcm that --output names
    alone = tmp_path / "alone" / "tumour.dcm"
    alone.parent.mkdir()
    code, stdout, _ = _cli(
        ["predict", "--model", model, "--input", dicom, "--output", alone, "--output-format", "seg"], capsys
    )
    assert code == 0 and [p.name for p in alone.parent.iterdir()] == ["tumour.dcm"]
    np.testing.assert_array_equal(read_seg(alone, flair, TASK01_LABELS), labels)


def test_series_choice_is_overridden_and_errors_are_one_line(
    model: Path, study: tuple[Path, Path], tmp_path: Path, capsys
) -> None:
    dicom, _ = study
    folder = Path(shutil.copytree(dicom, tmp_path / "dicom"))
    extra = fx.series_datasets(
        *fx.nifti_round_trip(tmp_path / "x.nii.gz", fx.mr_volumes()["FLAIR"] * 0 + 7, fx.mr_affine()),
        modality="MR", description="FLAIR repeat", study=fx.Study(), series_number=9,
    )  # fmt: skip
    fx.write_datasets(extra, folder / "series9")
    out = tmp_path / "seg.nii.gz"
    code, _, err = _cli(["predict", "--model", model, "--input", folder, "--output", out], capsys)
    assert code == 2 and "modality 'FLAIR' is ambiguous" in err and "--series FLAIR=" in err
    assert not out.exists()
    code, _, err = _cli(
        ["predict", "--model", model, "--input", folder, "--output", out, "--series", "flair=AX FLAIR"],
        capsys,
    )
    assert code == 0 and "FLAIR: series 'AX FLAIR'" in err
    reference = tmp_path / "ref.nii.gz"
    assert _cli(["predict", "--model", model, "--input", dicom, "--output", reference], capsys)[0] == 0
    np.testing.assert_array_equal(np.asarray(nib.load(out).dataobj), np.asarray(nib.load(reference).dataobj))
    # the override picks the other series by its SeriesInstanceUID
    uid = str(extra[0].SeriesInstanceUID)
    code, _, err = _cli(
        ["predict", "--model", model, "--input", folder, "--output", out, "--series", f"FLAIR={uid}"], capsys
    )
    assert code == 0 and "FLAIR: series 'FLAIR repeat'" in err
    for argv, message in (
        (["--output", tmp_path / "x.png", "--output-format", "seg"], "must end in .dcm"),
        (["--output", out, "--series", "PD=AX FLAIR"], "the task's modalities are"),
        (["--output", out, "--series", "FLAIR"], "is not MODALITY=DESCRIPTION_OR_UID"),
    ):
        code, _, err = _cli(["predict", "--model", model, "--input", folder, *argv], capsys)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no scans here")
    code, _, err = _cli(["predict", "--model", model, "--input", empty, "--output", out], capsys)
    assert code == 2 and "no DICOM series found" in err


def test_nifti_input_refuses_dicom_only_flags(
    model: Path, study: tuple[Path, Path], tmp_path: Path, capsys
) -> None:
    _, nifti = study
    code, _, err = _cli(
        [
            "predict",
            "--model",
            model,
            "--input",
            nifti,
            "--output",
            tmp_path / "s.dcm",
            "--output-format",
            "seg",
        ],
        capsys,
    )
    assert code == 2 and "needs a folder of DICOM series" in err
