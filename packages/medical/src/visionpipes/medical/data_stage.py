"""The pipeline's data stage: synthesise a sample (Task01 brain tumours by default, or the CT tasks
Task03_Liver / Task06_Lung / Task07_Pancreas / Task10_Colon with `task: liver|lung|pancreas|colon`), or validate a real MSD task folder,
and write `task.json`, which names the folder the later stages read and fingerprints its content.

It checks and points; it never copies or converts a real dataset, and writes its output folder whole or
not at all.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, get_args

from visionpipes.core.artifact import sha256_file
from visionpipes.core.config import Field
from visionpipes.core.errors import UserError
from visionpipes.core.io import atomic_path, write_json
from visionpipes.medical.msd.ct_synth import TASK_FOLDERS, CTSynthConfig, write_ct_task
from visionpipes.medical.msd.dataset_json import load_task
from visionpipes.medical.msd.synth import SynthConfig, write_synthetic_task
from visionpipes.medical.msd.validate import validate_task

#: The pointer file the data stage writes beside (or instead of) the task folder.
TASK_POINTER = "task.json"
#: Where the synthetic brain sample goes inside the data stage's output folder.
SYNTH_TASK_NAME = "Task01_BrainTumour"
#: The synthetic samples `data.task` selects, and their folder names.
SYNTH_TASKS: dict[str, str] = {"brain": SYNTH_TASK_NAME, **TASK_FOLDERS}
SynthTask = Literal["brain", "liver", "lung", "pancreas", "colon"]
FingerprintMode = Literal["content", "size"]
FINGERPRINT_MODES: tuple[str, ...] = get_args(FingerprintMode)


class DataStageConfig(SynthConfig):
    """`params.yaml`'s `data:` section: the synthetic sample's settings (`SynthConfig`), or a real folder.

    Attributes:
        task: the synthetic sample: `brain` (Task01_BrainTumour, 4-channel MRI, `size`^3 voxels of `spacing`
            mm), `liver` (Task03_Liver), `lung` (Task06_Lung), `pancreas` (Task07_Pancreas) or `colon`
            (Task10_Colon): CT in int16 HU on a `size` x `size` x `slices` grid of `spacing` x `spacing` x
            `slice_spacing` mm (as given here: set 0.8 and 2.5 / 5 for the pancreas / colon tasks' geometry).
        slices, slice_spacing: the CT samples' slice count and thickness (mm); ignored for `brain`.
        path: a real MSD task folder (`.../Task01_BrainTumour`, `.../Task03_Liver`), relative to the params
            file's folder or absolute; None (the default) synthesises the sample (`task`, `cases`, `size`,
            `seed`, `test_cases`, `spacing`) instead.
        fingerprint: `content` hashes every listed file (sha256); `size` hashes names and byte counts
            only (fast for a large real copy, blind to same-size edits).
        strict: treat validation warnings (e.g. an all-background label) as errors.
    """

    task: SynthTask = "brain"
    slices: int = Field(24, ge=8, le=512)
    slice_spacing: float = Field(2.5, gt=0)
    path: str | None = None
    fingerprint: FingerprintMode = "content"
    strict: bool = False


def dataset_fingerprint(task_dir: str | os.PathLike, mode: str = "content") -> dict[str, Any]:
    """A sha256 identifying an MSD task folder: over `dataset.json`'s bytes and, for every file it lists
    (training images and labels, test images, in listed order), the file's relative path and either its
    content's sha256 (`content`) or its byte count (`size`).

    Returns:
        `{"sha256", "mode", "files", "bytes"}`.

    Raises:
        UserError: if `dataset.json` is unreadable or a listed file is missing.
    """
    if mode not in FINGERPRINT_MODES:
        raise UserError(f"fingerprint mode must be content or size, not '{mode}'.")
    task = load_task(task_dir)
    digest = hashlib.sha256((task.root / "dataset.json").read_bytes())
    files = [p for case in task.training for p in (case.image, case.label) if p is not None]
    files += [case.image for case in task.test]
    total = 0
    for path in files:
        if not path.is_file():
            raise UserError(f"{path} is listed in {task.root / 'dataset.json'} but does not exist.")
        size = path.stat().st_size
        total += size
        value = sha256_file(path) if mode == "content" else str(size)
        digest.update(f"\0{path.relative_to(task.root).as_posix()}\0{value}".encode())
    return {"sha256": digest.hexdigest(), "mode": mode, "files": len(files), "bytes": total}


def resolve_task_dir(path: str | os.PathLike) -> Path:
    """The MSD task folder that `path` names: the folder itself, the data stage's output folder (holding
    `task.json`), or a `task.json` file.

    Raises:
        UserError: if `path` is none of these or the pointer is malformed.
    """
    path = Path(path)
    if path.is_dir():
        if (path / "dataset.json").exists() or not (path / TASK_POINTER).is_file():
            return path  # a task folder (`load_task` names what it lacks)
        pointer = path / TASK_POINTER
    elif path.name == "dataset.json":
        return path.parent
    elif path.suffix == ".json" and path.is_file():
        pointer = path
    else:
        return path
    try:
        target = json.loads(pointer.read_text())["task_dir"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise UserError(
            f"{pointer} is not a {TASK_POINTER} written by `vp-medical data` (no task_dir)."
        ) from None
    return Path(target) if Path(target).is_absolute() else pointer.parent / target


def read_task_pointer(path: str | os.PathLike) -> dict[str, Any] | None:
    """The content of the data stage's `task.json` that `path` names (folder or file), or None."""
    path = Path(path)
    pointer = path / TASK_POINTER if path.is_dir() else path
    if pointer.name != TASK_POINTER or not pointer.is_file():
        return None
    try:
        return json.loads(pointer.read_text())
    except json.JSONDecodeError:
        return None


