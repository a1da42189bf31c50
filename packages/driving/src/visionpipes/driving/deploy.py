"""Deploy the driving models: ONNX exports of the detector and the lane model (each checked against
the eager model by `core.export`), the folder's `model.json` record (`core.artifact`: files with
checksums, export report, headline metrics) and the model card (`core.artifact.ModelCard`).

It exports and documents trained models; it never trains or re-scores them (metrics come from the
evaluation's `metrics.json`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from visionpipes.core.artifact import ModelCard, file_entry, read_metrics, write_record
from visionpipes.core.config import ConfigModel, Field
from visionpipes.core.errors import UserError
from visionpipes.core.io import atomic_path

DET_ONNX = "detector.onnx"
DET_INT8_ONNX = "detector_int8.onnx"
LANES_ONNX = "lanes.onnx"
DOMAIN = "driving"
#: The roles of the model files in `model.json`, as `export_models` reports them.
FILE_ROLES: tuple[str, ...] = ("detector", "detector_int8", "lanes", "perception", "perception_int8")


class DeployConfig(ConfigModel):
    """The `deploy` section of params.yaml.

    Attributes:
        atol: absolute tolerance of the ONNX parity check.
        rtol: tolerance relative to each output's scale.
        latency_runs: timed forward passes per model for the card (0: skip the timing).
        det_aspect: height / width of the camera frames the deployed detector sees (BDD100K and
            the sample cameras: 720 / 1280); its ONNX input is `imgsz` wide and that aspect tall,
            rounded up to a multiple of 32, as ultralytics' rectangular inference. None: square.
        det_int8: also write `detector_int8.onnx`, statically quantised (calibrated on training
            images), with the official AP of both ONNX detectors on the evaluation split beside
            each other; `vp-driving stream --deploy` then runs it. Needs the dataset (`--dataset`).
        calibration_images: training images the int8 calibration sees.
        perception_int8: with a multi-task model, also try `perception_int8.onnx` (the detector's
            static int8 recipe); it is kept only if its official detection AP on the evaluation split
            is at most `perception_max_ap_drop` below the fp32 graph's and its lane F1_pix2 at most
            `perception_max_lane_drop` points below, else left out with the reason in the model
            card. Needs the dataset (`--dataset`).
        perception_max_ap_drop: the largest AP drop the int8 multi-task graph may have.
        perception_max_lane_drop: the largest lane F1_pix2 drop (points) it may have.
    """

    atol: float = Field(1e-4, ge=0)
    rtol: float = Field(1e-4, ge=0)
    latency_runs: int = Field(5, ge=0)
    det_aspect: float | None = Field(0.5625, gt=0, le=1)
    det_int8: bool = False
    calibration_images: int = Field(32, ge=1)
    perception_int8: bool = True
    perception_max_ap_drop: float = Field(0.01, ge=0)
    perception_max_lane_drop: float = Field(1.0, ge=0)


def _latency_ms(runner: Any, example: Any, runs: int) -> float | None:
    import time

    if runs <= 0:
        return None
    runner(example)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        runner(example)
        times.append(time.perf_counter() - start)
    return round(1000 * sorted(times)[len(times) // 2], 1)


def _int8_detector(out: Path, dataset: str | os.PathLike | None, config: DeployConfig, example: Any) -> dict[str, Any]:
    """Quantise `out/detector.onnx` into `out/detector_int8.onnx` and score both on the dataset's
    evaluation split with the official metrics."""
    from visionpipes.core.export import OnnxRunner
    from visionpipes.driving.bdd100k.labels import load_frames
    from visionpipes.driving.detection.quantize import quantize_detector_int8
    from visionpipes.driving.detection.runtime import OnnxDetector, predict_detections_onnx
    from visionpipes.driving.metrics import evaluate_detection
    from visionpipes.driving.prepare import load_manifest

    if dataset is None:
        raise UserError("deploy.det_int8 needs the dataset (--dataset dataset.json) to calibrate and score it.")
    manifest = load_manifest(dataset)
    split = "val" if "val" in manifest.names else next(iter(manifest.names))
    source = "train" if manifest.names.get("train") else split  # calibrate on training images when there are any
    calibration = [manifest.images[source] / n for n in manifest.names[source][: max(1, config.calibration_images)]]
    print(f"export: int8 detector calibrated on {len(calibration)} images -> {out / DET_INT8_ONNX}", flush=True)
    quantize_detector_int8(out / DET_ONNX, out / DET_INT8_ONNX, calibration)
    images = [manifest.images[split] / n for n in manifest.names[split]]
    gt = load_frames(manifest.det_labels[split])
    scores = {}
    for name in (DET_ONNX, DET_INT8_ONNX):
        frames = predict_detections_onnx(OnnxDetector(out / name), images)
        result = evaluate_detection(gt, frames, gt_source=str(manifest.det_labels[split]))
        scores[name] = {"AP": round(result.AP, 4), "AP_50": round(result.AP_50, 4)}
    return {
        "file": DET_INT8_ONNX,
        "calibration_images": len(calibration),
        "split": split,
        "official_AP_onnx": scores,
        "latency_ms_onnxruntime": _latency_ms(OnnxRunner(out / DET_INT8_ONNX), example, config.latency_runs),
    }


def export_models(
    out_dir: str | os.PathLike,
    *,
    det_weights: str | os.PathLike | None = None,
    lane_model: str | os.PathLike | None = None,
    multitask_model: str | os.PathLike | None = None,
    config: DeployConfig | None = None,
    dataset: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Export the given models to ONNX in `out_dir` (`detector.onnx`, `lanes.onnx`) with the parity check,
    and with `config.det_int8` the int8 detector, calibrated and scored on `dataset` (a dataset.json).

    Returns:
        Per model: file, input shape, parameters, max abs/rel difference, onnxruntime latency.

    Raises:
        UserError: if neither model is given or a file is missing.
        ExportParityError: if an export disagrees with its eager model (nothing is written for it).
    """
    import numpy as np

    from visionpipes.core.export import OnnxRunner
    from visionpipes.core.profile import count_parameters

    if det_weights is None and lane_model is None and multitask_model is None:
        raise UserError("export needs a detector (--det), a lane model (--lanes), or both.")
    config = config or DeployConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {}
    if det_weights is not None:
        from visionpipes.driving.detection.export import export_detector_onnx, rect_input_height
        from visionpipes.driving.detection.predict import load_detector

        model = load_detector(det_weights)
        train_args = (getattr(model, "ckpt", None) or {}).get("train_args", {})
        imgsz = int(train_args.get("imgsz", 320))
        height = rect_input_height(imgsz, config.det_aspect)
        print(f"export: detector at {imgsz}x{height} -> {out / DET_ONNX}", flush=True)
        rep = export_detector_onnx(
            model, out / DET_ONNX, imgsz=imgsz, height=height, atol=config.atol, rtol=config.rtol
        )
        example = np.random.default_rng(0).random((1, 3, height, imgsz), dtype=np.float32)
        report["detector"] = {
            "file": DET_ONNX,
            "architecture": str(train_args.get("model", "yolo")),
            "input": [1, 3, height, imgsz],
            "parameters": count_parameters(model.model),
            "max_abs_diff": rep.max_abs_diff,
            "max_rel_diff": rep.max_rel_diff,
            "latency_ms_onnxruntime": _latency_ms(OnnxRunner(rep.path), example, config.latency_runs),
            "train_args": {k: train_args[k] for k in ("epochs", "batch", "imgsz", "optimizer", "lr0", "time") if k in train_args},
        }
        if config.det_int8:
            report["detector_int8"] = _int8_detector(out, dataset, config, example)
    if lane_model is not None:
        from visionpipes.driving.lanes.model import load_lane_model
        from visionpipes.driving.lanes.runtime import export_lane_onnx

        net = load_lane_model(lane_model)
        cfg = net.config
        print(f"export: lane model {cfg.arch}/{cfg.encoder} at {cfg.width}x{cfg.height} -> {out / LANES_ONNX}", flush=True)
        rep = export_lane_onnx(net, out / LANES_ONNX, atol=config.atol, rtol=config.rtol)
        example = np.random.default_rng(0).random((1, 3, cfg.height, cfg.width), dtype=np.float32)
        report["lanes"] = {
            "file": LANES_ONNX,
            "architecture": f"{cfg.arch} / {cfg.encoder}",
            "input": [1, 3, cfg.height, cfg.width],
            "parameters": count_parameters(net),
            "max_abs_diff": rep.max_abs_diff,
            "max_rel_diff": rep.max_rel_diff,
            "latency_ms_onnxruntime": _latency_ms(OnnxRunner(rep.path), example, config.latency_runs),
            "config": cfg.to_dict(),
        }
    if multitask_model is not None:
        from visionpipes.driving.multitask.deploy import export_perception

        report.update(
            export_perception(
                out,
                multitask_model,
                atol=config.atol,
                rtol=config.rtol,
                latency_runs=config.latency_runs,
                int8=config.perception_int8,
                dataset=dataset,
                calibration_images=config.calibration_images,
                max_ap_drop=config.perception_max_ap_drop,
                max_lane_drop=config.perception_max_lane_drop,
            )
        )
    return report


