"""Multi-camera throughput: `vp-driving stream` (one reader thread per camera, each tick one batched
ONNX detection call over all cameras) against the common pattern of one thread per camera, each with
its own ultralytics model calling `model.predict(stream=True)` on its video — same detector, same
videos, same run. Also the per-frame latency of both models under onnxruntime vs eager PyTorch.

    python benchmarks/driving_streams.py --weights data/driving/models/det/weights/best.pt \
        --lanes data/driving/models/lanes/lane_model.pt --out benchmarks/results/driving_streams.json

The multi-task model (issue #15): `--multitask` runs, in alternating rounds of the same run, the
stream with all three tasks on every tick from one graph (`perception.onnx`) against today's
two-model stream (detector + lane model on every tick) and the detector-only stream, and prints the
fps ratios (target: multi-task >= 3x the two-model fps; goal: within 1.5x of detector-only), plus
the three-task model's parameters and GFLOPs at 640x384 against YOLOP's published 7.9 M / 18.6 G.
The two-model files come from a deploy folder (`--deploy`, the files `vp-driving stream --deploy`
runs: the int8 detector when deployed); the multi-task graphs are the folder's perception.onnx (and perception_int8.onnx) when it
has one, else a seeded (untrained: same graph, same cost) model exported at each `--multitask-size`
(default: the model config's own input size, what `deploy` exports). Each run also prints where a
tick's time goes, stage by stage (`tick_profile`), and the process CPU time per frame of each stream
(`cpu_ms_per_frame`, and the ratios from it: less sensitive to other processes' load than the fps).

    python benchmarks/driving_streams.py --multitask-only --deploy data/driving/deploy \
        --out benchmarks/results/driving_streams_multitask.json

Without --videos it writes 4 synthetic 640x360 camera videos first. Numbers depend on the machine
and on what else runs on it: compare the columns of one run, not runs with each other.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from visionpipes.core.hardware import cpu_model_name


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
        for _ in models[i].predict(
            source=videos[i], stream=True, imgsz=imgsz, conf=conf, verbose=False, device="cpu"
        ):
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


@contextlib.contextmanager
def _sessions_without_spinning() -> Iterator[None]:
    """onnxruntime sessions created inside do not spin-wait between calls (a measurement aid: the
    like-for-like two-model stream beside the multi-task runtime, which sets this itself)."""
    import onnxruntime as ort

    original = ort.SessionOptions

    class NoSpinning(original):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            super().__init__()
            self.add_session_config_entry("session.intra_op.allow_spinning", "0")

    ort.SessionOptions = NoSpinning
    try:
        yield
    finally:
        ort.SessionOptions = original


def ours(
    detector: Path | None,
    lanes: Path | None,
    videos: list[str],
    frames: int,
    conf: float,
    out: Path,
    perception: Path | None = None,
    no_spinning: bool = False,
) -> dict[str, Any]:
    """One `run_streams` run (no video writing): the detector (with the lane model on every tick when
    given), or the multi-task graph (all three tasks on every tick) when `perception` is given.
    `no_spinning`: every onnxruntime session of the run without intra-op spin-waiting, as the
    multi-task runtime's own (the detector's and lane model's `core.export.OnnxRunner` spin by default)."""
    if no_spinning:
        with _sessions_without_spinning():
            return ours(detector, lanes, videos, frames, conf, out, perception)
    from visionpipes.driving.streams.run import StreamConfig, run_streams

    cpu = time.process_time()
    report = run_streams(
        videos,
        out,
        detector_path=detector,
        lanes_path=lanes,
        perception_path=perception,
        config=StreamConfig(
            conf=conf,
            realtime=False,
            max_frames=frames,
            write_video=False,
            lanes_every=1 if lanes or perception else 0,
        ),
        printer=lambda line: None,
    )
    cpu = time.process_time() - cpu
    frames_done = sum(c.frames for c in report.cameras)
    return {
        "frames": frames_done,
        "seconds": report.seconds,
        "total_fps": report.total_fps,
        # the process's CPU seconds (every thread: readers, onnxruntime's pool, post-processing) per
        # frame: less sensitive to other processes' load than the wall clock
        "cpu_ms_per_frame": round(1000 * cpu / max(frames_done, 1), 2),
        # the same by thread (`StreamReport.extra["cpu_seconds"]`): inference loop, post-processing, rest
        "cpu_ms_per_frame_by_thread": {
            key: round(1000 * value / max(frames_done, 1), 2)
            for key, value in report.extra.get("cpu_seconds", {}).items()
        },
    }


