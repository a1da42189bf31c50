"""Reading a driving deploy folder (written by `vp-driving deploy`) through `core.artifact`: the
`model.json` record is checked (domain, format version, every file's checksum) and the model files
the runtime should run are picked from it.

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


@dataclass(frozen=True)
class DeployedModels:
    """The ONNX files of a deploy folder that a runtime runs.

    Attributes:
        detector: the int8 detector when the folder has one (`deploy.det_int8`), else the fp32 one.
        lanes: the lane model, or None when the folder has none.
        record: the folder's `model.json`.
    """

    detector: Path
    lanes: Path | None
    record: dict[str, Any] = field(repr=False)


def read_deploy_folder(folder: str | os.PathLike, *, verify: bool = True) -> DeployedModels:
    """The models of a driving deploy folder, read through its `model.json`.

    Args:
        folder: the deploy folder.
        verify: check each listed file's size and sha256 first.

    Raises:
        UserError: if the folder has no valid driving `model.json`, a file is missing or changed,
            or it holds no detector.
    """
    folder = Path(folder)
    record = read_record(folder, domain=DOMAIN, verify=verify)
    files = record["files"]
    role = "detector_int8" if "detector_int8" in files else "detector"
    if role not in files:
        raise UserError(f"deploy folder {folder} holds no detector (its model.json lists {', '.join(files) or 'nothing'}).")
    lanes = folder / files["lanes"]["file"] if "lanes" in files else None
    return DeployedModels(folder / files[role]["file"], lanes, record)
