"""`vp-medical predict` and `validate` under bad input (#12): NaN/inf voxels, headers that declare a huge
volume or an unusable affine, a folder with bad scans, and an output that is the input.

Every crafted file is a real NIfTI header (nibabel) written byte for byte; the model is the session's tiny
trained checkpoint (conftest `trained`).
"""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from visionpipes.core.errors import UserError
from visionpipes.medical.msd.volumes import read_nifti


def _cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    from visionpipes.medical import cli

    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return info.value.code, out, err


def _crafted(path: Path, shape: tuple[int, ...], *, srow=None, data: bool = True) -> Path:
    """A gzipped NIfTI-1 written from a raw header: `srow` sets the sform (NaN/singular allowed)."""
    header = nib.Nifti1Header()
    header.set_data_dtype(np.float32)
    header.set_data_shape(shape)
    header["qform_code"] = 1
    if srow is not None:
        header["sform_code"] = 1
        header["srow_x"], header["srow_y"], header["srow_z"] = srow
    header["vox_offset"] = 352
    payload = header.binaryblock + b"\0" * 4
    if data:
        payload += np.ones(shape, np.float32).tobytes()
    path.write_bytes(gzip.compress(payload, 9, mtime=0))
    return path


@pytest.fixture(scope="module")
def model(trained: Path) -> Path:
    return trained / "checkpoints" / "last.ckpt"


@pytest.fixture
def scan(synth_task_readonly: Path, tmp_path: Path) -> Path:
    return Path(shutil.copy(synth_task_readonly / "imagesTs" / "BRATS_004.nii.gz", tmp_path / "scan.nii.gz"))


def _with_nan(scan: Path, out: Path) -> Path:
    image = nib.load(scan)
    data = np.asarray(image.dataobj, dtype=np.float32).copy()
    data[10, 10, 10, 0] = np.nan
    data[11, 10, 10, 2] = np.inf
    nib.save(nib.Nifti1Image(data, image.affine, image.header), out)
    return out


def test_nonfinite_voxels_are_refused_or_zeroed_by_option(
    model: Path, scan: Path, tmp_path: Path, capsys
) -> None:
    bad = _with_nan(scan, tmp_path / "nan.nii.gz")
    out = tmp_path / "seg.nii.gz"
    code, _, err = _cli(["predict", "--model", str(model), "--input", str(bad), "--output", str(out)], capsys)
    assert code == 2 and "nan.nii.gz holds 2 NaN or infinite voxel(s)" in err and "--nonfinite zero" in err
    assert not out.exists()
    code, stdout, err = _cli(
        ["predict", "--model", str(model), "--input", str(bad), "--output", str(out), "--nonfinite", "zero"],
        capsys,
    )
    assert code == 0 and stdout.strip() == f"wrote {out}"
    assert "warning: " in err and "set 2 NaN or infinite voxel(s) to 0" in err
    # the zeroed scan predicts as the same scan with those voxels set to 0 by hand
    image = nib.load(bad)
    fixed = np.nan_to_num(np.asarray(image.dataobj, dtype=np.float32), nan=0.0, posinf=0.0)
    nib.save(nib.Nifti1Image(fixed, image.affine, image.header), tmp_path / "fixed.nii.gz")
    ref = tmp_path / "ref.nii.gz"
    assert _cli(["predict", "--model", str(model), "--input", str(tmp_path / "fixed.nii.gz"), "--output",
                 str(ref)], capsys)[0] == 0  # fmt: skip
    np.testing.assert_array_equal(np.asarray(nib.load(out).dataobj), np.asarray(nib.load(ref).dataobj))


