"""`vp-driving stream` from the command line, as a real subprocess: `--help` documents the live-camera
options, and a bad source or a bad model ends with one `error:` line naming it, exit code 2, and no
output folder written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest


def _vp_driving(*args: str) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("vp-driving")
    argv = [str(script)] if script.is_file() else [sys.executable, "-m", "visionpipes.driving.cli"]
    return subprocess.run([*argv, *args], capture_output=True, text=True, timeout=120)


@pytest.fixture
def video(tmp_path: Path) -> Path:
    path = tmp_path / "cam.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (64, 48))
    for k in range(3):
        writer.write(np.full((48, 64, 3), 60 * k, dtype=np.uint8))
    writer.release()
    return path


def test_help() -> None:
    result = _vp_driving("stream", "--help")
    assert result.returncode == 0 and result.stdout.startswith("usage: vp-driving stream")
    for option in ("--reconnect-max", "--reconnect-cap", "--backoff", "--live", "SIGTERM", "status.json"):
        assert option in result.stdout


def _assert_one_error(result: subprocess.CompletedProcess[str], names: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and names in lines[0], result.stderr


def test_a_bad_source(tmp_path: Path) -> None:
    (tmp_path / "det.onnx").write_bytes(b"never read: the source is checked first")
    missing = tmp_path / "no-such-camera.mp4"
    result = _vp_driving("stream", str(missing), "--det", str(tmp_path / "det.onnx"), "--out", str(tmp_path / "out"))
    _assert_one_error(result, str(missing))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("model", ["missing", "garbage", "deploy"])
def test_a_bad_model(video: Path, tmp_path: Path, model: str) -> None:
    if model == "deploy":
        (tmp_path / "deploy").mkdir()  # a folder without model.json
        option, path = "--deploy", tmp_path / "deploy"
    else:
        path = tmp_path / "detector.onnx"
        if model == "garbage":
            path.write_bytes(b"not an onnx model")
        option = "--det"
    result = _vp_driving("stream", str(video), option, str(path), "--out", str(tmp_path / "out"))
    _assert_one_error(result, str(path))
    assert not (tmp_path / "out").exists()
