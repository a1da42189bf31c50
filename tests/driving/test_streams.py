"""Multi-camera streams: a camera that cannot be read is reported without stopping the others; the good
one yields an annotated video, JSON Lines and a BDD100K JSON whose track ids persist across frames;
readers give up, fail on an error, and the video follows a change of frame size."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from visionpipes.core.errors import UserError
from visionpipes.driving.bdd100k.categories import DET_CATEGORIES
from visionpipes.driving.bdd100k.labels import load_frames
from visionpipes.driving.streams.cameras import CameraReader, is_live_source, parse_source
from visionpipes.driving.streams.run import StreamConfig, run_streams
from visionpipes.driving.streams.tracking import make_tracker, track
from visionpipes.driving.synth.sample import SynthConfig, write_sample


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A seeded YOLOv8n whose `car` scores depend on the image: its car bias is shifted so that the 8
    best-scoring anchors of the video's first frame score above 0.5 (an untrained head scores ~1e-4
    everywhere, which gives no labels at all), exported to ONNX with the lane model and a 6-frame video."""
    import cv2
    import torch
    from ultralytics.utils import ROOT

    from visionpipes.driving.detection.export import export_detector_onnx
    from visionpipes.driving.detection.runtime import detector_input
    from visionpipes.driving.detection.train import DetectorConfig, build_detector
    from visionpipes.driving.lanes.model import LaneModelConfig, build_lane_model
    from visionpipes.driving.lanes.runtime import export_lane_onnx

    folder = tmp_path_factory.mktemp("streams")
    yaml_text = (ROOT / "cfg" / "models" / "v8" / "yolov8.yaml").read_text().replace("nc: 80", "nc: 10")
    (folder / "yolov8n.yaml").write_text(yaml_text)
    write_sample(
        folder / "bdd",
        SynthConfig(images=1, val_fraction=0.0, cameras=1, video_frames=6, video_size=(128, 72), seed=1),
    )
    video = folder / "bdd" / "videos" / "cam0.mp4"
    ok, first = cv2.VideoCapture(str(video)).read()
    assert ok
    torch.manual_seed(0)
    detector = build_detector(DetectorConfig(model=str(folder / "yolov8n.yaml")))
    net = detector.model.eval()
    car = DET_CATEGORIES.index("car")
    with torch.no_grad():
        scores = net(torch.from_numpy(detector_input([first], (64, 64))[0]))[0][0, 4 + car].clamp(
            1e-7, 1 - 1e-7
        )
        logits = torch.log(scores / (1 - scores))
        shift = -float(torch.quantile(logits, 1 - 8 / logits.numel()))
        for branch in net.model[-1].cv3:  # the class branch of each detection level
            branch[-1].bias[car] += shift
    det = export_detector_onnx(detector, folder / "detector.onnx", imgsz=64).path
    lanes = export_lane_onnx(
        build_lane_model(LaneModelConfig(width=64, height=64)), folder / "lanes.onnx"
    ).path
    return {"det": det, "lanes": lanes, "video": video}


def test_parse_source() -> None:
    assert parse_source("0") == 0
    assert parse_source("rtsp://cam/1") == "rtsp://cam/1"
    assert parse_source("videos/cam0.mp4") == "videos/cam0.mp4"


def test_a_failing_camera_never_stops_the_others(models: dict[str, Path], tmp_path: Path) -> None:
    """A corrupt video fails on its own; the good camera's labels carry track ids that persist."""
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"not a video at all" * 10)
    messages: list[str] = []
    report = run_streams(
        [str(models["video"]), str(corrupt)],
        tmp_path / "out",
        detector_path=models["det"],
        lanes_path=models["lanes"],
        config=StreamConfig(conf=0.5, realtime=False, max_seconds=60, threads=1),
        printer=messages.append,
    )
    good, bad = report.cameras
    assert bad.status == "failed" and "corrupt.mp4" in (bad.error or "") and bad.frames == 0
    assert good.status == "ended" and good.frames == 6
    assert any("cam1" in m and "failed" in m for m in messages)
    assert any("total" in m and "fps" in m for m in messages)
    assert Path(good.video or "").is_file()
    frames = load_frames(good.labels)
    assert len(frames) == good.frames
    assert [f.frame_index for f in frames] == list(range(6))
    assert all(f.video_name == "cam0" and f.timestamp for f in frames)
    labels = [label for f in frames for label in f.labels or []]
    assert labels, "the calibrated detector must produce labels"
    assert all(label.category in DET_CATEGORIES and label.score >= 0.5 for label in labels)
    per_frame_ids = [{label.attributes["trackId"] for label in f.labels or []} for f in frames]
    persistent = set.intersection(*per_frame_ids[1:])  # ByteTrack confirms a new track on its 2nd frame
    assert persistent, f"no track id persists across frames: {per_frame_ids}"
    # the JSON Lines log holds the same frames, one per line
    lines = Path(good.jsonl).read_text().splitlines()
    assert [json.loads(line) for line in lines] == json.loads(Path(good.labels).read_text())
    assert json.loads(Path(bad.labels).read_text()) == []
    cpu = report.extra["cpu_seconds"]  # where the run's CPU went, by thread
    assert set(cpu) == {"process", "inference_loop", "post_processing", "other_threads"}
    assert cpu["inference_loop"] > 0 and cpu["post_processing"] > 0
    assert cpu["process"] >= cpu["inference_loop"] + cpu["post_processing"] - 0.01
    status = json.loads((tmp_path / "out" / "status.json").read_text())
    assert status["cameras"]["cam0"]["status"] == "ended" and status["cameras"]["cam0"]["frames"] == 6
    assert (
        status["cameras"]["cam1"]["status"] == "failed"
        and "corrupt.mp4" in status["cameras"]["cam1"]["last_error"]
    )