def _relative(path: str | os.PathLike, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)


def prepare_data(
    config: DataStageConfig,
    out_dir: str | os.PathLike,
    *,
    base_dir: str | os.PathLike = ".",
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the data stage: write `<out_dir>/task.json` (and, without `config.path`, the synthetic sample
    in `<out_dir>/Task01_BrainTumour`, `Task03_Liver`, `Task06_Lung`, `Task07_Pancreas` or `Task10_Colon` as
    `config.task` says), after
    validating the task folder by decoding every volume.

    Args:
        config: the `data:` settings.
        out_dir: the stage's output folder, replaced as a whole.
        base_dir: what a relative `config.path` is relative to (the params file's folder).
        progress: called with a line of progress now and then.

    Returns:
        The content of `task.json`: `task_dir` (relative to `out_dir` when inside it), `synthetic`,
        `name`, `num_training`, `num_test`, `fingerprint` and `validation` (error and warning lines).

    Raises:
        UserError: if the real folder does not exist or fails validation (nothing is written then).
    """
    say = progress or (lambda line: None)
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out, is_dir=True) as tmp:
        if config.path is None:
            recorded = SYNTH_TASKS[config.task]
            task_dir = tmp / recorded
            if config.task == "brain":
                synth = SynthConfig(**config.model_dump(include=set(SynthConfig.model_fields)))
                say(
                    f"synthesising {synth.cases} training and {synth.test_cases} test cases of {synth.size}^3"
                )
                write_synthetic_task(task_dir, synth)
            else:
                ct = CTSynthConfig(**config.model_dump(include=set(CTSynthConfig.model_fields)))
                say(
                    f"synthesising {recorded}: {ct.cases} training and {ct.test_cases} test CT volumes of "
                    f"{ct.size}x{ct.size}x{ct.slices} at {ct.spacing}x{ct.spacing}x{ct.slice_spacing} mm"
                )
                write_ct_task(task_dir, ct)
        else:
            given = Path(config.path).expanduser()
            task_dir = given if given.is_absolute() else Path(base_dir) / given
            if not task_dir.is_dir():
                raise UserError(f"data.path {config.path} is not a folder (looked at {task_dir}).")
            # Relative to where task.json will live, so that the pointer survives moving the repository.
            recorded = given.as_posix() if given.is_absolute() else os.path.relpath(task_dir, out)
        say(f"validating {task_dir}")
        problems = validate_task(task_dir)
        lines = [
            (p.severity, f"{p.severity.upper()} {_relative(p.path, task_dir)}: {p.message}") for p in problems
        ]
        errors = [line for severity, line in lines if severity == "error" or config.strict]
        warnings = [line for severity, line in lines if severity != "error" and not config.strict]
        if errors:
            shown = "; ".join(errors[:3]) + (f"; and {len(errors) - 3} more" if len(errors) > 3 else "")
            raise UserError(
                f"{task_dir} fails validation with {len(errors)} problems ({shown}); run `vp-medical validate`."
            )
        task = load_task(task_dir)
        say(f"fingerprinting {task_dir} ({config.fingerprint})")
        record = {
            "task_dir": recorded,
            "synthetic": config.path is None,
            "name": task.name,
            "num_training": len(task.training),
            "num_test": len(task.test),
            "fingerprint": dataset_fingerprint(task_dir, config.fingerprint),
            "validation": {"errors": [], "warnings": warnings},
            "settings": config.to_dict(),
        }
        write_json(tmp / TASK_POINTER, record)
    return record
