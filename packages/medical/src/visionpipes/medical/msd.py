"""Medical Segmentation Decathlon (MSD) task folders: `dataset.json`, NIfTI volumes, and the mapping
between the task's labels and the overlapping regions a model predicts (TC, WT, ET for brain tumours).

It reads what the folder holds and names what is wrong; it never resamples, normalises or caches (that is
MONAI's job in the training code), and never guesses what a label means: regions come from label *names*.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from visionpipes.core.errors import UserError

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

RegionScheme = Literal["auto", "brain_tumour", "per_label"]


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


@dataclass(frozen=True)
class Region:
    """A region a model predicts as one sigmoid channel: the union of some task labels.

    Attributes:
        name: short name (`TC`, `WT`, `ET`, or the label name for generic tasks).
        labels: the label values that belong to the region.
    """

    name: str
    labels: frozenset[int]


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


# ---------------------------------------------------------------------------------------------------
# dataset.json


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
        elif len({_normalise_name(n) for n in labels.values()}) != len(labels):
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


# ---------------------------------------------------------------------------------------------------
# NIfTI volumes

_GZIP_MAGIC = b"\x1f\x8b"


def _gzip_stream_broken(path: Path) -> bool:
    """True if the gzip stream of `path` ends early or is corrupt (the header too short to sniff)."""
    try:
        with gzip.open(path, "rb") as fh:
            while fh.read(1 << 20):
                pass
    except (EOFError, zlib.error, gzip.BadGzipFile, OSError):
        return True
    return False


def read_nifti(path: str | os.PathLike) -> tuple[np.ndarray, Any]:
    """Open a NIfTI file and decode all its voxels.

    Args:
        path: a `.nii` or `.nii.gz` file.

    Returns:
        `(data, image)`: the voxel array (scaling applied, the file's axis order) and the nibabel image
        (for its affine and header).

    Raises:
        UserError: if the file is missing, a `.nii.gz` that is not gzip data, truncated, or not NIfTI.
    """
    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist.")
    if path.name.endswith(".gz"):
        with open(path, "rb") as fh:
            if fh.read(2) != _GZIP_MAGIC:
                raise UserError(f"{path} is named .gz but is not gzip-compressed data.")
    try:
        image = nib.load(path)
        if not isinstance(image, nib.Nifti1Image | nib.Nifti2Image):
            raise UserError(f"{path} is a {type(image).__name__}, not a NIfTI image.")
        data = np.asanyarray(image.dataobj)
    except UserError:
        raise
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise UserError(f"{path} is truncated or its compressed data is corrupt ({err}).") from None
    except (ImageFileError, OSError, ValueError) as err:
        if path.name.endswith(".gz") and _gzip_stream_broken(path):
            raise UserError(f"{path} is truncated: its gzip stream ends early.") from None
        raise UserError(f"{path} is not a readable NIfTI file ({err}).") from None
    return data, image


def to_channels_first(data: np.ndarray, num_channels: int, source: str | os.PathLike = "image") -> np.ndarray:
    """MSD image voxels (3-D, or 4-D channels last) -> `(C, X, Y, Z)` float32.

    Args:
        data: voxels as stored: `(X, Y, Z)` for one modality, `(X, Y, Z, C)` for several.
        num_channels: the number of modalities the task declares.
        source: the file, named in errors.

    Raises:
        UserError: if the number of dimensions or channels does not match `num_channels`.
    """
    if data.ndim == 3:
        if num_channels != 1:
            raise UserError(
                f"{source} is a 3-D volume with 1 channel, but {num_channels} modalities are expected "
                "(4-D, channels last)."
            )
        return np.ascontiguousarray(data[None], dtype=np.float32)
    if data.ndim == 4:
        if data.shape[-1] != num_channels:
            raise UserError(
                f"{source} has {data.shape[-1]} channels (shape {tuple(data.shape)}), but "
                f"{num_channels} modalities are expected."
            )
        return np.ascontiguousarray(np.moveaxis(data, -1, 0), dtype=np.float32)
    raise UserError(f"{source} has {data.ndim} dimensions (shape {tuple(data.shape)}); expected 3-D or 4-D.")


def read_image(path: str | os.PathLike, num_channels: int) -> tuple[np.ndarray, Any]:
    """Read an MSD image as `(C, X, Y, Z)` float32 plus its nibabel image (affine, header).

    Raises:
        UserError: if the file is missing, corrupt, or its channels do not match `num_channels`.
    """
    data, image = read_nifti(path)
    return to_channels_first(data, num_channels, path), image


# ---------------------------------------------------------------------------------------------------
# Labels <-> regions

_SPELLINGS = (("tumour", "tumor"), ("oedematous", "edematous"), ("oedema", "edema"))
_BRAIN_TUMOUR_CLASSES = ("edema", "non_enhancing", "enhancing")
_KNOWN_BRAIN_TUMOUR_NAMES = (
    "edema / peritumoral edema; non-enhancing tumour / necrosis / necrotic tumour core / NCR / NET; "
    "enhancing tumour / GD-enhancing tumour / ET"
)


def _normalise_name(name: str) -> str:
    text = name.strip().lower()
    for old, new in _SPELLINGS:
        text = text.replace(old, new)
    text = re.sub(r"[-_/,()]+", " ", text)
    return re.sub(r"\s+", " ", text).strip()


def brain_tumour_class(name: str) -> str | None:
    """The brain-tumour sub-region a label name denotes: `edema`, `non_enhancing`, `enhancing`, or None.

    Necrotic and non-enhancing core both count as `non_enhancing` (BraTS' NCR/NET).

    Example:
        >>> brain_tumour_class("non-enhancing tumor"), brain_tumour_class("enhancing tumour")
        ('non_enhancing', 'enhancing')
    """
    text = _normalise_name(name)
    words = set(text.split())
    if "non enhancing" in text or "nonenhancing" in text or "necro" in text or words & {"ncr", "net"}:
        return "non_enhancing"
    if "enhancing" in text or text == "et":
        return "enhancing"
    if "edema" in text or "edematous" in text or text == "ed":
        return "edema"
    return None


def regions_from_labels(
    labels: Mapping[int | str, str],
    *,
    scheme: RegionScheme = "auto",
    source: str | os.PathLike = "dataset.json",
) -> tuple[Region, ...]:
    """Derive the predicted regions from the label names of a `dataset.json`.

    Brain-tumour tasks (some label named edema / enhancing / necrotic ...) give the nested BraTS regions
    in MONAI's order: TC (tumour core: non-enhancing + enhancing), WT (whole tumour: all tumour labels),
    ET (enhancing tumour). For Task01 (1 edema, 2 non-enhancing tumor, 3 enhancing tumour) that is
    TC={2,3}, WT={1,2,3}, ET={3}; BraTS 2021's 1/2/4 numbering works the same way by name. Every other
    task gets one region per foreground label, named after it.

    Args:
        labels: label value -> name, value 0 the background.
        scheme: `auto` (decide by the names), `brain_tumour` or `per_label`.
        source: the file named in errors.

    Returns:
        The regions, one model output channel each.

    Raises:
        UserError: if a brain-tumour task has a label name that is not a known sub-region, lacks one of
            edema / non-enhancing / enhancing tumour, or if there is no foreground label.

    Example:
        >>> regions_from_labels({0: "background", 1: "edema", 2: "non-enhancing tumor", 3: "enhancing tumour"})
        (Region(name='TC', labels=frozenset({2, 3})), Region(name='WT', labels=frozenset({1, 2, 3})), \
Region(name='ET', labels=frozenset({3})))
    """
    names = {int(k): v for k, v in labels.items()}
    foreground = {k: v for k, v in sorted(names.items()) if k != 0}
    if not foreground:
        raise UserError(f"{source}: 'labels' declares no foreground label, so there is nothing to segment.")
    if scheme not in ("auto", "brain_tumour", "per_label"):
        raise ValueError(f"scheme must be 'auto', 'brain_tumour' or 'per_label', not {scheme!r}.")
    classes = {k: brain_tumour_class(v) for k, v in foreground.items()}
    if scheme == "auto":
        scheme = "brain_tumour" if any(classes.values()) else "per_label"
    if scheme == "per_label":
        return tuple(Region(name, frozenset({value})) for value, name in foreground.items())
    for value, cls in classes.items():
        if cls is None:
            raise UserError(
                f"{source}: label {value} '{foreground[value]}' is not a known brain-tumour sub-region name "
                f"(known: {_KNOWN_BRAIN_TUMOUR_NAMES}); rename it so it can be mapped to TC/WT/ET."
            )
    by_class = {c: frozenset(v for v, cls in classes.items() if cls == c) for c in _BRAIN_TUMOUR_CLASSES}
    for c in _BRAIN_TUMOUR_CLASSES:
        if not by_class[c]:
            raise UserError(
                f"{source}: the brain-tumour labels {list(foreground.values())} name no "
                f"{c.replace('_', '-')} tumour region, so TC/WT/ET cannot be derived."
                if c != "edema"
                else f"{source}: the brain-tumour labels {list(foreground.values())} name no edema, "
                "so WT cannot be derived."
            )
    core = by_class["non_enhancing"] | by_class["enhancing"]
    return (
        Region("TC", core),
        Region("WT", core | by_class["edema"]),
        Region("ET", by_class["enhancing"]),
    )


def labels_to_regions(label_map: np.ndarray, regions: Sequence[Region]) -> np.ndarray:
    """Turn an MSD label map into one boolean channel per region.

    Args:
        label_map: integer labels, any spatial shape.
        regions: from `regions_from_labels`.

    Returns:
        `(len(regions), *label_map.shape)` bool array.

    Example:
        >>> regs = regions_from_labels({0: "background", 1: "edema", 2: "non-enhancing", 3: "enhancing"})
        >>> labels_to_regions(np.array([0, 1, 2, 3]), regs).astype(int).tolist()
        [[0, 0, 1, 1], [0, 1, 1, 1], [0, 0, 0, 1]]
    """
    label_map = np.asarray(label_map)
    return np.stack([np.isin(label_map, sorted(r.labels)) for r in regions], axis=0)


def _nesting(regions: Sequence[Region]) -> tuple[list[int], list[int]]:
    """Painting order (outer regions first) and, per region, the one label it adds to its sub-regions.

    Raises:
        ValueError: if two regions partly overlap, or a region does not add exactly one label.
    """
    sets = [r.labels for r in regions]
    for i, a in enumerate(sets):
        for b in sets[i + 1 :]:
            if a & b and not (a <= b or b <= a):
                raise ValueError(f"regions {sorted(a)} and {sorted(b)} partly overlap: not a nested set.")
    own = []
    for i, a in enumerate(sets):
        inner = set().union(*(b for j, b in enumerate(sets) if j != i and b < a))
        rest = a - inner
        if len(rest) != 1:
            raise ValueError(
                f"region {regions[i].name} {sorted(a)} adds {sorted(rest)} to its sub-regions; "
                "a label map needs exactly one label per region."
            )
        own.append(next(iter(rest)))
    order = sorted(range(len(sets)), key=lambda i: -len(sets[i]))
    return order, own


def regions_to_labels(
    region_probs_or_masks: np.ndarray,
    regions: Sequence[Region],
    *,
    threshold: float = 0.5,
) -> np.ndarray:
    """Turn region channels back into an MSD label map.

    Nested regions are painted outer first (WT -> edema 1, then TC -> non-enhancing 2, then ET ->
    enhancing 3 for Task01); where two disjoint regions both claim a voxel, the higher probability wins.

    Args:
        region_probs_or_masks: `(len(regions), *spatial)`: booleans, or probabilities in [0, 1].
        regions: from `regions_from_labels`.
        threshold: probability above which a voxel belongs to a region (ignored for booleans).

    Returns:
        The label map, `spatial` shape, uint8 (int16 if a label exceeds 255).

    Raises:
        ValueError: if the channel count differs from `len(regions)`, or the regions cannot be written
            as one label map (partial overlaps).

    Example:
        >>> regs = regions_from_labels({0: "background", 1: "edema", 2: "non-enhancing", 3: "enhancing"})
        >>> regions_to_labels(labels_to_regions(np.array([0, 1, 2, 3]), regs), regs).tolist()
        [0, 1, 2, 3]
    """
    x = np.asarray(region_probs_or_masks)
    if x.shape[0] != len(regions):
        raise ValueError(f"got {x.shape[0]} region channels for {len(regions)} regions.")
    order, own = _nesting(regions)
    if x.dtype == bool:
        masks, probs = x, x.astype(np.float32)
    else:
        probs = x.astype(np.float32, copy=False)
        masks = probs > threshold
    top = max(own)
    out = np.zeros(x.shape[1:], dtype=np.uint8 if top <= 255 else np.int16)
    owner = np.full(x.shape[1:], -1, dtype=np.int16)
    owner_prob = np.zeros(x.shape[1:], dtype=np.float32)
    sets = [r.labels for r in regions]
    for i in order:
        # A voxel already painted by an enclosing region (or by nothing) is overwritten; one painted by a
        # disjoint region only if this region is more probable there.
        enclosing = [j for j in range(len(regions)) if j != i and sets[i] < sets[j]]
        take = masks[i] & (np.isin(owner, [-1, *enclosing]) | (probs[i] > owner_prob))
        out[take] = own[i]
        owner[take] = i
        owner_prob[take] = probs[i][take]
    return out