def test_crafted_headers_are_one_clear_error_before_reading(tmp_path: Path) -> None:
    huge = _crafted(tmp_path / "huge.nii.gz", (4000, 4000, 4000, 4), data=False)
    assert huge.stat().st_size < 100  # a few dozen bytes that declare 1 TB of voxels
    with pytest.raises(UserError, match=r"huge\.nii\.gz declares a 4000x4000x4000x4 volume .* over the"):
        read_nifti(huge)
    nan = _crafted(tmp_path / "nan.nii.gz", (8, 8, 8), srow=[[np.nan, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]])
    with pytest.raises(UserError, match=r"nan\.nii\.gz has NaN or infinite values in its voxel-to-world"):
        read_nifti(nan)
    flat = _crafted(tmp_path / "flat.nii.gz", (8, 8, 8), srow=[[1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0]])
    with pytest.raises(UserError, match=r"flat\.nii\.gz has a singular voxel-to-world affine"):
        read_nifti(flat)
    with pytest.raises(UserError, match=r"over the 0\.0 GiB budget"):  # the budget is a parameter
        read_nifti(_crafted(tmp_path / "small.nii.gz", (8, 8, 8)), max_bytes=1000)
    data, _ = read_nifti(tmp_path / "small.nii.gz")  # a sane header still reads
    assert data.shape == (8, 8, 8)


def test_predict_and_validate_refuse_a_crafted_header(
    model: Path, synth_task: Path, tmp_path: Path, capsys
) -> None:
    huge = _crafted(tmp_path / "huge.nii.gz", (4000, 4000, 4000, 4), data=False)
    code, _, err = _cli(
        ["predict", "--model", str(model), "--input", str(huge), "--output", str(tmp_path / "s.nii.gz")],
        capsys,
    )
    assert code == 2 and err.startswith(f"error: {huge} declares a 4000x4000x4000x4 volume")
    image = synth_task / "imagesTr" / "BRATS_002.nii.gz"
    _crafted(image, (32, 32, 32, 4), srow=[[1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0]])
    code, out, _ = _cli(["validate", str(synth_task)], capsys)
    assert code == 1 and "BRATS_002.nii.gz" in out and "singular voxel-to-world affine" in out
    _crafted(image, (4000, 4000, 4000, 4), data=False)
    code, out, _ = _cli(["validate", str(synth_task)], capsys)
    assert code == 1 and "declares a 4000x4000x4000x4 volume" in out


def test_a_folder_goes_on_past_bad_scans_and_reports_them(
    model: Path, scan: Path, tmp_path: Path, capsys
) -> None:
    scans = tmp_path / "scans"
    scans.mkdir()
    shutil.copy(scan, scans / "a_good.nii.gz")
    (scans / "b_broken.nii.gz").write_bytes(b"\x1f\x8b broken")
    _with_nan(scan, scans / "c_nan.nii.gz")
    shutil.copy(scan, scans / "d_good.nii.gz")
    out = tmp_path / "segs"
    out.mkdir()
    code, stdout, err = _cli(
        ["predict", "--model", str(model), "--input", str(scans), "--output", str(out)], capsys
    )
    assert code == 1 and "wrote 2 label maps" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["a_good.nii.gz", "d_good.nii.gz"]
    failed = [line for line in err.splitlines() if line.startswith("failed: ")]
    assert len(failed) == 2 and "b_broken.nii.gz" in failed[0] and "c_nan.nii.gz" in failed[1]
    assert "2 of 4 scans failed" in err


def test_an_output_that_is_the_input_is_refused_before_anything_runs(
    model: Path, scan: Path, tmp_path: Path, capsys
) -> None:
    before = scan.read_bytes()
    link = tmp_path / "link.nii.gz"
    os.symlink(scan, link)
    for output in (scan, link, tmp_path / "sub" / ".." / "scan.nii.gz"):
        (tmp_path / "sub").mkdir(exist_ok=True)
        code, _, err = _cli(
            [
                "predict",
                "--model",
                str(tmp_path / "absent.ckpt"),
                "--input",
                str(scan),
                "--output",
                str(output),
            ],
            capsys,
        )  # the model is not even loaded: the refusal comes first
        assert code == 2 and "would overwrite the scan" in err, err
    assert scan.read_bytes() == before
    folder = scan.parent
    code, _, err = _cli(
        ["predict", "--model", str(model), "--input", str(folder), "--output", str(folder)], capsys
    )
    assert code == 2 and "would overwrite the scan" in err
    assert scan.read_bytes() == before