#: YOLOP's published size (Wu et al., 2022, Table 6: 7.9 M parameters, 18.6 GFLOPs at 640x384).
YOLOP_PUBLISHED = {"params_m": 7.9, "gflops": 18.6, "width": 640, "height": 384}


def calibrate_seeded(
    model: Any, frames: list[Any], detector: Path, lanes: Path, conf: float
) -> dict[str, Any]:
    """Shift a seeded model's output biases so that its outputs load the decoding as the deployed
    models' do on the same frames (an untrained head marks every pixel a lane, which makes the
    lane-level decoding 10x dearer than on a trained model's sparse lanes, and scores every anchor
    ~1e-2, which gives no boxes to track): as many anchors above `conf` per frame as the deployed
    detector's raw output has, the deployed lane model's share of lane pixels, and 25% direct / 15%
    alternative drivable pixels. The graph and so its cost are unchanged; only biases move."""
    import numpy as np
    import torch

    from visionpipes.driving.bdd100k.categories import DET_CATEGORIES, LANE_BACKGROUND
    from visionpipes.driving.detection.runtime import OnnxDetector, detector_input
    from visionpipes.driving.lanes.decode import BACKGROUND_CLASS, lane_margin
    from visionpipes.driving.lanes.runtime import OnnxLaneModel
    from visionpipes.driving.multitask.decode import network_input

    det = OnnxDetector(detector, threads=1)
    (raw,) = det.runner(detector_input(frames, (det.imgsz, det.height))[0])
    anchors_above = float((raw[:, 4:].max(axis=1) > conf).sum(axis=1).mean())
    lane_share = float(
        np.mean([(m != LANE_BACKGROUND).mean() for m in OnnxLaneModel(lanes, threads=1)(frames)])
    )
    x, _ = network_input(frames, (model.config.width, model.config.height))
    with torch.no_grad():
        predictions, lane_logits, drivable = model(torch.from_numpy(x))
        car = DET_CATEGORIES.index("car")
        scores = predictions[:, 4 + car].clamp(1e-7, 1 - 1e-7)
        logits = torch.log(scores / (1 - scores)).flatten()
        k = max(1.0, anchors_above) * len(frames)
        shift = float(np.log(conf / (1 - conf))) - float(torch.quantile(logits, 1 - k / logits.numel()))
        for branch in model.detect.cv3:
            branch[-1].bias[car] += shift
        margin = torch.from_numpy(
            np.stack([lane_margin(lg[: BACKGROUND_CLASS + 1]) for lg in lane_logits.numpy()])
        )
        model.lane_head.classifier.bias[BACKGROUND_CLASS] += float(
            torch.quantile(margin.flatten()[::7], 1 - lane_share)
        )
        head = model.drivable_head.classifier
        head.bias[0] += float(torch.quantile((drivable[:, 2] - drivable[:, 0]).flatten()[::7], 0.25))
        head.bias[1] += float(torch.quantile((drivable[:, 2] - drivable[:, 1]).flatten()[::7], 0.15))
    return {"anchors_above_conf_per_frame": round(anchors_above, 1), "lane_pixel_share": round(lane_share, 4)}


def _model_code_version() -> dict[str, Any]:
    """The commit of the multi-task model's code (`git log` of model.py and config.py) and whether
    the working tree changes them: which network a run measured."""
    import subprocess

    files = [f"packages/driving/src/visionpipes/driving/multitask/{name}.py" for name in ("model", "config")]
    root = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=root, capture_output=True, text=True, timeout=30
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {
        "commit": git("log", "-1", "--format=%h", "--", *files) or None,
        "uncommitted_changes": bool(git("status", "--porcelain", "--", *files)),
    }


