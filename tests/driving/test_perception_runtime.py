"""The multi-task graph at run time (`multitask.runtime.PerceptionRuntime`): its outputs equal the torch
model's (raw within 1e-4, identical after the shared decoding); `vp-driving stream` on a deploy folder
holding perception.onnx labels each frame with its drivable area (polygons that fill back into the
model's mask), `--model-family two_model` on the same folder still runs the detector and lane model,
and a bad or foreign model file is one error line with a non-zero exit."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from visionpipes.core.errors import UserError

#: A small NAS-style backbone (strides 4/8/16/32): the graph stays tiny and exports in seconds.
TINY = {
    "backbone": {
        "name": "tiny",
        "stem": "conv",
        "stem_width": 8,
        "stages": [
            {"block": "depthwise_separable", "depth": 1, "width": 16, "stride": 2},
            {"block": "inverted_residual", "depth": 1, "width": 24, "stride": 2, "expand_ratio": 3},
            {"block": "inverted_residual", "depth": 1, "width": 32, "stride": 2, "expand_ratio": 3},
            {"block": "basic", "depth": 1, "width": 48, "stride": 2},
        ],
    },
    "width": 128,
    "height": 64,
    "neck_width": 16,
    "seg_width": 16,
    "lane_head_width": 8,
    "drivable_head_width": 8,
}


def _frames(video: Path, n: int) -> list[np.ndarray]:
    import cv2

    capture = cv2.VideoCapture(str(video))
    frames = []
    for _ in range(n):
        ok, frame = capture.read()
        assert ok
        frames.append(frame)
    capture.release()
    return frames


@pytest.fixture(scope="module")
def deploy(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A seeded, untrained multi-task model whose `car` score and drivable classes depend on the
    image (biases shifted on the video's first frame so that a few anchors score above 0.5 and about
    a third of the pixels are `direct`, a third `alternative`), exported to perception.onnx; beside it
    a YOLOv8n detector and a lane model (the two-model family), all listed in one model.json."""
    import torch
    from ultralytics.utils import ROOT

    from visionpipes.core.artifact import file_entry, write_record
    from visionpipes.driving.bdd100k.categories import DET_CATEGORIES
    from visionpipes.driving.detection.export import export_detector_onnx
    from visionpipes.driving.detection.train import DetectorConfig, build_detector
    from visionpipes.driving.lanes.model import LaneModelConfig, build_lane_model
    from visionpipes.driving.lanes.runtime import export_lane_onnx
    from visionpipes.driving.multitask.decode import network_input, unletterbox
    from visionpipes.driving.multitask.export import export_multitask_onnx
    from visionpipes.driving.multitask.model import build_multitask_model
    from visionpipes.driving.synth.sample import SynthConfig, write_sample

    work = tmp_path_factory.mktemp("perception")
    write_sample(
        work / "bdd",
        SynthConfig(images=1, val_fraction=0.0, cameras=1, video_frames=4, video_size=(128, 72), seed=3),
    )
    video = work / "bdd" / "videos" / "cam0.mp4"
    (first,) = _frames(video, 1)
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = build_multitask_model(TINY).eval()
        x, infos = network_input([first], (TINY["width"], TINY["height"]))
        with torch.no_grad():
            predictions, _, drivable = model(torch.from_numpy(x))
            car = DET_CATEGORIES.index("car")
            scores = predictions[0, 4 + car].clamp(1e-7, 1 - 1e-7)
            logits = torch.log(scores / (1 - scores))
            shift = -float(torch.quantile(logits, 1 - 6 / logits.numel()))
            for branch in model.detect.cv3:  # the class branch of each detection level
                branch[-1].bias[car] += shift
            # drivable: direct where channel 0 is in its top third over the frame, alternative in the middle third
            area = torch.from_numpy(
                unletterbox(drivable[0].numpy(), infos[0], (first.shape[1], first.shape[0]))
            )
            classifier = model.drivable_head.classifier
            classifier.bias[0] += float(torch.quantile(area[2] - area[0], 2 / 3))
            classifier.bias[1] += float(torch.quantile(area[2] - area[1], 1 / 3))
        folder = work / "deploy"
        folder.mkdir()
        export_multitask_onnx(model, folder / "perception.onnx")
        yaml_text = (ROOT / "cfg" / "models" / "v8" / "yolov8.yaml").read_text().replace("nc: 80", "nc: 10")
        (work / "yolov8n.yaml").write_text(yaml_text)
        detector = build_detector(DetectorConfig(model=str(work / "yolov8n.yaml")))
        export_detector_onnx(detector, folder / "detector.onnx", imgsz=64)
        lane_config = LaneModelConfig(width=64, height=64, encoder_depth=3, decoder_channels=[16, 8, 8])
        export_lane_onnx(build_lane_model(lane_config), folder / "lanes.onnx")
    finally:
        torch.set_num_threads(threads)
    files = {role: file_entry(folder, f"{role}.onnx") for role in ("detector", "lanes", "perception")}
    write_record(folder, domain="driving", files=files)
    return {"folder": folder, "video": video, "model": model, "work": work}


