"""The multi-task network's ONNX graph (`perception.onnx`, `multitask.export`) under onnxruntime:
BGR frames in, per frame the detections, the official lane mask and the official drivable mask out.

All the frames of one call (the cameras of one stream tick) go through one session call. Decoding
is `multitask.decode`'s (shared with the evaluation), i.e. the two-model runtime's own: boxes through
`detection.runtime.decode_predictions` (class-wise NMS, letterbox undone), lanes through
`multitask.decode.lane_mask_from_grid` (`lanes.decode.lane_mask_from_logits`' mask, its fields
computed only near the cells that can be lanes), the drivable arg-max after a bilinear resize.

Speed (issue #15; `benchmarks/driving_streams.py` prints where a stream tick's time goes): the
session runs every intra-op thread without spin-waiting between calls (a stream's decoding thread
works between two calls, and spinning workers took its cores), with all graph optimisations (the
NCHWc layouts; `extended` measured 1.6x slower) and sequential execution; frames are letterboxed
straight into one reused input buffer. Measured together with the faster decoders, same graph
(the 448x256 seeded model of b0c50c3), 4 cameras of 640x360, one process, alternating: 122-126 ->
79-80 CPU ms per frame, 3.3-3.9 -> 5.3-6.0 fps at load ~8-10.

Runtime: onnxruntime, NumPy and OpenCV only; never imports torch, ultralytics or training code.
"""

from __future__ import annotations

import functools
import json
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from visionpipes.core.errors import UserError
from visionpipes.driving.bdd100k.categories import DET_CATEGORIES, DRIVABLE_CATEGORIES
from visionpipes.driving.detection.runtime import Letterbox, decode_predictions
from visionpipes.driving.lanes.decode import LANE_CHANNELS
from visionpipes.driving.multitask.config import MultiTaskModelConfig
from visionpipes.driving.multitask.decode import (
    drivable_mask_from_grid,
    lane_mask_from_grid,
    network_input,
)

#: The graph's file name in a deploy folder and its input/output names (as `multitask.export` writes them).
PERCEPTION_FILE = "perception.onnx"
INPUT_NAME = "images"
OUTPUT_NAMES: tuple[str, str, str] = ("predictions", "lanes", "drivable")
#: Lane-level decoding when the graph's metadata names none: `MultiTaskModelConfig`'s defaults.
DEFAULT_LANE_DECODING: dict[str, Any] = MultiTaskModelConfig().decoding()


@dataclass(frozen=True)
class PerceptionResult:
    """One frame's three tasks.

    Attributes:
        detections: (xyxy boxes (K, 4) in frame pixels, scores (K,), class ids (K,)), as `OnnxDetector`.
        lanes: HxW uint8 official lane mask (255 background), or None when lanes were not decoded.
        drivable_mask: HxW uint8 official drivable mask (0 direct, 1 alternative, 2 background).
    """

    detections: tuple[np.ndarray, np.ndarray, np.ndarray]
    lanes: np.ndarray | None
    drivable_mask: np.ndarray


def resolve_perception_file(deploy_dir_or_onnx: str | os.PathLike) -> Path:
    """`perception.onnx` of a deploy folder (through its checked `model.json`), or the `.onnx` itself.

    Raises:
        UserError: if the path is missing, or the folder's record lists no perception model.
    """
    path = Path(deploy_dir_or_onnx)
    if path.is_dir():
        from visionpipes.driving.deployment import read_deploy_folder

        deployed = read_deploy_folder(path, require_detector=False)
        if deployed.perception is None:
            raise UserError(
                f"deploy folder {path} holds no multi-task model ({PERCEPTION_FILE} is not in its model.json)."
            )
        return deployed.perception
    if not path.is_file():
        raise UserError(f"multi-task model {path} does not exist.")
    return path