def multitask_models(
    deploy: Path, sizes: list[tuple[int, int]], work: Path, frames: list[Any], conf: float, int8: bool
) -> tuple[dict[str, Path], dict[str, Any]]:
    """The multi-task graphs to stream: the deploy folder's perception.onnx when it has one, else a
    seeded model (the default `MultiTaskModelConfig`) exported at each size, its output biases
    calibrated on the cameras' frames (`calibrate_seeded`), and with `int8` also its static int8
    version (the detector's `quantize_detector_int8`, calibrated on the same frames: what deploy
    does for `perception_int8.onnx`); and the three-task model's parameters and GFLOPs at 640x384
    (`MultiTaskNet.profile`, torch's flop counter, 2 FLOPs per multiply-accumulate) beside YOLOP's
    published numbers."""
    import cv2
    import torch

    from visionpipes.driving.deployment import read_deploy_folder
    from visionpipes.driving.multitask.export import export_multitask_onnx
    from visionpipes.driving.multitask.model import build_multitask_model
    from visionpipes.driving.multitask.runtime import PerceptionRuntime

    deployed = read_deploy_folder(deploy)
    config: dict[str, Any] = {}
    graphs: dict[str, Path] = {}
    info: dict[str, Any] = {}
    if deployed.perception is not None:  # the folder's fp32 graph, and its int8 one when deployed
        runtime = PerceptionRuntime(deployed.perception, threads=1)
        config = json.loads(runtime.metadata["config"])
        for path in (deployed.perception.parent / "perception.onnx", deployed.perception):
            if path.exists():
                graphs[f"deployed {path.name} {runtime.width}x{runtime.height}"] = path
    torch.manual_seed(0)
    model = build_multitask_model(config or None)
    if not graphs:
        calibration = []
        for k, frame in enumerate(frames):
            calibration.append(work / f"calibration{k}.jpg")
            cv2.imwrite(str(calibration[-1]), frame)
        for width, height in sizes or [(model.config.width, model.config.height)]:
            sized = build_multitask_model({**model.config.to_dict(), "width": width, "height": height}).eval()
            sized.load_state_dict(model.state_dict())
            info[f"seeded {width}x{height}"] = calibrate_seeded(
                sized, frames, deployed.detector, deployed.lanes, 0.25
            )
            path = export_multitask_onnx(sized, work / f"perception_{width}x{height}.onnx").path
            graphs[f"seeded {width}x{height}"] = path
            info[f"seeded {width}x{height}"].update({k: round(v, 3) for k, v in sized.profile().items()})
            if int8:
                from visionpipes.driving.detection.quantize import quantize_detector_int8

                graphs[f"seeded int8 {width}x{height}"] = quantize_detector_int8(
                    path, work / f"perception_int8_{width}x{height}.onnx", calibration
                )
    size: dict[str, Any] = {"ours_640x384": {k: round(v, 3) for k, v in model.profile(640, 384).items()}}
    size["yolop_published"] = YOLOP_PUBLISHED
    size["ratio_params"] = round(size["ours_640x384"]["params_m"] / YOLOP_PUBLISHED["params_m"], 3)
    size["ratio_gflops"] = round(size["ours_640x384"]["gflops"] / YOLOP_PUBLISHED["gflops"], 3)
    size["backbone"] = model.config.backbone if isinstance(model.config.backbone, str) else "spec"
    size["config"] = model.config.to_dict()
    size["model_code"] = _model_code_version()
    size["seeded_calibration"] = info
    return graphs, size


def _stage_ms(fn: Any, repeats: int) -> dict[str, float]:
    """Median wall and process-CPU milliseconds of `fn()` (after one untimed call)."""
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return {
        "wall_ms": round(1000 * statistics.median(wall), 2),
        "cpu_ms": round(1000 * statistics.median(cpu), 2),
    }


