"""Scoring the multi-task network on a split with the official metrics of each task: detection AP
through `metrics.evaluate_detection` (the detector evaluation's code path), lane F-scores through
`metrics.evaluate_lanes` on official lane PNGs (as the lane model's), drivable IoU through
`drivable_eval.evaluate_drivable` on official drivable PNGs (when the dataset has drivable masks).

The network runs eagerly (a `multitask_model.pt`) or as its ONNX graph (`perception.onnx`, fp32 or
int8, under onnxruntime); both are decoded by `multitask.decode`, so the two are scored alike.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from visionpipes.core.errors import UserError
from visionpipes.core.image import read_image
from visionpipes.driving.bdd100k.detection import detections_to_frame
from visionpipes.driving.bdd100k.drivable import write_drivable_mask
from visionpipes.driving.bdd100k.labels import Frame, load_frames, save_frames
from visionpipes.driving.bdd100k.masks import mask_name, write_mask
from visionpipes.driving.multitask.config import MultiTaskModelConfig
from visionpipes.driving.multitask.decode import decode_outputs, network_input
from visionpipes.driving.prepare import PreparedDataset, load_manifest

#: A network as the evaluation sees it: (N, 3, H, W) float32 input -> the graph's three outputs.
Runner = Callable[[np.ndarray], Sequence[np.ndarray]]


def torch_runner(model: Any, device: str = "cpu") -> Runner:
    """An eager `MultiTaskNet` (eval mode, `native_outputs` on: segmentation logits at the heads'
    strides, as the exported graph returns them) as a `Runner`."""
    import torch

    net = model.to(device).eval()
    net.native_outputs = True

    def run(x: np.ndarray) -> list[np.ndarray]:
        with torch.inference_mode():
            outputs = net(torch.from_numpy(x).to(device))
        return [o.float().cpu().numpy() for o in outputs]

    return run


def onnx_runner(path: str | os.PathLike, threads: int | None = None) -> tuple[Runner, MultiTaskModelConfig]:
    """A `perception.onnx` (fp32 or int8) as a `Runner`: the session of `PerceptionRuntime` (which
    checks the graph's metadata, names and shapes), with the model config from the metadata.

    Raises:
        UserError: if the file is missing, not loadable, or not a multi-task graph.
    """
    import json

    from visionpipes.driving.multitask.runtime import INPUT_NAME, OUTPUT_NAMES, PerceptionRuntime

    runtime = PerceptionRuntime(path, threads=threads)
    try:
        config = MultiTaskModelConfig.from_params(
            json.loads(runtime.metadata["config"]), source=f"{path} metadata"
        )
    except (KeyError, json.JSONDecodeError):
        raise UserError(
            f"{path}: its metadata has no multi-task model config (not written by multitask.export)."
        ) from None

    def run(x: np.ndarray) -> list[np.ndarray]:
        return runtime.session.run(list(OUTPUT_NAMES), {INPUT_NAME: x})

    return run, config


def load_runner(model_path: str | os.PathLike, device: str = "cpu") -> tuple[Runner, MultiTaskModelConfig]:
    """A `multitask_model.pt` (eager) or a `.onnx` graph (onnxruntime) as a `Runner` and its config.

    Raises:
        UserError: if the file is missing or not a multi-task model.
    """
    path = Path(model_path)
    if path.suffix == ".onnx":
        return onnx_runner(path)
    from visionpipes.driving.multitask.model import load_multitask_model

    model = load_multitask_model(path)
    return torch_runner(model, device), model.config


def predict_split(
    runner: Runner,
    config: MultiTaskModelConfig,
    images: Sequence[Path],
    out_dir: Path,
    *,
    conf: float = 0.001,
    iou: float = 0.6,
    max_det: int = 100,
    batch: int = 8,
) -> list[Frame]:
    """Run the network on `images`; write `out_dir/lanes/<stem>.png` and `out_dir/drivable/<stem>.png`
    (official masks at each image's size) and return the det-JSON frames (with scores).

    Raises:
        UserError: if an image is missing or unreadable.
    """
    (out_dir / "lanes").mkdir(parents=True, exist_ok=True)
    (out_dir / "drivable").mkdir(parents=True, exist_ok=True)
    frames: list[Frame] = []
    size = (config.width, config.height)
    for start in range(0, len(images), max(1, batch)):
        chunk = images[start : start + max(1, batch)]
        pictures = [read_image(p, order="BGR") for p in chunk]
        x, infos = network_input(pictures, size)
        sizes = [(p.shape[1], p.shape[0]) for p in pictures]
        decoded = decode_outputs(
            runner(x),
            infos,
            sizes,
            lane_decoding=config.decoding(),
            network_size=size,
            conf=conf,
            iou=iou,
            max_det=max_det,
        )
        for path, ((boxes, scores, classes), lanes, drivable) in zip(chunk, decoded):
            frames.append(detections_to_frame(path.name, boxes, scores, [int(c) for c in classes]))
            write_mask(out_dir / "lanes" / mask_name(path.name), lanes)
            write_drivable_mask(out_dir / "drivable" / mask_name(path.name), drivable)
    return frames


def evaluate_multitask(
    dataset_json: str | os.PathLike | PreparedDataset,
    model_path: str | os.PathLike,
    *,
    split: str = "val",
    predictions_dir: str | os.PathLike | None = None,
    conf: float = 0.001,
    iou: float = 0.6,
    max_det: int = 100,
    batch: int = 8,
    device: str = "cpu",
    runner: Runner | None = None,
) -> dict[str, Any]:
    """Score a multi-task model on a split of a prepared dataset with each task's official metric.

    Args:
        dataset_json: `dataset.json` of `vp-driving prepare` (or the loaded `PreparedDataset`).
        model_path: `multitask_model.pt`, or an exported `.onnx` (fp32 or int8).
        split: the split to score.
        predictions_dir: where to keep the predictions (`det_<split>.json`, `lanes/`, `drivable/`);
            None: a temporary folder, removed afterwards.
        conf, iou, max_det: detection decoding (low `conf`: AP integrates over all scores).
        batch: images per forward pass.
        device: torch device of an eager model.
        runner: run the network through this instead (e.g. `PerceptionRuntime`'s session); the
            config still comes from `model_path`.

    Returns:
        `{"split", "images", "det": official detection numbers + per_class_AP, "lanes": F1_pix1/2/5 +
        sub_tasks + classes, "drivable": mIoU, IoU per class, pAcc (only when the dataset has
        drivable masks)}`.

    Raises:
        UserError: on a missing dataset, split, model, image or label file.
    """
    from visionpipes.driving.metrics import evaluate_detection, evaluate_lanes

    dataset = dataset_json if isinstance(dataset_json, PreparedDataset) else load_manifest(dataset_json)
    if split not in dataset.names:
        raise UserError(f"the dataset has no split {split!r} (splits: {', '.join(dataset.names)}).")
    own_runner, config = load_runner(model_path, device)
    images = [dataset.images[split] / name for name in dataset.names[split]]
    result: dict[str, Any] = {"split": split, "images": len(images), "model": Path(model_path).name}
    with tempfile.TemporaryDirectory(prefix="multitask-eval-") as scratch:
        out = Path(predictions_dir) if predictions_dir is not None else Path(scratch)
        out.mkdir(parents=True, exist_ok=True)
        frames = predict_split(
            runner or own_runner, config, images, out, conf=conf, iou=iou, max_det=max_det, batch=batch
        )
        save_frames(out / f"det_{split}.json", frames)
        gt_path = dataset.det_labels[split]
        scores = evaluate_detection(load_frames(gt_path), frames, gt_source=str(gt_path))
        result["det"] = {**scores.summary(), "per_class_AP": scores.per_class_AP}
        lanes = evaluate_lanes(dataset.lane_masks[split], out / "lanes")
        result["lanes"] = {
            "F1_pix1": lanes.F1_pix1,
            "F1_pix2": lanes.F1_pix2,
            "F1_pix5": lanes.F1_pix5,
            "sub_tasks": lanes.sub_tasks,
            "classes": lanes.classes,
        }
        if split in dataset.drivable_masks:  # else the dataset has no drivable labels to score against
            from visionpipes.driving.drivable_eval import evaluate_drivable

            result["drivable"] = evaluate_drivable(dataset, out / "drivable", split=split).as_dict()
    return result