# The runtime against the torch model
# --------------------------------------------------------------------------------------------------


def test_runtime_equals_the_torch_model_decoded_the_same_way(deploy: dict[str, Path]) -> None:
    import torch

    from visionpipes.driving.detection.runtime import decode_predictions
    from visionpipes.driving.multitask.decode import decode_outputs, network_input
    from visionpipes.driving.multitask.runtime import PerceptionRuntime

    runtime = PerceptionRuntime(deploy["folder"], threads=1)  # read through model.json
    assert runtime.path == deploy["folder"] / "perception.onnx" and (runtime.width, runtime.height) == (
        128,
        64,
    )
    frames = _frames(deploy["video"], 3)
    frames.append(np.ascontiguousarray(frames[0][:, ::-1]))  # a 4th camera
    raw, infos = runtime.raw(frames)
    model = deploy["model"]
    model.native_outputs = True  # as exported: segmentation logits at the heads' strides
    try:
        with torch.no_grad():
            eager = [t.numpy() for t in model(torch.from_numpy(network_input(frames, (128, 64))[0]))]
    finally:
        model.native_outputs = False
    for name, ours, theirs in zip(("predictions", "lanes", "drivable"), raw, eager):
        assert ours.shape == theirs.shape and ours.shape[0] == 4, name
        # float32: absolute 1e-4 near zero, a few ulp (1e-6 relative) on box coordinates of hundreds
        # of pixels (CI measured 480.00006 against 479.99994 once: 4 ulp)
        np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-4, err_msg=name)

    results = runtime.predict(frames, conf=0.25)
    sizes = [(f.shape[1], f.shape[0]) for f in frames]
    expected = decode_predictions(eager[0], infos, sizes, conf=0.25)
    assert sum(len(r.detections[0]) for r in results) > 0  # the shifted car scores give boxes
    for result, (boxes, scores, classes) in zip(results, expected):
        np.testing.assert_array_equal(result.detections[2], classes)
        np.testing.assert_allclose(result.detections[0], boxes, atol=1e-3)
        np.testing.assert_allclose(result.detections[1], scores, atol=1e-5)
    decoded = decode_outputs(
        eager, infos, sizes, lane_decoding=runtime.lane_decoding, network_size=(128, 64), conf=0.25
    )
    for result, (_, lane_mask, drivable_mask), frame in zip(results, decoded, frames):
        assert result.drivable_mask.shape == result.lanes.shape == frame.shape[:2]
        assert result.drivable_mask.dtype == np.uint8 and set(np.unique(result.drivable_mask)) <= {0, 1, 2}
        # onnxruntime's logits are the eager ones within 1e-4: only near-tie pixels may flip (a few
        # of the 9216; the decoders themselves are tested byte for byte below)
        assert (result.drivable_mask == drivable_mask).mean() > 0.995
        assert (result.lanes == lane_mask).mean() > 0.995
    assert {0, 1} <= set(np.unique(results[0].drivable_mask))  # both drivable classes are present
    # one session call per batch, lanes optional
    assert all(r.lanes is None for r in runtime.predict(frames[:2], lanes=False))