def tick_profile(
    detector: Path, lanes: Path, perception: Path, videos: list[str], conf: float, repeats: int = 10
) -> dict[str, Any]:
    """Where one stream tick's time goes (all cameras' newest frames, one stage at a time, in this
    thread, no overlap): the multi-task tick (letterbox, the one ONNX call, NMS, lane decoding,
    drivable mask, its poly2d polygons, tracking, the JSON frame; the lane and drivable decoding also
    with the decoders the runtime used before (the lanes: all 13 channels upsampled, then decoded), to show what the fast ones save) and the
    two-model tick (detector, lane model, its lane decoding, tracking, JSON). Each stage: median
    wall and process-CPU ms over `repeats` calls (onnxruntime's pool included in the CPU)."""
    import cv2
    import numpy as np

    from visionpipes.driving.detection.runtime import OnnxDetector, decode_predictions, detector_input
    from visionpipes.driving.lanes.decode import lane_mask_from_logits
    from visionpipes.driving.lanes.runtime import OnnxLaneModel
    from visionpipes.driving.multitask.decode import (
        drivable_mask_from_logits,
        lane_mask_from_grid,
        network_input,
        unletterbox,
    )
    from visionpipes.driving.multitask.runtime import INPUT_NAME, PerceptionRuntime
    from visionpipes.driving.streams.outputs import drivable_labels
    from visionpipes.driving.streams.tracking import make_tracker, track, tracks_to_frame

    captures = [cv2.VideoCapture(v) for v in videos]

    def read() -> list[Any]:
        out = []
        for capture in captures:
            ok, frame = capture.read()
            if not ok:
                capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
                ok, frame = capture.read()
            out.append(frame)
        return out

    frames = read()
    sizes = [(f.shape[1], f.shape[0]) for f in frames]
    rt = PerceptionRuntime(perception)
    x, infos = network_input(frames, (rt.width, rt.height))
    predictions, lane_out, area_out = rt.session.run(None, {INPUT_NAME: x})
    network = (rt.width, rt.height)
    area_logits = [unletterbox(area_out[k], infos[k], sizes[k], network) for k in range(len(frames))]
    dets = decode_predictions(predictions, infos, sizes, conf=conf)
    areas = [drivable_mask_from_logits(a, s) for a, s in zip(area_logits, sizes)]
    trackers = [make_tracker("bytetrack") for _ in frames]
    tracks = [track(t, *d, f) for t, d, f in zip(trackers, dets, frames)]
    polygons = [drivable_labels(a) for a in areas]

    def reference_drivable(logits: Any, size: tuple[int, int]) -> Any:
        return np.stack([cv2.resize(c, size, interpolation=cv2.INTER_LINEAR) for c in logits]).argmax(0)

    def frames_json(with_areas: bool) -> None:
        for k, t in enumerate(tracks):
            frame = tracks_to_frame(f"cam{k}", 0, 0.0, t, rt.class_names)
            if with_areas:
                frame.labels = [*(frame.labels or []), *polygons[k]]
            json.dumps(frame.to_dict())

    multi = {
        "video decode (cv2, 4 cameras)": lambda: read(),
        "letterbox + input tensor": lambda: network_input(frames, (rt.width, rt.height)),
        "onnx forward (one call)": lambda: rt.session.run(None, {INPUT_NAME: x}),
        "detection decode (class-wise NMS)": lambda: decode_predictions(predictions, infos, sizes, conf=conf),
        "lane decoding (lane_mask_from_grid)": lambda: [
            lane_mask_from_grid(lane_out[k], infos[k], sizes[k], network, **rt.lane_decoding)
            for k in range(len(frames))
        ],
        "drivable mask (channel_argmax)": lambda: [
            drivable_mask_from_logits(a, s) for a, s in zip(area_logits, sizes)
        ],
        "drivable poly2d (findContours)": lambda: [drivable_labels(a) for a in areas],
        "tracking (ByteTrack)": lambda: [track(t, *d, f) for t, d, f in zip(trackers, dets, frames)],
        "JSON frames": lambda: frames_json(True),
    }
    before = {
        "lane decoding (13 channels upsampled + lane_mask_from_logits)": lambda: [
            lane_mask_from_logits(
                unletterbox(lane_out[k], infos[k], sizes[k], network, upsample=True), sizes[k], **rt.lane_decoding
            )
            for k in range(len(frames))
        ],
        "drivable mask (reference resize + NumPy argmax)": lambda: [
            reference_drivable(a, s) for a, s in zip(area_logits, sizes)
        ],
    }
    det = OnnxDetector(detector)
    lane_model = OnnxLaneModel(lanes)
    xd, infos_d = detector_input(frames, (det.imgsz, det.height))
    (raw,) = det.runner(xd)
    two_lanes = lane_model.logits(frames)
    two = {
        "video decode (cv2, 4 cameras)": lambda: read(),
        "detector letterbox + input": lambda: detector_input(frames, (det.imgsz, det.height)),
        "detector forward": lambda: det.runner(xd),
        "detection decode (class-wise NMS)": lambda: decode_predictions(raw, infos_d, sizes, conf=conf),
        "lane model input + forward": lambda: lane_model.logits(frames),
        "lane decoding (lane_mask_from_logits)": lambda: [
            lane_mask_from_logits(g, s, **lane_model.decoding) for g, s in zip(two_lanes, sizes)
        ],
        "tracking (ByteTrack)": lambda: [track(t, *d, f) for t, d, f in zip(trackers, dets, frames)],
        "JSON frames": lambda: frames_json(False),
    }
    out: dict[str, Any] = {"frames_per_tick": len(frames), "frame_size": list(sizes[0]), "repeats": repeats}
    for name, stages in (("multitask", multi), ("multitask_reference_decoders", before), ("two_model", two)):
        table = {stage: _stage_ms(fn, repeats) for stage, fn in stages.items()}
        if name != "multitask_reference_decoders":
            table["total"] = {k: round(sum(v[k] for v in table.values()), 2) for k in ("wall_ms", "cpu_ms")}
        out[name] = table
    for capture in captures:
        capture.release()
    return out