def _session(path: Path, providers: Sequence[str] | None, threads: int | None, spinning: bool = False) -> Any:
    import onnxruntime as ort
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

    from visionpipes.core.settings import default_threads

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads if threads is not None else default_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # No spin-waiting of the intra-op threads after a call: in a stream the decoding thread runs
    # between two session calls, and spinning workers took its cores (CPU per frame, see the runtime).
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    if providers is None:
        available = ort.get_available_providers()
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    try:
        return ort.InferenceSession(str(path), options, providers=list(providers))
    except (
        ort_errors.Fail,
        ort_errors.InvalidGraph,
        ort_errors.InvalidProtobuf,
        ort_errors.NoSuchFile,
    ) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"multi-task model {path} cannot be loaded by onnxruntime: {first}") from None


def _json_field(metadata: Mapping[str, str], key: str, path: Path) -> Any:
    if key not in metadata:
        raise UserError(
            f"multi-task model {path}: metadata has no '{key}' (not exported by multitask.export?)."
        )
    try:
        return json.loads(metadata[key])
    except json.JSONDecodeError:
        raise UserError(f"multi-task model {path}: metadata '{key}' is not valid JSON.") from None


class PerceptionRuntime:
    """`perception.onnx` under onnxruntime: detections, lane masks and drivable masks of BGR frames.

    Frames are letterboxed to the graph's input size (the detector's letterbox: aspect kept, grey
    padding), as one batch; boxes are mapped back to frame pixels by the detector's decoding; the
    segmentation logits are cropped to the letterboxed picture and resized to each frame's size
    (lanes: the lane runtime's decoding; drivable: bilinear logits, then arg-max, so the mask holds
    the official values 0 direct / 1 alternative / 2 background).

    Args:
        deploy_dir_or_onnx: a driving deploy folder whose `model.json` lists `perception.onnx`
            (checksums verified), or the `.onnx` file itself.
        providers: onnxruntime execution providers (default CUDA first when available, then CPU).
        threads: onnxruntime intra-op threads (None: the project's default, every logical core).
        lane_decoding: lane-level decoding (`join_gaps`, `min_area`, `vote` of
            `lane_mask_from_logits`); default the graph's `lane_decoding` metadata when it has one,
            else `DEFAULT_LANE_DECODING`.

    Raises:
        UserError: if the file is missing, not loadable, or not a multi-task graph (its metadata
            `task`, `input`, class lists, input/output names or shapes differ from `multitask.export`'s).
    """

    def __init__(
        self,
        deploy_dir_or_onnx: str | os.PathLike,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        *,
        lane_decoding: Mapping[str, Any] | None = None,
    ) -> None:
        self.path = resolve_perception_file(deploy_dir_or_onnx)
        self.session = _session(self.path, providers, threads)
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        self._check_metadata()
        self.lane_decoding = dict(DEFAULT_LANE_DECODING)
        if lane_decoding is None and "lane_decoding" in self.metadata:
            lane_decoding = _json_field(self.metadata, "lane_decoding", self.path)
        if lane_decoding is not None:
            unknown = set(lane_decoding) - set(DEFAULT_LANE_DECODING)
            if unknown:
                raise UserError(
                    f"multi-task model {self.path}: unknown lane decoding keys {sorted(unknown)}."
                )
            self.lane_decoding.update(lane_decoding)
        self.class_names = list(_json_field(self.metadata, "detection_classes", self.path))
        self._buffers = threading.local()

    def _check_metadata(self) -> None:
        path, meta = self.path, self.metadata
        if meta.get("task") != "multitask":
            raise UserError(
                f"multi-task model {path}: metadata task is {meta.get('task')!r}, not 'multitask' "
                "(a detector or lane model is not a perception model)."
            )
        spec = _json_field(meta, "input", path)
        try:
            self.width, self.height = int(spec["width"]), int(spec["height"])
        except (KeyError, TypeError, ValueError):
            raise UserError(
                f"multi-task model {path}: metadata 'input' has no integer width and height."
            ) from None
        if list(_json_field(meta, "detection_classes", path)) != list(DET_CATEGORIES):
            raise UserError(f"multi-task model {path}: its detection classes are not the 10 BDD100K classes.")
        if list(_json_field(meta, "drivable_classes", path)) != list(DRIVABLE_CATEGORIES):
            raise UserError(
                f"multi-task model {path}: its drivable classes are not {list(DRIVABLE_CATEGORIES)}."
            )
        inputs = self.session.get_inputs()
        outputs = [o.name for o in self.session.get_outputs()]
        if [i.name for i in inputs] != [INPUT_NAME] or outputs != list(OUTPUT_NAMES):
            raise UserError(
                f"multi-task model {path}: graph takes {[i.name for i in inputs]} and returns {outputs}; "
                f"expected [{INPUT_NAME!r}] -> {list(OUTPUT_NAMES)}."
            )
        shape = inputs[0].shape
        if len(shape) != 4 or shape[2:] != [self.height, self.width]:
            raise UserError(
                f"multi-task model {path}: input shape {shape} disagrees with its metadata {self.width}x{self.height}."
            )

    def raw(self, frames_bgr: Sequence[np.ndarray]) -> tuple[list[np.ndarray], list[Letterbox]]:
        """The graph's three outputs (predictions, lane logits, drivable logits) for the frames in
        one session call, and each frame's letterbox."""
        # one input buffer per calling thread, reused while the batch size stays (a stream's ticks)
        x, infos = network_input(frames_bgr, (self.width, self.height), getattr(self._buffers, "x", None))
        self._buffers.x = x
        return self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: x}), infos

    def predict(
        self,
        frames: Sequence[np.ndarray],
        *,
        conf: float = 0.25,
        iou: float = 0.6,
        max_det: int = 100,
        lanes: bool = True,
    ) -> list[PerceptionResult]:
        """All three tasks for BGR frames (one session call); `lanes=False` skips lane decoding."""
        return [
            PerceptionResult(dets, lane() if lane is not None else None, drivable())
            for dets, lane, drivable in self.predict_deferred(
                frames, conf=conf, iou=iou, max_det=max_det, lanes=lanes
            )
        ]

    def predict_deferred(
        self,
        frames: Sequence[np.ndarray],
        *,
        conf: float = 0.25,
        iou: float = 0.6,
        max_det: int = 100,
        lanes: bool = True,
    ) -> list[
        tuple[
            tuple[np.ndarray, np.ndarray, np.ndarray],
            Callable[[], np.ndarray] | None,
            Callable[[], np.ndarray],
        ]
    ]:
        """`predict` with the masks left to decode: per frame the detections and two callables that
        return its lane mask (None when `lanes` is False) and its drivable mask. A stream calls them
        in its post-processing thread, so the decoding overlaps the next tick's session call."""
        frames = list(frames)
        if not frames:
            return []
        (predictions, lane_logits, drivable_logits), infos = self.raw(frames)
        if lane_logits.shape[1] != LANE_CHANNELS or drivable_logits.shape[1] != len(DRIVABLE_CATEGORIES):
            raise UserError(
                f"multi-task model {self.path}: outputs have {lane_logits.shape[1]} lane and "
                f"{drivable_logits.shape[1]} drivable channels."
            )
        sizes = [(f.shape[1], f.shape[0]) for f in frames]
        detections = decode_predictions(predictions, infos, sizes, conf=conf, iou=iou, max_det=max_det)
        decoding = dict(self.lane_decoding)
        network = (self.width, self.height)
        out = []
        for k, (size, info) in enumerate(zip(sizes, infos)):
            lane = (
                functools.partial(lane_mask_from_grid, lane_logits[k], info, size, network, **decoding)
                if lanes
                else None
            )
            drivable = functools.partial(drivable_mask_from_grid, drivable_logits[k], info, size, network)
            out.append((detections[k], lane, drivable))
        return out

    def __call__(self, frames: Sequence[np.ndarray], **kwargs: Any) -> list[PerceptionResult]:
        return self.predict(frames, **kwargs)