def test_network_input_is_the_detectors_input_written_into_one_buffer() -> None:
    from visionpipes.driving.detection.runtime import detector_input
    from visionpipes.driving.multitask.decode import network_input

    rng = np.random.default_rng(1)
    frames = [
        rng.integers(0, 256, size=shape, dtype=np.uint8)
        for shape in ((72, 128, 3), (50, 41, 3), (64, 128, 3))
    ]
    ours, infos = network_input(frames, (128, 64))
    theirs, their_infos = detector_input(frames, (128, 64))
    assert ours.dtype == np.float32 and infos == their_infos
    np.testing.assert_array_equal(ours, theirs)  # the same values, bit for bit
    again, _ = network_input(frames[::-1], (128, 64), out=ours)  # the buffer is reused and refilled
    assert again is ours
    np.testing.assert_array_equal(again, detector_input(frames[::-1], (128, 64))[0])
    fresh, _ = network_input(frames[:2], (128, 64), out=ours)  # another batch size: a new array
    assert fresh is not ours and fresh.shape == (2, 3, 64, 128)


def test_unletterbox_cuts_the_frame_from_a_strided_grid() -> None:
    """Segmentation logits at a stride of the network input: a 16:9 frame in 384x224 (rows 4..220)
    is cut from the stride-4 grid as it is; with `upsample`, or when the letterbox's edges are off
    the grid, the logits are first resized bilinearly to the input (the graph's former resize)."""
    import cv2

    from visionpipes.driving.detection.runtime import letterbox
    from visionpipes.driving.multitask.decode import unletterbox

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 56, 96)).astype(np.float32)  # stride 4 of 384x224
    full = np.stack([cv2.resize(c, (384, 224), interpolation=cv2.INTER_LINEAR) for c in logits])
    _, info = letterbox(np.zeros((720, 1280, 3), np.uint8), (384, 224))
    assert (info.pad_y, info.pad_x) == (4, 0)
    cut = unletterbox(logits, info, (1280, 720), (384, 224))
    np.testing.assert_array_equal(cut, logits[:, 1:55])  # rows 4..220 of the input = cells 1..55
    np.testing.assert_array_equal(unletterbox(full, info, (1280, 720)), full[:, 4:220])
    np.testing.assert_array_equal(
        unletterbox(logits, info, (1280, 720), (384, 224), upsample=True), full[:, 4:220]
    )
    _, info = letterbox(np.zeros((480, 640, 3), np.uint8), (384, 224))  # 4:3: columns 42..341
    assert info.pad_x % 4
    off_grid = unletterbox(logits, info, (640, 480), (384, 224))
    np.testing.assert_array_equal(off_grid, unletterbox(full, info, (640, 480)))
    with pytest.raises(ValueError, match="not on a grid"):
        unletterbox(logits[:, :55], info, (640, 480), (384, 224))


def test_channel_argmax_is_numpys_argmax_ties_included() -> None:
    from visionpipes.driving.lanes.decode import channel_argmax

    rng = np.random.default_rng(0)
    for channels in (1, 2, 3, 8):
        values = rng.integers(-2, 3, size=(channels, 17, 23)).astype(np.float32)  # many ties
        np.testing.assert_array_equal(channel_argmax(values), values.argmax(0).astype(np.uint8))
        noisy = rng.normal(size=(channels, 5, 7)).astype(np.float32)[:, ::-1, 1:]  # a strided view
        np.testing.assert_array_equal(channel_argmax(noisy), noisy.argmax(0).astype(np.uint8))
    flat = rng.normal(size=(8, 31)).astype(np.float32)  # (C, n): the cells of a sparse decoding
    np.testing.assert_array_equal(channel_argmax(flat), flat.argmax(0).astype(np.uint8))
    with pytest.raises(ValueError, match="C, h, w"):
        channel_argmax(np.zeros(4, np.float32))


