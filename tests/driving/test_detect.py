"""The detector glue: offline model building (never a download), class-name mapping, the dataset view
that keeps ultralytics' caches out of the dataset, prediction to det JSON, ONNX export and the
onnxruntime decoder (letterbox, NMS) against ultralytics' own predictions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from visionpipes.core.errors import UserError
from visionpipes.driving.bdd100k.categories import DET_CATEGORIES
from visionpipes.driving.bdd100k.yolo import YoloSplit, det_to_yolo
from visionpipes.driving.detection.export import export_detector_onnx, rect_input_height
from visionpipes.driving.detection.predict import _class_names, predict_detections
from visionpipes.driving.detection.quantize import quantize_detector_int8
from visionpipes.driving.detection.runtime import (
    Letterbox,
    OnnxDetector,
    decode_predictions,
    letterbox,
    predict_detections_onnx,
)
from visionpipes.driving.detection.train import DetectorConfig, build_detector, dataset_view
from visionpipes.driving.synth.sample import SynthConfig, write_sample
from visionpipes.driving.ultralytics_env import prepare_ultralytics


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"imgsz": 300}, "params.yaml:det: key 'imgsz' = 300: input should be a multiple of 32"),
        ({"epochs": 0}, "key 'epochs' = 0: input should be greater than or equal to 1"),
        ({"time_minutes": -1}, "key 'time_minutes' = -1: input should be greater than 0"),
        ({"lr": 0.1}, "params.yaml:det: unknown key 'lr'; did you mean 'lr0'?"),
        ({"cache": "gpu"}, "key 'cache' = 'gpu': input should be 'ram', 'disk', True or False"),
    ],
)
def test_bad_config_names_the_field(config: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        DetectorConfig.from_params(config, source="params.yaml:det")


def test_train_args_use_batch_as_nominal_batch_and_minutes_as_hours() -> None:
    args = DetectorConfig(batch=8, time_minutes=6, device="cpu", extra={"mosaic": 0.5}).train_args()
    assert args["nbs"] == 8 and args["time"] == pytest.approx(0.1)
    assert args["device"] == "cpu" and args["mosaic"] == 0.5 and args["pretrained"] is False
    assert "device" not in DetectorConfig().train_args()


@pytest.mark.parametrize(
    ("model", "message"),
    [("yolov8n.pt", "never downloaded"), ("yolov8n", "model .yaml or a local .pt"), ("nope.yaml", "nope.yaml")],
)
def test_no_model_is_ever_downloaded(model: str, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=message):
        build_detector(DetectorConfig(model=model))
    assert not (tmp_path / "yolov8n.pt").exists()


def test_offline_settings_and_font() -> None:
    config_dir = prepare_ultralytics()
    from ultralytics.utils import SETTINGS

    assert (config_dir / "Arial.ttf").is_file()
    assert SETTINGS["sync"] is False and SETTINGS["dvc"] is False


def test_ultralytics_device_selection_keeps_the_thread_count() -> None:
    import torch
    from ultralytics.utils.torch_utils import select_device

    prepare_ultralytics()
    before = torch.get_num_threads()
    select_device("cpu", verbose=False)  # ultralytics would set cores - 1 threads here
    assert torch.get_num_threads() == before


def test_coco_names_map_onto_bdd100k() -> None:
    from types import SimpleNamespace

    model = SimpleNamespace(names={0: "person", 1: "bicycle", 2: "car", 3: "van", 4: "stop sign", 5: "other person"})
    assert _class_names(model) == ["pedestrian", "bicycle", "car", "car", None, None]


def test_letterbox_and_decoding_round_trip() -> None:
    image = np.zeros((720, 1280, 3), dtype=np.uint8)
    canvas, info = letterbox(image, 320)
    assert canvas.shape == (320, 320, 3) and info.scale == pytest.approx(0.25)
    assert info.pad_y == 70 and info.pad_x == 0
    # one box x1=400, y1=200, x2=600, y2=400 in the image -> centre (125, 145), size (50, 50) on the canvas
    pred = np.zeros((1, 4 + 10, 3), dtype=np.float32)
    pred[0, :4, 0] = [125, 145, 50, 50]
    pred[0, 4 + 2, 0] = 0.9  # car
    pred[0, :4, 1] = [126, 146, 50, 50]
    pred[0, 4 + 2, 1] = 0.8  # the same car, suppressed by NMS
    pred[0, :4, 2] = [10, 80, 8, 8]
    pred[0, 4 + 9, 2] = 0.1  # below the threshold
    ((boxes, scores, classes),) = decode_predictions(pred, [info], [(1280, 720)], conf=0.25)
    np.testing.assert_allclose(boxes, [[400, 200, 600, 400]], atol=1e-3)
    assert scores.tolist() == pytest.approx([0.9]) and classes.tolist() == [2]
    assert decode_predictions(pred, [Letterbox(1.0, 0, 0)], [(320, 320)], conf=0.95)[0][0].shape == (0, 4)


def test_rectangular_letterbox_fits_wide_frames_with_little_padding() -> None:
    assert rect_input_height(320, 720 / 1280) == 192 and rect_input_height(320, None) == 320
    assert rect_input_height(640, 720 / 1280) == 384
    canvas, info = letterbox(np.zeros((360, 640, 3), dtype=np.uint8), (320, 192))
    assert canvas.shape == (192, 320, 3) and info.scale == pytest.approx(0.5)
    assert (info.pad_x, info.pad_y) == (0, 6)
    assert (canvas[:6] == 114).all() and (canvas[6:186] == 0).all() and (canvas[186:] == 114).all()


@pytest.fixture(scope="module")
def yolo_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("det") / "bdd"
    write_sample(root, SynthConfig(images=4, seed=5, val_fraction=0.5, cameras=0))
    splits = [YoloSplit(s, root / f"labels/det_20/det_{s}.json", root / f"images/100k/{s}") for s in ("train", "val")]
    return det_to_yolo(splits, root.parent / "yolo").data_yaml


def test_dataset_view_links_images_and_copies_labels(yolo_dataset: Path, tmp_path: Path) -> None:
    view_yaml = dataset_view(yolo_dataset, tmp_path / "view")
    view = view_yaml.parent
    images = sorted((view / "images" / "train").iterdir())
    assert images and all(p.is_symlink() for p in images)
    labels = sorted((view / "labels" / "train").iterdir())
    assert [p.stem for p in labels] == [p.stem for p in images] and not any(p.is_symlink() for p in labels)
    with pytest.raises(UserError, match="does not exist"):
        dataset_view(tmp_path / "missing.yaml", tmp_path / "v2")


def _image_dependent_detector(tmp_path: Path, calibration: list[np.ndarray]):
    """An untrained YOLOv8n (10 classes) whose scores depend on the image: BatchNorm statistics taken
    from the letterboxed `calibration` frames (the untrained stack otherwise shrinks every feature to
    ~1e-6, leaving only the classifier bias), and seeded random weights (bias 0) in the class convs."""
    import torch
    from ultralytics.utils import ROOT

    yaml_text = (ROOT / "cfg" / "models" / "v8" / "yolov8.yaml").read_text().replace("nc: 80", "nc: 10")
    (tmp_path / "yolov8n.yaml").write_text(yaml_text)
    torch.manual_seed(0)
    model = build_detector(DetectorConfig(model=str(tmp_path / "yolov8n.yaml")))
    model.model.names = dict(enumerate(DET_CATEGORIES))
    net = model.model
    batch = np.stack([letterbox(frame[..., ::-1], (160, 96))[0] for frame in calibration])
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = 1.0  # running statistics := this batch's
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        net.train()
        net(torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255)
        net.eval()
        for branch in net.model[-1].cv3:
            branch[-1].bias.zero_()
            branch[-1].weight.copy_(0.1 * torch.randn(branch[-1].weight.shape, generator=generator))
    return model


def _match(reference, candidate) -> tuple[np.ndarray, np.ndarray]:
    """For each reference detection, the candidate of the same class that best agrees with it (highest
    IoU minus score difference): their IoU and score difference."""
    from torchvision.ops import box_iou

    (ref_boxes, ref_scores, ref_classes), (boxes, scores, classes) = reference, candidate
    if not len(boxes):
        return np.zeros(len(ref_boxes)), np.ones(len(ref_boxes))
    iou = box_iou(*(torch_tensor(b) for b in (ref_boxes, boxes))).numpy()
    iou[np.asarray(ref_classes)[:, None] != np.asarray(classes)[None, :]] = 0
    score_diff = np.abs(np.asarray(ref_scores)[:, None] - np.asarray(scores)[None, :])
    best = (iou - score_diff).argmax(1)  # boxes clipped to the same frame edge can coincide: use the score too
    rows = np.arange(len(ref_boxes))
    return iou[rows, best], score_diff[rows, best]


def torch_tensor(array: np.ndarray):
    import torch

    return torch.as_tensor(np.asarray(array, dtype=np.float32).reshape(-1, 4))


# Tolerances against ultralytics' own predictions (same frames, imgsz 160 -> a 160x96 letterbox, conf 0.25,
# IoU 0.6): the fp32 export decodes to the same detections; the int8 export is an approximation.
FP32_MIN_IOU, FP32_MAX_SCORE_DIFF = 0.99, 2e-3
INT8_TOP, INT8_MIN_IOU, INT8_MAX_SCORE_DIFF, INT8_MIN_MATCHED = 10, 0.7, 0.1, 0.8


def test_predict_and_onnx_agree_with_ultralytics(yolo_dataset: Path, tmp_path: Path) -> None:
    import cv2

    images = sorted((yolo_dataset.parent / "images" / "val").iterdir())
    calibration = sorted((yolo_dataset.parent / "images" / "train").iterdir()) + images
    bgr = [cv2.imread(str(p)) for p in images]
    model = _image_dependent_detector(tmp_path, [cv2.imread(str(p)) for p in calibration])

    frames = predict_detections(model, images, imgsz=160, conf=1e-6, device="cpu")
    assert [f.name for f in frames] == [p.name for p in images]
    labels = [label for f in frames for label in f.labels or []]
    assert labels and all(label.score is not None and label.category in DET_CATEGORIES for label in labels)

    results = model.predict(source=bgr, imgsz=160, conf=0.25, iou=0.6, max_det=100, device="cpu", verbose=False)
    reference = [(r.boxes.xyxy.numpy(), r.boxes.conf.numpy(), r.boxes.cls.numpy().astype(int)) for r in results]
    # The scores depend on the image: they spread within a frame and differ between frames.
    assert all(len(r[0]) >= INT8_TOP and np.ptp(r[1]) > 0.05 for r in reference)
    assert not np.allclose(np.sort(reference[0][1])[-5:], np.sort(reference[1][1])[-5:], atol=1e-3)

    report = export_detector_onnx(model, tmp_path / "det.onnx", imgsz=160, height=96)
    assert report.path.is_file() and report.max_rel_diff < 1e-3  # boxes are in pixels: relative
    detector = OnnxDetector(report.path, threads=1)
    assert (detector.imgsz, detector.height) == (160, 96)
    decoded = detector(bgr, conf=0.25, iou=0.6, max_det=100)
    for ref, got in zip(reference, decoded):
        assert len(got[0]) == len(ref[0])  # the same boxes survive NMS
        iou, score_diff = _match(ref, got)
        assert iou.min() >= FP32_MIN_IOU and score_diff.max() <= FP32_MAX_SCORE_DIFF
        boxes = got[0]
        assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 2] <= 1280).all() and (boxes[:, 3] <= 720).all()
    ((boxes, scores, classes),) = detector(bgr[:1], conf=1e-6, max_det=5)
    assert boxes.shape[1] == 4 and len(boxes) == len(scores) == len(classes) == 5

    # the ONNX detector scored as the official evaluation needs it, and its int8 twin
    onnx_frames = predict_detections_onnx(detector, images, conf=1e-6)
    assert [f.name for f in onnx_frames] == [p.name for p in images]
    int8 = quantize_detector_int8(report.path, tmp_path / "det_int8.onnx", calibration)
    quantized = OnnxDetector(int8, threads=1)
    assert (quantized.imgsz, quantized.height) == (160, 96)
    import onnx

    ops = {n.op_type for n in onnx.load(str(int8)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    for ref, got in zip(reference, quantized(bgr, conf=0.25, iou=0.6, max_det=100)):
        order = np.argsort(-ref[1])[:INT8_TOP]
        iou, score_diff = _match(tuple(a[order] for a in ref), got)
        close = (iou >= INT8_MIN_IOU) & (score_diff <= INT8_MAX_SCORE_DIFF)
        assert close.mean() >= INT8_MIN_MATCHED, (iou.round(3), score_diff.round(3))
    with pytest.raises(UserError, match="calibration images"):
        quantize_detector_int8(report.path, tmp_path / "none.onnx", [])
    assert not (tmp_path / "none.onnx").exists()
