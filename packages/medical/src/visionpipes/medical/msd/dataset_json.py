"""MSD task folders as their `dataset.json` describes them: keys, cases (image + label paths), modalities and
label names, with one sentence per structural problem.

It reads the JSON and names what is wrong; it never opens volumes (see `volumes`) and never guesses what a
label means (see `regions`, which maps label *names* to predicted regions).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from visionpipes.core.errors import UserError
from visionpipes.medical.msd.regions import Region, RegionScheme, normalise_label_name, regions_from_labels

#: Keys every MSD `dataset.json` holds (the optional `release` is left out: real files misspell it).
DATASET_KEYS: tuple[str, ...] = (
    "name",
    "description",
    "reference",
    "licence",
    "tensorImageSize",
    "modality",
    "labels",
    "numTraining",
    "numTest",
    "training",
    "test",
)
#: Spellings of the release key found in the official files (Task01 ships "relase").
RELEASE_KEYS: tuple[str, ...] = ("release", "relase")
#: The keys the reader cannot do without; the others are descriptive and default to "".
STRUCTURAL_KEYS: tuple[str, ...] = ("modality", "labels", "training")
#: The folders of a task.
TRAIN_IMAGE_DIR, TRAIN_LABEL_DIR, TEST_IMAGE_DIR = "imagesTr", "labelsTr", "imagesTs"


@dataclass(frozen=True)
class MSDCase:
    """One case of a task: an image and, for training cases, its label map.

    Attributes:
        case_id: the file name without `.nii.gz` / `.nii` (e.g. `BRATS_001`).
        image: path of the image volume.
        label: path of the label volume; None for test cases.
    """

    case_id: str
    image: Path
    label: Path | None = None


@dataclass
class MSDTask:
    """An MSD task folder as described by its `dataset.json`.

    Attributes:
        root: the task folder (`TaskXX_Name/`).
        name, description, reference, licence: descriptive metadata ("" when absent).
        release: the release string, read from `release` or the misspelt `relase`; None when absent.
        tensor_image_size: `3D` or `4D`.
        modality: channel index -> modality name (FLAIR, T1w, t1gd, T2w; CT; ...).
        labels: label value -> label name; 0 is the background.
        num_training, num_test: the counts the file declares (may disagree with the lists: see validate).
        training: the training cases, with labels.
        test: the test cases, without labels.
    """

    root: Path
    name: str
    description: str
    reference: str
    licence: str
    release: str | None
    tensor_image_size: str
    modality: dict[int, str]
    labels: dict[int, str]
    num_training: int
    num_test: int
    training: list[MSDCase] = field(default_factory=list)
    test: list[MSDCase] = field(default_factory=list)

    @property
    def num_channels(self) -> int:
        """Number of image channels (one per modality)."""
        return len(self.modality)

    @property
    def modality_names(self) -> list[str]:
        """Modality names in channel order."""
        return [self.modality[i] for i in sorted(self.modality)]

    def regions(self, scheme: RegionScheme = "auto") -> tuple[Region, ...]:
        """The regions derived from this task's label names (see `regions_from_labels`).

        Raises:
            UserError: if the label names cannot be mapped.
        """
        return regions_from_labels(self.labels, scheme=scheme, source=self.root / "dataset.json")

    def datalist(self, split: Literal["training", "test"] = "training") -> list[dict[str, str]]:
        """The cases as MONAI-style dicts (`{"image": ..., "label": ...}`), absolute paths as strings."""
        cases = self.training if split == "training" else self.test
        items = []
        for case in cases:
            item = {"image": str(case.image), "case_id": case.case_id}
            if case.label is not None:
                item["label"] = str(case.label)
            items.append(item)
        return items


def case_id_from_path(path: str | os.PathLike) -> str:
    """`./imagesTr/BRATS_001.nii.gz` -> `BRATS_001`."""
    name = Path(path).name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def read_dataset_json(task_dir: str | os.PathLike) -> dict[str, Any]:
    """Read `TASK_DIR/dataset.json` as a dict.

    Raises:
        UserError: if the folder or the file is missing, or the file is not a JSON object.
    """
    root = Path(task_dir)
    if not root.is_dir():
        raise UserError(f"task folder {root} does not exist or is not a folder.")
    path = root / "dataset.json"
    if not path.is_file():
        raise UserError(f"{path} does not exist: an MSD task folder needs a dataset.json.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{path} is not valid JSON ({err}).") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a JSON object at the top level.")
    return data


def _index_map(value: Any, key: str, source: Path) -> tuple[dict[int, str] | None, str | None]:
    """`{"0": "FLAIR", ...}` -> `{0: "FLAIR", ...}`, or an error message."""
    if not isinstance(value, dict) or not value:
        return None, f"{source}: '{key}' must be a non-empty object mapping indices to names."
    out: dict[int, str] = {}
    for k, v in value.items():
        try:
            idx = int(k)
        except (TypeError, ValueError):
            return None, f"{source}: '{key}' has the key {k!r}, which is not an integer index."
        if idx < 0:
            return None, f"{source}: '{key}' has the negative index {idx}."
        if not isinstance(v, str) or not v.strip():
            return None, f"{source}: '{key}' entry {k!r} must be a non-empty name, not {v!r}."
        out[idx] = v
    return dict(sorted(out.items())), None


def _relative_path(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def structural_errors(data: Mapping[str, Any], source: Path, *, report_missing: bool = True) -> list[str]:
    """Every problem with the keys the reader needs (`modality`, `labels`, `training`, `test`, counts).

    Missing descriptive keys are not reported here (see `visionpipes.medical.validate`).

    Args:
        data: the parsed `dataset.json`.
        source: its path, to name in the messages.
        report_missing: also report missing `modality` / `labels` / `training` keys.

    Returns:
        One sentence per problem; empty when the structure is usable.
    """
    errors: list[str] = []
    for key in STRUCTURAL_KEYS:
        if report_missing and key not in data:
            errors.append(f"{source}: required key '{key}' is missing.")
    if "modality" in data:
        modality, err = _index_map(data["modality"], "modality", source)
        if err:
            errors.append(err)
        elif sorted(modality) != list(range(len(modality))):
            errors.append(
                f"{source}: 'modality' indices must be 0..{len(modality) - 1}, not {sorted(modality)}."
            )
    if "labels" in data:
        labels, err = _index_map(data["labels"], "labels", source)
        if err:
            errors.append(err)
        elif 0 not in labels:
            errors.append(f"{source}: 'labels' must declare label 0 (the background).")
        elif len({normalise_label_name(n) for n in labels.values()}) != len(labels):
            errors.append(f"{source}: 'labels' has two labels with the same name.")
    if "training" in data:
        training = data["training"]
        if not isinstance(training, list):
            errors.append(f"{source}: 'training' must be a list of {{image, label}} objects.")
        else:
            for i, item in enumerate(training):
                if not isinstance(item, dict) or not _relative_path(item.get("image")):
                    errors.append(f"{source}: 'training' entry {i} has no 'image' path.")
                elif not _relative_path(item.get("label")):
                    errors.append(f"{source}: 'training' entry {i} ({item['image']}) has no 'label' path.")
    if "test" in data:
        test = data["test"]
        if not isinstance(test, list):
            errors.append(f"{source}: 'test' must be a list of image paths.")
        else:
            for i, item in enumerate(test):
                path = item.get("image") if isinstance(item, dict) else item
                if not _relative_path(path):
                    errors.append(f"{source}: 'test' entry {i} is not an image path.")
    for key in ("numTraining", "numTest"):
        if key in data and (isinstance(data[key], bool) or not isinstance(data[key], int) or data[key] < 0):
            errors.append(f"{source}: '{key}' must be a non-negative integer, not {data[key]!r}.")
    return errors


def load_task(task_dir: str | os.PathLike) -> MSDTask:
    """Read an MSD task folder's `dataset.json` into an `MSDTask` (volumes are not opened).

    Paths in the file are relative to the task folder (`./imagesTr/BRATS_001.nii.gz`).

    Args:
        task_dir: the `TaskXX_Name` folder.

    Returns:
        The task.

    Raises:
        UserError: if `dataset.json` is missing, not JSON, or lacks a usable `modality`, `labels`,
            `training` (or has a malformed `test`, `numTraining`, `numTest`).

    Example:
        >>> task = load_task("data/medical/Task01_BrainTumour")  # doctest: +SKIP
        >>> task.modality_names, [r.name for r in task.regions()]  # doctest: +SKIP
        (['FLAIR', 'T1w', 't1gd', 'T2w'], ['TC', 'WT', 'ET'])
    """
    root = Path(task_dir)
    data = read_dataset_json(root)
    source = root / "dataset.json"
    errors = structural_errors(data, source)
    if errors:
        more = f" (and {len(errors) - 1} more problems: run `vp-medical validate`)" if len(errors) > 1 else ""
        raise UserError(errors[0].rstrip(".") + more + ".")
    modality, _ = _index_map(data["modality"], "modality", source)
    labels, _ = _index_map(data["labels"], "labels", source)
    training = [
        MSDCase(case_id_from_path(item["image"]), root / item["image"], root / item["label"])
        for item in data["training"]
    ]
    test = []
    for item in data.get("test", []):
        path = item["image"] if isinstance(item, dict) else item
        test.append(MSDCase(case_id_from_path(path), root / path))
    release = next((str(data[k]) for k in RELEASE_KEYS if k in data), None)
    return MSDTask(
        root=root,
        name=str(data.get("name", "")),
        description=str(data.get("description", "")),
        reference=str(data.get("reference", "")),
        licence=str(data.get("licence", data.get("license", ""))),
        release=release,
        tensor_image_size=str(data.get("tensorImageSize", "")),
        modality=modality,
        labels=labels,
        num_training=int(data.get("numTraining", len(training))),
        num_test=int(data.get("numTest", len(test))),
        training=training,
        test=test,
    )
