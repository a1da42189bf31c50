"""The multi-task network in the driving deploy folder: `perception.onnx` (one graph, three outputs,
checked against the eager model), optionally `perception_int8.onnx` — kept only when its official
detection AP on the evaluation split stays within `max_ap_drop` of the fp32 graph's and its lane
F1_pix2 within `max_lane_drop` points (`int8_verdict`), else removed with the reason recorded — and
the model-card sections of the three tasks.

Deploy-time code called by `driving.deploy`: it exports, quantises and scores; it never trains.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from visionpipes.core.errors import UserError

PERCEPTION_ONNX = "perception.onnx"
PERCEPTION_INT8_ONNX = "perception_int8.onnx"


def _latency_ms(path: Path, shape: tuple[int, int, int, int], runs: int) -> float | None:
    import time

    import numpy as np

    from visionpipes.core.export import OnnxRunner

    if runs <= 0:
        return None
    runner = OnnxRunner(path)
    example = np.random.default_rng(0).random(shape, dtype=np.float32)
    runner(example)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        runner(example)
        times.append(time.perf_counter() - start)
    return round(1000 * sorted(times)[len(times) // 2], 1)


def _headline(result: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"AP": round(result["det"]["AP"], 4), "AP_50": round(result["det"]["AP_50"], 4)}
    out["lane_F1_pix2"] = round(result["lanes"]["F1_pix2"], 2)
    if "drivable" in result:
        out["drivable_mIoU"] = round(result["drivable"]["mIoU"], 2)
    return out


def export_perception(
    out_dir: str | os.PathLike,
    model_path: str | os.PathLike,
    *,
    atol: float = 1e-4,
    rtol: float = 1e-4,
    latency_runs: int = 5,
    int8: bool = False,
    dataset: str | os.PathLike | None = None,
    calibration_images: int = 32,
    max_ap_drop: float = 0.01,
    max_lane_drop: float = 1.0,
) -> dict[str, Any]:
    """Export a `multitask_model.pt` to `out_dir/perception.onnx` and, with `int8`, try the int8 graph.

    The int8 graph is onnxruntime's static QDQ quantisation of the detector's `quantize_detector_int8`
    (per-channel weights, the `Detect` head's output layers and decoding in float), calibrated on
    training images letterboxed as the runtime does. Both graphs are scored on the dataset's
    evaluation split (`evaluate_multitask`); the int8 file stays only if its official AP is at most
    `max_ap_drop` below the fp32 graph's and its lane F1_pix2 at most `max_lane_drop` points below
    (`int8_verdict`), else it is deleted and the report says why.

    Returns:
        `{"perception": {...}}` (file, input, parameters, GFLOPs, parity, latency, config; with `int8`
        also `int8`: kept or not, why, the official scores of both graphs) and, when the int8 graph
        is kept, `"perception_int8": {"file", "latency_ms_onnxruntime"}`.

    Raises:
        UserError: if the model is missing, or `int8` is asked without a dataset.
        ExportParityError: if the export disagrees with the eager model.
    """
    from visionpipes.driving.multitask.export import export_multitask_onnx
    from visionpipes.driving.multitask.model import load_multitask_model

    out = Path(out_dir)
    model = load_multitask_model(model_path)
    cfg = model.config
    print(f"export: multi-task network at {cfg.width}x{cfg.height} -> {out / PERCEPTION_ONNX}", flush=True)
    rep = export_multitask_onnx(model, out / PERCEPTION_ONNX, atol=atol, rtol=rtol)
    profile = model.profile()
    shape = (1, 3, cfg.height, cfg.width)
    backbone = cfg.backbone if isinstance(cfg.backbone, str) else str(cfg.backbone.get("name", "spec"))
    report: dict[str, Any] = {
        "perception": {
            "file": PERCEPTION_ONNX,
            "architecture": f"multi-task ({backbone} + FPN/PAN + ASPP; det, lanes, drivable)",
            "input": list(shape),
            "parameters": sum(p.numel() for p in model.parameters()),
            "gflops": round(profile["gflops"], 2),
            "max_abs_diff": rep.max_abs_diff,
            "max_rel_diff": rep.max_rel_diff,
            "latency_ms_onnxruntime": _latency_ms(out / PERCEPTION_ONNX, shape, latency_runs),
            "config": cfg.to_dict(),
        }
    }
    if int8:
        verdict = _int8(out, dataset, calibration_images, (max_ap_drop, max_lane_drop), shape, latency_runs)
        report["perception"]["int8"] = verdict
        if verdict["kept"]:
            report["perception_int8"] = {
                "file": PERCEPTION_INT8_ONNX,
                "latency_ms_onnxruntime": verdict["latency_ms_onnxruntime"],
            }
    return report


def _int8(
    out: Path,
    dataset: str | os.PathLike | None,
    calibration_images: int,
    limits: tuple[float, float],
    shape: tuple[int, int, int, int],
    latency_runs: int,
) -> dict[str, Any]:
    from visionpipes.driving.detection.quantize import quantize_detector_int8
    from visionpipes.driving.multitask.evaluate import evaluate_multitask
    from visionpipes.driving.prepare import load_manifest

    if dataset is None:
        raise UserError(
            "the int8 multi-task graph needs the dataset (--dataset dataset.json) to calibrate and score it."
        )
    manifest = load_manifest(dataset)
    split = "val" if "val" in manifest.names else next(iter(manifest.names))
    source = "train" if manifest.names.get("train") else split
    calibration = [manifest.images[source] / n for n in manifest.names[source][: max(1, calibration_images)]]
    print(
        f"export: int8 multi-task graph calibrated on {len(calibration)} images -> {out / PERCEPTION_INT8_ONNX}",
        flush=True,
    )
    quantize_detector_int8(out / PERCEPTION_ONNX, out / PERCEPTION_INT8_ONNX, calibration)
    scores = {
        name: _headline(evaluate_multitask(dataset, out / name, split=split))
        for name in (PERCEPTION_ONNX, PERCEPTION_INT8_ONNX)
    }
    kept, reason = int8_verdict(scores[PERCEPTION_ONNX], scores[PERCEPTION_INT8_ONNX], *limits, split=split)
    entry: dict[str, Any] = {
        "kept": kept,
        "reason": reason,
        "split": split,
        "calibration_images": len(calibration),
        "official_scores_onnx": scores,
        "ap_drop": round(scores[PERCEPTION_ONNX]["AP"] - scores[PERCEPTION_INT8_ONNX]["AP"], 4),
        "max_ap_drop": limits[0],
        "lane_drop": round(
            scores[PERCEPTION_ONNX]["lane_F1_pix2"] - scores[PERCEPTION_INT8_ONNX]["lane_F1_pix2"], 2
        ),
        "max_lane_drop": limits[1],
    }
    if kept:
        entry["latency_ms_onnxruntime"] = _latency_ms(out / PERCEPTION_INT8_ONNX, shape, latency_runs)
    else:
        (out / PERCEPTION_INT8_ONNX).unlink()
    print(f"export: {entry['reason']}", flush=True)
    return entry


def int8_verdict(
    fp32: Mapping[str, Any],
    int8: Mapping[str, Any],
    max_ap_drop: float,
    max_lane_drop: float,
    *,
    split: str = "val",
) -> tuple[bool, str]:
    """Whether the int8 graph may replace the fp32 one, and why, from both graphs' official scores
    (`_headline`: `AP`, `lane_F1_pix2`): its AP at most `max_ap_drop` below, and its lane F1_pix2
    at most `max_lane_drop` points below. The issue's int8 rule is the AP's; lanes are guarded too
    because int8 has hurt them more: on the 20-epoch model the first graph's int8 version (lane
    logits resized to the input inside the graph) lost 1.1 points of F1_pix2 at an AP drop of
    0.0034, where today's graph (logits at the heads' strides) gains 0.1 at the same AP drop."""
    drop = fp32["AP"] - int8["AP"]
    lane_drop = fp32["lane_F1_pix2"] - int8["lane_F1_pix2"]
    if drop > max_ap_drop:
        return False, (
            f"int8 skipped: official detection AP on {split} fell by {drop:.4f} "
            f"({fp32['AP']:.4f} -> {int8['AP']:.4f}), more than {max_ap_drop}"
        )
    if lane_drop > max_lane_drop:
        return False, (
            f"int8 skipped: lane F1_pix2 on {split} fell by {lane_drop:.2f} points "
            f"({fp32['lane_F1_pix2']:.2f} -> {int8['lane_F1_pix2']:.2f}), more than {max_lane_drop}"
        )
    return True, (
        f"official AP {-drop:+.4f} and lane F1_pix2 {-lane_drop:+.2f} against fp32 "
        f"(within {max_ap_drop} and {max_lane_drop})"
    )


def card_lines(report: Mapping[str, Any], metrics: Mapping[str, Any] | None) -> list[str]:
    """Markdown lines of the model card's multi-task section: the graph, its int8 verdict and the
    three tasks' official metrics (from `metrics.json`'s `multitask` entry)."""
    item = report.get("perception")
    if not item:
        return []
    lines = [
        "## Multi-task network (`perception.onnx`)",
        "",
        f"One graph, three outputs (`predictions` (N, 14, anchors) as the detector's, `lanes` (N, 13, H/s, W/s) "
        f"logits at the lane head's stride s, `drivable` (N, 3, H/4, W/4) logits), input `images` (N, 3, {item['input'][2]}, {item['input'][3]}) RGB in "
        f"[0, 1], frames letterboxed (grey 114); {item['parameters']:,} parameters, {item['gflops']} GFLOPs; "
        f"ONNX vs eager max abs diff {item['max_abs_diff']:.2e}; onnxruntime latency "
        f"{item['latency_ms_onnxruntime']} ms at batch 1. "
        "`visionpipes.driving.multitask.runtime.PerceptionRuntime` decodes it (the detector's NMS, the lane "
        "model's lane decoding, the drivable arg-max).",
        "",
    ]
    int8 = item.get("int8")
    if int8:
        scores = ", ".join(
            f"`{name}` AP {v['AP']:.3f} / AP_50 {v['AP_50']:.3f}, lane F1_pix2 {v['lane_F1_pix2']:.2f}"
            for name, v in int8["official_scores_onnx"].items()
        )
        verdict = "kept: `perception_int8.onnx`" if int8["kept"] else "not deployed"
        lines += [f"int8 ({verdict}): {int8['reason']}. Official scores on `{int8['split']}`: {scores}.", ""]
    multitask = (metrics or {}).get("multitask")
    if multitask:
        det, lanes, area = multitask.get("det", {}), multitask.get("lanes", {}), multitask.get("drivable")
        rows = [
            "| task | metric | multi-task | dedicated model |",
            "| --- | --- | --- | --- |",
            f"| detection | AP | {det.get('AP', float('nan')):.3f} | {_dedicated(metrics, 'det', 'AP', 3)} |",
            f"| detection | AP_50 | {det.get('AP_50', float('nan')):.3f} | {_dedicated(metrics, 'det', 'AP_50', 3)} |",
            f"| lanes | F1_pix2 | {lanes.get('F1_pix2', float('nan')):.2f} | {_dedicated(metrics, 'lanes', 'F1_pix2', 2)} |",
        ]
        if area:
            rows.append(
                f"| drivable | mIoU | {area['mIoU']:.2f} | (none: the two-model family has no drivable head) |"
            )
        lines += [
            "Official metrics on the evaluation split, beside the dedicated models of the same run:",
            "",
            *rows,
            "",
        ]
    return lines


def _dedicated(metrics: Mapping[str, Any] | None, task: str, key: str, digits: int) -> str:
    value = ((metrics or {}).get(task) or {}).get(key)
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "-"