def test_a_missing_file_source_is_refused_before_anything_is_written(
    models: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(UserError, match=r"missing\.mp4"):
        run_streams(
            [str(models["video"]), str(tmp_path / "missing.mp4")],
            tmp_path / "out",
            detector_path=models["det"],
        )
    assert not (tmp_path / "out").exists()


def test_reader_keeps_the_newest_frame_and_gives_up_after_reconnect_max() -> None:
    class Capture:
        def __init__(self, frames: int) -> None:
            self.left = frames

        def isOpened(self) -> bool:
            return True

        def get(self, prop: int) -> float:
            return 0.0

        def read(self) -> tuple[bool, np.ndarray | None]:
            if self.left == 0:
                return False, None
            self.left -= 1
            return True, np.full((4, 4, 3), self.left, dtype=np.uint8)

        def release(self) -> None:
            pass

    opened: list[int] = []

    def factory(source: int | str) -> Capture:
        opened.append(1)
        return Capture(3 if len(opened) == 1 else 0)  # a live camera that drops out and stays dark

    reader = CameraReader(
        "cam0", 0, capture_factory=factory, reconnect_max_s=0.3, backoff_s=0.01, backoff_cap_s=0.04
    )
    reader.start()
    reader.join(timeout=5)
    frame, timestamp, index = reader.latest()
    assert index == 2 and frame[0, 0, 0] == 0 and timestamp > 0
    assert reader.state.status == "failed" and "gave up after" in (reader.state.error or "")
    assert reader.state.reconnects >= 5 and len(opened) == reader.state.reconnects + 1
    assert max(reader.state.backoffs) == 0.04 and reader.state.backoffs[:3] == [0.01, 0.02, 0.04]


def test_a_reader_that_raises_marks_its_camera_failed() -> None:
    def broken_backend(source: int | str) -> None:
        raise RuntimeError("backend crashed")

    reader = CameraReader("cam0", 0, capture_factory=broken_backend)
    reader.start()
    reader.join(timeout=5)
    assert not reader.is_alive()
    assert reader.finished and reader.state.status == "failed"
    assert "RuntimeError: backend crashed" in (reader.state.error or "")


def test_live_sources_are_told_from_files() -> None:
    assert all(
        is_live_source(s)
        for s in (
            0,
            "/dev/video2",
            "rtsp://cam/1",
            "http://127.0.0.1:8080/x.mjpg",
            "videotestsrc ! videoconvert ! appsink",
        )
    )
    assert not any(is_live_source(s) for s in ("videos/cam0.mp4", "/data/cam.mkv"))


def test_a_change_of_frame_size_starts_a_new_playable_segment(tmp_path: Path) -> None:
    import cv2

    from visionpipes.driving.streams.outputs import VideoSegments

    video = VideoSegments(tmp_path / "cam0.mp4")
    for size, count in (((48, 64), 3), ((72, 96), 4), ((48, 64), 2)):
        for _ in range(count):
            video.write(np.full((*size, 3), 128, dtype=np.uint8), 10.0)
    video.close()
    assert video.segments == [tmp_path / "cam0.mp4", tmp_path / "cam0-1.mp4", tmp_path / "cam0-2.mp4"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cam0-1.mp4", "cam0-2.mp4", "cam0.mp4"]
    for path, (height, width), count in zip(video.segments, ((48, 64), (72, 96), (48, 64)), (3, 4, 2)):
        capture = cv2.VideoCapture(str(path))
        assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == count
        ok, frame = capture.read()
        assert ok and frame.shape[:2] == (height, width)


def test_tracker_gives_ids_and_rejects_unknown_names() -> None:
    tracker = make_tracker("bytetrack")
    frame = np.zeros((100, 100, 3), dtype=np.uint8)
    boxes = np.array([[10, 10, 40, 40], [60, 60, 90, 90]], dtype=np.float32)
    for _ in range(3):
        tracks = track(tracker, boxes, np.array([0.9, 0.8]), np.array([2, 0]), frame)
    assert sorted(tracks[:, 4].astype(int).tolist()) == [1, 2]
    with pytest.raises(UserError, match="unknown tracker"):
        make_tracker("sort")


def test_post_processing_runs_in_order_and_hands_errors_back() -> None:
    from visionpipes.driving.streams.postprocess import PostProcessor

    seen: list[int] = []

    def busy(i: int) -> None:  # CPU work in the worker thread, counted on its own clock
        seen.append(i)
        deadline = time.thread_time() + 0.002
        while time.thread_time() < deadline:
            pass

    post = PostProcessor(busy, maxsize=2)
    for i in range(20):
        post.put((i,))
    post.close()
    assert seen == list(range(20))
    assert post.cpu_seconds >= 0.04  # 20 items of >= 2 ms of the worker's CPU each

    def fail(i: int) -> None:
        raise ValueError(f"frame {i} is bad")

    post = PostProcessor(fail, maxsize=2)
    for i in range(5):  # never blocks: after the first error the items are drained unprocessed
        post.put((i,))
    with pytest.raises(ValueError, match="frame 0 is bad"):
        post.close()
    post.close(wait=False)  # closing again is harmless


def test_stream_deploy_folder_is_read_through_model_json(
    models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`stream --deploy` runs the files model.json lists, after checking their checksums."""
    import shutil

    from visionpipes.core.artifact import file_entry, write_record
    from visionpipes.driving import cli

    folder = tmp_path / "deploy"
    folder.mkdir()
    shutil.copy(models["det"], folder / "detector.onnx")
    shutil.copy(models["lanes"], folder / "lanes.onnx")
    files = {
        role: file_entry(folder, name)
        for role, name in (("detector", "detector.onnx"), ("lanes", "lanes.onnx"))
    }
    write_record(folder, domain="driving", files=files)
    argv = [
        "stream",
        str(models["video"]),
        "--deploy",
        str(folder),
        "--out",
        str(tmp_path / "out"),
        "--no-realtime",
        "--max-frames",
        "2",
        "--threads",
        "1",
        "--no-video",
    ]
    assert cli.run(argv) == 0
    assert '"frames": 2' in capsys.readouterr().out
    assert len(json.loads((tmp_path / "out" / "cam0.json").read_text())) == 2
    # a changed model file is refused by its checksum, before anything runs
    (folder / "lanes.onnx").write_bytes(b"not the exported model")
    with pytest.raises(UserError, match=r"lanes file lanes\.onnx does not match its checksum"):
        cli.run([*argv[:-1], "--out", str(tmp_path / "again")])
    assert not (tmp_path / "again").exists()


def _vp_driving() -> list[str]:
    """The installed `vp-driving` console script beside this interpreter (the module when absent)."""
    import sys

    script = Path(sys.executable).with_name("vp-driving")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "visionpipes.driving.cli"]


@pytest.mark.parametrize("signum", ["SIGTERM", "SIGINT"])
def test_a_signal_ends_a_live_run_cleanly(models: dict[str, Path], tmp_path: Path, signum: str) -> None:
    """A real `vp-driving stream` looping a video is stopped mid-run: exit code 0, the labels seen so
    far in JSON Lines and JSON, a finalised playable video with as many frames, no temporary file."""
    import signal
    import subprocess

    import cv2

    out = tmp_path / "out"
    argv = [
        *_vp_driving(),
        "stream",
        str(models["video"]),
        "--det",
        str(models["det"]),
        "--no-lanes",
        "--loop",
        "--conf",
        "0.5",
        "--threads",
        "1",
        "--out",
        str(out),
    ]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        jsonl = out / "cam0.jsonl"
        while time.monotonic() < deadline and process.poll() is None:
            if jsonl.is_file() and len(jsonl.read_text().splitlines()) >= 8:  # looped past the first pass
                break
            time.sleep(0.1)
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        process.send_signal(getattr(signal, signum))
        stdout, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0, stderr
    assert f"stopped by {signum}" in stdout
    report = json.loads(stdout[stdout.index("{") :])
    assert report["stopped_by"] == signum
    frames = json.loads((out / "cam0.json").read_text())
    lines = (out / "cam0.jsonl").read_text().splitlines()
    assert len(frames) == len(lines) == report["cameras"][0]["frames"] >= 8
    assert [f["frameIndex"] for f in frames] == list(range(len(frames)))
    assert any(f.get("labels") for f in frames)
    assert not list(out.glob("*.tmp*")) and (out / "status.json").is_file()
    capture = cv2.VideoCapture(str(out / "cam0.mp4"))
    assert capture.isOpened() and int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == len(frames)
    ok, frame = capture.read()
    assert ok and frame.shape[:2] == (72, 128)