def _fmt(value: Any, digits: int = 3) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def model_card(
    report: Mapping[str, Any],
    metrics: Mapping[str, Any] | None,
    params: Mapping[str, Any] | None,
    plan: Mapping[str, Any] | None = None,
) -> ModelCard:
    """The model card: what the models are, how they score, how they were trained, how to run them."""
    metrics = metrics or {}
    source = metrics.get("source", "unknown")
    card = ModelCard(
        "visionpipes driving models",
        "Object detection (10 BDD100K classes) and lane-marking segmentation (category, style and\n"
        "direction, decoded into the official bit-encoded lane PNG), exported to ONNX.",
    )
    data_line = (
        f"Evaluation data: the `{metrics.get('split', 'val')}` split of the "
        + ("synthetic BDD100K-format sample" if source == "synthetic" else "BDD100K copy")
        + f" ({metrics.get('images', '?')} images)."
        + (" Synthetic scores say that the pipeline works, not how the models do on real roads." if source == "synthetic" else "")
    )
    rows = [
        [
            title,
            f"`{item['file']}`",
            item["architecture"],
            "x".join(map(str, item["input"])),
            f"{item['parameters']:,}",
            f"{item['max_abs_diff']:.2e}",
            _fmt(item["latency_ms_onnxruntime"], 1),
        ]
        for key, title in (("detector", "detector"), ("lanes", "lanes"), ("perception", "multi-task"))
        if (item := report.get(key))
    ]
    header = ["model", "file", "architecture", "input", "parameters", "ONNX vs eager max abs diff", "onnxruntime latency (ms, batch 1)"]
    paragraphs = []
    int8 = report.get("detector_int8")
    if int8:
        ap = int8["official_AP_onnx"]
        paragraphs.append(
            f"`{int8['file']}`: the detector statically quantised to int8 (onnxruntime QDQ, calibrated on "
            f"{int8['calibration_images']} training images; the head's output layers and decoding in float), "
            f"{_fmt(int8['latency_ms_onnxruntime'], 1)} ms at batch 1. Official AP / AP_50 on `{int8['split']}` of "
            + ", ".join(f"`{k}` {_fmt(v['AP'])} / {_fmt(v['AP_50'])}" for k, v in ap.items())
            + ". `vp-driving stream --deploy` runs it."
        )
    card.lines += [data_line, ""]
    card.section("Files", table=(header, rows))
    card.lines += [*(line for text in paragraphs for line in (text, ""))]  # the int8 note after the table
    det = metrics.get("det")
    if det:
        shown = {k: v for k, v in det.items() if k not in ("per_class_AP", "imgsz", "ultralytics")}
        card.section(
            "Detection (official BDD100K metrics, COCOeval)",
            table=(list(shown), [[_fmt(v) for v in shown.values()]]),
        )
        card.lines += [
            "AP per class (-1: no ground truth of that class in the split): "
            + ", ".join(f"{k} {_fmt(v)}" for k, v in det.get("per_class_AP", {}).items()),
            "",
        ]
    lanes = metrics.get("lanes")
    if lanes:
        sub = lanes.get("sub_tasks", {})
        card.section(
            "Lane marking (official F-score, 0-100)",
            table=(
                ["bound", "F1", "direction", "style", "category"],
                [
                    [bound[-4:], _fmt(lanes[bound], 2)]
                    + [_fmt(sub.get(task, {}).get(bound, float("nan")), 2) for task in ("direction", "style", "category")]
                    for bound in ("F1_pix1", "F1_pix2", "F1_pix5")
                ],
            ),
        )
    if plan:
        hw = plan.get("hardware", {})
        card.section(
            "Plan (`vp-driving plan`: settings from the data and the hardware)",
            table=(
                ["key", "planned", "used"],
                [
                    [f"`{k}`", _fmt(v), _fmt(plan.get("effective", {}).get(k, v)) + (" (params)" if k in plan.get("overridden", {}) else "")]
                    for k, v in plan.get("values", {}).items()
                ],
            ),
        )
        card.lines += [
            f"Planned for {hw.get('device', '?')} with {hw.get('memory_gb', '?')} GB and {hw.get('cpu_cores', '?')} cores"
            f"{'' if hw.get('probed', True) else ' (given, not probed)'}; data fingerprint sha256 "
            f"`{str(plan.get('fingerprint_sha256', ''))[:16]}`.",
            "",
        ]
    from visionpipes.driving.multitask.deploy import card_lines

    card.lines += card_lines(report, metrics)
    if params:
        card.section("Training parameters", code=("json", json.dumps(params, indent=2, default=str)))
    card.section(
        "Use",
        bullets=[
            "Detector: input `images` (N, 3, S, S) RGB in [0, 1], letterboxed (grey 114); output `predictions`\n"
            "  (N, 14, anchors): box centre x, y, width, height in input pixels, then the 10 class scores;\n"
            "  `visionpipes.driving.detection.runtime.OnnxDetector` does the letterbox, decoding and NMS.",
            "Lanes: input `images` (N, 3, H, W) RGB in [0, 1] resized to the model size; output `logits` (N, 13, H, W)\n"
            "  (9 category incl. background, 2 style, 2 direction); `visionpipes.driving.lanes.decode.lane_mask_from_logits`\n"
            "  decodes them into the official lane PNG at any size (`lanes.runtime.OnnxLaneModel` does both): a pixel is a\n"
            "  lane where the eight lane types' probabilities together outweigh background, of the likeliest type; then the\n"
            "  model's lane-level decoding (join gaps, drop specks, one style per piece of one type; ONNX metadata).",
            "`vp-driving stream SRC ... --deploy FOLDER` runs both on several cameras at once (it reads `model.json`).",
        ],
    )
    card.section(
        "Limitations",
        bullets=[
            "Trained from scratch (no pretrained weights) on the data above with a short CPU budget.",
            "Drivable area is not predicted."
            if "perception" not in report
            else "Drivable area: only the multi-task network (`perception.onnx`) predicts it.",
        ],
    )
    return card


