"""BDD100K object detection with ultralytics YOLO: offline set-up, training from a model yaml on the
YOLO dataset that `bdd100k.det_to_yolo` writes, prediction to det JSON (with scores), validation plots,
ONNX export with the parity check, and an onnxruntime detector (letterbox, decode, NMS) for streams.

It never downloads anything: a model is built from a yaml, or loaded from a local `.pt` that must
exist; ultralytics' hub, telemetry and logger integrations are switched off before it trains.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from visionpipes.core.errors import UserError
from visionpipes.core.io import atomic_path, dataclass_from_params, write_json
from visionpipes.driving.bdd100k.categories import DET_CATEGORIES, resolve_det_category
from visionpipes.driving.bdd100k.detection import detections_to_frame
from visionpipes.driving.bdd100k.labels import Frame

#: Ultralytics settings that would reach the network or log elsewhere than our folders.
_OFFLINE_SETTINGS: dict[str, Any] = {
    "sync": False,
    "dvc": False,
    "mlflow": False,
    "clearml": False,
    "comet": False,
    "raytune": False,
    "tensorboard": False,
    "wandb": False,
    "vscode_msg": False,
    "openvino_msg": False,
}
#: Plots of an ultralytics validation run worth keeping (names as ultralytics >= 8.1 writes them).
VAL_PLOTS: tuple[str, ...] = (
    "BoxPR_curve.png",
    "BoxF1_curve.png",
    "confusion_matrix.png",
    "confusion_matrix_normalized.png",
)


@dataclass
class DetectorConfig:
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
        device: `auto` (CUDA when present), `cpu`, or a CUDA index such as `0`.
        amp: mixed precision on CUDA (ignored on CPU).
        seed: random seed.
        patience: epochs without improvement before stopping.
        plots: let ultralytics write its training plots.
        extra: any other ultralytics training argument, passed as-is (e.g. `{mosaic: 0.5}`).
    """

    model: str = "yolov8n.yaml"
    weights: str | None = None
    imgsz: int = 320
    epochs: int = 100
    time_minutes: float | None = None
    batch: int = 16
    nbs: int | None = None
    optimizer: str = "AdamW"
    lr0: float = 0.002
    warmup_epochs: float = 1.0
    close_mosaic: int = 2
    cache: str | bool = "ram"
    workers: int = 2
    device: str = "auto"
    amp: bool = True
    seed: int = 0
    patience: int = 100
    plots: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "det config") -> DetectorConfig:
        """Build from a mapping (a params.yaml section); unknown keys are an error.

        Raises:
            UserError: on an unknown key or a value out of range.
        """
        config = dataclass_from_params(cls, data, source=source)
        config.check(source)
        return config

    def check(self, source: str = "det config") -> None:
        """Raises: UserError when a value is out of range."""
        if self.imgsz < 32 or self.imgsz % 32:
            raise UserError(f"{source}: imgsz must be a multiple of 32 of at least 32, got {self.imgsz}.")
        if self.epochs < 1 or self.batch < 1:
            raise UserError(f"{source}: epochs and batch must be at least 1.")
        if self.time_minutes is not None and self.time_minutes <= 0:
            raise UserError(f"{source}: time_minutes must be positive (or null), got {self.time_minutes}.")
        if not isinstance(self.extra, Mapping):
            raise UserError(f"{source}: extra must be a mapping of ultralytics arguments.")

    def train_args(self) -> dict[str, Any]:
        """The keyword arguments of `YOLO.train` (without data, project and name)."""
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


def ultralytics_device(device: str) -> str | None:
    """Our device name as ultralytics takes it: `auto` -> None (ultralytics picks CUDA when present)."""
    device = str(device).lower()
    if device == "auto":
        return None
    return device.removeprefix("cuda:") if device.startswith("cuda:") else device


