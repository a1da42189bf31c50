"""Reading a driving deploy folder (written by `vp-driving deploy`) through `core.artifact`: the
`model.json` record is checked (domain, format version, every file's checksum) and the model files
the runtime should run are picked from it, for the model family asked for (`--model-family` of
`stream` and `predict`): the two models (detector + lane model) or the one multi-task graph
(`perception.onnx`). `predict_exported` is `vp-driving predict` on those exported files.

Runtime: never imports training code or the exporters.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visionpipes.core.artifact import read_record
from visionpipes.core.errors import UserError

DOMAIN = "driving"
#: `--model-family` values: the detector + lane model, the multi-task graph, or the multi-task graph
#: when the folder holds one.
MODEL_FAMILIES: tuple[str, ...] = ("two_model", "multitask", "auto")
#: The roles `model.json` lists the multi-task graph under (fp32 and int8).
PERCEPTION_ROLES: tuple[str, ...] = ("perception_int8", "perception")


@dataclass(frozen=True)
class DeployedModels:
    """The ONNX files of a deploy folder that a runtime runs.

    Attributes:
        detector: the int8 detector when the folder has one (`deploy.det_int8`), else the fp32 one;
            None when the folder holds none (a multi-task-only folder).
        lanes: the lane model, or None when the folder has none.
        record: the folder's `model.json`.
        perception: the multi-task graph (`perception.onnx`; its int8 version when `model.json`
            lists `perception_int8`), or None when the folder has none.
        folder: the deploy folder.
    """

    detector: Path | None
    lanes: Path | None
    record: dict[str, Any] = field(repr=False)
    perception: Path | None = None
    folder: Path | None = None

    def family(self, requested: str = "auto") -> str:
        """The model family to run: `two_model` or `multitask`.

        `auto` is `multitask` when the folder holds the multi-task graph, else `two_model`.

        Raises:
            UserError: for an unknown family, or a family whose files the folder does not hold.
        """
        folder = self.folder or "the deploy folder"
        if requested not in MODEL_FAMILIES:
            raise UserError(f"unknown model family {requested!r}; use one of {', '.join(MODEL_FAMILIES)}.")
        if requested == "auto":
            return "multitask" if self.perception is not None else "two_model"
        if requested == "multitask" and self.perception is None:
            raise UserError(
                f"deploy folder {folder} holds no multi-task model (no perception.onnx in its model.json)."
            )
        if requested == "two_model" and self.detector is None:
            raise UserError(
                f"deploy folder {folder} holds no detector for the two-model family (its model.json lists "
                f"{', '.join(self.record['files'])})."
            )
        return requested


def read_deploy_folder(
    folder: str | os.PathLike, *, verify: bool = True, require_detector: bool = True
) -> DeployedModels:
    """The models of a driving deploy folder, read through its `model.json`.

    Args:
        folder: the deploy folder.
        verify: check each listed file's size and sha256 first.
        require_detector: fail when the folder holds no detector (False: a folder with only the
            multi-task graph is valid).

    Raises:
        UserError: if the folder has no valid driving `model.json`, a file is missing or changed,
            or it holds no model to run.
    """
    folder = Path(folder)
    record = read_record(folder, domain=DOMAIN, verify=verify)
    files = record["files"]
    role = "detector_int8" if "detector_int8" in files else "detector"
    perception_role = next((r for r in PERCEPTION_ROLES if r in files), None)
    perception = folder / files[perception_role]["file"] if perception_role else None
    if role not in files and (require_detector or perception is None):
        raise UserError(
            f"deploy folder {folder} holds no detector (its model.json lists {', '.join(files) or 'nothing'})."
        )
    detector = folder / files[role]["file"] if role in files else None
    lanes = folder / files["lanes"]["file"] if "lanes" in files else None
    return DeployedModels(detector, lanes, record, perception, folder)


def resolve_models(
    deploy: str | os.PathLike | None,
    requested: str = "auto",
    *,
    det: str | None = None,
    lanes: str | None = None,
    perception: str | None = None,
) -> tuple[str, str | None, str | None, str | None]:
    """The model family and files to run, from `--model-family`, `--deploy`, `--det`, `--lanes`
    and `--perception`: `(family, detector, lanes, perception)`.

    `auto` is `multitask` when `perception` is given or the deploy folder holds `perception.onnx`,
    else `two_model`. A deploy folder is read through its `model.json` (checksums verified; the int8
    detector when deploy wrote one); files given explicitly override its files.

    Raises:
        UserError: for an unknown family, when the family asked for has no model (e.g. `multitask`
            on a folder without perception.onnx), or `perception` with `two_model`.
    """
    if requested not in MODEL_FAMILIES:
        raise UserError(f"unknown model family {requested!r}; use one of {', '.join(MODEL_FAMILIES)}.")
    if requested == "two_model" and perception is not None:
        raise UserError("--perception is the multi-task model; it cannot run with --model-family two_model.")
    if requested == "auto" and (perception is not None or det is not None):
        requested = "multitask" if perception is not None else "two_model"  # the files given decide
    if deploy is not None:
        deployed = read_deploy_folder(deploy, require_detector=False)
        if requested == "auto":
            requested = deployed.family("auto")
        if requested == "multitask" and perception is None:
            deployed.family("multitask")  # raises, naming the folder, when it holds no perception.onnx
            perception = str(deployed.perception)
        if requested == "two_model":
            if det is None:
                deployed.family("two_model")
                det = str(deployed.detector)
            lanes = lanes or (str(deployed.lanes) if deployed.lanes is not None else None)
    family = "two_model" if requested == "auto" else requested
    if family == "multitask" and perception is None:
        raise UserError(
            "the multitask family needs perception.onnx: --perception FILE or --deploy FOLDER holding it."
        )
    if family == "two_model" and det is None and lanes is None:
        raise UserError("the two-model family needs a model: --det/--lanes or --deploy FOLDER.")
    return family, det, lanes, perception


def predict_exported(
    images: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    family: str,
    det: str | os.PathLike | None = None,
    lanes: str | os.PathLike | None = None,
    perception: str | os.PathLike | None = None,
    conf: float = 0.25,
    batch: int = 8,
    threads: int | None = None,
) -> dict[str, Any]:
    """`vp-driving predict` on exported (ONNX) models: `det.json` (BDD100K det JSON),
    `lanes/<stem>.png` (official lane masks) and, with the multi-task model, `drivable/<stem>.png`
    (official drivable masks: 0 direct, 1 alternative, 2 background), each at its image's size.

    Every model is loaded before anything is written; the mask folders are replaced atomically.

    Returns:
        A summary: images, the files written, the number of boxes, the family.

    Raises:
        UserError: if a model cannot be loaded or an image is missing or unreadable.
    """
    from visionpipes.core.image import read_image
    from visionpipes.core.io import atomic_path
    from visionpipes.driving.bdd100k.detection import detections_to_frame
    from visionpipes.driving.bdd100k.drivable import write_drivable_mask
    from visionpipes.driving.bdd100k.labels import save_frames
    from visionpipes.driving.bdd100k.masks import mask_name, write_mask
    from visionpipes.driving.detection.runtime import OnnxDetector, batched

    paths = [Path(p) for p in images]
    detector = lane_model = runtime = None
    if family == "multitask":
        from visionpipes.driving.multitask.runtime import PerceptionRuntime

        runtime = PerceptionRuntime(perception, threads=threads)  # type: ignore[arg-type]
    else:
        detector = OnnxDetector(det, threads=threads) if det is not None else None
        if lanes is not None:
            from visionpipes.driving.lanes.runtime import OnnxLaneModel

            lane_model = OnnxLaneModel(lanes, threads=threads)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    frames: list[Any] = []
    write_lanes = runtime is not None or lane_model is not None
    with contextlib.ExitStack() as stack:
        lane_dir = stack.enter_context(atomic_path(out / "lanes", is_dir=True)) if write_lanes else None
        drivable_dir = stack.enter_context(atomic_path(out / "drivable", is_dir=True)) if runtime else None
        for chunk in batched(paths, max(1, batch)):
            pictures = [read_image(path, order="BGR") for path in chunk]
            if runtime is not None:
                results = runtime.predict(pictures, conf=conf)
                detections: list[Any] = [r.detections for r in results]
                lane_masks: list[Any] = [r.lanes for r in results]
                for path, r in zip(chunk, results):
                    write_drivable_mask(drivable_dir / mask_name(path.name), r.drivable_mask)  # type: ignore[operator]
            else:
                detections = detector(pictures, conf=conf) if detector is not None else [None] * len(chunk)
                lane_masks = lane_model(pictures) if lane_model is not None else [None] * len(chunk)
            for path, dets, lane_mask in zip(chunk, detections, lane_masks):
                if dets is not None:
                    frames.append(detections_to_frame(path.name, *dets))
                if lane_dir is not None and lane_mask is not None:
                    write_mask(lane_dir / mask_name(path.name), lane_mask)
    result: dict[str, Any] = {"images": len(paths), "model_family": family}
    if runtime is not None or detector is not None:
        save_frames(out / "det.json", frames)
        result["det"] = str(out / "det.json")
        result["boxes"] = sum(len(f.labels or []) for f in frames)
    if write_lanes:
        result["lanes"] = str(out / "lanes")
    if runtime is not None:
        result["drivable"] = str(out / "drivable")
    return result