def deploy(
    out_dir: str | os.PathLike,
    *,
    det_weights: str | os.PathLike | None,
    lane_model: str | os.PathLike | None,
    multitask_model: str | os.PathLike | None = None,
    metrics_path: str | os.PathLike | None = None,
    params: Mapping[str, Any] | None = None,
    config: DeployConfig | None = None,
    dataset: str | os.PathLike | None = None,
    plan: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Export both models and write the deploy folder `out_dir` (built in a temporary folder and
    renamed into place): the ONNX files, `model.json` (`core.artifact.write_record`: each file with
    its checksum, the export report, the headline metrics, the parameters) and `MODEL_CARD.md`.
    `dataset` (dataset.json) is needed for `det_int8`; `plan` (`core.plan.Plan.summary()` of the plan
    the models were trained with) is recorded in `model.json` and the card.

    Returns:
        `{"models": export report, "metrics": headline metrics}` (what `model.json` records).

    Raises:
        UserError: on missing models or metrics file.
        ExportParityError: if an export fails its parity check.
    """
    metrics = read_metrics(metrics_path, producer="`vp-driving evaluate`") if metrics_path is not None else None
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out, is_dir=True) as tmp:
        report = export_models(
            tmp,
            det_weights=det_weights,
            lane_model=lane_model,
            multitask_model=multitask_model,
            config=config,
            dataset=dataset,
        )
        model_card(report, metrics, params, plan).write(tmp)
        summary: dict[str, Any] = {"models": report}
        if metrics:
            summary["metrics"] = {
                k: {m: v for m, v in metrics[k].items() if not isinstance(v, dict)} for k in ("det", "lanes") if k in metrics
            }
        if metrics and "multitask" in metrics:
            summary.setdefault("metrics", {})["multitask"] = {
                task: {m: v for m, v in values.items() if not isinstance(v, dict)}
                for task, values in metrics["multitask"].items()
                if task in ("det", "lanes", "drivable")
            }
        files = {role: file_entry(tmp, report[role]["file"]) for role in FILE_ROLES if role in report}
        extra = {"plan": dict(plan)} if plan else {}
        write_record(tmp, domain=DOMAIN, files=files, **summary, params=dict(params or {}), **extra)
    return summary
