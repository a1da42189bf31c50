"""Integrity check of an MSD task folder that decodes every volume (nnU-Net's `verify_dataset_integrity`,
and further): it collects every problem, each naming its file, instead of stopping at the first.

It only reads; it never repairs, moves or deletes a file.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from visionpipes.core.errors import UserError
from visionpipes.medical.msd.dataset_json import (
    DATASET_KEYS,
    STRUCTURAL_KEYS,
    TEST_IMAGE_DIR,
    TRAIN_IMAGE_DIR,
    TRAIN_LABEL_DIR,
    MSDCase,
    MSDTask,
    load_task,
    read_dataset_json,
    structural_errors,
)
from visionpipes.medical.msd.volumes import read_nifti

Severity = Literal["error", "warning"]
#: Affine entries (mm) may differ by this much between an image and its label.
AFFINE_ATOL = 1e-3


@dataclass(frozen=True)
class Problem:
    """One finding of `validate_task`.

    Attributes:
        severity: `error` (the task cannot be used as is) or `warning` (suspicious, usable).
        path: the file or folder at fault.
        message: one sentence saying what is wrong.
    """

    severity: Severity
    path: Path
    message: str

    def __str__(self) -> str:
        return f"{self.severity.upper()} {self.path}: {self.message}"


def is_junk(name: str) -> bool:
    """Files that archives and desktops leave behind (`._BRATS_001.nii.gz`, `.DS_Store`): skipped."""
    return name.startswith(".") or name in {"Thumbs.db", "desktop.ini"}


def _decode(path: Path, problems: list[Problem]):
    """Decode a volume; on failure record the problem and return None."""
    if not path.is_file():
        problems.append(Problem("error", path, "file listed in dataset.json does not exist."))
        return None
    try:
        data, image = read_nifti(path)
    except UserError as err:
        # read_nifti's sentences start with the path; keep only what follows it.
        message = str(err)
        prefix = f"{path} "
        problems.append(
            Problem("error", path, message[len(prefix) :] if message.startswith(prefix) else message)
        )
        return None
    return data, image


def _check_finite(path: Path, data: np.ndarray, problems: list[Problem]) -> None:
    if np.issubdtype(data.dtype, np.floating) or np.issubdtype(data.dtype, np.complexfloating):
        bad = ~np.isfinite(data)
        if bad.any():
            n_nan = int(np.isnan(data).sum())
            problems.append(
                Problem("error", path, f"has {n_nan} NaN and {int(bad.sum()) - n_nan} infinite voxels.")
            )


#: A CT volume whose lowest value is above this holds no air: its values are probably not Hounsfield units.
CT_AIR_HU = -500.0


def _check_ct_units(path: Path, data: np.ndarray, task: MSDTask, problems: list[Problem]) -> None:
    """Warn when a CT channel holds no air-like value (raw scanner values without the rescale intercept)."""
    for c, name in enumerate(task.modality_names):
        if name.strip().casefold() != "ct":
            continue
        channel = data if data.ndim == 3 else data[..., c]
        finite = channel[np.isfinite(channel)] if np.issubdtype(channel.dtype, np.floating) else channel
        if finite.size and float(finite.min()) > CT_AIR_HU:
            problems.append(
                Problem(
                    "warning",
                    path,
                    f"CT channel {c} has no value below {CT_AIR_HU:g} (minimum {float(finite.min()):g}); air is "
                    "about -1000 HU, so the voxels may be raw scanner values (check scl_slope/scl_inter) or the "
                    "scan is cropped to the body.",
                )
            )


def _check_image(path: Path, data: np.ndarray, task: MSDTask, problems: list[Problem]) -> tuple | None:
    """Channel count and finiteness of an image (and Hounsfield units of CT channels); returns its spatial
    shape, or None if unusable."""
    n = task.num_channels
    _check_finite(path, data, problems)
    if data.ndim == 3 and n == 1:
        _check_ct_units(path, data, task, problems)
        return data.shape
    if data.ndim == 4 and data.shape[-1] == n:
        _check_ct_units(path, data, task, problems)
        return data.shape[:3]
    got = 1 if data.ndim == 3 else (data.shape[-1] if data.ndim == 4 else None)
    detail = f"{got} channels" if got is not None else f"{data.ndim} dimensions"
    problems.append(
        Problem(
            "error",
            path,
            f"has shape {tuple(data.shape)} ({detail}), but dataset.json declares {n} modalities "
            f"{task.modality_names} (expected {'3-D' if n == 1 else f'4-D with {n} channels last'}).",
        )
    )
    return data.shape[:3] if data.ndim >= 3 else None


def _check_label(path: Path, data: np.ndarray, task: MSDTask, problems: list[Problem]) -> None:
    _check_finite(path, data, problems)
    if data.ndim != 3:
        problems.append(Problem("error", path, f"label map has shape {tuple(data.shape)}; expected 3-D."))
        return
    values = np.unique(data[np.isfinite(data)] if np.issubdtype(data.dtype, np.floating) else data)
    if np.issubdtype(values.dtype, np.floating) and not np.all(values == np.round(values)):
        problems.append(Problem("error", path, "label map holds non-integer values."))
        return
    undeclared = sorted(int(v) for v in values if int(v) not in task.labels)
    if undeclared:
        problems.append(
            Problem(
                "error",
                path,
                f"label values {undeclared} are not declared in dataset.json 'labels' {sorted(task.labels)}.",
            )
        )
    elif values.size and np.all(values == 0):
        problems.append(Problem("warning", path, "label map is all background (no foreground voxel)."))


def _check_training_case(case: MSDCase, task: MSDTask, problems: list[Problem]) -> None:
    decoded_image = _decode(case.image, problems)
    decoded_label = _decode(case.label, problems)
    spatial = None
    if decoded_image is not None:
        data, image = decoded_image
        spatial = _check_image(case.image, data, task, problems)
    if decoded_label is not None:
        data, label = decoded_label
        _check_label(case.label, data, task, problems)
        if decoded_image is not None:
            if spatial is not None and tuple(data.shape[:3]) != tuple(spatial):
                problems.append(
                    Problem(
                        "error",
                        case.label,
                        f"spatial shape {tuple(data.shape[:3])} differs from its image {case.image.name} "
                        f"{tuple(spatial)}.",
                    )
                )
            if not np.allclose(image.affine, label.affine, atol=AFFINE_ATOL, rtol=0):
                diff = float(np.abs(image.affine - label.affine).max())
                problems.append(
                    Problem(
                        "error",
                        case.label,
                        f"affine differs from its image {case.image.name} (max difference {diff:.4g} mm).",
                    )
                )


def _check_unlisted(folder: Path, listed: set[Path], problems: list[Problem]) -> None:
    if not folder.is_dir():
        return
    listed_resolved = {p.resolve() for p in listed}
    for entry in sorted(folder.iterdir()):
        if is_junk(entry.name) or entry.resolve() in listed_resolved:
            continue
        problems.append(Problem("warning", entry, "is not listed in dataset.json."))


def validate_task(
    task_dir: str | os.PathLike,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> list[Problem]:
    """Check an MSD task folder and decode every volume it lists.

    Checks: `dataset.json` present, JSON, with every key; `imagesTr`/`labelsTr` (and `imagesTs` when test
    images are listed) present; `numTraining`/`numTest` equal to the lists; each listed file present
    and decodable (gzip magic, truncation); no NaN/inf voxels; image channels = modalities; CT channels
    in Hounsfield units (a warning when no voxel is below -500, i.e. no air); label 3-D,
    integer, only declared values, same spatial shape and affine as its image; all-background labels
    (warning); files in the folders that `dataset.json` does not list (warning; `._*` junk is skipped).

    Args:
        task_dir: the `TaskXX_Name` folder.
        progress: called as `progress(done, total)` after each case.

    Returns:
        Every problem found, in folder order; empty when the task is clean.

    Raises:
        UserError: if `task_dir` is not a folder.
    """
    root = Path(task_dir)
    if not root.is_dir():
        raise UserError(f"task folder {root} does not exist or is not a folder.")
    problems: list[Problem] = []
    json_path = root / "dataset.json"
    for folder in (TRAIN_IMAGE_DIR, TRAIN_LABEL_DIR):
        if not (root / folder).is_dir():
            problems.append(Problem("error", root / folder, "folder is missing."))
    if not json_path.is_file():
        problems.append(
            Problem("error", json_path, "file is missing: an MSD task folder needs a dataset.json.")
        )
        return problems
    try:
        data = read_dataset_json(root)
    except UserError as err:
        problems.append(Problem("error", json_path, str(err).removeprefix(f"{json_path} ")))
        return problems
    for key in DATASET_KEYS:
        if key not in data:
            problems.append(Problem("error", json_path, f"required key '{key}' is missing."))
    structure = structural_errors(data, json_path, report_missing=False)
    problems.extend(Problem("error", json_path, m.removeprefix(f"{json_path}: ")) for m in structure)
    if structure or any(key not in data for key in STRUCTURAL_KEYS):
        return problems
    task = load_task(root)
    if "numTraining" in data and task.num_training != len(task.training):
        problems.append(
            Problem(
                "error",
                json_path,
                f"numTraining is {task.num_training} but 'training' lists {len(task.training)} cases.",
            )
        )
    if "numTest" in data and task.num_test != len(task.test):
        problems.append(
            Problem(
                "error", json_path, f"numTest is {task.num_test} but 'test' lists {len(task.test)} images."
            )
        )
    if task.test and not (root / TEST_IMAGE_DIR).is_dir():
        problems.append(Problem("error", root / TEST_IMAGE_DIR, "folder is missing but 'test' lists images."))
    seen: set[Path] = set()
    for case in [*task.training, *task.test]:
        for path in (case.image, case.label):
            if path is not None and path in seen:
                problems.append(Problem("error", path, "is listed more than once in dataset.json."))
            seen.add(path)

    total = len(task.training) + len(task.test)
    for done, case in enumerate(task.training, start=1):
        _check_training_case(case, task, problems)
        if progress:
            progress(done, total)
    for done, case in enumerate(task.test, start=len(task.training) + 1):
        decoded = _decode(case.image, problems)
        if decoded is not None:
            _check_image(case.image, decoded[0], task, problems)
        if progress:
            progress(done, total)

    _check_unlisted(root / TRAIN_IMAGE_DIR, {c.image for c in task.training}, problems)
    _check_unlisted(root / TRAIN_LABEL_DIR, {c.label for c in task.training}, problems)
    _check_unlisted(root / TEST_IMAGE_DIR, {c.image for c in task.test}, problems)
    return problems