def _reference_lane_mask(
    logits: np.ndarray,
    size: tuple[int, int] | None = None,
    roi_top: float = 0.0,
    *,
    join_gaps: float = 0.0,
    min_area: float = 0.0,
    vote: bool = False,
) -> np.ndarray:
    """`lane_mask_from_logits` with NumPy's arg-max over each channel group (the code before
    `channel_argmax`), the lane-level steps being the same functions."""
    import cv2

    from visionpipes.driving.bdd100k.categories import LANE_BACKGROUND, LANE_DIRECTION_BIT, LANE_STYLE_BIT
    from visionpipes.driving.lanes import decode as d

    margin = d.lane_margin(logits[: d.CATEGORY_CHANNELS])
    value = (
        logits[: d.BACKGROUND_CLASS].argmax(0)
        | (logits[d.CATEGORY_CHANNELS : d.CATEGORY_CHANNELS + 2].argmax(0) << LANE_STYLE_BIT)
        | (logits[d.CATEGORY_CHANNELS + 2 :].argmax(0) << LANE_DIRECTION_BIT)
    ).astype(np.uint8)
    top = 0
    if size is not None:
        top = d.roi_top_rows(size[1], roi_top)
        roi_size = (size[0], size[1] - top)
        if (margin.shape[1], margin.shape[0]) != roi_size:
            margin = cv2.resize(margin, roi_size, interpolation=cv2.INTER_LINEAR)
            value = cv2.resize(value, roi_size, interpolation=cv2.INTER_NEAREST_EXACT)
    mask = np.where(margin > 0, value, np.uint8(LANE_BACKGROUND))
    if join_gaps > 0:
        mask = d.join_lane_gaps(mask, max_gap_ratio=join_gaps)
    if min_area > 0:
        mask = d.drop_small_pieces(mask, round(min_area * mask.shape[1] * (mask.shape[0] + top)))
    if vote:
        mask = d.vote_lane_style(mask)
    if top:
        mask = np.concatenate([np.full((top, mask.shape[1]), LANE_BACKGROUND, np.uint8), mask])
    return mask


def test_fast_mask_decoding_equals_the_reference_on_the_models_outputs(deploy: dict[str, Path]) -> None:
    """The mask decoding (`lane_mask_from_logits`, `drivable_mask_from_logits`, both arg-maxes by
    `channel_argmax`) gives the same masks, byte for byte, as the same decoding with NumPy's
    arg-max (`_reference_lane_mask`: the lane decoding as it was before `channel_argmax`) and a
    bilinear resize + NumPy arg-max, on the seeded graph's outputs for the video's frames, at the
    frame size, at 1280x720 and at the network's own resolution."""
    import cv2

    from visionpipes.driving.lanes.decode import lane_mask_from_logits
    from visionpipes.driving.multitask.decode import drivable_mask_from_logits, unletterbox
    from visionpipes.driving.multitask.runtime import PerceptionRuntime

    runtime = PerceptionRuntime(deploy["folder"], threads=1)
    frames = _frames(deploy["video"], 2)
    (_, lanes, drivable), infos = runtime.raw(frames)
    size = (frames[0].shape[1], frames[0].shape[0])
    lane_pixels = 0
    for k, info in enumerate(infos):
        network = (runtime.width, runtime.height)
        lane_logits = unletterbox(lanes[k], info, size, network, upsample=True)
        area_logits = unletterbox(drivable[k], info, size, network)
        for target in (size, (1280, 720), None):
            for decoding in (runtime.lane_decoding, {}, {**runtime.lane_decoding, "roi_top": 0.25}):
                ours = lane_mask_from_logits(lane_logits, target, **decoding)
                np.testing.assert_array_equal(ours, _reference_lane_mask(lane_logits, target, **decoding))
                lane_pixels += int((ours != 255).sum())
            out = target or (area_logits.shape[2], area_logits.shape[1])
            reference = np.stack([cv2.resize(c, out, interpolation=cv2.INTER_LINEAR) for c in area_logits])
            np.testing.assert_array_equal(drivable_mask_from_logits(area_logits, out), reference.argmax(0))
    assert lane_pixels > 0  # the seeded head marks some lanes: the comparison is not of empty masks