def onnx_op_profile(path: Path, batch: int, runs: int = 5, top: int = 8) -> dict[str, Any]:
    """Where the graph's own time goes: onnxruntime's profiler over `runs` calls on a `batch` of
    random inputs (the stream's session options), summed by operator type and by node (share of all
    kernel time, %): which layers to make cheaper, for whoever owns the network."""
    import collections

    import numpy as np
    import onnxruntime as ort

    from visionpipes.core.settings import default_threads

    options = ort.SessionOptions()
    options.intra_op_num_threads = default_threads()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        options.profile_file_prefix = str(Path(tmp) / "ort")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        shape = [d if isinstance(d, int) else batch for d in session.get_inputs()[0].shape]
        x = np.random.default_rng(0).random(shape, dtype=np.float32)
        for _ in range(runs):
            session.run(None, {session.get_inputs()[0].name: x})
        events = json.loads(Path(session.end_profiling()).read_text())
    by_op: collections.Counter[str] = collections.Counter()
    by_node: collections.Counter[str] = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            by_op[event["args"]["op_name"]] += event["dur"]
            by_node[event["name"][: -len("_kernel_time")]] += event["dur"]
    total = sum(by_op.values()) or 1
    return {
        "by_op_percent": {k: round(100 * v / total, 1) for k, v in by_op.most_common(top)},
        "by_node_percent": {k: round(100 * v / total, 1) for k, v in by_node.most_common(top)},
    }


def print_tick_profile(profile: dict[str, Any]) -> None:
    """The tick profile as a table (ms per tick of `frames_per_tick` frames)."""
    print(
        f"\nwhere a tick's time goes ({profile['frames_per_tick']} frames of {profile['frame_size'][0]}x"
        f"{profile['frame_size'][1]}, ms per tick, stages run one at a time)"
    )
    for name in ("multitask", "multitask_reference_decoders", "two_model"):
        print(f"  {name:56s} {'wall ms':>9s} {'CPU ms':>9s}")
        for stage, v in profile[name].items():
            print(f"    {stage:54s} {v['wall_ms']:9.2f} {v['cpu_ms']:9.2f}")
    if "onnx_ops" in profile:
        ops = profile["onnx_ops"]
        print(
            "  the multi-task graph's kernel time by operator (%): "
            + ", ".join(f"{k} {v}" for k, v in ops["by_op_percent"].items())
        )
        print("  ... by node (%): " + ", ".join(f"{k} {v}" for k, v in ops["by_node_percent"].items()))
    print(flush=True)


