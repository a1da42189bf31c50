"""`vp-medical export --format bundle` (#16): a MONAI Bundle that MONAI's own runner (`python -m monai.bundle
run`, in a fresh interpreter) loads and runs on a NIfTI folder, giving the same label map, voxel for voxel,
as `vp-medical predict` with the same checkpoint and settings; metadata with the spec's required keys.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

#: The metadata keys MONAI's bundle specification requires (docs: "MONAI Bundle Specification").
REQUIRED_METADATA = (
    "version", "monai_version", "pytorch_version", "numpy_version", "required_packages_version", "task",
    "description", "authors", "copyright", "network_data_format",
)  # fmt: skip


def _cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    from visionpipes.medical import cli

    with pytest.raises(SystemExit) as info:
        cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return info.value.code, out, err


@pytest.fixture(scope="module")
def bundle(trained: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoint exported as a bundle with non-default settings (overlap, crop to foreground)."""
    from visionpipes.medical import cli

    out = tmp_path_factory.mktemp("bundle") / "brats_bundle"
    metrics = out.parent / "metrics.json"
    metrics.write_text(json.dumps({"WT": {"dice": 0.5, "hd95": 3.0}, "TC": {"dice": 0.25, "hd95": 4.0}}))
    with pytest.raises(SystemExit) as info:
        cli.main(["export", "--format", "bundle", "--model", str(trained / "checkpoints" / "last.ckpt"), "--out",
                  str(out), "--overlap", "0.25", "--crop-foreground", "--metrics", str(metrics)])  # fmt: skip
    assert info.value.code == 0
    return out


def test_bundle_layout_and_metadata(bundle: Path) -> None:
    files = sorted(str(p.relative_to(bundle)) for p in bundle.rglob("*") if p.is_file())
    assert files == ["configs/inference.json", "configs/metadata.json", "docs/README.md", "models/model.pt"]
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert [k for k in REQUIRED_METADATA if k not in meta] == []
    image = meta["network_data_format"]["inputs"]["image"]
    assert image["num_channels"] == 4 and image["channel_def"] == {
        "0": "FLAIR",
        "1": "T1w",
        "2": "t1gd",
        "3": "T2w",
    }
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"] == {"0": "TC", "1": "WT", "2": "ET"}
    assert meta["eval_metrics"] == {"WT_dice": 0.5, "TC_dice": 0.25}
    assert "non-zero voxels z-scored per channel" in meta["description"]
    assert meta["visionpipes"]["inference"]["overlap"] == 0.25
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    assert config["network_def"]["_target_"] == "monai.networks.nets.UNet"


@pytest.mark.slow
def test_monai_bundle_run_gives_the_same_label_map_as_predict(
    bundle: Path, trained: Path, synth_task_readonly: Path, tmp_path: Path, capsys
) -> None:
    scans = tmp_path / "scans"
    scans.mkdir()
    for name in ("BRATS_004.nii.gz",):
        shutil.copy(synth_task_readonly / "imagesTs" / name, scans / name)
    shutil.copy(synth_task_readonly / "imagesTr" / "BRATS_002.nii.gz", scans / "BRATS_002.nii.gz")
    out = tmp_path / "bundle_out"
    run = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(bundle / "configs" / "inference.json"),
         "--meta_file", str(bundle / "configs" / "metadata.json"), "--bundle_root", str(bundle),
         "--dataset_dir", str(scans), "--output_dir", str(out), "--device", "$torch.device('cpu')"],
        capture_output=True, text=True, timeout=600, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    for scan in sorted(scans.iterdir()):
        stem = scan.name.removesuffix(".nii.gz")
        ours = tmp_path / f"{stem}_ours.nii.gz"
        code, _, _ = _cli(["predict", "--model", trained / "checkpoints" / "last.ckpt", "--input", scan,
                           "--output", ours, "--overlap", "0.25", "--crop-foreground"], capsys)  # fmt: skip
        assert code == 0
        theirs = nib.load(out / f"{stem}_seg.nii.gz")
        want = np.asarray(nib.load(ours).dataobj)
        got = np.asarray(theirs.dataobj)
        assert got.shape == want.shape
        assert int((want > 0).sum()) > 0, "no tumour predicted: the comparison would prove little"
        np.testing.assert_array_equal(got, want)
        np.testing.assert_allclose(theirs.affine, nib.load(scan).affine, atol=1e-5)


def test_tta_is_refused_for_a_bundle(trained: Path, tmp_path: Path, capsys) -> None:
    code, _, err = _cli(["export", "--format", "bundle", "--model", trained / "checkpoints" / "last.ckpt",
                         "--out", tmp_path / "b", "--tta"], capsys)  # fmt: skip
    assert code == 2 and "test-time augmentation" in err and not (tmp_path / "b").exists()