def _lane_like_logits(stride: int, network: tuple[int, int], seed: int) -> np.ndarray:
    """Lane logits on the stride-`stride` grid of `network`: a few drawn lines of several types,
    styles and directions (thin, so that many cells sit near the lane/background boundary) plus noise."""
    import cv2

    from visionpipes.driving.lanes.decode import CATEGORY_CHANNELS, LANE_CHANNELS

    rng = np.random.default_rng(seed)
    height, width = network[1] // stride, network[0] // stride
    logits = rng.normal(scale=1.5, size=(LANE_CHANNELS, height, width)).astype(np.float32)
    logits[CATEGORY_CHANNELS - 1] += 6.0  # background wins away from the lines
    for _ in range(6):
        canvas = np.zeros((height, width), np.float32)
        p = (int(rng.integers(width)), int(rng.integers(height)))
        q = (int(rng.integers(width)), int(rng.integers(height)))
        cv2.line(canvas, p, q, 1.0, int(rng.integers(1, 3)))
        lane_type, style, direction = int(rng.integers(8)), int(rng.integers(2)), int(rng.integers(2))
        logits[lane_type] += 9.0 * canvas
        logits[CATEGORY_CHANNELS + style] += 4.0 * canvas
        logits[CATEGORY_CHANNELS + 2 + direction] += 4.0 * canvas
    return logits


