"""`vp-driving predict --deploy ... --engine ray` on a real local Ray instance (2 CPUs): a tiny deploy folder
(seeded YOLOv8n detector whose car scores depend on the image + untrained lane model, both ONNX, with
model.json) over a video and a folder of images gives the same BDD100K JSON and lane masks as the local
engine, byte for byte; a re-run predicts only the input whose JSON was deleted, and lists a corrupt video
and a corrupt image at the end with exit 1 while the other inputs are written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray instance with 2 CPUs for the session (the CLI joins it instead of starting one)."""
    from visionpipes.core.ray_batch import ray_cluster

    with ray_cluster(num_cpus=2) as info:
        yield info


@pytest.fixture(scope="module")
def deploy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A driving deploy folder (detector.onnx at 64 px, lanes.onnx at 64x64, model.json with checksums) whose
    detector finds cars: its car bias is shifted so the 8 best anchors of a synthetic frame score above 0.5
    (an untrained head scores ~1e-4 everywhere and would give no label at all)."""
    import torch
    from ultralytics.utils import ROOT

    from visionpipes.core.artifact import file_entry, write_record
    from visionpipes.driving.bdd100k.categories import DET_CATEGORIES
    from visionpipes.driving.detection.export import export_detector_onnx
    from visionpipes.driving.detection.runtime import detector_input
    from visionpipes.driving.detection.train import DetectorConfig, build_detector
    from visionpipes.driving.lanes.model import LaneModelConfig, build_lane_model
    from visionpipes.driving.lanes.runtime import export_lane_onnx

    folder = tmp_path_factory.mktemp("driving_deploy")
    yaml_text = (ROOT / "cfg" / "models" / "v8" / "yolov8.yaml").read_text().replace("nc: 80", "nc: 10")
    (folder / "yolov8n.yaml").write_text(yaml_text)
    first = _frame(0)
    torch.manual_seed(0)
    detector = build_detector(DetectorConfig(model=str(folder / "yolov8n.yaml")))
    net = detector.model.eval()
    car = DET_CATEGORIES.index("car")
    with torch.no_grad():
        x = torch.from_numpy(detector_input([first], (64, 64))[0])
        scores = net(x)[0][0, 4 + car].clamp(1e-7, 1 - 1e-7)
        logits = torch.log(scores / (1 - scores))
        shift = -float(torch.quantile(logits, 1 - 8 / logits.numel()))
        for branch in net.model[-1].cv3:  # the class branch of each detection level
            branch[-1].bias[car] += shift
    out = folder / "deploy"
    out.mkdir()
    export_detector_onnx(detector, out / "detector.onnx", imgsz=64)
    export_lane_onnx(build_lane_model(LaneModelConfig(width=64, height=64)), out / "lanes.onnx")
    files = {role: file_entry(out, f"{role}.onnx") for role in ("detector", "lanes")}
    write_record(out, domain="driving", files=files, models={})
    return out


def _frame(k: int):
    """A 96x64 BGR street-like frame: grey road, a dark box that moves with `k`, lane lines."""
    import cv2
    import numpy as np

    image = np.full((64, 96, 3), 90, dtype=np.uint8)
    image[:24] = (200, 160, 120)  # sky
    cv2.rectangle(image, (20 + 4 * k, 30), (44 + 4 * k, 48), (30, 30, 160), -1)
    cv2.line(image, (10, 63), (40, 30), (255, 255, 255), 2)
    cv2.line(image, (86, 63), (60, 30), (255, 255, 255), 2)
    return image


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, Path]:
    """A 6-frame video written with cv2 and a folder of 3 PNG images."""
    import cv2

    video = tmp_path / "drive.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (96, 64))
    for k in range(6):
        writer.write(_frame(k))
    writer.release()
    folder = tmp_path / "shots"
    folder.mkdir()
    for k in range(3):
        cv2.imwrite(str(folder / f"shot{k}.png"), _frame(2 * k))
    return {"video": video, "folder": folder}


def _cli(argv: list[str], capsys) -> tuple[int, str, str]:
    from visionpipes.driving import cli

    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return info.value.code, out, err


def _predict(deploy: Path, sources: list[Path], out: Path, capsys, *extra: str) -> tuple[int, str, str]:
    return _cli(["predict", *map(str, sources), "--deploy", str(deploy), "--out", str(out), *extra], capsys)


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_ray_outputs_equal_the_local_engine_resume_and_bad_files(
    ray_local, deploy: Path, inputs: dict[str, Path], tmp_path: Path, capsys
) -> None:
    sources = [inputs["video"], inputs["folder"]]
    code, out, err = _predict(deploy, sources, tmp_path / "local", capsys)
    assert code == 0 and "wrote 2 prediction files (9 frames" in out, out + err
    ray = ("--engine", "ray", "--address", ray_local.address, "--actors", "2")
    code, out, err = _predict(deploy, sources, tmp_path / "ray", capsys, *ray)
    assert code == 0 and "wrote 2 prediction files (9 frames" in out, out + err

    local, remote = _tree(tmp_path / "local"), _tree(tmp_path / "ray")
    assert sorted(remote) == sorted(local) and remote == local  # detections and lane masks, byte for byte
    video = json.loads(local["drive.json"])
    assert [f["frameIndex"] for f in video] == list(range(6))
    assert all(f["videoName"] == "drive" and f["name"] == f"drive-{f['frameIndex']:07d}.jpg" for f in video)
    assert [f["timestamp"] for f in video] == [0, 100, 200, 300, 400, 500]
    labels = [label for f in video for label in f["labels"]]
    assert labels and all(label["category"] == "car" and label["score"] >= 0.25 for label in labels)
    shots = json.loads(local["shots.json"])
    assert [f["name"] for f in shots] == ["shot0.png", "shot1.png", "shot2.png"]
    assert sum(name.startswith("drive.lanes/") for name in local) == 6
    assert sum(name.startswith("shots.lanes/") for name in local) == 3

    # resume: only the input whose JSON is gone is predicted again; a corrupt video and a corrupt image
    # added meanwhile are listed at the end (exit 1) and the job goes on
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "ray").iterdir()}
    (tmp_path / "ray" / "shots.json").unlink()
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all" * 20)
    (inputs["folder"] / "torn.png").write_bytes(b"\x89PNG\r\n\x1a\n torn")
    ray = ("--engine", "ray", "--address", ray_local.address)  # one actor
    code, out, err = _predict(deploy, [*sources, broken], tmp_path / "ray", capsys, *ray)
    assert code == 1 and "wrote 1 prediction files (3 frames" in out and "1 already there" in out, out + err
    assert (tmp_path / "ray" / "drive.json").stat().st_mtime_ns == stamps[tmp_path / "ray" / "drive.json"]
    assert _tree(tmp_path / "ray") == local  # the torn image is left out: the same bytes as before
    failed = [line for line in err.splitlines() if line.startswith("failed: ")]
    assert len(failed) == 2, err
    assert any(str(broken) in line and "cannot be opened" in line for line in failed), failed
    assert any("torn.png" in line for line in failed), failed
    assert "2 input files failed (of 3 inputs)" in err


def test_engine_ray_needs_a_deploy_folder(tmp_path: Path, inputs: dict[str, Path], capsys) -> None:
    code, _, err = _cli(
        ["predict", str(inputs["video"]), "--out", str(tmp_path / "o"), "--engine", "ray"], capsys
    )
    assert code == 2 and "--deploy" in err and not (tmp_path / "o").exists()