def prepare_ultralytics() -> Path:
    """Make ultralytics work offline in this process and return its settings folder.

    Applies the project's run-time settings (YOLO_OFFLINE, YOLO_CONFIG_DIR, ...), switches off
    ultralytics' telemetry and logger integrations (its DVCLive callback would write its own
    `dvclive/` folder and `dvc.yaml`). The run-time settings place the font ultralytics' plotting
    looks for (`<YOLO_CONFIG_DIR>/Ultralytics/Arial.ttf`); placing it again at `USER_CONFIG_DIR` only
    matters when ultralytics was imported before those settings (a no-op otherwise). Keeps torch's
    CPU thread count when ultralytics selects a device.
    """
    from visionpipes.core.settings import apply_runtime_settings, place_plot_font

    apply_runtime_settings()
    from ultralytics.utils import SETTINGS, USER_CONFIG_DIR

    wanted = {k: v for k, v in _OFFLINE_SETTINGS.items() if k in SETTINGS and SETTINGS[k] != v}
    if wanted:
        SETTINGS.update(wanted)
    place_plot_font(Path(USER_CONFIG_DIR))
    import torch
    from ultralytics.utils import torch_utils

    # ultralytics' select_device sets torch's CPU threads to its NUM_THREADS, one less than the
    # cores: a single thread on a 2-core machine, which halves CPU training and validation speed.
    # Keep the project's thread count (VISIONPIPES_THREADS, default all cores) instead.
    torch_utils.NUM_THREADS = torch.get_num_threads()
    return Path(USER_CONFIG_DIR)


def _local_file(path: str, what: str) -> Path:
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"{what} {path} does not exist (weights are never downloaded; give a local file).")
    return file


def build_detector(config: DetectorConfig) -> Any:
    """An ultralytics `YOLO` built from `config.model` (yaml) with optional local weights.

    Raises:
        UserError: if a `.pt` is named that is not a local file, or the yaml is unknown.
    """
    prepare_ultralytics()
    from ultralytics import YOLO

    model_ref = str(config.model)
    if model_ref.endswith((".pt", ".pth")):
        model = YOLO(str(_local_file(model_ref, "model file")))
    elif model_ref.endswith((".yaml", ".yml")):
        try:
            model = YOLO(model_ref)
        except FileNotFoundError as err:
            raise UserError(f"model yaml {model_ref} was not found ({err}).") from None
    else:
        raise UserError(f"det model must be a model .yaml or a local .pt file, got {model_ref!r}.")
    if config.weights:
        model.load(str(_local_file(str(config.weights), "weights file")))
    return model


def load_detector(weights: str | os.PathLike) -> Any:
    """A trained detector from its local `.pt`.

    Raises:
        UserError: if the file does not exist or is not an ultralytics checkpoint.
    """
    prepare_ultralytics()
    from ultralytics import YOLO

    path = _local_file(str(weights), "detector weights")
    try:
        return YOLO(str(path))
    except Exception as err:  # ultralytics raises assorted errors on foreign files
        raise UserError(f"detector weights {path} are not an ultralytics checkpoint ({err}).") from None


# --------------------------------------------------------------------------------------------------
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
    config.check()
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
                "config": asdict(config),
                "metrics": metrics,
                "epochs": epochs,
                "seconds": round(seconds, 1),
                "classes": list(DET_CATEGORIES),
            },
        )
    return DetectorRun(out, out / "weights" / "best.pt", out / "weights" / "last.pt", metrics, epochs, seconds)


def _class_names(model: Any) -> list[str | None]:
    """The BDD100K category of each of the model's classes (None: a class with no BDD100K twin)."""
    names = model.names
    ordered = [names[i] for i in range(len(names))] if isinstance(names, dict) else list(names)
    out: list[str | None] = []
    for name in ordered:
        resolved = resolve_det_category(str(name))
        out.append(None if resolved is None or resolved[1] else resolved[0])
    return out