@pytest.mark.parametrize("stride", [2, 4])
def test_sparse_lane_decoding_equals_the_dense_one(deploy: dict[str, Path], stride: int) -> None:
    """`lane_mask_from_grid` (the lane fields computed only near the cells whose grid margin can be
    positive, `upsampled_lane_fields`) gives the same masks, byte for byte, as upsampling all 13
    channels bilinearly and decoding them (`lane_mask_from_logits(unletterbox(..., upsample=True))`):
    on lane-like logits at strides 2 and 4, and on the seeded graph's own stride-2 outputs, at frame
    sizes above, at and below the network's, a 4:3 frame whose letterbox is off the grid, and with
    and without the lane-level steps. The fields it computes are the dense fields' bits, and it must
    have left cells out."""
    import cv2

    from visionpipes.driving.detection.runtime import letterbox
    from visionpipes.driving.lanes.decode import lane_fields, lane_mask_from_logits
    from visionpipes.driving.multitask import decode
    from visionpipes.driving.multitask.runtime import PerceptionRuntime

    network = (384, 224)
    cases = [(_lane_like_logits(stride, network, seed), network) for seed in range(3)]
    if stride == 2:
        runtime = PerceptionRuntime(deploy["folder"], threads=1)
        (_, lanes, _), _ = runtime.raw(_frames(deploy["video"], 2))
        assert lanes.shape[2] * 2 == runtime.height
        cases += [(lanes[k], (runtime.width, runtime.height)) for k in range(len(lanes))]
    lane_pixels, left_out = 0, []
    for logits, size in cases:
        # above, at, below and at half the network's size (OpenCV resizes that by 2x2 averages), a 4:3 frame
        for frame_size in ((1280, 720), (size[0], size[0] * 9 // 16), (320, 180), (size[0] // 2, size[0] * 9 // 32), (640, 480)):
            _, info = letterbox(np.zeros((frame_size[1], frame_size[0], 3), np.uint8), size)
            margin, value = decode.upsampled_lane_fields(logits, stride, decode.letterbox_window(info, frame_size))
            computed = margin != decode._OUTSIDE_MARGIN
            left_out.append(1.0 - float(computed.mean()))
            dense_margin, dense_value = lane_fields(decode.unletterbox(logits, info, frame_size, size, upsample=True))
            np.testing.assert_array_equal(margin[computed], dense_margin[computed])  # the same bits
            np.testing.assert_array_equal(value[computed], dense_value[computed])
            for decoding in ({}, {"join_gaps": 6.0, "min_area": 0.0005, "vote": True}):
                dense = lane_mask_from_logits(
                    decode.unletterbox(logits, info, frame_size, size, upsample=True), frame_size, **decoding
                )
                sparse = decode.lane_mask_from_grid(logits, info, frame_size, size, **decoding)
                np.testing.assert_array_equal(sparse, dense)
                lane_pixels += int((dense != 255).sum())
    assert lane_pixels > 0 and max(left_out) > 0.5
    full = cv2.resize(cases[0][0][0], network, interpolation=cv2.INTER_LINEAR)  # the taps are OpenCV's
    rows, cols = (decode._linear_taps(n, n * stride) for n in cases[0][0].shape[1:])
    upper = decode._lerp(cases[0][0][0][rows[0]][:, cols[0]], cases[0][0][0][rows[0]][:, cols[1]], cols[2])
    lower = decode._lerp(cases[0][0][0][rows[1]][:, cols[0]], cases[0][0][0][rows[1]][:, cols[1]], cols[2])
    np.testing.assert_array_equal(decode._lerp(upper, lower, rows[2][:, None]), full)


def _dense_pieces_by_type(types: np.ndarray, where: np.ndarray, shape: tuple[int, ...]):  # type: ignore[no-untyped-def]
    """`lanes.decode._pieces_by_type` labelling each type over the whole image (the code before the
    bounding boxes)."""
    import cv2

    for lane_type in np.unique(types):
        sel = np.flatnonzero(types == lane_type)
        binary = np.zeros(shape, np.uint8)
        binary.ravel()[where[sel]] = 1
        n, labels = cv2.connectedComponents(binary, connectivity=8)
        yield int(lane_type), n, labels.ravel()[where[sel]], sel


def test_lane_level_steps_label_pieces_as_over_the_whole_image(monkeypatch: pytest.MonkeyPatch) -> None:
    """The clean-ups label each lane type's pieces inside the bounding box of its pixels: the same
    masks as labelling over the whole image, on masks with many pieces of several types."""
    import cv2

    from visionpipes.driving.bdd100k.masks import encode_lane_value
    from visionpipes.driving.lanes import decode

    rng = np.random.default_rng(0)
    masks = []
    for _ in range(8):
        mask = np.full((90, 160), 255, np.uint8)
        for _ in range(14):
            p, q = tuple(int(v) for v in rng.integers(0, 160, 2)), tuple(int(v) for v in rng.integers(0, 90, 2))
            value = encode_lane_value(int(rng.integers(8)), style=int(rng.integers(2)), direction=int(rng.integers(2)))
            cv2.line(mask, (p[0], q[0]), (p[1], q[1]), value, int(rng.integers(1, 4)))
        masks.append(mask)
    steps = (
        lambda m: decode.join_lane_gaps(m, max_gap_ratio=6.0),
        lambda m: decode.drop_small_pieces(m, 40),
        decode.vote_lane_style,
    )
    ours = [[step(m) for step in steps] for m in masks]
    monkeypatch.setattr(decode, "_pieces_by_type", _dense_pieces_by_type)
    for mask, results in zip(masks, ours):
        for step, result in zip(steps, results):
            np.testing.assert_array_equal(result, step(mask))
    assert any((r != m).any() for m, results in zip(masks, ours) for r in results)  # the steps changed masks


def test_the_runtime_reads_the_graph_the_exporter_writes() -> None:
    from visionpipes.driving.multitask import export, runtime

    assert (runtime.INPUT_NAME, runtime.OUTPUT_NAMES) == (export.INPUT_NAME, export.OUTPUT_NAMES)


def test_bad_model_files_are_one_clear_error(deploy: dict[str, Path], tmp_path: Path) -> None:
    from visionpipes.driving.multitask.runtime import PerceptionRuntime

    with pytest.raises(UserError, match="does not exist"):
        PerceptionRuntime(tmp_path / "perception.onnx")
    (tmp_path / "garbage.onnx").write_bytes(b"not an onnx model")
    with pytest.raises(UserError, match=r"garbage\.onnx cannot be loaded by onnxruntime") as err:
        PerceptionRuntime(tmp_path / "garbage.onnx")
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match=r"detector\.onnx: metadata task is None, not 'multitask'"):
        PerceptionRuntime(deploy["folder"] / "detector.onnx")
    lonely = tmp_path / "two_model"
    lonely.mkdir()
    shutil.copy(deploy["folder"] / "detector.onnx", lonely)
    from visionpipes.core.artifact import file_entry, write_record

    write_record(lonely, domain="driving", files={"detector": file_entry(lonely, "detector.onnx")})
    with pytest.raises(UserError, match=r"holds no multi-task model"):
        PerceptionRuntime(lonely)


def test_model_family_resolution(deploy: dict[str, Path], tmp_path: Path) -> None:
    from visionpipes.driving.deployment import read_deploy_folder, resolve_models

    folder = deploy["folder"]
    models = read_deploy_folder(folder)
    assert models.perception == folder / "perception.onnx" and models.detector == folder / "detector.onnx"
    assert resolve_models(folder, "auto")[0] == "multitask"
    family, det, lanes, perception = resolve_models(folder, "two_model")
    assert (family, Path(det), Path(lanes), perception) == (
        "two_model",
        folder / "detector.onnx",
        folder / "lanes.onnx",
        None,
    )
    with pytest.raises(UserError, match="cannot run with --model-family two_model"):
        resolve_models(folder, "two_model", perception=str(folder / "perception.onnx"))
    only = tmp_path / "only"
    only.mkdir()
    shutil.copy(folder / "perception.onnx", only)
    from visionpipes.core.artifact import file_entry, write_record

    write_record(only, domain="driving", files={"perception": file_entry(only, "perception.onnx")})
    assert resolve_models(only, "auto")[0] == "multitask"
    with pytest.raises(UserError, match=r"holds no detector for the two-model family"):
        resolve_models(only, "two_model")


# The stream
# --------------------------------------------------------------------------------------------------


def _report(out: str) -> dict:
    """The JSON report `stream` prints after its status lines."""
    lines = out.splitlines()
    return json.loads("\n".join(lines[lines.index("{") :]))


def _stream_argv(deploy: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return ["stream", str(deploy["video"]), "--deploy", str(deploy["folder"]), "--out", str(out),
            "--no-realtime", "--max-frames", "3", "--threads", "1", "--no-video", *extra]  # fmt: skip


def test_stream_with_a_multitask_deploy_folder_labels_the_drivable_area(
    deploy: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from visionpipes.driving import cli
    from visionpipes.driving.bdd100k.labels import load_frames
    from visionpipes.driving.bdd100k.masks import rasterize_drivable
    from visionpipes.driving.multitask.runtime import PerceptionRuntime
    from visionpipes.driving.streams.outputs import drivable_labels

    assert cli.run(_stream_argv(deploy, tmp_path / "out", "--conf", "0.25")) == 0
    report = _report(capsys.readouterr().out)
    assert report["extra"]["model_family"] == "multitask" and report["cameras"][0]["frames"] == 3
    frames = load_frames(tmp_path / "out" / "cam0.json", image_size=None)
    assert [f.frame_index for f in frames] == [0, 1, 2]
    expected = PerceptionRuntime(deploy["folder"] / "perception.onnx", threads=1).predict(
        _frames(deploy["video"], 3)
    )
    for frame, result in zip(frames, expected):
        labels = frame.labels or []
        areas = [label for label in labels if label.category.startswith("area/")]
        boxes = [label for label in labels if label.box2d is not None]
        assert {a.category for a in areas} == {"area/drivable", "area/alternative"}
        assert all(p.closed and len(p.vertices) >= 3 for a in areas for p in a.poly2d or [])
        assert len({label.id for label in labels}) == len(labels)  # ids unique across boxes and areas
        mask = result.drivable_mask
        size = (mask.shape[1], mask.shape[0])
        filled = rasterize_drivable(areas, size)
        # the stream labelled this frame with this frame's mask: its polygons are those of the mask
        # decoded here, up to pixels that flip between the stream's onnxruntime threads and ours
        own = rasterize_drivable(drivable_labels(mask), size)
        assert (filled == own).mean() > 0.995
        # and the polygons keep the mask: on a 128x72 frame a simplified outline (1 px tolerance)
        # misses ~3 % of the pixels (0.970-0.973 on these frames, the same on every run)
        assert (own == mask).mean() > 0.95
        if frame.frame_index >= 1:  # ByteTrack confirms a track on its second frame
            assert len(boxes) >= 1


def test_model_family_two_model_on_a_folder_with_both_runs_the_two_models(
    deploy: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from visionpipes.driving import cli

    assert cli.run(_stream_argv(deploy, tmp_path / "out", "--model-family", "two_model")) == 0
    report = _report(capsys.readouterr().out)
    assert report["extra"]["model_family"] == "two_model"
    assert report["extra"]["models"] == {
        "detector": str(deploy["folder"] / "detector.onnx"),
        "lanes": str(deploy["folder"] / "lanes.onnx"),
    }
    frames = json.loads((tmp_path / "out" / "cam0.json").read_text())
    assert len(frames) == 3
    assert not any(label["category"].startswith("area/") for f in frames for label in f.get("labels", []))


def test_predict_with_the_multitask_family_writes_official_drivable_masks(
    deploy: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import cv2

    from visionpipes.driving import cli
    from visionpipes.driving.bdd100k.drivable import read_drivable_mask
    from visionpipes.driving.bdd100k.masks import read_mask
    from visionpipes.driving.multitask.runtime import PerceptionRuntime

    images = tmp_path / "images"
    images.mkdir()
    frames = _frames(deploy["video"], 2)
    for k, frame in enumerate(frames):
        cv2.imwrite(str(images / f"f{k}.png"), frame)  # lossless: the same pixels as `frames`
    out = tmp_path / "pred"
    assert cli.run(["predict", str(images), "--deploy", str(deploy["folder"]), "--out", str(out)]) == 0
    assert "wrote 1 prediction files (2 frames" in capsys.readouterr().out
    expected = PerceptionRuntime(deploy["folder"], threads=1).predict(frames)
    det = json.loads((out / "images.json").read_text())
    assert [f["name"] for f in det] == ["f0.png", "f1.png"]
    for k, result in enumerate(expected):
        assert len(det[k].get("labels", [])) == len(result.detections[0])
        drivable = read_drivable_mask(
            out / "images.drivable" / f"f{k}.png", expected_shape=frames[k].shape[:2]
        )
        np.testing.assert_array_equal(drivable, result.drivable_mask)
        np.testing.assert_array_equal(read_mask(out / "images.lanes" / f"f{k}.png"), result.lanes)
    # the same worker on a local Ray instance (2 CPUs, one actor) writes the same bytes
    on_ray = tmp_path / "ray"
    argv = ["predict", str(images), "--deploy", str(deploy["folder"]), "--out", str(on_ray),
            "--engine", "ray", "--num-cpus", "2", "--actors", "1"]  # fmt: skip
    assert cli.run(argv) == 0
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(on_ray) for p in on_ray.rglob("*") if p.is_file())
    assert len(files) == 5  # images.json + 2 lane masks + 2 drivable masks
    for name in files:
        assert (out / name).read_bytes() == (on_ray / name).read_bytes(), name
    # --model-family two_model on the same folder: the detector and lane model, no drivable masks
    again = tmp_path / "two"
    argv = [
        "predict",
        str(images),
        "--deploy",
        str(deploy["folder"]),
        "--out",
        str(again),
        "--model-family",
        "two_model",
    ]
    assert cli.run(argv) == 0
    assert (again / "images.json").is_file() and (again / "images.lanes").is_dir()
    assert not (again / "images.drivable").exists()
    with pytest.raises(UserError, match="needs --deploy FOLDER"):
        cli.run(["predict", str(images), "--out", str(tmp_path / "x"), "--model-family", "multitask"])


def _vp_driving(*args: str) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("vp-driving")
    argv = [str(script)] if script.is_file() else [sys.executable, "-m", "visionpipes.driving.cli"]
    return subprocess.run([*argv, *args], capture_output=True, text=True, timeout=120)


def test_a_bad_perception_model_is_one_error_line_and_exit_2(deploy: dict[str, Path], tmp_path: Path) -> None:
    bad = tmp_path / "perception.onnx"
    bad.write_bytes(b"not an onnx model")
    result = _vp_driving(
        "stream", str(deploy["video"]), "--perception", str(bad), "--out", str(tmp_path / "out")
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(bad) in lines[0], result.stderr
    assert not (tmp_path / "out").exists()
