"""Multi-camera throughput: `vp-driving stream` (one reader thread per camera, each tick one batched
ONNX detection call over all cameras) against the common pattern of one thread per camera, each with
its own ultralytics model calling `model.predict(stream=True)` on its video — same detector, same
videos, same run. Also the per-frame latency of both models under onnxruntime vs eager PyTorch.

    python benchmarks/driving_streams.py --weights data/driving/models/det/weights/best.pt \
        --lanes data/driving/models/lanes/lane_model.pt --out benchmarks/results/driving_streams.json

Without --videos it writes 4 synthetic 640x360 camera videos first. Numbers depend on the machine
and on what else runs on it: compare the two columns of one run, not runs with each other.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any


def _median_ms(fn: Any, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return round(1000 * statistics.median(times), 2)


def baseline_threads(weights: str, videos: list[str], imgsz: int, frames: int, conf: float) -> dict[str, Any]:
    """One thread per camera, each with its own YOLO calling predict(stream=True), with ultralytics'
    own CPU thread setting (cores - 1 torch threads, which `prepare_ultralytics` overrides for training)."""
    import os

    from ultralytics.utils import torch_utils

    from visionpipes.driving.detection.predict import load_detector

    counts = [0] * len(videos)
    models = [load_detector(weights) for _ in videos]
    torch_utils.NUM_THREADS = min(8, max(1, (os.cpu_count() or 1) - 1))  # ultralytics' default

    def work(i: int) -> None:
        for _ in models[i].predict(source=videos[i], stream=True, imgsz=imgsz, conf=conf, verbose=False, device="cpu"):
            counts[i] += 1
            if counts[i] >= frames:
                break

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(videos))]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    return {"frames": sum(counts), "seconds": round(seconds, 2), "total_fps": round(sum(counts) / seconds, 2)}


def ours(detector: Path, lanes: Path | None, videos: list[str], frames: int, conf: float, out: Path) -> dict[str, Any]:
    from visionpipes.driving.streams.run import StreamConfig, run_streams

    report = run_streams(
        videos,
        out,
        detector_path=detector,
        lanes_path=lanes,
        config=StreamConfig(conf=conf, realtime=False, max_frames=frames, write_video=False, lanes_every=1 if lanes else 0),
        printer=lambda line: None,
    )
    return {"frames": sum(c.frames for c in report.cameras), "seconds": report.seconds, "total_fps": report.total_fps}


def latencies(weights: str, lane_model: str | None, work: Path, repeats: int, video: str) -> dict[str, Any]:
    import copy

    import torch

    from visionpipes.core.export import OnnxRunner
    from visionpipes.driving.detection.export import export_detector_onnx, rect_input_height
    from visionpipes.driving.detection.predict import load_detector
    from visionpipes.driving.lanes.model import load_lane_model
    from visionpipes.driving.lanes.runtime import export_lane_onnx

    out: dict[str, Any] = {}
    yolo = load_detector(weights)
    imgsz = int((getattr(yolo, "ckpt", None) or {}).get("train_args", {}).get("imgsz", 320))
    height = rect_input_height(imgsz, 360 / 640)  # as `vp-driving deploy` exports it for 16:9 cameras
    det_path = export_detector_onnx(yolo, work / "det.onnx", imgsz=imgsz, height=height).path
    eager = copy.deepcopy(yolo.model).float().eval().fuse()
    x = torch.rand(1, 3, height, imgsz)
    runner = OnnxRunner(det_path)
    with torch.inference_mode():
        out["detector"] = {
            "input": [1, 3, height, imgsz],
            "eager_ms": _median_ms(lambda: eager(x), repeats),
            "onnxruntime_ms": _median_ms(lambda: runner(x.numpy()), repeats),
        }
    if lane_model:
        net = load_lane_model(lane_model)
        lane_path = export_lane_onnx(net, work / "lanes.onnx").path
        x = torch.rand(1, 3, net.config.height, net.config.width)
        runner = OnnxRunner(lane_path)
        with torch.inference_mode():
            out["lanes"] = {
                "input": list(x.shape),
                "eager_ms": _median_ms(lambda: net(x), repeats),
                "onnxruntime_ms": _median_ms(lambda: runner(x.numpy()), repeats),
            }
        out["lane_decoding"] = lane_decoding_cost(net, video, repeats)
    out["_files"] = {"detector": str(det_path), "lanes": str(work / "lanes.onnx") if lane_model else None}
    return out


def lane_decoding_cost(net: Any, video: str, repeats: int) -> dict[str, Any]:
    """Mask decoding of one camera frame: pixel-level only vs with the model's lane-level decoding
    (`LaneModelConfig.join_gaps`, `min_area`, `vote`), at the camera's size and at 1280x720."""
    import cv2

    from visionpipes.driving.lanes.decode import lane_mask_from_logits
    from visionpipes.driving.lanes.runtime import predict_lane_logits

    capture = cv2.VideoCapture(video)
    ok, frame = capture.read()
    capture.release()
    if not ok:
        raise SystemExit(f"cannot read a frame of {video}")
    (logits,) = predict_lane_logits(net, [frame])
    lane_level = net.config.decoding()
    plain = {**lane_level, "join_gaps": 0.0, "min_area": 0.0, "vote": False}
    out: dict[str, Any] = {"settings": lane_level}
    for size in ((frame.shape[1], frame.shape[0]), (1280, 720)):
        base = _median_ms(functools.partial(lane_mask_from_logits, logits, size, **plain), repeats)
        full = _median_ms(functools.partial(lane_mask_from_logits, logits, size, **lane_level), repeats)
        out["x".join(map(str, size))] = {"pixel_level_ms": base, "lane_level_ms": full, "ratio": full / base}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", required=True, help="trained detector (.pt)")
    parser.add_argument("--lanes", help="trained lane model (lane_model.pt)")
    parser.add_argument("--videos", nargs="*", help="camera videos (default: 4 synthetic 640x360 videos)")
    parser.add_argument("--frames", type=int, default=144, help="frames per camera (default 144)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating timed rounds of both methods (default 3)")
    parser.add_argument("--conf", type=float, default=0.25)
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per latency (default 20)")
    parser.add_argument(
        "--deployed", help="a deployed detector to time as well (e.g. data/driving/deploy/detector_int8.onnx)"
    )
    parser.add_argument("--out", help="JSON results file")
    args = parser.parse_args()

    from visionpipes.core.settings import apply_runtime_settings

    settings = apply_runtime_settings()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        videos = args.videos
        if not videos:
            from visionpipes.driving.synth.sample import SynthConfig, write_sample

            write_sample(work / "bdd", SynthConfig(images=1, val_fraction=0.0, cameras=4, video_frames=args.frames))
            videos = [str(p) for p in sorted((work / "bdd" / "videos").glob("*.mp4"))]
        lat = latencies(args.weights, args.lanes, work, args.repeats, videos[0])
        files = lat.pop("_files")
        imgsz = lat["detector"]["input"][-1]
        result: dict[str, Any] = {
            "machine": {"cpu": platform.processor() or platform.machine(), "threads": settings.threads},
            "cameras": len(videos),
            "frames_per_camera": args.frames,
        }
        # A short warm-up of each method, then alternating rounds: load from other processes and the
        # machine's state fall on both alike; the medians and the median of the per-round ratios count.
        det = Path(files["detector"])
        baseline_threads(args.weights, videos, imgsz, 16, args.conf)
        ours(det, None, videos, 16, args.conf, work / "warm")
        rounds: dict[str, list[dict[str, Any]]] = {"baseline": [], "ours": []}
        if args.deployed:
            rounds["ours_deployed"] = []
            ours(Path(args.deployed), None, videos, 16, args.conf, work / "warm2")
        for k in range(args.rounds):
            rounds["baseline"].append(baseline_threads(args.weights, videos, imgsz, args.frames, args.conf))
            rounds["ours"].append(ours(det, None, videos, args.frames, args.conf, work / f"o{k}"))
            if args.deployed:
                rounds["ours_deployed"].append(ours(Path(args.deployed), None, videos, args.frames, args.conf, work / f"d{k}"))
        result["rounds"] = rounds
        result["baseline_threads_ultralytics"] = {
            "total_fps_median": statistics.median(r["total_fps"] for r in rounds["baseline"])
        }
        result["vp_driving_stream_detector_only"] = {
            "detector": "fp32 ONNX export",
            "total_fps_median": statistics.median(r["total_fps"] for r in rounds["ours"]),
        }

        def speedup(key: str) -> float | None:
            pairs = [(o["total_fps"], b["total_fps"]) for o, b in zip(rounds[key], rounds["baseline"]) if b["total_fps"]]
            return round(statistics.median(o / b for o, b in pairs), 2) if pairs else None

        if args.deployed:
            result["vp_driving_stream_deployed_detector"] = {
                "detector": args.deployed,
                "total_fps_median": statistics.median(r["total_fps"] for r in rounds["ours_deployed"]),
            }
            result["speedup_deployed_detector"] = speedup("ours_deployed")
        if files["lanes"]:
            result["vp_driving_stream_with_lanes"] = ours(
                det, Path(files["lanes"]), videos, args.frames, args.conf, work / "o-lanes"
            )
        result["baseline_note"] = (
            "ultralytics predict(stream=True), one thread and model per camera, its default torch threads "
            "(cores - 1), letterboxed to imgsz with rectangular padding; ours: one reader thread per camera, "
            "one batched onnxruntime call per tick, ByteTrack tracking and the JSON frames included (the "
            "baseline does not track), no video writing in either"
        )
        result["speedup_detector_only"] = speedup("ours")
        result["latency_per_frame"] = lat
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