def _batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def predict_detections(
    model: Any,
    images: Sequence[str | os.PathLike],
    *,
    imgsz: int = 320,
    conf: float = 0.001,
    iou: float = 0.6,
    max_det: int = 100,
    batch: int = 16,
    device: str = "auto",
) -> list[Frame]:
    """Run a YOLO model on image files and return one det-JSON frame per image (labels with `score`).

    Classes the model knows under BDD100K's legacy names (e.g. COCO's `person`) are mapped onto the
    10 classes; classes with no BDD100K twin are dropped.

    Args:
        model: an ultralytics `YOLO` (see `load_detector`).
        images: image files; each frame is named after its file name.
        imgsz: inference size.
        conf: score threshold (low for AP evaluation).
        iou: NMS IoU threshold.
        max_det: detections kept per image (the official evaluation uses up to 100).
        batch: images per forward pass.
        device: `auto`, `cpu` or a CUDA index.

    Raises:
        UserError: if an image file is missing.
    """
    paths = [Path(p) for p in images]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise UserError(f"image file {missing[0]} does not exist.")
    categories = _class_names(model)
    frames: list[Frame] = []
    for chunk in _batches(paths, max(1, batch)):
        results = model.predict(
            source=[str(p) for p in chunk],
            imgsz=imgsz,
            conf=conf,
            iou=iou,
            max_det=max_det,
            device=ultralytics_device(device),
            verbose=False,
        )
        for path, result in zip(chunk, results):
            boxes = result.boxes
            xyxy = boxes.xyxy.cpu().numpy() if len(boxes) else np.zeros((0, 4))
            scores = boxes.conf.cpu().numpy() if len(boxes) else np.zeros(0)
            classes = boxes.cls.cpu().numpy().astype(int) if len(boxes) else np.zeros(0, int)
            keep = np.array([categories[c] is not None for c in classes], dtype=bool)
            mapped = [DET_CATEGORIES.index(categories[c]) for c in classes[keep]]  # type: ignore[arg-type]
            frames.append(detections_to_frame(path.name, xyxy[keep], scores[keep], mapped))
    return frames


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


# --------------------------------------------------------------------------------------------------
# ONNX export and the onnxruntime detector
# --------------------------------------------------------------------------------------------------


