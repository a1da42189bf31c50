"""End to end on a CT task: the shipped `pipelines/medical` (dvc.yaml + params.yaml with `data.task: liver`
and a tiny network) run by real DVC up to `eval` in a fresh repository, then `vp-medical predict` on the
held-out cases and a test image; MONAI's `DiceMetric` on the saved predictions gives metrics.json's Dice per
region (liver including the tumour, and the tumour: LiTS' convention), in the task's official label values."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]
PIPELINE = ROOT / "pipelines" / "medical"
SOURCES = ("packages/core/src/visionpipes/core", "packages/medical/src/visionpipes/medical")

#: Overrides of the shipped params.yaml: a 4-case Task03_Liver sample of 32x32x16 voxels, three epochs of a
#: 3-level UNet on whole-volume crops.
TINY_CT = {
    "data": {"task": "liver", "cases": 4, "size": 32, "slices": 16, "seed": 2, "test_cases": 1},
    "train": {
        "max_epochs": 3,
        "check_val_every_n_epoch": 3,
        "model": {"channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1},
        "data": {
            "roi_size": [32, 32, 16],
            "batch_size": 2,
            "pixdim": None,
            "val_fraction": 0.25,
            "num_samples": 1,
        },
    },
}


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(base.get(key) or {}, value) if isinstance(value, dict) else value
    return out


def _dvc(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "dvc"), *args], cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.mark.slow
def test_ct_liver_pipeline_data_train_eval_predict(tmp_path: Path, console_script) -> None:
    import nibabel as nib
    import numpy as np
    import torch
    from monai.metrics import DiceMetric

    for tool in ("dvc", "vp-medical"):
        console_script(tool)
    pipe = tmp_path / "pipelines" / "medical"
    pipe.mkdir(parents=True)
    shutil.copy(PIPELINE / "dvc.yaml", pipe / "dvc.yaml")
    for src in SOURCES:
        shutil.copytree(ROOT / src, tmp_path / src, ignore=shutil.ignore_patterns("__pycache__"))
    params = _merge(yaml.safe_load((PIPELINE / "params.yaml").read_text()), TINY_CT)
    params["cli"] = str(BIN / "vp-medical")
    (pipe / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    assert _dvc(tmp_path, "init", "-q").returncode == 0
    _dvc(tmp_path, "config", "core.analytics", "false")
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]
    subprocess.run(["git", "add", "-A"], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "pipeline"], cwd=tmp_path, check=True)

    run = _dvc(tmp_path, "repro", "pipelines/medical/dvc.yaml:eval")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    data = tmp_path / "data" / "medical"
    pointer = json.loads((data / "raw" / "task.json").read_text())
    assert pointer["task_dir"] == "Task03_Liver" and pointer["synthetic"]
    task = data / "raw" / "Task03_Liver"
    assert json.loads((task / "dataset.json").read_text())["labels"] == {
        "0": "background",
        "1": "liver",
        "2": "cancer",
    }
    metrics = json.loads((data / "eval" / "metrics.json").read_text())
    assert set(metrics) == {"liver", "tumour", "mean"}
    held_out = json.loads((data / "train" / "split.json").read_text())["val"]
    assert len(held_out) == 1

    # the checkpoint carries the CT normalisation it was trained with (clip + dataset z-score)
    ckpt = torch.load(data / "train" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    (entry,) = ckpt["hyper_parameters"]["normalization"]
    assert entry["scheme"] == "ct" and entry["clip"][0] < 60 < entry["clip"][1] and entry["std"] > 0

    # predict the held-out case and a test image with the CLI (one folder, one call); rescore with DiceMetric
    regions = {"liver": [1, 2], "tumour": [2]}
    scans, out_dir = tmp_path / "scans", tmp_path / "predicted"
    scans.mkdir()
    out_dir.mkdir()
    shutil.copy(task / "imagesTs" / "liver_4.nii.gz", scans)
    for case_id in held_out:
        shutil.copy(task / "imagesTr" / f"{case_id}.nii.gz", scans)
    model = data / "train" / "checkpoints" / "last.ckpt"
    done = subprocess.run(
        [str(BIN / "vp-medical"), "predict", "--model", str(model), "--params", str(pipe / "params.yaml"),
         "--input", str(scans), "--output", str(out_dir)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    test_pred = nib.load(out_dir / "liver_4.nii.gz")
    scan = nib.load(task / "imagesTs" / "liver_4.nii.gz")
    assert test_pred.shape == scan.shape and np.allclose(test_pred.affine, scan.affine)
    for case_id in held_out:
        predicted = np.asarray(nib.load(out_dir / f"{case_id}.nii.gz").dataobj)
        truth = np.asarray(nib.load(task / "labelsTr" / f"{case_id}.nii.gz").dataobj)
        assert set(np.unique(predicted).tolist()) <= {0, 1, 2}  # the official label values
        for name, values in regions.items():
            metric = DiceMetric(include_background=True, reduction="mean", ignore_empty=False)
            p = torch.from_numpy(np.isin(predicted, values))[None, None].float()
            t = torch.from_numpy(np.isin(truth, values))[None, None].float()
            if not (p.any() or t.any()):
                assert metrics[name]["n_dice"] == 0
                continue
            metric(y_pred=p, y=t)
            assert float(metric.aggregate()) == pytest.approx(metrics[name]["dice"], abs=2e-3), name
            assert metrics[name]["n_dice"] == 1


@pytest.mark.parametrize(
    ("task", "folder", "zooms", "regions"),
    [
        ("pancreas", "Task07_Pancreas", [0.8, 0.8, 2.5], ["pancreas", "tumour"]),
        ("colon", "Task10_Colon", [0.8, 0.8, 5.0], ["tumour"]),
    ],
)
def test_ct_task_data_stage_validates_and_plans(
    tmp_path: Path, task: str, folder: str, zooms: list, regions: list
) -> None:
    """The pancreas and colon samples through the pipeline's first two verbs (`data`, `plan`): validated,
    their regions by the task's convention, planned at their own anisotropic spacing with CT normalisation
    whose clip window keeps the soft tissue the labels cover."""
    import nibabel as nib
    import numpy as np

    from visionpipes.medical import cli
    from visionpipes.medical.data_stage import DataStageConfig, prepare_data
    from visionpipes.medical.msd.dataset_json import load_task

    config = DataStageConfig(
        task=task, cases=3, size=32, slices=12, seed=1, test_cases=0, spacing=zooms[0], slice_spacing=zooms[2]
    )
    record = prepare_data(config, tmp_path / "raw")  # validates every volume, raises on an error
    assert record["task_dir"] == folder and record["validation"]["warnings"] == []
    task_dir = tmp_path / "raw" / folder
    assert [r.name for r in load_task(task_dir).regions()] == regions
    plan_path = tmp_path / "plan.json"
    with pytest.raises(SystemExit) as info:
        cli.main(["plan", str(tmp_path / "raw"), "--out", str(plan_path), "--device", "cuda",
                  "--memory-gb", "8", "--cpu-cores", "8", "--samples", "20000"])  # fmt: skip
    assert info.value.code == 0
    plan = json.loads(plan_path.read_text())
    assert plan["spacing"] == pytest.approx(zooms) and plan["pixdim"] is None
    (norm,) = plan["normalization"]
    assert norm["scheme"] == "ct" and norm["modality"] == "CT"
    # the clip window holds the labelled voxels' HU (organ and tumour), read here from the files
    case = load_task(task_dir).training[0]
    hu = np.asarray(nib.load(case.image).dataobj)
    label = np.asarray(nib.load(case.label).dataobj)
    lo, hi = np.percentile(hu[label > 0], [25, 75])
    assert norm["clip"][0] < lo and hi < norm["clip"][1]
    first_stride = plan["values"]["train.model.strides"][0]
    assert first_stride == [2, 2, 1]  # the thick-slice axis is pooled later
