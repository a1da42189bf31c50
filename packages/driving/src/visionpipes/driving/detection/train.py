"""Detector training with ultralytics YOLO, offline: the typed `det` config, a model built from its
yaml (or a local `.pt`), a dataset view that keeps ultralytics' label caches out of the DVC-tracked
dataset, `train_detector`, and ultralytics' own validation for its plots.

Training side: nothing is downloaded; the runtime never imports this module.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import field_validator

from visionpipes.core.config import ConfigModel, Field
from visionpipes.core.errors import UserError
from visionpipes.core.io import atomic_path, write_json
from visionpipes.driving.bdd100k.categories import DET_CATEGORIES
from visionpipes.driving.detection.predict import local_file
from visionpipes.driving.devices import ultralytics_device
from visionpipes.driving.ultralytics_env import prepare_ultralytics

VAL_PLOTS: tuple[str, ...] = (
    "BoxPR_curve.png",
    "BoxF1_curve.png",
    "confusion_matrix.png",
    "confusion_matrix_normalized.png",
)


class DetectorConfig(ConfigModel):
    """How to build and train the detector; every field can come from the `det` section of params.yaml.

    Attributes:
        model: an ultralytics model yaml (`yolov8n.yaml`, `yolo11n.yaml`, or a local yaml path), or a
            local `.pt` file to fine-tune. Never downloaded.
        weights: an optional local `.pt` whose matching weights are loaded into the yaml model.
        imgsz: training and inference size (pixels, square, a multiple of 32).
        epochs: epochs to train (an upper bound when `time_minutes` is set).
        time_minutes: wall-clock budget of training; ultralytics fits its LR schedule and mosaic
            closing into it. None: train `epochs`.
        batch: images per batch.
        nbs: nominal batch size (ultralytics accumulates gradients up to it); None: `batch`.
        optimizer: ultralytics optimizer name (`AdamW`, `SGD`, `auto`, ...).
        lr0: initial learning rate.
        warmup_epochs: warm-up epochs.
        close_mosaic: final epochs trained without mosaic.
        cache: `ram`, `disk` or False (ultralytics' image cache).
        workers: data-loader workers.
        device: `auto` (CUDA when present), `cpu`, `mps`, a CUDA index such as `0`, or a list of
            CUDA indices (`0,1,2,3` or `[0, 1, 2, 3]`): ultralytics then trains with its own DDP, one
            process per GPU, `batch` being the total over them. A CUDA index this machine lacks is a
            `UserError` when training starts.
        amp: mixed precision on CUDA (ignored on CPU).
        seed: random seed.
        patience: epochs without improvement before stopping.
        plots: let ultralytics write its training plots.
        extra: any other ultralytics training argument, passed as-is (e.g. `{mosaic: 0.5}`).
    """

    model: str = "yolov8n.yaml"
    weights: str | None = None
    imgsz: int = Field(320, ge=32, multiple_of=32)
    epochs: int = Field(100, ge=1)
    time_minutes: float | None = Field(None, gt=0)
    batch: int = Field(16, ge=1)
    nbs: int | None = Field(None, ge=1)
    optimizer: str = "AdamW"
    lr0: float = Field(0.002, gt=0)
    warmup_epochs: float = Field(1.0, ge=0)
    close_mosaic: int = Field(2, ge=0)
    cache: Literal["ram", "disk", True, False] = "ram"
    workers: int = Field(2, ge=0)
    device: str = "auto"
    amp: bool = True
    seed: int = 0
    patience: int = Field(100, ge=0)
    plots: bool = True
    extra: dict[str, Any] = Field(default_factory=dict)

    @field_validator("device", mode="before")
    @classmethod
    def _device_text(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        if isinstance(value, (list, tuple)):
            return ",".join(str(v) for v in value)
        return value.replace(" ", "") if isinstance(value, str) else value

    @field_validator("device")
    @classmethod
    def _device_form(cls, value: str) -> str:
        name = value.lower()
        if name in ("auto", "cpu", "mps", "cuda") or re.fullmatch(r"cuda:\d+", name):
            return value
        if re.fullmatch(r"\d+(,\d+)*", name):
            indices = name.split(",")
            if len(set(indices)) != len(indices):
                raise ValueError(f"device {value!r} names a GPU twice")
            return value
        raise ValueError(
            f"device {value!r} is not auto, cpu, mps, a CUDA index (0, cuda:1) or a list of CUDA indices (0,1,2,3)"
        )

    def cuda_indices(self) -> list[int]:
        """The CUDA GPUs `device` names explicitly (`0,1` -> [0, 1], `cuda` -> [0]); [] for auto/cpu/mps."""
        name = ultralytics_device(self.device)
        if name is None or not re.fullmatch(r"\d+(,\d+)*", name):
            return []
        return [int(i) for i in name.split(",")]

    def check_devices(self) -> None:
        """Refuse CUDA GPUs this machine does not have, before ultralytics starts (or spawns DDP
        workers for) a training run.

        Raises:
            UserError: if `device` names a CUDA index and no such GPU is visible.
        """
        import torch

        wanted = self.cuda_indices()
        if not wanted:
            return
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UserError(
                f"det.device {self.device!r} asks for CUDA GPU(s) {wanted}, but this machine has none; "
                "use det.device: cpu (or auto)."
            )
        missing = [i for i in wanted if i >= count]
        if missing:
            raise UserError(
                f"det.device {self.device!r} asks for CUDA GPU(s) {missing}, but this machine has {count} "
                f"(0..{count - 1})."
            )

    def train_args(self) -> dict[str, Any]:
        """The keyword arguments of `YOLO.train` (without data, project and name).

        Raises:
            UserError: if `device` names CUDA GPUs this machine does not have (see `check_devices`).
        """
        self.check_devices()
        args: dict[str, Any] = {
            "imgsz": self.imgsz,
            "epochs": self.epochs,
            "batch": self.batch,
            "nbs": self.nbs or self.batch,
            "optimizer": self.optimizer,
            "lr0": self.lr0,
            "warmup_epochs": self.warmup_epochs,
            "close_mosaic": self.close_mosaic,
            "cache": self.cache,
            "workers": self.workers,
            "amp": self.amp,
            "seed": self.seed,
            "deterministic": False,
            "patience": self.patience,
            "plots": self.plots,
            "pretrained": False,
            "exist_ok": True,
            "verbose": False,
        }
        if self.time_minutes is not None:
            args["time"] = self.time_minutes / 60.0
        device = ultralytics_device(self.device)
        if device is not None:
            args["device"] = device
        args.update(self.extra)
        return args


def build_detector(config: DetectorConfig) -> Any:
    """An ultralytics `YOLO` built from `config.model` (yaml) with optional local weights.

    Raises:
        UserError: if a `.pt` is named that is not a local file, or the yaml is unknown.
    """
    prepare_ultralytics()
    from ultralytics import YOLO

    model_ref = str(config.model)
    if model_ref.endswith((".pt", ".pth")):
        model = YOLO(str(local_file(model_ref, "model file")))
    elif model_ref.endswith((".yaml", ".yml")):
        try:
            model = YOLO(model_ref)
        except FileNotFoundError as err:
            raise UserError(f"model yaml {model_ref} was not found ({err}).") from None
    else:
        raise UserError(f"det model must be a model .yaml or a local .pt file, got {model_ref!r}.")
    if config.weights:
        model.load(str(local_file(str(config.weights), "weights file")))
    return model


# Dataset view (keeps ultralytics' label caches out of the DVC-tracked dataset)
# --------------------------------------------------------------------------------------------------


def _read_data_yaml(data_yaml: Path) -> dict[str, Any]:
    import yaml

    if not data_yaml.is_file():
        raise UserError(f"YOLO dataset file {data_yaml} does not exist.")
    try:
        data = yaml.safe_load(data_yaml.read_text())
    except yaml.YAMLError as err:
        raise UserError(f"YOLO dataset file {data_yaml} is not valid YAML ({err}).") from None
    if not isinstance(data, dict) or "train" not in data or "names" not in data:
        raise UserError(f"YOLO dataset file {data_yaml} needs 'train', 'val' and 'names'.")
    return data


def dataset_view(data_yaml: str | os.PathLike, view_dir: str | os.PathLike) -> Path:
    """A copy of a YOLO dataset's layout in `view_dir`: images as symlinks, labels copied.

    Ultralytics writes `labels/<split>.cache` beside the labels it reads; training on a view keeps
    those files out of the dataset, which DVC tracks. The dataset's `path` is taken as the folder of
    `data_yaml`, so a moved dataset still works.

    Returns:
        The view's `data.yaml`.

    Raises:
        UserError: if the dataset file or a split folder is missing.
    """
    import yaml

    data_yaml = Path(data_yaml).resolve()
    data = _read_data_yaml(data_yaml)
    root = data_yaml.parent
    view = Path(view_dir)
    view.mkdir(parents=True, exist_ok=True)
    out = {"path": str(view.resolve())}
    for key in ("train", "val", "test"):
        rel = data.get(key)
        if not rel:
            continue
        if not isinstance(rel, str):
            raise UserError(f"{data_yaml}: '{key}' must be one folder of images (images/<split>).")
        images = root / rel
        if not images.is_dir():
            raise UserError(f"{data_yaml}: image folder {images} of '{key}' does not exist.")
        labels = root / rel.replace("images", "labels", 1)
        target_images = view / rel
        target_labels = view / rel.replace("images", "labels", 1)
        if not target_images.exists():
            target_images.mkdir(parents=True)
            target_labels.mkdir(parents=True, exist_ok=True)
            for image in sorted(images.iterdir()):
                (target_images / image.name).symlink_to(image.resolve())
                label = labels / f"{image.stem}.txt"
                if label.is_file():
                    shutil.copyfile(label, target_labels / label.name)
        out[key] = rel
    out["names"] = data["names"]
    view_yaml = view / "data.yaml"
    view_yaml.write_text(yaml.safe_dump(out, sort_keys=False))
    return view_yaml


# --------------------------------------------------------------------------------------------------
# Training, validation, prediction
# --------------------------------------------------------------------------------------------------


@dataclass
class DetectorRun:
    """What `train_detector` produced."""

    out_dir: Path
    best: Path
    last: Path
    metrics: dict[str, float]
    epochs: int
    seconds: float


def _metric_name(key: str) -> str:
    """`metrics/mAP50(B)` -> `mAP50`."""
    return key.split("/")[-1].replace("(B)", "")


def train_detector(
    data_yaml: str | os.PathLike, out_dir: str | os.PathLike, config: DetectorConfig | None = None
) -> DetectorRun:
    """Train a YOLO detector on a YOLO dataset, offline, into `out_dir`.

    `out_dir` receives ultralytics' run (`weights/best.pt`, `weights/last.pt`, `results.csv`, plots)
    and `summary.json` (config, final validation metrics, time). It is built in a temporary folder
    and renamed into place when training ends.

    Args:
        data_yaml: the dataset's `data.yaml` (from `bdd100k.det_to_yolo`).
        out_dir: the run folder (replaced).
        config: how to train (default `DetectorConfig()`).

    Returns:
        Where the weights are, the final metrics and the time taken.

    Raises:
        UserError: on a missing dataset or model file, or bad settings.
    """
    config = config or DetectorConfig()
    out = Path(out_dir).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    model = build_detector(config)
    start = time.perf_counter()
    with atomic_path(out, is_dir=True) as tmp:
        with tempfile.TemporaryDirectory(prefix="yolo-view-", dir=out.parent) as view_dir:
            view_yaml = dataset_view(data_yaml, view_dir)
            model.train(data=str(view_yaml), project=str(tmp.parent), name=tmp.name, **config.train_args())
        trainer = model.trainer
        seconds = time.perf_counter() - start
        metrics = {_metric_name(k): float(v) for k, v in (trainer.metrics or {}).items()}
        epochs = int(getattr(trainer, "epoch", -1)) + 1
        best, last = tmp / "weights" / "best.pt", tmp / "weights" / "last.pt"
        if not best.is_file():
            if not last.is_file():
                raise UserError(f"training wrote no weights into {out}; see ultralytics' output above.")
            shutil.copyfile(last, best)
        write_json(
            tmp / "summary.json",
            {
                "config": config.to_dict(),
                "metrics": metrics,
                "epochs": epochs,
                "seconds": round(seconds, 1),
                "classes": list(DET_CATEGORIES),
            },
        )
    return DetectorRun(out, out / "weights" / "best.pt", out / "weights" / "last.pt", metrics, epochs, seconds)


def validate_detector(
    model: Any,
    data_yaml: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    imgsz: int = 320,
    batch: int = 16,
    device: str = "auto",
) -> dict[str, Any]:
    """Run ultralytics' own validation on the dataset's `val` split, for its plots (PR curve,
    confusion matrix); the official numbers come from `metrics.evaluate_detection` instead.

    Returns:
        `{"metrics": {...}, "plots": [paths of the plots copied into out_dir]}`.

    Raises:
        UserError: if the dataset is missing.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="yolo-val-", dir=out) as tmp:
        view_yaml = dataset_view(data_yaml, Path(tmp) / "data")
        kwargs: dict[str, Any] = {
            "data": str(view_yaml),
            "imgsz": imgsz,
            "batch": batch,
            "plots": True,
            "project": tmp,
            "name": "val",
            "exist_ok": True,
            "verbose": False,
        }
        if ultralytics_device(device) is not None:
            kwargs["device"] = ultralytics_device(device)
        metrics = model.val(**kwargs)
        run_dir = Path(metrics.save_dir)
        plots = []
        for name in VAL_PLOTS:
            if (run_dir / name).is_file():
                shutil.copyfile(run_dir / name, out / f"det_{name}")
                plots.append(out / f"det_{name}")
        values = {_metric_name(k): float(v) for k, v in metrics.results_dict.items()}
    return {"metrics": values, "plots": plots}
