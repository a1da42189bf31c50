"""Evaluate the trained detector and lane model on the validation split: predictions in the official
formats, the official metrics in one `metrics.json`, and plots (per-class AP, ultralytics' PR curve and
confusion matrix, lane overlays) as PNG.

Scoring itself is `metrics`'; this module runs the models and writes the files a pipeline declares.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import field_validator

from visionpipes.core.config import ConfigModel, Field
from visionpipes.core.errors import UserError
from visionpipes.core.image import read_image
from visionpipes.core.io import atomic_path, write_json
from visionpipes.driving.bdd100k.categories import LANE_BACKGROUND
from visionpipes.driving.bdd100k.labels import load_frames, save_frames
from visionpipes.driving.bdd100k.masks import mask_name, read_mask
from visionpipes.driving.devices import model_device, ultralytics_device
from visionpipes.driving.drawing import lane_overlay
from visionpipes.driving.prepare import PreparedDataset


class EvalConfig(ConfigModel):
    """The `eval` section of params.yaml.

    Attributes:
        conf: detection score threshold (low: AP integrates over all scores).
        iou: NMS IoU threshold.
        max_det: detections per image (the official evaluation scores up to 100).
        batch: images per forward pass.
        overlays: number of validation images drawn with their lane masks.
        ultralytics_plots: also run ultralytics' validation for its PR curve and confusion matrix.
        device: `auto`, `cpu` or a CUDA index.
    """

    conf: float = Field(0.001, ge=0, lt=1)
    iou: float = Field(0.6, gt=0, le=1)
    max_det: int = Field(100, ge=1)
    batch: int = Field(8, ge=1)
    overlays: int = Field(4, ge=0)
    ultralytics_plots: bool = True
    device: str = "auto"

    @field_validator("device", mode="before")
    @classmethod
    def _device_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def write_lane_overlays(
    images: Sequence[Path], gt_dir: Path, pred_dir: Path, out_dir: Path, count: int
) -> list[Path]:
    """Side-by-side PNGs (ground truth | prediction) of the first `count` images, at half size."""
    import cv2

    written = []
    for image_path in list(images)[:count]:
        image = read_image(image_path, order="BGR")
        name = mask_name(image_path.name)
        panels = []
        for folder, title in ((gt_dir, "ground truth"), (pred_dir, "prediction")):
            path = folder / name
            mask = read_mask(path, kind="lane") if path.is_file() else np.full(image.shape[:2], LANE_BACKGROUND, np.uint8)
            panel = cv2.resize(lane_overlay(image, mask), (image.shape[1] // 2, image.shape[0] // 2))
            cv2.putText(panel, title, (10, 28), cv2.FONT_HERSHEY_SIMPLEX, 0.9, (255, 255, 255), 2, cv2.LINE_AA)
            panels.append(panel)
        target = out_dir / f"lanes_{Path(image_path).stem}.png"
        if not cv2.imwrite(str(target), np.concatenate(panels, axis=1)):
            raise UserError(f"could not write {target}.")
        written.append(target)
    return written


def plot_per_class_ap(per_class: Mapping[str, float], path: Path, title: str = "Detection AP per class") -> Path:
    """A bar chart of the official AP of each class (classes without ground truth left out)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items = [(k, v) for k, v in per_class.items() if v >= 0]
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=100)
    ax.barh([k for k, _ in items][::-1], [v for _, v in items][::-1], color="#4C72B0")
    ax.set_xlim(0, 1)
    ax.set_xlabel("AP (IoU 0.50:0.95)")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_lane_f1(classes: Mapping[str, Mapping[str, Mapping[str, float]]], path: Path) -> Path:
    """A bar chart of the lane F1 (2-pixel bound) of every sub-task value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, values = [], []
    for task in ("category", "style", "direction"):
        for name, scores in classes.get(task, {}).items():
            labels.append(f"{task}: {name}")
            values.append(scores["F1_pix2"])
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    ax.barh(labels[::-1], values[::-1], color="#55A868")
    ax.set_xlim(0, 100)
    ax.set_xlabel("F1 (2-pixel bound)")
    ax.set_title("Lane marking F1 per sub-task value")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


@dataclass
class EvalResult:
    """What `evaluate_models` wrote."""

    metrics: dict[str, Any]
    metrics_path: Path
    plots: list[Path]
    predictions: Path


def evaluate_models(
    dataset: PreparedDataset,
    *,
    det_weights: str | os.PathLike | None,
    lane_model: str | os.PathLike | None,
    metrics_path: str | os.PathLike,
    plots_dir: str | os.PathLike,
    predictions_dir: str | os.PathLike,
    config: EvalConfig | None = None,
    split: str = "val",
    multitask_model: str | os.PathLike | None = None,
    drivable_pred: str | os.PathLike | None = None,
) -> EvalResult:
    """Predict on a split with the detector and/or the lane model and score with the official metrics.

    Writes `predictions_dir/det_<split>.json` (det JSON with scores), `predictions_dir/lanes/*.png`
    (official lane masks at the image size), `metrics_path` (`det`: the 12 official numbers and AP
    per class; `lanes`: F1 at 1/2/5 pixels and the per-sub-task breakdown; `drivable`: with
    `drivable_pred`, a folder of predicted official drivable masks, the official IoU per class and mIoU,
    0-100, see `drivable_eval.evaluate_drivable`) and PNG plots in `plots_dir`. Each folder and file is
    written atomically.

    Raises:
        UserError: when no model and no drivable predictions are given, or a model, image, label or mask
            file is missing or malformed.
    """
    from visionpipes.driving.metrics import evaluate_detection, evaluate_lanes

    if det_weights is None and lane_model is None and multitask_model is None and drivable_pred is None:
        raise UserError(
            "evaluate needs a detector (--det), a lane model (--lanes), drivable predictions "
            "(--drivable-pred), or several of them."
        )
    config = config or EvalConfig()
    if split not in dataset.names:
        raise UserError(f"the dataset has no split {split!r} (splits: {', '.join(dataset.names)}).")
    images = [dataset.images[split] / name for name in dataset.names[split]]
    metrics: dict[str, Any] = {"split": split, "images": len(images), "source": dataset.source}
    plots_out, preds_out, metrics_out = Path(plots_dir), Path(predictions_dir), Path(metrics_path)
    for folder in (plots_out.parent, preds_out.parent, metrics_out.parent):
        folder.mkdir(parents=True, exist_ok=True)
    device = model_device(config.device)  # both models: core.device.select_device
    with atomic_path(plots_out, is_dir=True) as plots_tmp, atomic_path(preds_out, is_dir=True) as preds_tmp:
        plots: list[Path] = []
        if det_weights is not None:
            from visionpipes.driving.detection.predict import load_detector, predict_detections
            from visionpipes.driving.detection.train import validate_detector

            model = load_detector(det_weights)
            imgsz = int(model.ckpt.get("train_args", {}).get("imgsz", 320)) if getattr(model, "ckpt", None) else 320
            print(f"detector: predicting {len(images)} {split} images at {imgsz} px", flush=True)
            frames = predict_detections(
                model,
                images,
                imgsz=imgsz,
                conf=config.conf,
                iou=config.iou,
                max_det=config.max_det,
                batch=config.batch,
                device=ultralytics_device(device),
            )
            save_frames(preds_tmp / f"det_{split}.json", frames)
            gt_path = dataset.det_labels[split]
            scores = evaluate_detection(load_frames(gt_path), frames, gt_source=str(gt_path))
            metrics["det"] = {**scores.summary(), "per_class_AP": scores.per_class_AP, "imgsz": imgsz}
            plots.append(plot_per_class_ap(scores.per_class_AP, plots_tmp / "det_per_class_AP.png"))
            if config.ultralytics_plots and split == "val":
                print("detector: ultralytics validation for the PR curve and confusion matrix", flush=True)
                val = validate_detector(
                    model, dataset.data_yaml, plots_tmp, imgsz=imgsz, batch=config.batch, device=ultralytics_device(device)
                )
                plots.extend(val["plots"])
                metrics["det"]["ultralytics"] = val["metrics"]
        if lane_model is not None:
            from visionpipes.driving.lanes.model import load_lane_model
            from visionpipes.driving.lanes.runtime import predict_lane_masks

            net = load_lane_model(lane_model)
            print(f"lanes: predicting {len(images)} {split} masks", flush=True)
            predict_lane_masks(net, images, preds_tmp / "lanes", batch_size=config.batch, device=device)
            lane_scores = evaluate_lanes(dataset.lane_masks[split], preds_tmp / "lanes")
            metrics["lanes"] = {
                "F1_pix1": lane_scores.F1_pix1,
                "F1_pix2": lane_scores.F1_pix2,
                "F1_pix5": lane_scores.F1_pix5,
                "sub_tasks": lane_scores.sub_tasks,
                "classes": lane_scores.classes,
            }
            plots.append(plot_lane_f1(lane_scores.classes, plots_tmp / "lanes_F1_per_class.png"))
            plots.extend(
                write_lane_overlays(images, dataset.lane_masks[split], preds_tmp / "lanes", plots_tmp, config.overlays)
            )
        if drivable_pred is not None:
            from visionpipes.driving.drivable_eval import evaluate_drivable

            print(f"drivable: scoring the masks in {drivable_pred} on {split}", flush=True)
            metrics["drivable"] = evaluate_drivable(dataset, drivable_pred, split=split).as_dict()
        if multitask_model is not None:
            from visionpipes.driving.multitask.evaluate import evaluate_multitask

            print(f"multi-task: predicting and scoring {len(images)} {split} images", flush=True)
            metrics["multitask"] = evaluate_multitask(
                dataset,
                multitask_model,
                split=split,
                predictions_dir=preds_tmp / "multitask",
                conf=config.conf,
                iou=config.iou,
                max_det=config.max_det,
                batch=config.batch,
                device=str(device),
            )
        write_json(metrics_out, metrics)
    final_plots = [plots_out / p.name for p in plots]
    return EvalResult(metrics, metrics_out, final_plots, preds_out)