def rect_input_height(imgsz: int, aspect: float | None) -> int:
    """The network height for frames of `aspect` (height / width) letterboxed `imgsz` wide: the
    scaled height rounded up to a multiple of 32 (`imgsz` itself when `aspect` is None)."""
    if aspect is None:
        return imgsz
    return max(32, min(imgsz, -(-round(imgsz * aspect) // 32) * 32))


def export_detector_onnx(
    model: Any,
    path: str | os.PathLike,
    *,
    imgsz: int = 320,
    height: int | None = None,
    atol: float = 1e-4,
    rtol: float = 1e-4,
) -> Any:
    """Export a YOLO detector to ONNX with the core parity check (fused, batch axis dynamic).

    The graph takes `images` (N, 3, height, imgsz) RGB in [0, 1] and returns `predictions`
    (N, 4 + classes, anchors): box centre x, y, width, height in input pixels, then class scores.
    A `height` below `imgsz` fits frames wider than tall (ultralytics' rectangular inference: a
    1280x720 frame at imgsz 320 needs 320x192, not 320x320), which saves the padded rows' compute.

    Returns:
        The core `ExportReport` (path, max abs difference, ...).

    Raises:
        ExportParityError: if onnxruntime disagrees with the eager model (no file is written).
    """
    import copy

    import torch
    from ultralytics.nn.modules.head import Detect

    from visionpipes.core.export import export_onnx

    net = copy.deepcopy(model.model).float().cpu().eval()
    net = net.fuse() if hasattr(net, "fuse") else net
    for module in net.modules():
        if isinstance(module, Detect):
            module.dynamic = False
            module.export = True
            module.format = "onnx"
    if height is not None and (height < 32 or height % 32):
        raise UserError(f"detector export height must be a multiple of 32, got {height}.")
    example = torch.rand(1, 3, height or imgsz, imgsz)
    return export_onnx(
        net,
        example,
        path,
        input_names=["images"],
        output_names=["predictions"],
        dynamic_axes={"images": {0: "batch"}, "predictions": {0: "batch"}},
        atol=atol,
        rtol=rtol,
    )


def quantize_detector_int8(
    onnx_path: str | os.PathLike,
    out_path: str | os.PathLike,
    calibration_images: Sequence[str | os.PathLike],
) -> Path:
    """Static int8 quantisation (onnxruntime, QDQ, per-channel weights) of an exported detector,
    calibrated on `calibration_images` letterboxed as `OnnxDetector` does.

    The backbone, neck and the head's hidden convolutions run in int8 (VNNI/AMX on x86); the head's
    output convolutions and its decoding (DFL, box assembly, class sigmoid) stay in float, because
    quantising them moves boxes by pixels and scores by tenths. Measure the AP of the result
    (`predict_detections_onnx`): `vp-driving deploy` does, and reports it beside the fp32 export's.

    Raises:
        UserError: if no calibration image is given or one is unreadable.
    """
    import re

    import cv2
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from visionpipes.core.io import atomic_path

    if not calibration_images:
        raise UserError("int8 quantisation needs calibration images.")
    shape = onnx.load(str(onnx_path)).graph.input[0].type.tensor_type.shape.dim
    size = (int(shape[3].dim_value), int(shape[2].dim_value))

    def prepare(path: str | os.PathLike) -> np.ndarray:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise UserError(f"calibration image {path} is missing or unreadable.")
        return detector_input([image], size)[0]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._items = iter(calibration_images)

        def get_next(self) -> dict[str, np.ndarray] | None:
            path = next(self._items, None)
            return None if path is None else {"images": prepare(path)}

    out = Path(out_path)
    with tempfile.TemporaryDirectory(prefix="quant-") as work, atomic_path(out) as tmp:
        pre = Path(work) / "pre.onnx"
        quant_pre_process(str(onnx_path), str(pre), skip_symbolic_shape=True)
        graph = onnx.load(str(pre)).graph
        head = sorted({n.name.split("/")[1] for n in graph.node if "/dfl/" in n.name})  # the Detect module
        keep_float = [
            n.name
            for n in graph.node
            if any(n.name.startswith(f"/{h}/") for h in head) and not re.search(r"/cv[23]\.\d+/cv[23]\.\d+\.[01]/", n.name)
        ]
        quantize_static(
            str(pre),
            str(tmp),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=keep_float,
        )
    return out


def predict_detections_onnx(
    detector: OnnxDetector,
    images: Sequence[str | os.PathLike],
    *,
    conf: float = 0.001,
    iou: float = 0.6,
    max_det: int = 100,
    batch: int = 8,
) -> list[Frame]:
    """`predict_detections` for an exported detector (`OnnxDetector`): one det-JSON frame per image.

    Raises:
        UserError: if an image file is missing or unreadable.
    """
    import cv2

    frames: list[Frame] = []
    for chunk in _batches([Path(p) for p in images], max(1, batch)):
        pictures = []
        for path in chunk:
            picture = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if picture is None:
                raise UserError(f"image file {path} is missing or unreadable.")
            pictures.append(picture)
        for path, (boxes, scores, classes) in zip(chunk, detector(pictures, conf=conf, iou=iou, max_det=max_det)):
            frames.append(detections_to_frame(path.name, boxes, scores, [int(c) for c in classes]))
    return frames


@dataclass(frozen=True)
class Letterbox:
    """How an image was fitted into the square network input: scale, then padding."""

    scale: float
    pad_x: float
    pad_y: float


def letterbox(image_bgr: np.ndarray, size: int | tuple[int, int]) -> tuple[np.ndarray, Letterbox]:
    """Resize keeping the aspect ratio and pad with grey (114), as ultralytics, to `size` x `size`
    or to `size` = (width, height)."""
    import cv2

    out_w, out_h = (size, size) if isinstance(size, int) else size
    height, width = image_bgr.shape[:2]
    scale = min(out_h / height, out_w / width)
    new_w, new_h = round(width * scale), round(height * scale)
    resized = cv2.resize(image_bgr, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    pad_x, pad_y = (out_w - new_w) / 2, (out_h - new_h) / 2
    top, left = round(pad_y - 0.1), round(pad_x - 0.1)
    canvas = np.full((out_h, out_w, 3), 114, dtype=np.uint8)
    canvas[top : top + new_h, left : left + new_w] = resized
    return canvas, Letterbox(scale, left, top)


def detector_input(frames_bgr: Sequence[np.ndarray], size: tuple[int, int]) -> tuple[np.ndarray, list[Letterbox]]:
    """BGR frames -> the exported detector's input: (N, 3, height, width) RGB float32 in [0, 1],
    letterboxed to `size` = (width, height), and each frame's letterbox."""
    batch, infos = [], []
    for frame in frames_bgr:
        canvas, info = letterbox(frame, size)
        batch.append(canvas[:, :, ::-1].transpose(2, 0, 1))
        infos.append(info)
    return np.ascontiguousarray(np.stack(batch), dtype=np.float32) / 255.0, infos


def decode_predictions(
    predictions: np.ndarray,
    boxes_info: Sequence[Letterbox],
    image_sizes: Sequence[tuple[int, int]],
    *,
    conf: float = 0.25,
    iou: float = 0.6,
    max_det: int = 100,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Turn the ONNX detector's raw output into boxes per image (class-wise NMS, OpenCV).

    Args:
        predictions: (N, 4 + classes, anchors) from `export_detector_onnx`'s graph.
        boxes_info: the letterbox of each image.
        image_sizes: (width, height) of each original image.
        conf: score threshold.
        iou: NMS IoU threshold.
        max_det: boxes kept per image.

    Returns:
        Per image: (K, 4) xyxy boxes in original pixels, (K,) scores, (K,) class ids.
    """
    import cv2

    out = []
    for pred, lb, (width, height) in zip(predictions, boxes_info, image_sizes):
        pred = pred.T  # anchors x (4 + classes)
        scores_all = pred[:, 4:]
        classes = scores_all.argmax(axis=1)
        scores = scores_all[np.arange(len(pred)), classes]
        keep = scores > conf
        pred, classes, scores = pred[keep], classes[keep], scores[keep]
        if not len(pred):
            out.append((np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=int)))
            continue
        cx, cy, w, h = pred[:, 0], pred[:, 1], pred[:, 2], pred[:, 3]
        boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
        boxes[:, [0, 2]] = (boxes[:, [0, 2]] - lb.pad_x) / lb.scale
        boxes[:, [1, 3]] = (boxes[:, [1, 3]] - lb.pad_y) / lb.scale
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
        xywh = np.stack([boxes[:, 0], boxes[:, 1], boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], 1)
        idx = cv2.dnn.NMSBoxesBatched(xywh.tolist(), scores.tolist(), classes.tolist(), conf, iou)
        idx = np.asarray(idx, dtype=int).reshape(-1)[:max_det]
        out.append((boxes[idx], scores[idx], classes[idx]))
    return out


class OnnxDetector:
    """The exported detector under onnxruntime: BGR frames in, boxes out (batched over frames).

    Args:
        path: the `.onnx` from `export_detector_onnx`.
        class_names: the model's classes (default the 10 BDD100K classes).
        threads: onnxruntime intra-op threads (None: all cores).

    Raises:
        UserError: if the file is missing or not loadable.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        class_names: Sequence[str] = DET_CATEGORIES,
        threads: int | None = None,
    ) -> None:
        from visionpipes.core.export import OnnxRunner

        self.runner = OnnxRunner(path, threads=threads)
        shape = self.runner.session.get_inputs()[0].shape
        self.imgsz = int(shape[-1]) if isinstance(shape[-1], int) else 320
        self.height = int(shape[-2]) if isinstance(shape[-2], int) else self.imgsz
        self.class_names = list(class_names)

    def __call__(
        self, frames_bgr: Iterable[np.ndarray], *, conf: float = 0.25, iou: float = 0.6, max_det: int = 100
    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Detect in each frame; returns per frame (xyxy boxes, scores, class ids)."""
        frames = list(frames_bgr)
        if not frames:
            return []
        x, infos = detector_input(frames, (self.imgsz, self.height))
        (pred,) = self.runner(x)
        sizes = [(f.shape[1], f.shape[0]) for f in frames]
        return decode_predictions(pred, infos, sizes, conf=conf, iou=iou, max_det=max_det)