def multitask_comparison(
    deploy: Path,
    videos: list[str],
    frames: int,
    rounds: int,
    conf: float,
    sizes: list[tuple[int, int]],
    work: Path,
    int8: bool = True,
) -> dict[str, Any]:
    """Detector-only, two-model (detector + lanes every tick) and multi-task (three tasks every tick)
    streams of the same cameras, in alternating rounds after a short warm-up of each; the medians of
    the fps and of the per-round ratios count."""
    import cv2

    from visionpipes.driving.deployment import read_deploy_folder

    deployed = read_deploy_folder(deploy)
    if deployed.detector is None or deployed.lanes is None:
        raise SystemExit(f"{deploy} needs a detector and a lane model for the two-model stream.")
    frames_seen = []
    for video in videos:
        capture = cv2.VideoCapture(video)
        for _ in range(4):
            ok, frame = capture.read()
            if ok:
                frames_seen.append(frame)
        capture.release()
    graphs, size = multitask_models(deploy, sizes, work, frames_seen, conf, int8)
    runs: dict[str, dict[str, Any]] = {
        "detector_only": {"detector": deployed.detector},
        "two_model": {"detector": deployed.detector, "lanes": deployed.lanes},
        "two_model_no_spinning": {
            "detector": deployed.detector,
            "lanes": deployed.lanes,
            "no_spinning": True,
        },
        **{f"multitask {name}": {"perception": path} for name, path in graphs.items()},
    }
    first = next(path for name, path in graphs.items() if "int8" not in name)
    profile = tick_profile(deployed.detector, deployed.lanes, first, videos, conf)
    profile["onnx_ops"] = onnx_op_profile(first, len(videos))
    print_tick_profile(profile)
    for models in runs.values():  # warm-up: sessions, caches, the tracker's imports
        ours(
            models.get("detector"),
            models.get("lanes"),
            videos,
            8,
            conf,
            work / "warm",
            models.get("perception"),
            models.get("no_spinning", False),
        )
    results: dict[str, list[dict[str, Any]]] = {key: [] for key in runs}
    for k in range(rounds):
        for key, models in runs.items():
            out = work / f"mt{k}-{key.replace(' ', '_')}"
            results[key].append(
                ours(
                    models.get("detector"),
                    models.get("lanes"),
                    videos,
                    frames,
                    conf,
                    out,
                    models.get("perception"),
                    models.get("no_spinning", False),
                )
            )
            print(f"round {k + 1}/{rounds} {key}: {results[key][-1]['total_fps']} fps", flush=True)

    def ratio(a: str, b: str, key: str = "total_fps") -> float:
        return round(statistics.median(x[key] / y[key] for x, y in zip(results[a], results[b])), 2)

    summary: dict[str, Any] = {
        "models": {key: {role: str(path) for role, path in models.items()} for key, models in runs.items()},
        "rounds": results,
        "total_fps_median": {
            key: statistics.median(r["total_fps"] for r in rs) for key, rs in results.items()
        },
        "cpu_ms_per_frame_median": {
            key: statistics.median(r["cpu_ms_per_frame"] for r in rs) for key, rs in results.items()
        },
    }
    summary["ratios"] = {
        key: {
            "vs_two_model": ratio(key, "two_model"),
            "detector_only_over_multitask": ratio("detector_only", key),
            # the same ratios from CPU time per frame (process CPU seconds / frames; load-robust)
            "vs_two_model_cpu": ratio("two_model", key, "cpu_ms_per_frame"),
            "detector_only_over_multitask_cpu": ratio(key, "detector_only", "cpu_ms_per_frame"),
            # against the two-model stream with the same session setting (no spin-waiting)
            "vs_two_model_no_spinning": ratio(key, "two_model_no_spinning"),
            "vs_two_model_no_spinning_cpu": ratio("two_model_no_spinning", key, "cpu_ms_per_frame"),
            "target_3x_two_model_met": ratio(key, "two_model") >= 3.0,
            "goal_within_1.5x_of_detector_only_met": ratio("detector_only", key) <= 1.5,
        }
        for key in runs
        if key.startswith("multitask")
    }
    summary["tick_profile"] = profile
    summary["size"] = size
    summary["note"] = (
        "one reader thread per camera, one batched onnxruntime call per tick per model, ByteTrack and the "
        "JSON frames included, no video; two_model: the deploy folder's detector and lane model (lane-level "
        "decoding as deployed) on every tick; multitask: perception.onnx, detections + lane masks (its "
        "lane_decoding) + drivable masks and their polygons in the JSON on every tick"
    )
    return summary


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
    parser.add_argument("--weights", help="trained detector (.pt); required unless --multitask-only")
    parser.add_argument("--lanes", help="trained lane model (lane_model.pt)")
    parser.add_argument("--videos", nargs="*", help="camera videos (default: 4 synthetic 640x360 videos)")
    parser.add_argument("--frames", type=int, default=144, help="frames per camera (default 144)")
    parser.add_argument(
        "--rounds", type=int, default=3, help="alternating timed rounds of both methods (default 3)"
    )
    parser.add_argument("--conf", type=float, default=0.25)
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per latency (default 20)")
    parser.add_argument(
        "--deployed", help="a deployed detector to time as well (e.g. data/driving/deploy/detector_int8.onnx)"
    )
    parser.add_argument("--out", help="JSON results file")
    parser.add_argument(
        "--multitask", action="store_true", help="also compare the multi-task stream (needs --deploy)"
    )
    parser.add_argument(
        "--multitask-only",
        action="store_true",
        help="only the multi-task comparison (no ultralytics baseline)",
    )
    parser.add_argument(
        "--deploy", help="deploy folder of the two-model stream (and its perception.onnx when it has one)"
    )
    parser.add_argument(
        "--multitask-size",
        action="append",
        metavar="WxH",
        help="input size of the seeded multi-task graph (repeatable; default the model config's own size)",
    )
    parser.add_argument(
        "--no-multitask-int8",
        action="store_true",
        help="skip the int8 version of the seeded multi-task graph",
    )
    args = parser.parse_args()
    if args.multitask_only:
        args.multitask = True
    if args.multitask and not args.deploy:
        parser.error("--multitask needs --deploy (the deploy folder's detector and lane model)")
    if not args.multitask_only and not args.weights:
        parser.error("--weights is required (unless --multitask-only)")
    sizes = [
        tuple(int(v) for v in size.lower().split("x")) for size in args.multitask_size or []
    ]  # none: the model config's own size

    from visionpipes.core.settings import apply_runtime_settings

    settings = apply_runtime_settings()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        videos = args.videos
        if not videos:
            from visionpipes.driving.synth.sample import SynthConfig, write_sample

            write_sample(
                work / "bdd", SynthConfig(images=1, val_fraction=0.0, cameras=4, video_frames=args.frames)
            )
            videos = [str(p) for p in sorted((work / "bdd" / "videos").glob("*.mp4"))]
        if args.multitask_only:
            result = {
                "machine": {
                    "cpu": cpu_model_name(),
                    "threads": settings.threads,
                    "load_average": os.getloadavg(),
                },
                "cameras": len(videos),
                "frames_per_camera": args.frames,
                "multitask": multitask_comparison(
                    Path(args.deploy),
                    videos,
                    args.frames,
                    args.rounds,
                    args.conf,
                    sizes,
                    work,
                    not args.no_multitask_int8,
                ),
            }
            result["machine"]["load_average_after"] = os.getloadavg()
            _write(result, args.out)
            return
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
                rounds["ours_deployed"].append(
                    ours(Path(args.deployed), None, videos, args.frames, args.conf, work / f"d{k}")
                )
        result["rounds"] = rounds
        result["baseline_threads_ultralytics"] = {
            "total_fps_median": statistics.median(r["total_fps"] for r in rounds["baseline"])
        }
        result["vp_driving_stream_detector_only"] = {
            "detector": "fp32 ONNX export",
            "total_fps_median": statistics.median(r["total_fps"] for r in rounds["ours"]),
        }

        def speedup(key: str) -> float | None:
            pairs = [
                (o["total_fps"], b["total_fps"])
                for o, b in zip(rounds[key], rounds["baseline"])
                if b["total_fps"]
            ]
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
        if args.multitask:
            result["multitask"] = multitask_comparison(
                Path(args.deploy),
                videos,
                args.frames,
                args.rounds,
                args.conf,
                sizes,
                work,
                not args.no_multitask_int8,
            )
    _write(result, args.out)


def _write(result: dict[str, Any], out: str | None) -> None:
    text = json.dumps(result, indent=2, default=str)
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")


if __name__ == "__main__":
    main()
