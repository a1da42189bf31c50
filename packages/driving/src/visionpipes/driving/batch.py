"""`vp-driving predict --deploy`: a deploy folder's ONNX models (the detector, and the lane model when the
folder has one) over image folders and video files, one BDD100K (Scalabel) JSON per input, on the local
engine (this process) or on a Ray Data actor pool (`--engine ray`); both run the same worker
(`PredictWorker`) through `core.ray_batch`, so their outputs are the same files.

Per input `<name>` (a video `<name>.mp4`, an image folder `<name>/`, or an image `<name>.jpg`), in the
output folder:

- `<name>.json`: the det-JSON frames (labels with `score`), as `vp-driving predict` writes `det.json`. A
  video's frames are named `<name>-<frameIndex:07d>.jpg` and carry `videoName`, `frameIndex` and
  `timestamp` (ms), as `vp-driving stream` writes them; an image folder's frames carry the image names.
- `<name>.lanes/`: the lane masks (official lane-mask PNGs, one per frame, named after the frame), when
  the deploy folder has a lane model and lanes are not turned off.
- `<name>.drivable/`: with the multi-task family (`perception.onnx`, `--model-family multitask`), the
  official drivable masks (0 direct, 1 alternative, 2 background), one PNG per frame.

Each input is one shard: its outputs are written atomically, the mask folders first and the JSON last,
so an existing JSON is a finished input and a re-run skips it. A video that cannot be decoded fails on
its own (reported, nothing written); an unreadable image in a folder is reported and left out of the
folder's JSON. Neither stops the others.

Runtime: onnxruntime and OpenCV; never imports training code, ultralytics' trainer, Lightning, DVCLive,
Optuna, nor Ray outside `core.ray_batch`.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from visionpipes.core.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".webm", ".mpg", ".mpeg")
#: Frames per model call (the local and the Ray engine batch alike, so their detections are the same).
BATCH = 8


@dataclass(frozen=True)
class BatchInput:
    """One input of a batch prediction: `kind` is `video`, `images` (a folder) or `image`; `name` is
    the stem of its outputs (`<name>.json`, `<name>.lanes/`)."""

    path: Path
    kind: str
    name: str


def list_inputs(paths: Sequence[str | os.PathLike]) -> list[BatchInput]:
    """The inputs of a batch prediction, in the order given: image folders, video files and images.

    Raises:
        UserError: if a path does not exist, a file is neither a video nor an image, a folder holds no
            image, or two inputs would write the same output name.
    """
    inputs: list[BatchInput] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            if not any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.iterdir()):
                raise UserError(f"image folder {path} holds no .jpg/.png image.")
            inputs.append(BatchInput(path, "images", path.resolve().name))
        elif path.is_file():
            suffix = path.suffix.lower()
            if suffix in VIDEO_SUFFIXES:
                inputs.append(BatchInput(path, "video", path.stem))
            elif suffix in IMAGE_SUFFIXES:
                inputs.append(BatchInput(path, "image", path.stem))
            else:
                raise UserError(
                    f"{path} is neither a video ({', '.join(VIDEO_SUFFIXES)}) nor an image "
                    f"({', '.join(IMAGE_SUFFIXES)}) nor a folder of images."
                )
        else:
            raise UserError(f"input {path} does not exist.")
    if not inputs:
        raise UserError("predict needs at least one image folder, video file or image.")
    seen: dict[str, Path] = {}
    for item in inputs:
        if item.name in seen:
            raise UserError(
                f"inputs {seen[item.name]} and {item.path} would both write {item.name}.json; "
                "predict them into different output folders."
            )
        seen[item.name] = item.path
    return inputs


def _batches(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def video_frames(path: Path) -> Iterator[tuple[int, float, np.ndarray]]:
    """(frame index, timestamp in ms, BGR frame) of every frame of a video file, decoded in order.

    Raises:
        UserError: if OpenCV cannot open the file or decodes no frame from it.
    """
    import cv2

    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise UserError(f"video {path} cannot be opened (not a video OpenCV can decode).")
        fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
        index = 0
        while True:
            ok, frame = capture.read()
            if not ok or frame is None:
                break
            yield index, (index * 1000.0 / fps if fps > 0 else 0.0), frame
            index += 1
        if index == 0:
            raise UserError(f"video {path} has no frame OpenCV can decode.")
    finally:
        capture.release()


class PredictWorker:
    """The `core.ray_batch.ShardWorker` of `vp-driving predict --deploy`: the deploy folder's models,
    loaded once (per actor on Ray), then one input per shard (`kind`, `path`, `name`, `out`).

    Two model families, one output layout: the detector (+ lane model), or, with `perception`, the
    multi-task graph (`multitask.runtime.PerceptionRuntime`), which adds the drivable masks.
    """

    def __init__(
        self,
        *,
        use_gpu: bool,
        deploy: str | None,
        threads: int | None,
        conf: float,
        iou: float,
        max_det: int,
        lanes: bool,
        verify: bool = False,
        perception: str | None = None,
    ) -> None:
        self.settings = {"conf": conf, "iou": iou, "max_det": max_det}
        self.use_gpu = use_gpu
        self.detector = self.lanes = self.perception = None
        if perception is not None:  # the multi-task family (the file `deployment.resolve_models` chose)
            from visionpipes.driving.multitask.runtime import PerceptionRuntime

            self.perception = PerceptionRuntime(perception, threads=threads)
            self.class_names = self.perception.class_names
            self.writes_lanes = lanes
            return
        from visionpipes.driving.deployment import read_deploy_folder
        from visionpipes.driving.detection.runtime import OnnxDetector

        models = read_deploy_folder(deploy, verify=verify)
        if models.detector is None:  # a folder with only the multi-task graph (perception.onnx)
            raise UserError(
                f"deploy folder {deploy} holds no detector.onnx; predict --deploy runs the detector (+ lane model)."
            )
        self.detector = OnnxDetector(models.detector, threads=threads)
        if lanes and models.lanes is not None:
            from visionpipes.driving.lanes.runtime import OnnxLaneModel

            self.lanes = OnnxLaneModel(models.lanes, threads=threads)
        self.class_names = self.detector.class_names
        self.writes_lanes = self.lanes is not None

    def _predict(self, images: list[np.ndarray]) -> list[tuple[Any, np.ndarray | None, np.ndarray | None]]:
        """Per image: the detections `(xyxy, scores, classes)`, its lane mask and its drivable mask (None
        where the family or the settings give none)."""
        if self.perception is not None:
            results = self.perception.predict(images, **self.settings, lanes=self.writes_lanes)
            return [(r.detections, r.lanes, r.drivable_mask) for r in results]
        detections = self.detector(images, **self.settings)
        masks = self.lanes(images) if self.lanes is not None else [None] * len(images)
        return [(dets, mask, None) for dets, mask in zip(detections, masks)]

    def _frames(
        self, shard: Mapping[str, Any], failed: list[list[str]]
    ) -> Iterator[tuple[dict[str, Any], np.ndarray]]:
        """(frame fields, BGR frame) of the shard's input; an unreadable image of a folder goes to `failed`."""
        from visionpipes.core.image import read_image

        path = Path(shard["path"])
        if shard["kind"] == "video":
            for index, ms, frame in video_frames(path):
                fields = {"name": f"{shard['name']}-{index:07d}.jpg", "video_name": shard["name"]}
                yield {**fields, "frame_index": index, "timestamp": round(ms)}, frame
            return
        files = (
            [path]
            if shard["kind"] == "image"
            else sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
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
        from visionpipes.core.io import atomic_path
        from visionpipes.driving.bdd100k.detection import detections_to_frame
        from visionpipes.driving.bdd100k.drivable import write_drivable_mask
        from visionpipes.driving.bdd100k.masks import mask_name, write_mask

        out = Path(shard["out"])
        failed: list[list[str]] = []
        frames: list[dict[str, Any]] = []
        boxes = 0
        with contextlib.ExitStack() as stack:
            lane_dir = drivable_dir = None
            if self.writes_lanes:
                lane_dir = stack.enter_context(atomic_path(out / f"{shard['name']}.lanes", is_dir=True))
            if self.perception is not None:
                drivable_dir = stack.enter_context(
                    atomic_path(out / f"{shard['name']}.drivable", is_dir=True)
                )
            for batch in _batches(self._frames(shard, failed), BATCH):
                predictions = self._predict([frame for _, frame in batch])
                for (fields, _), ((xyxy, scores, classes), lane, drivable) in zip(batch, predictions):
                    frame = detections_to_frame(
                        fields.pop("name"), xyxy, scores, [int(c) for c in classes],
                        class_names=self.class_names, **fields,
                    )  # fmt: skip
                    frames.append(frame.to_dict())
                    boxes += len(frame.labels or [])
                    if lane_dir is not None and lane is not None:
                        write_mask(lane_dir / mask_name(frame.name), lane)
                    if drivable_dir is not None and drivable is not None:
                        write_drivable_mask(drivable_dir / mask_name(frame.name), drivable)
            if not frames and shard["kind"] != "video":
                raise UserError(f"no image of {shard['path']} could be read.")
        with atomic_path(out / f"{shard['name']}.json") as tmp:
            tmp.write_text(json.dumps(frames))
        return {"frames": len(frames), "boxes": boxes, "failed": failed, "lanes": lane_dir is not None}


@dataclass
class BatchPrediction:
    """What `predict_inputs` did: inputs written now (with their frame counts), skipped as finished,
    and failed, as `(file, reason)` pairs (a failed input, or one unreadable image of a folder)."""

    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    frames: int = 0
    boxes: int = 0
    shard_seconds: float = 0.0


def predict_inputs(
    deploy: str | os.PathLike | None,
    inputs: Sequence[BatchInput],
    out_dir: str | os.PathLike,
    *,
    engine: str = "local",
    conf: float = 0.25,
    iou: float = 0.6,
    max_det: int = 100,
    lanes: bool = True,
    address: str | None = None,
    actors: int = 1,
    num_cpus: int | None = None,
    gpus_per_actor: float | None = None,
    threads: int | None = None,
    progress: bool = True,
    perception: str | os.PathLike | None = None,
) -> BatchPrediction:
    """Predict every input whose `<name>.json` is not in `out_dir` yet, on the local engine or on Ray.

    The deploy folder is read (checksums verified) and its models loaded here first, so a bad folder or
    model is one error before any input is read or any actor starts.

    Args:
        deploy: a driving deploy folder (`vp-driving deploy`).
        inputs: from `list_inputs`.
        out_dir: the output folder (created).
        engine: `local` (this process) or `ray` (a Ray Data actor pool, `core.ray_batch.run_shards`).
        conf: detection score threshold; iou: NMS IoU; max_det: boxes kept per frame.
        lanes: write lane masks when the deploy folder has a lane model.
        address, actors, num_cpus, gpus_per_actor: the Ray options (see `core.ray_batch`).
        threads: onnxruntime threads per model (default: local, the project's count; Ray, each actor's
            share of the cluster's CPUs).
        progress: one line per input on stderr.
        perception: the multi-task graph to run instead of the deploy folder's detector + lane model
            (`deployment.resolve_models` picks it for `--model-family`); adds `<name>.drivable/`.

    Raises:
        UserError: if Ray is missing (`engine="ray"`), the deploy folder or a model is bad, or the cluster
            cannot be reached.
    """
    from visionpipes.core import ray_batch

    if engine not in ("local", "ray"):
        raise UserError(f"--engine must be local or ray, not {engine!r}.")
    if engine == "ray":
        ray_batch.require_ray()
    out = Path(out_dir)
    kwargs: dict[str, Any] = {
        "deploy": None if deploy is None else str(deploy), "conf": conf, "iou": iou, "max_det": max_det,
        "lanes": lanes, "threads": threads, "perception": None if perception is None else str(perception),
    }  # fmt: skip
    local_worker = PredictWorker(use_gpu=False, verify=True, **kwargs)  # a bad folder or model fails here
    out.mkdir(parents=True, exist_ok=True)
    result = BatchPrediction()
    shards = []
    for i, item in enumerate(inputs):
        if (out / f"{item.name}.json").is_file():  # written last and atomically: a finished input
            result.skipped.append(item.path)
        else:
            shards.append(
                {"id": i, "kind": item.kind, "path": str(item.path), "name": item.name, "out": str(out)}
            )
    count = 0

    def report(summary: dict[str, Any]) -> None:
        nonlocal count
        count += 1
        if progress:
            item = inputs[summary["id"]]
            what = "failed" if "error" in summary else f"{summary['frames']} frames, {summary['boxes']} boxes"
            print(f"predict: {count}/{len(shards)} {item.path}: {what}", file=sys.stderr, flush=True)

    if not shards:
        summaries = []
    elif engine == "local":
        summaries = ray_batch.run_shards_local(shards, local_worker, on_result=report)
    else:
        with ray_batch.ray_cluster(address, num_cpus=num_cpus) as cluster:
            per_actor = ray_batch.cpus_per_actor(cluster, actors)
            summaries = ray_batch.run_shards(
                shards,
                PredictWorker,
                worker_kwargs={**kwargs, "threads": threads or per_actor},
                actors=actors,
                cpus_per_actor=per_actor,
                gpus_per_actor=gpus_per_actor,
                on_result=report,
            )
    for summary in summaries:
        item = inputs[summary["id"]]
        result.shard_seconds += float(summary.get("seconds", 0.0))
        if "error" in summary:
            result.failed.append((str(item.path), summary["error"].removeprefix("UserError: ")))
            continue
        result.written.append(out / f"{item.name}.json")
        result.frames += int(summary["frames"])
        result.boxes += int(summary["boxes"])
        result.failed += [(file, reason) for file, reason in summary["failed"]]
    return result
