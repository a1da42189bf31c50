"""End to end: `dvc repro` of pipelines/driving on a tiny configuration, in a scratch DVC repository
holding a copy of the pipeline: every stage runs, metrics.json holds the official numbers, both
ONNX files and the model card exist, and a second `dvc repro` has nothing to do."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PIPELINE = REPO / "pipelines" / "driving"
BIN = Path(sys.executable).parent

TINY = {
    "data": {"synth": {"images": 6, "seed": 4, "val_fraction": 0.34, "cameras": 0}},
    "det": {"imgsz": 64, "epochs": 1, "time_minutes": None, "batch": 4, "workers": 0, "device": "cpu", "cache": False},
    "lanes": {
        "model": {"width": 64, "height": 64, "decoder_channels": [16, 16, 8, 8, 8]},
        "train": {"batch_size": 2, "crop_height": 32},
        "trainer": {"max_epochs": 1, "max_time": None, "accelerator": "cpu"},
    },
    "eval": {"overlays": 1, "device": "cpu"},
    "deploy": {"latency_runs": 1},
}


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = _merge(base.get(key) or {}, value) if isinstance(value, dict) else value
    return out


def _dvc(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "VISIONPIPES_THREADS": "2"}
    return subprocess.run(
        [str(BIN / "dvc"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.mark.slow
def test_dvc_repro_tiny_pipeline(tmp_path: Path, console_script) -> None:
    console_script("dvc"), console_script("vp-driving")
    repo = tmp_path / "repo"
    pipeline = repo / "pipelines" / "driving"
    pipeline.mkdir(parents=True)
    shutil.copy(PIPELINE / "dvc.yaml", pipeline / "dvc.yaml")
    # the stages list the package sources they run as deps (issue #11 item 5)
    for package in ("core", "driving"):
        shutil.copytree(
            REPO / "packages" / package / "src", repo / "packages" / package / "src",
            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"),
        )
    params = _merge(yaml.safe_load((PIPELINE / "params.yaml").read_text()), TINY)
    params["cli"] = str(BIN / "vp-driving")
    (pipeline / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert _dvc(["init", "--no-scm", "-q"], repo).returncode == 0

    first = _dvc(["repro", "pipelines/driving/dvc.yaml"], repo)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    for stage in ("data", "prepare", "train-det", "train-lanes", "eval", "deploy"):
        assert f"dvc.yaml:{stage}'" in first.stdout

    data = repo / "data" / "driving"
    metrics = json.loads((data / "eval" / "metrics.json").read_text())
    assert {"AP", "AP_50", "AP_75", "AR_max_100", "per_class_AP"} <= set(metrics["det"])
    assert {"F1_pix1", "F1_pix2", "F1_pix5", "sub_tasks"} <= set(metrics["lanes"])
    assert 0 <= metrics["det"]["AP_50"] <= 1 and 0 <= metrics["lanes"]["F1_pix2"] <= 100
    plots = {p.name for p in (data / "eval" / "plots").iterdir()}
    assert {"det_per_class_AP.png", "lanes_F1_per_class.png"} <= plots
    assert any(name.startswith("det_confusion_matrix") for name in plots)
    for name in ("detector.onnx", "lanes.onnx", "MODEL_CARD.md", "model.json"):
        assert (data / "deploy" / name).is_file(), name
    from visionpipes.core.artifact import read_record

    record = read_record(data / "deploy", domain="driving", verify=True)  # every file with its checksum
    assert {"detector", "detector_int8", "lanes"} <= set(record["files"]) and "AP" in record["metrics"]["det"]
    assert "F1" in (data / "deploy" / "MODEL_CARD.md").read_text()
    # Every file of the deploy folder is declared (and checksummed) in model.json, the int8 detector included.
    listed = {entry["file"] for entry in record["files"].values()}
    assert {p.name for p in (data / "deploy").iterdir()} == listed | {"model.json", "MODEL_CARD.md"}
    assert "detector_int8.onnx" in listed
    _rescore_saved_predictions(data, metrics)
    _deployed_detectors_run(data, record)

    second = _dvc(["repro", "pipelines/driving/dvc.yaml"], repo)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "Running stage" not in second.stdout, second.stdout
    status = _dvc(["status", "pipelines/driving/dvc.yaml"], repo)
    assert "up to date" in status.stdout, status.stdout


def _rescore_saved_predictions(data: Path, metrics: dict) -> None:
    """The saved predictions, scored again by the official metric code, give metrics.json's numbers."""
    from visionpipes.driving.metrics import evaluate_detection_files, evaluate_lanes
    from visionpipes.driving.prepare import load_manifest

    dataset = load_manifest(data / "prepared" / "dataset.json")
    predictions = data / "eval" / "predictions"
    det = evaluate_detection_files(dataset.det_labels["val"], predictions / "det_val.json").summary()
    for key in ("AP", "AP_50", "AP_75", "AR_max_100"):
        assert det[key] == pytest.approx(metrics["det"][key], abs=1e-6), key
    lanes = evaluate_lanes(dataset.lane_masks["val"], predictions / "lanes")
    for key in ("F1_pix1", "F1_pix2", "F1_pix5"):
        assert getattr(lanes, key) == pytest.approx(metrics["lanes"][key], abs=1e-6), key
    assert len(list((predictions / "lanes").glob("*.png"))) == metrics["images"]


def _deployed_detectors_run(data: Path, record: dict) -> None:
    """The fp32 and int8 detectors and the lane model of the deploy folder load and run on a frame."""
    import cv2
    import onnx

    from visionpipes.driving.detection.runtime import OnnxDetector
    from visionpipes.driving.prepare import load_manifest

    dataset = load_manifest(data / "prepared" / "dataset.json")
    frame = cv2.imread(str(dataset.images["val"] / dataset.names["val"][0]))
    assert frame is not None
    for role in ("detector", "detector_int8"):
        path = data / "deploy" / record["files"][role]["file"]
        boxes, scores, classes = OnnxDetector(path, threads=1)([frame], conf=1e-3)[0]
        assert len(boxes) == len(scores) == len(classes) and boxes.shape[1:] == (4,)
    int8_ops = {n.op_type for n in onnx.load(str(data / "deploy" / record["files"]["detector_int8"]["file"])).graph.node}
    assert "QuantizeLinear" in int8_ops
    lanes = onnx.load(str(data / "deploy" / record["files"]["lanes"]["file"]))
    assert lanes.graph.input and lanes.graph.output
