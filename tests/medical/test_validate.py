"""`vp-medical validate`: each problem it must find, produced by corrupting a copy of a synthetic task."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from visionpipes.core.errors import UserError
from visionpipes.medical import cli
from visionpipes.medical.msd.validate import Problem, validate_task

IMAGE = "imagesTr/BRATS_002.nii.gz"
LABEL = "labelsTr/BRATS_002.nii.gz"


def _run_validate(task: Path, capsys: pytest.CaptureFixture, *extra: str) -> tuple[int, list[str], str]:
    with pytest.raises(SystemExit) as info:
        cli.main(["validate", str(task), *extra])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return info.value.code, out.splitlines(), err


def _edit_json(task: Path, edit: Callable[[dict], object]) -> None:
    meta = json.loads((task / "dataset.json").read_text())
    edit(meta)
    (task / "dataset.json").write_text(json.dumps(meta, indent=1))


def _rewrite(task: Path, rel: str, change: Callable[[np.ndarray], np.ndarray], affine=None) -> None:
    img = nib.load(task / rel)
    data = change(np.asanyarray(img.dataobj).copy())
    nib.save(nib.Nifti1Image(data, img.affine if affine is None else affine), task / rel)


def _set_nan(x: np.ndarray) -> np.ndarray:
    x[5, 5, 5, 0] = np.nan
    return x


def _set_inf(x: np.ndarray) -> np.ndarray:
    x[6, 6, 6, 1] = np.inf
    return x


def _truncate(task: Path) -> None:
    data = (task / IMAGE).read_bytes()
    (task / IMAGE).write_bytes(data[: len(data) // 3])


def _not_gzip(task: Path) -> None:
    # A valid NIfTI, but stored uncompressed under a .nii.gz name.
    (task / IMAGE).write_bytes(gzip.decompress((task / IMAGE).read_bytes()))


def _shifted_affine(task: Path) -> None:
    affine = nib.load(task / LABEL).affine.copy()
    affine[0, 3] += 2.0
    _rewrite(task, LABEL, lambda x: x, affine=affine)


def _undeclared_label(task: Path) -> None:
    def change(x: np.ndarray) -> np.ndarray:
        x[0, 0, 0] = 4
        return x

    _rewrite(task, LABEL, change)


#: (corruption, the file the message must name, a fragment of the message)
CASES: dict[str, tuple[Callable[[Path], None], str, str]] = {
    "missing dataset.json": (lambda t: (t / "dataset.json").unlink(), "dataset.json", "file is missing"),
    "invalid json": (lambda t: (t / "dataset.json").write_text("{"), "dataset.json", "not valid JSON"),
    "missing folder": (lambda t: (t / "labelsTr").rename(t / "labels"), "labelsTr", "folder is missing"),
    "missing key": (
        lambda t: _edit_json(t, lambda m: m.pop("licence")),
        "dataset.json",
        "'licence' is missing",
    ),
    "missing structural key": (
        lambda t: _edit_json(t, lambda m: m.pop("modality")),
        "dataset.json",
        "'modality' is missing",
    ),
    "numTraining mismatch": (
        lambda t: _edit_json(t, lambda m: m.update(numTraining=5)),
        "dataset.json",
        "numTraining is 5 but",
    ),
    "numTest mismatch": (
        lambda t: _edit_json(t, lambda m: m.update(numTest=0)),
        "dataset.json",
        "numTest is 0",
    ),
    "missing image": (lambda t: (t / IMAGE).unlink(), IMAGE, "does not exist"),
    "missing label": (lambda t: (t / LABEL).unlink(), LABEL, "does not exist"),
    "missing test image": (
        lambda t: (t / "imagesTs/BRATS_004.nii.gz").unlink(),
        "imagesTs/BRATS_004.nii.gz",
        "does not exist",
    ),
    "truncated gzip": (_truncate, IMAGE, "truncated"),
    "truncated header": (
        lambda t: (t / IMAGE).write_bytes((t / IMAGE).read_bytes()[:40]),
        IMAGE,
        "truncated",
    ),
    "not gzip": (_not_gzip, IMAGE, "not gzip-compressed"),
    "garbage file": (
        lambda t: (t / LABEL).write_bytes(gzip.compress(b"x" * 500)),
        LABEL,
        "not a readable NIfTI",
    ),
    "nan voxels": (lambda t: _rewrite(t, IMAGE, _set_nan), IMAGE, "1 NaN"),
    "inf voxels": (lambda t: _rewrite(t, IMAGE, _set_inf), IMAGE, "1 infinite"),
    "shape mismatch": (
        lambda t: _rewrite(t, LABEL, lambda x: x[:, :, :-2]),
        LABEL,
        "spatial shape (32, 32, 30)",
    ),
    "affine mismatch": (_shifted_affine, LABEL, "affine differs"),
    "channel count": (lambda t: _rewrite(t, IMAGE, lambda x: x[..., :3]), IMAGE, "3 channels"),
    "3-D image for 4 modalities": (lambda t: _rewrite(t, IMAGE, lambda x: x[..., 0]), IMAGE, "1 channels"),
    "undeclared label value": (_undeclared_label, LABEL, "label values [4] are not declared"),
    "non-integer label": (
        lambda t: _rewrite(t, LABEL, lambda x: x.astype(np.float32) + 0.5),
        LABEL,
        "non-integer",
    ),
    "4-D label": (lambda t: _rewrite(t, LABEL, lambda x: x[..., None]), LABEL, "expected 3-D"),
    "duplicate case": (
        lambda t: _edit_json(
            t, lambda m: m.update(training=m["training"] + m["training"][:1], numTraining=4)
        ),
        "imagesTr/BRATS_001.nii.gz",
        "listed more than once",
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_validate_reports_problem(name: str, synth_task: Path, capsys: pytest.CaptureFixture) -> None:
    corrupt, rel, fragment = CASES[name]
    corrupt(synth_task)
    code, lines, err = _run_validate(synth_task, capsys)
    assert code == 1
    expected = str(synth_task / rel)
    hits = [line for line in lines if line.startswith("ERROR ") and expected in line and fragment in line]
    assert hits, f"no ERROR line naming {expected} with {fragment!r} in:\n" + "\n".join(lines)
    assert "errors" in err  # the summary goes to stderr; stdout has one problem per line
    assert all(line.startswith(("ERROR ", "WARNING ")) for line in lines)


def test_clean_task_exits_zero(synth_task_readonly: Path, capsys: pytest.CaptureFixture) -> None:
    code, lines, err = _run_validate(synth_task_readonly, capsys)
    assert (code, lines) == (0, [])
    assert "0 errors, 0 warnings" in err


def test_all_background_label_is_a_warning(synth_task: Path, capsys: pytest.CaptureFixture) -> None:
    _rewrite(synth_task, LABEL, np.zeros_like)
    code, lines, _ = _run_validate(synth_task, capsys)
    assert code == 0
    assert lines == [f"WARNING {synth_task / LABEL}: label map is all background (no foreground voxel)."]
    code, _, _ = _run_validate(synth_task, capsys, "--strict")
    assert code == 1


def test_junk_files_are_skipped_but_unlisted_volumes_warned(synth_task: Path, capsys) -> None:
    (synth_task / "imagesTr" / "._BRATS_001.nii.gz").write_bytes(b"\0\x05\x16\x07 AppleDouble junk")
    (synth_task / "labelsTr" / ".DS_Store").write_bytes(b"junk")
    assert validate_task(synth_task) == []
    (synth_task / IMAGE).rename(synth_task / "imagesTr" / "BRATS_099.nii.gz")
    problems = validate_task(synth_task)
    assert (
        Problem("warning", synth_task / "imagesTr" / "BRATS_099.nii.gz", "is not listed in dataset.json.")
        in problems
    )
    assert any(p.severity == "error" and p.path == synth_task / IMAGE for p in problems)


def test_collects_every_problem_not_just_the_first(synth_task: Path, capsys: pytest.CaptureFixture) -> None:
    _edit_json(synth_task, lambda m: m.update(numTraining=9))
    (synth_task / LABEL).unlink()
    _rewrite(synth_task, "imagesTr/BRATS_003.nii.gz", _set_nan)
    code, lines, _ = _run_validate(synth_task, capsys)
    assert code == 1
    assert len([line for line in lines if line.startswith("ERROR")]) == 3
    assert {Path(line.split(" ", 1)[1].split(": ", 1)[0]).name for line in lines} == {
        "dataset.json",
        "BRATS_002.nii.gz",
        "BRATS_003.nii.gz",
    }


def test_missing_task_folder_is_one_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code, lines, err = _run_validate(tmp_path / "Task01_Missing", capsys)
    assert code == 2 and lines == []
    assert (
        err.strip() == f"error: task folder {tmp_path / 'Task01_Missing'} does not exist or is not a folder."
    )
    with pytest.raises(UserError):
        validate_task(tmp_path / "Task01_Missing")
