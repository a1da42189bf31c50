"""Reading a driving deploy folder (written by `vp-driving deploy`) through `core.artifact`: the
`model.json` record is checked (domain, format version, every file's checksum) and the model files
the runtime should run are picked from it, for the model family asked for (`--model-family` of
`stream` and `predict`): the two models (detector + lane model) or the one multi-task graph
(`perception.onnx`).

Runtime: never imports training code or the exporters.
"""

from __future__ import annotations

import os
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

