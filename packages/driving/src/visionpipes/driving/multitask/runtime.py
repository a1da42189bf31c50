"""The multi-task network's ONNX graph (`perception.onnx`, `multitask.export`) under onnxruntime:
BGR frames in, per frame the detections, the official lane mask and the official drivable mask out.

All the frames of one call (the cameras of one stream tick) go through one session call. Decoding
is `multitask.decode`'s (shared with the evaluation), i.e. the two-model runtime's own: boxes through
`detection.runtime.decode_predictions` (class-wise NMS, letterbox undone), lanes through
`lanes.decode.lane_mask_from_logits`, the drivable arg-max after a bilinear resize.

Runtime: onnxruntime, NumPy and OpenCV only; never imports torch, ultralytics or training code.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from visionpipes.core.errors import UserError
from visionpipes.driving.bdd100k.categories import DET_CATEGORIES, DRIVABLE_CATEGORIES
from visionpipes.driving.detection.runtime import Letterbox, decode_predictions
from visionpipes.driving.lanes.decode import LANE_CHANNELS, lane_mask_from_logits
from visionpipes.driving.multitask.config import MultiTaskModelConfig
from visionpipes.driving.multitask.decode import drivable_mask_from_logits, network_input, unletterbox

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


def _session(path: Path, providers: Sequence[str] | None, threads: int | None) -> Any:
    import onnxruntime as ort
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

    from visionpipes.core.settings import default_threads

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads if threads is not None else default_threads()
    options.inter_op_num_threads = 1
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
        x, infos = network_input(frames_bgr, (self.width, self.height))
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
        out = []
        for k, (size, info) in enumerate(zip(sizes, infos)):
            lane = functools.partial(_lane_mask, lane_logits[k], info, size, decoding) if lanes else None
            drivable = functools.partial(_drivable_mask, drivable_logits[k], info, size)
            out.append((detections[k], lane, drivable))
        return out

    def __call__(self, frames: Sequence[np.ndarray], **kwargs: Any) -> list[PerceptionResult]:
        return self.predict(frames, **kwargs)


def _lane_mask(
    logits: np.ndarray, info: Letterbox, size: tuple[int, int], decoding: dict[str, Any]
) -> np.ndarray:
    return lane_mask_from_logits(unletterbox(logits, info, size), size, **decoding)


def _drivable_mask(logits: np.ndarray, info: Letterbox, size: tuple[int, int]) -> np.ndarray:
    return drivable_mask_from_logits(unletterbox(logits, info, size), size)


# --------------------------------------------------------------------------------------------------
# `vp-driving predict --deploy` with the multi-task family
# --------------------------------------------------------------------------------------------------


class PerceptionPredictWorker:
    """`predict --deploy`'s worker for the multi-task family, the twin of `driving.batch.PredictWorker`
    with the same inputs and layout: per input `<name>` (a video, an image folder or an image) the
    det-JSON frames in `<name>.json` (written last: an existing JSON is a finished input), the
    official lane masks in `<name>.lanes/` and the official drivable masks (0 direct, 1 alternative,
    2 background; `bdd100k.drivable.write_drivable_mask`) in `<name>.drivable/`, one PNG per frame
    named after it. Each folder and the JSON are written atomically.

    `video_frames` (a video's `(index, ms, frame)` in order), `image_suffixes` and `batch_size` are
    `driving.batch`'s (`video_frames`, `IMAGE_SUFFIXES`, `BATCH`), passed in by the caller: the batch
    module sits above this runtime module in the import layers.
    """

    def __init__(
        self,
        *,
        use_gpu: bool = False,
        perception: str | os.PathLike,
        threads: int | None = None,
        conf: float = 0.25,
        iou: float = 0.6,
        max_det: int = 100,
        lanes: bool = True,
        video_frames: Callable[[Path], Iterator[tuple[int, float, np.ndarray]]],
        image_suffixes: Sequence[str] = (".jpg", ".jpeg", ".png"),
        batch_size: int = 8,
    ) -> None:
        self.runtime = PerceptionRuntime(perception, threads=threads)
        self.video_frames = video_frames
        self.image_suffixes = tuple(image_suffixes)
        self.batch_size = batch_size
        self.settings = {"conf": conf, "iou": iou, "max_det": max_det, "lanes": lanes}
        self.use_gpu = use_gpu

    def _frames(self, shard: Mapping[str, Any], failed: list[list[str]]) -> Any:
        from visionpipes.core.image import read_image

        path = Path(shard["path"])
        if shard["kind"] == "video":
            for index, ms, frame in self.video_frames(path):
                fields = {"name": f"{shard['name']}-{index:07d}.jpg", "video_name": shard["name"]}
                yield {**fields, "frame_index": index, "timestamp": round(ms)}, frame
            return
        files = (
            [path]
            if shard["kind"] == "image"
            else sorted(p for p in path.iterdir() if p.suffix.lower() in self.image_suffixes)
        )
        for file in files:
            try:
                frame = read_image(file, order="BGR")
            except UserError as err:
                if shard["kind"] == "image":
                    raise
                failed.append([str(file), str(err)])
                continue
            yield {"name": file.name}, frame

    def process(self, shard: Mapping[str, Any]) -> dict[str, Any]:
        """Predict one input and write its outputs (mask folders first, JSON last, each atomically)."""
        import contextlib

        from visionpipes.core.io import atomic_path
        from visionpipes.driving.bdd100k.detection import detections_to_frame
        from visionpipes.driving.bdd100k.drivable import write_drivable_mask
        from visionpipes.driving.bdd100k.masks import mask_name, write_mask

        out = Path(shard["out"])
        failed: list[list[str]] = []
        frames: list[dict[str, Any]] = []
        boxes = 0
        with contextlib.ExitStack() as stack:
            lane_dir = None
            if self.settings["lanes"]:
                lane_dir = stack.enter_context(atomic_path(out / f"{shard['name']}.lanes", is_dir=True))
            drivable_dir = stack.enter_context(atomic_path(out / f"{shard['name']}.drivable", is_dir=True))
            for chunk in _chunks(self._frames(shard, failed), self.batch_size):
                results = self.runtime.predict([frame for _, frame in chunk], **self.settings)
                for (fields, _), result in zip(chunk, results):
                    xyxy, scores, classes = result.detections
                    frame = detections_to_frame(
                        fields.pop("name"), xyxy, scores, [int(c) for c in classes],
                        class_names=self.runtime.class_names, **fields,
                    )  # fmt: skip
                    frames.append(frame.to_dict())
                    boxes += len(frame.labels or [])
                    if lane_dir is not None and result.lanes is not None:
                        write_mask(lane_dir / mask_name(frame.name), result.lanes)
                    write_drivable_mask(drivable_dir / mask_name(frame.name), result.drivable_mask)
            if not frames and shard["kind"] != "video":
                raise UserError(f"no image of {shard['path']} could be read.")
        with atomic_path(out / f"{shard['name']}.json") as tmp:
            tmp.write_text(json.dumps(frames))
        return {"frames": len(frames), "boxes": boxes, "failed": failed, "lanes": lane_dir is not None}


def _chunks(items: Any, size: int) -> Any:
    """Lists of up to `size` items of an iterator (a video's frames are never all in memory)."""
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def predict_inputs_multitask(
    perception: str | os.PathLike,
    inputs: Sequence[Any],
    out_dir: str | os.PathLike,
    *,
    conf: float = 0.25,
    lanes: bool = True,
    threads: int | None = None,
    progress: bool = True,
    **frame_source: Any,
) -> dict[str, Any]:
    """`driving.batch.predict_inputs` for the multi-task family on the local engine: every input whose
    `<name>.json` is not in `out_dir` yet (`PerceptionPredictWorker`'s layout), the model loaded
    first (a bad file is one error before any input is read). `frame_source`: `video_frames`,
    `image_suffixes`, `batch_size` of `PerceptionPredictWorker`.

    Returns:
        `written`, `skipped`, `failed` ((file, reason) pairs), `frames`, `boxes`.
    """
    import sys

    from visionpipes.core import ray_batch

    worker = PerceptionPredictWorker(
        perception=perception, threads=threads, conf=conf, lanes=lanes, **frame_source
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"written": [], "skipped": [], "failed": [], "frames": 0, "boxes": 0}
    shards = []
    for i, item in enumerate(inputs):
        if (out / f"{item.name}.json").is_file():
            result["skipped"].append(item.path)
        else:
            shards.append(
                {"id": i, "kind": item.kind, "path": str(item.path), "name": item.name, "out": str(out)}
            )

    def report(summary: dict[str, Any]) -> None:
        if progress:
            item = inputs[summary["id"]]
            what = "failed" if "error" in summary else f"{summary['frames']} frames, {summary['boxes']} boxes"
            print(f"predict: {item.path}: {what}", file=sys.stderr, flush=True)

    for summary in ray_batch.run_shards_local(shards, worker, on_result=report) if shards else []:
        item = inputs[summary["id"]]
        if "error" in summary:
            result["failed"].append((str(item.path), summary["error"].removeprefix("UserError: ")))
            continue
        result["written"].append(out / f"{item.name}.json")
        result["frames"] += int(summary["frames"])
        result["boxes"] += int(summary["boxes"])
        result["failed"] += [(file, reason) for file, reason in summary["failed"]]
    return result
