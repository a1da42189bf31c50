"""`vp-medical predict --engine ray` on a real local Ray instance (2 CPUs): the same label maps as the local
engine voxel for voxel, a re-run that predicts only the scan whose label map was deleted, a list file of
scans, and bad scans reported and skipped (exit 1). The model is conftest's tiny `trained` checkpoint (the
session's one training run) deployed to ONNX once here."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray instance with 2 CPUs for the session (the CLI joins it instead of starting one)."""
    from visionpipes.core.ray_batch import ray_cluster

    with ray_cluster(num_cpus=2) as info:
        yield info


@pytest.fixture(scope="module")
def onnx_model(trained: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from visionpipes.medical.training.deploy import DeployConfig, deploy

    out = tmp_path_factory.mktemp("ray_deploy") / "model"
    deploy(trained / "checkpoints" / "last.ckpt", out, config=DeployConfig(formats=["onnx"], runtime="onnx"))
    return out


@pytest.fixture
def scans(synth_task_readonly: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "scans"
    folder.mkdir()
    for scan in sorted(
        [
            *(synth_task_readonly / "imagesTr").glob("*.nii.gz"),
            *(synth_task_readonly / "imagesTs").glob("*.nii.gz"),
        ]
    ):
        shutil.copy(scan, folder / scan.name)
    return folder


def _cli(argv: list[str], capsys) -> tuple[int, str, str]:
    from visionpipes.medical import cli

    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return info.value.code, out, err


def _predict(model: Path, source: Path, out: Path, capsys, *extra: str) -> tuple[int, str, str]:
    out.mkdir(exist_ok=True)
    return _cli(
        ["predict", "--model", str(model), "--input", str(source), "--output", str(out), *extra], capsys
    )


def test_ray_label_maps_equal_the_local_engine_and_resume_by_scan(
    ray_local, onnx_model: Path, scans: Path, tmp_path: Path, capsys
) -> None:
    ray = ("--engine", "ray", "--address", ray_local.address)
    assert _predict(onnx_model, scans, tmp_path / "local", capsys)[0] == 0
    code, out, err = _predict(onnx_model, scans, tmp_path / "ray", capsys, *ray, "--actors", "2")
    assert code == 0 and "wrote 4 label maps" in out, out + err
    names = sorted(p.name for p in scans.iterdir())
    assert len(names) == 4 and sorted(p.name for p in (tmp_path / "ray").iterdir()) == names
    for name in names:
        local, remote = nib.load(tmp_path / "local" / name), nib.load(tmp_path / "ray" / name)
        assert np.array_equal(np.asarray(remote.dataobj), np.asarray(local.dataobj))
        assert (
            np.array_equal(remote.affine, local.affine) and remote.get_data_dtype() == local.get_data_dtype()
        )
    assert any(np.asarray(nib.load(tmp_path / "ray" / n).dataobj).any() for n in names)  # not all background

    outputs = sorted((tmp_path / "ray").iterdir())
    stamps = {p: p.stat().st_mtime_ns for p in outputs}
    outputs[2].unlink()
    code, out, _ = _predict(onnx_model, scans, tmp_path / "ray", capsys, *ray)
    assert code == 0 and "wrote 1 label maps" in out and "3 already there" in out
    assert all(p.stat().st_mtime_ns == stamps[p] for p in outputs if p != outputs[2])
    assert np.array_equal(
        np.asarray(nib.load(outputs[2]).dataobj),
        np.asarray(nib.load(tmp_path / "local" / outputs[2].name).dataobj),
    )


def test_a_list_with_bad_scans_goes_on_and_reports_them(
    ray_local, onnx_model: Path, scans: Path, tmp_path: Path, capsys
) -> None:
    good = sorted(scans.iterdir())[:2]
    (scans / "broken.nii.gz").write_bytes(b"\x1f\x8b broken")
    image = nib.load(good[0])
    data = np.asarray(image.dataobj, dtype=np.float32).copy()
    data[5, 5, 5, 0] = np.nan
    nib.save(nib.Nifti1Image(data, image.affine, image.header), scans / "nan.nii.gz")
    listing = tmp_path / "scans.txt"
    listing.write_text(
        "# scans to predict\nscans/"
        + "\nscans/".join([good[0].name, "broken.nii.gz", "nan.nii.gz", good[1].name])
        + "\n"
    )
    code, out, err = _predict(
        onnx_model, listing, tmp_path / "segs", capsys, "--engine", "ray", "--address", ray_local.address
    )
    assert code == 1 and "wrote 2 label maps" in out
    assert sorted(p.name for p in (tmp_path / "segs").iterdir()) == sorted(p.name for p in good)
    failed = [line for line in err.splitlines() if line.startswith("failed: ")]
    assert len(failed) == 2 and "broken.nii.gz" in failed[0] and "nan.nii.gz" in failed[1]
    assert "NaN" in failed[1] or "non-finite" in failed[1].lower(), failed[1]
    assert "2 of 4 scans failed" in err


def test_engine_ray_without_ray_is_one_error(
    monkeypatch, onnx_model: Path, scans: Path, tmp_path: Path, capsys
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)
    code, _, err = _predict(onnx_model, scans, tmp_path / "segs", capsys, "--engine", "ray")
    assert code == 2 and "install visionpipes-core[ray]" in err
    assert not any((tmp_path / "segs").iterdir())
