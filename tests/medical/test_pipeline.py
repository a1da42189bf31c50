"""End to end: the shipped `pipelines/medical/dvc.yaml`, with tiny parameters, run by real DVC in a fresh
git + DVC repository against the installed `vp-medical`; a second `dvc repro` must skip every stage."""

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
#: The source folders the stages name as deps.
SOURCES = ("packages/core/src/visionpipes/core", "packages/medical/src/visionpipes/medical")
STAGES = ("data", "plan", "train", "eval", "deploy")

#: Overrides of the shipped params.yaml: a 3-case 24^3 sample, one epoch of a 3-level UNet on 16^3 crops.
TINY = {
    "data": {"cases": 3, "size": 24, "seed": 1, "test_cases": 1},
    "train": {
        "max_epochs": 1,
        "check_val_every_n_epoch": 1,
        "model": {"channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1},
        "data": {"roi_size": [16, 16, 16], "val_fraction": 0.34, "num_samples": 1},
    },
}


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(base[key], value) if isinstance(value, dict) else value
    return out


def _run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "dvc"), *args], cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.mark.slow
def test_pipeline_runs_end_to_end_and_then_skips(tmp_path: Path, console_script) -> None:
    for tool in ("dvc", "vp-medical"):
        console_script(tool)
    pipe = tmp_path / "pipelines" / "medical"
    pipe.mkdir(parents=True)
    shutil.copy(PIPELINE / "dvc.yaml", pipe / "dvc.yaml")
    # the stages list the package sources as deps (they run the installed code, these are hashed)
    for src in SOURCES:
        shutil.copytree(ROOT / src, tmp_path / src, ignore=shutil.ignore_patterns("__pycache__"))
    params = _merge(yaml.safe_load((PIPELINE / "params.yaml").read_text()), TINY)
    params["cli"] = str(BIN / "vp-medical")
    (pipe / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    assert _run(tmp_path, "init", "-q").returncode == 0
    _run(tmp_path, "config", "core.analytics", "false")
    # DVCLive reads the current commit: the repository needs one
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]
    subprocess.run(["git", "add", "-A"], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "pipeline"], cwd=tmp_path, check=True)

    first = _run(tmp_path, "repro", "pipelines/medical/dvc.yaml")
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    for stage in STAGES:
        assert f"Running stage 'pipelines/medical/dvc.yaml:{stage}'" in first.stdout

    data = tmp_path / "data" / "medical"
    metrics = json.loads((data / "eval" / "metrics.json").read_text())
    held_out = json.loads((data / "train" / "split.json").read_text())["val"]
    assert set(metrics) == {"TC", "WT", "ET", "mean"} and len(held_out) == 2
    for region in ("TC", "WT", "ET"):
        assert set(metrics[region]) == {"dice", "hd95", "n_dice", "n_hd95"}
        assert metrics[region]["n_dice"] == 2 and 0.0 <= metrics[region]["dice"] <= 1.0
    assert (data / "eval" / "overlay.png").read_bytes()[:4] == b"\x89PNG"
    deployed = sorted(p.name for p in (data / "deploy").iterdir())
    assert deployed == ["MODEL_CARD.md", "model.json", "model.onnx", "model.pt"]
    from visionpipes.core.artifact import read_record

    record = read_record(data / "deploy", domain="medical", verify=True)  # every file with its checksum
    assert sorted(e["file"] for e in record["files"].values()) == ["model.onnx", "model.pt"]
    _rescore_held_out_cases(tmp_path, data, metrics, held_out)
    assert (
        record["data"]["fingerprint"] == json.loads((data / "raw" / "task.json").read_text())["fingerprint"]
    )
    assert (data / "train" / "dvclive" / "plots" / "metrics" / "val" / "dice.tsv").is_file()
    shown = _run(tmp_path, "metrics", "show", "--json")
    assert shown.returncode == 0 and '"mean"' in shown.stdout

    second = _run(tmp_path, "repro", "pipelines/medical/dvc.yaml")
    assert second.returncode == 0 and "Running stage" not in second.stdout, second.stdout

    # editing code marks exactly the stages that run it as changed
    def changed_after_editing(relative: str) -> set[str]:
        with open(tmp_path / SOURCES[1] / relative, "a") as fh:
            fh.write("\n# edited\n")
        status = _run(tmp_path, "status", "--json", "pipelines/medical/dvc.yaml")
        assert status.returncode == 0, status.stderr
        return {name.rsplit(":", 1)[-1] for name in json.loads(status.stdout)}

    assert changed_after_editing("training/deploy.py") == {"deploy"}
    assert changed_after_editing("training/fit.py") == {"train", "deploy"}
    assert changed_after_editing("msd/regions.py") == set(STAGES)


def _rescore_held_out_cases(repo: Path, data: Path, metrics: dict, held_out: list) -> None:
    """Each deployed form (ONNX, TorchScript) predicts the held-out cases (`Predictor.load`, what
    `vp-medical predict` runs, with the inference settings the record holds); MONAI's own `compute_dice` /
    `compute_hausdorff_distance` on those label maps give metrics.json's numbers (eval scored the
    checkpoint that the deploy stage exported)."""
    import nibabel as nib
    import numpy as np
    import torch
    from monai.metrics import compute_dice, compute_hausdorff_distance

    from visionpipes.medical.runtime.predictor import Predictor

    task = data / "raw" / json.loads((data / "raw" / "task.json").read_text())["task_dir"]
    record = json.loads((data / "deploy" / "model.json").read_text())
    regions = [(name, set(values)) for name, values in record["description"]["regions"]]
    assert [name for name, _ in regions] == ["TC", "WT", "ET"]
    ids = [case if isinstance(case, str) else case["case_id"] for case in held_out]
    for model_file in ("model.onnx", "model.pt"):
        predictor = Predictor.load(data / "deploy" / model_file)
        dice: dict[str, list[float]] = {name: [] for name, _ in regions}
        hd95: dict[str, list[float]] = {name: [] for name, _ in regions}
        for case_id in ids:
            out = predictor.predict_file(task / "imagesTr" / f"{case_id}.nii.gz", repo / f"{case_id}_{model_file}.nii.gz")
            truth_image = nib.load(task / "labelsTr" / f"{case_id}.nii.gz")
            truth, predicted = np.asarray(truth_image.dataobj), np.asarray(nib.load(out).dataobj)
            spacing = [float(z) for z in truth_image.header.get_zooms()[:3]]
            for name, values in regions:
                p = torch.from_numpy(np.isin(predicted, list(values)))[None, None].float()
                t = torch.from_numpy(np.isin(truth, list(values)))[None, None].float()
                if p.any() or t.any():
                    dice[name].append(float(compute_dice(p, t, include_background=True, ignore_empty=False)))
                if p.any() and t.any():
                    hd95[name].append(float(compute_hausdorff_distance(p, t, percentile=95, spacing=spacing)))
        for name, _ in regions:
            assert len(dice[name]) == metrics[name]["n_dice"], (model_file, name)
            assert np.mean(dice[name]) == pytest.approx(metrics[name]["dice"], abs=2e-3), (model_file, name)
            assert len(hd95[name]) == metrics[name]["n_hd95"], (model_file, name)
            if hd95[name]:
                assert np.mean(hd95[name]) == pytest.approx(metrics[name]["hd95"], abs=2e-2), (model_file, name)
