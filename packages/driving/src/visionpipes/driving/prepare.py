"""The pipeline's data steps: obtain a BDD100K root (a synthetic sample, or a pointer to a real copy)
and prepare what training reads from it (the YOLO dataset, lane masks, drivable-area masks where the
data has them, and a manifest of paths).

It converts and records paths; it never trains or scores. A real BDD100K copy is only read, never
written to: everything derived from it goes under the prepared folder.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visionpipes.core.config import ConfigModel, Field
from visionpipes.core.errors import UserError
from visionpipes.core.io import atomic_path, write_json
from visionpipes.driving.bdd100k.drivable import (
    drivable_masks_dir,
    drivable_polygons_file,
    write_drivable_masks_from_polygons,
)
from visionpipes.driving.bdd100k.labels import IMAGE_SIZE, frames_to_json, load_frames
from visionpipes.driving.bdd100k.masks import lane_polygons_to_masks
from visionpipes.driving.bdd100k.yolo import YoloSplit, det_to_yolo
from visionpipes.driving.synth.sample import SynthConfig

#: The file in a raw folder that points at a real BDD100K copy instead of holding one.
SOURCE_FILE = "source.json"
#: The manifest `prepare` writes; the later steps read their paths from it.
MANIFEST = "dataset.json"
SPLITS: tuple[str, ...] = ("train", "val")


class DataConfig(ConfigModel):
    """The `data` section of params.yaml.

    Attributes:
        path: a real BDD100K root (`images/100k/`, `labels/det_20/`, `labels/lane/`), relative to
            the params file's folder; None for the synthetic sample.
        synth: `SynthConfig` fields of the synthetic sample (images, seed, val_fraction, cameras, ...).
    """

    path: str | None = None
    synth: SynthConfig = Field(default_factory=SynthConfig)


def _layout_problems(root: Path) -> list[str]:
    problems = []
    for split in SPLITS:
        if not (root / "images" / "100k" / split).is_dir():
            problems.append(f"images/100k/{split}/")
        if not (root / "labels" / "det_20" / f"det_{split}.json").is_file():
            problems.append(f"labels/det_20/det_{split}.json")
        lanes = root / "labels" / "lane"
        if not (lanes / "masks" / split).is_dir() and not (lanes / "polygons" / f"lane_{split}.json").is_file():
            problems.append(f"labels/lane/masks/{split}/ (or labels/lane/polygons/lane_{split}.json)")
    return problems


def _fingerprint(root: Path) -> dict[str, Any]:
    """Sizes and modification times of the label files, and image counts: enough for DVC to notice a
    changed copy without reading every image."""
    files: dict[str, Any] = {}
    for path in sorted((root / "labels").rglob("*.json")):
        stat = path.stat()
        files[str(path.relative_to(root))] = [stat.st_size, int(stat.st_mtime)]
    counts = {}
    for split in SPLITS:
        folder = root / "images" / "100k" / split
        counts[split] = sum(1 for _ in folder.iterdir()) if folder.is_dir() else 0
        masks = root / "labels" / "lane" / "masks" / split
        counts[f"lane_masks_{split}"] = sum(1 for _ in masks.iterdir()) if masks.is_dir() else 0
        drivable = drivable_masks_dir(root, split)
        counts[f"drivable_masks_{split}"] = sum(1 for _ in drivable.iterdir()) if drivable else 0
    return {"label_files": files, "counts": counts}


def obtain_data(config: DataConfig, out_dir: str | os.PathLike, *, base_dir: str | os.PathLike = ".") -> dict[str, Any]:
    """Write the raw data folder: the synthetic sample, or a pointer (`source.json`) to a real copy.

    Args:
        config: the `data` section.
        out_dir: the raw folder (replaced).
        base_dir: the folder a relative `config.path` is relative to.

    Returns:
        A summary of what was written.

    Raises:
        UserError: if `config.path` is not a BDD100K root, or the synth settings are bad.
    """
    out = Path(out_dir)
    if config.path:
        root = Path(config.path).expanduser()
        root = (Path(base_dir) / root).resolve() if not root.is_absolute() else root
        if not root.is_dir():
            raise UserError(f"data.path {config.path} ({root}) is not a folder.")
        problems = _layout_problems(root)
        if problems:
            raise UserError(f"data.path {root} is not a BDD100K root: it lacks {', '.join(problems)}.")
        out.parent.mkdir(parents=True, exist_ok=True)
        summary = {"source": "bdd100k", "root": str(root), **_fingerprint(root)}
        with atomic_path(out, is_dir=True) as tmp:
            write_json(tmp / SOURCE_FILE, summary)
        return summary
    from visionpipes.driving.synth.sample import write_sample

    summary = write_sample(out, config.synth)
    return {"source": "synthetic", **summary}


def resolve_root(raw_dir: str | os.PathLike) -> tuple[Path, str]:
    """The BDD100K root behind a raw folder, and its kind (`synthetic` or `bdd100k`).

    Raises:
        UserError: if the raw folder is missing, or points at a copy that has gone.
    """
    raw = Path(raw_dir)
    if not raw.is_dir():
        raise UserError(f"raw data folder {raw} does not exist; run `vp-driving data` first.")
    pointer = raw / SOURCE_FILE
    if pointer.is_file():
        try:
            root = Path(json.loads(pointer.read_text())["root"])
        except (json.JSONDecodeError, KeyError, TypeError):
            raise UserError(f"{pointer} is not a data pointer written by `vp-driving data`.") from None
        if not root.is_dir():
            raise UserError(f"{pointer} points at {root}, which no longer exists.")
        return root, "bdd100k"
    problems = _layout_problems(raw)
    if problems:
        raise UserError(f"raw data folder {raw} is not a BDD100K root: it lacks {', '.join(problems)}.")
    return raw.resolve(), "synthetic"


class PrepareConfig(ConfigModel):
    """The `prepare` section of params.yaml.

    Attributes:
        limit_train: use at most this many training images (0: all) — real BDD100K has 70,000.
        limit_val: use at most this many validation images (0: all).
        lane_thickness: line width when lane masks must be drawn from polygons (pixels at 1280x720).
    """

    limit_train: int = Field(0, ge=0)
    limit_val: int = Field(0, ge=0)
    lane_thickness: int = Field(8, ge=1)


@dataclass
class PreparedDataset:
    """What the training and evaluation steps read, as `prepare` recorded it in `dataset.json`."""

    root: Path
    source: str
    data_yaml: Path
    det_labels: dict[str, Path]
    images: dict[str, Path]
    lane_masks: dict[str, Path]
    names: dict[str, list[str]]
    #: split -> folder of official drivable masks (`<image stem>.png`); no entry for a split without
    #: drivable labels. In `dataset.json` as `drivable_masks`, left out when empty.
    drivable_masks: dict[str, Path] = field(default_factory=dict)

    def to_json(self, base: Path) -> dict[str, Any]:
        def rel(p: Path) -> str:
            try:
                return str(p.resolve().relative_to(base.resolve()))
            except ValueError:
                return str(p.resolve())

        data: dict[str, Any] = {
            "root": str(self.root),
            "source": self.source,
            "data_yaml": rel(self.data_yaml),
            "det_labels": {k: rel(v) for k, v in self.det_labels.items()},
            "images": {k: rel(v) for k, v in self.images.items()},
            "lane_masks": {k: rel(v) for k, v in self.lane_masks.items()},
            "names": self.names,
        }
        if self.drivable_masks:
            data["drivable_masks"] = {k: rel(v) for k, v in self.drivable_masks.items()}
        return data


def prepare_dataset(
    raw_dir: str | os.PathLike, out_dir: str | os.PathLike, config: PrepareConfig | None = None
) -> PreparedDataset:
    """Prepare the training inputs from a raw folder: the (possibly subset) det labels, the YOLO
    dataset ultralytics trains on, lane masks (drawn from polygons when the copy has none), drivable
    masks (`labels/drivable/masks/<split>/` read in place; else drawn from
    `labels/drivable/polygons/drivable_<split>.json` for the kept images; else none), and the
    manifest `dataset.json`. Built in a temporary folder and renamed into place.

    Raises:
        UserError: on a missing or malformed raw folder, labels or images.
    """
    config = config or PrepareConfig()
    root, source = resolve_root(raw_dir)
    out = Path(out_dir).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    limits = {"train": config.limit_train, "val": config.limit_val}
    with atomic_path(out, is_dir=True) as tmp:
        (tmp / "labels").mkdir()
        yolo_splits = []
        det_labels, images, lane_masks, names, drivable_masks = {}, {}, {}, {}, {}
        for split in SPLITS:
            frames = load_frames(root / "labels" / "det_20" / f"det_{split}.json")
            frames = sorted(frames, key=lambda f: f.name)
            if limits[split]:
                frames = frames[: limits[split]]
            if not frames:
                raise UserError(f"{root}/labels/det_20/det_{split}.json holds no frames.")
            labels_path = tmp / "labels" / f"det_{split}.json"
            labels_path.write_text(json.dumps(frames_to_json(frames)))
            det_labels[split] = out / "labels" / labels_path.name
            images[split] = root / "images" / "100k" / split
            names[split] = [f.name for f in frames]
            yolo_splits.append(YoloSplit(split, labels_path, images[split]))
            masks = root / "labels" / "lane" / "masks" / split
            if not masks.is_dir():
                drawn = tmp / "lane_masks" / split
                lane_polygons_to_masks(
                    root / "labels" / "lane" / "polygons" / f"lane_{split}.json",
                    drawn,
                    image_size=IMAGE_SIZE,
                    thickness=config.lane_thickness,
                )
                masks = out / "lane_masks" / split
            lane_masks[split] = masks
            drivable = drivable_masks_dir(root, split)
            polygons = drivable_polygons_file(root, split)
            if drivable is not None:
                drivable_masks[split] = drivable
            elif polygons is not None:
                write_drivable_masks_from_polygons(
                    polygons, tmp / "drivable_masks" / split, IMAGE_SIZE[1], IMAGE_SIZE[0], names=names[split]
                )
                drivable_masks[split] = out / "drivable_masks" / split
        det_to_yolo(yolo_splits, tmp / "yolo")
        # det_to_yolo records its own folder: point it at the final place.
        data_yaml = tmp / "yolo" / "data.yaml"
        data_yaml.write_text(data_yaml.read_text().replace(str((tmp / "yolo").resolve()), str(out / "yolo")))
        dataset = PreparedDataset(
            root, source, out / "yolo" / "data.yaml", det_labels, images, lane_masks, names, drivable_masks
        )
        write_json(tmp / MANIFEST, dataset.to_json(out))
    return dataset


def load_manifest(path: str | os.PathLike) -> PreparedDataset:
    """Read `dataset.json` (paths relative to its folder; one without `drivable_masks`, written before
    drivable masks existed, reads with none).

    Raises:
        UserError: if the file is missing or not a manifest written by `prepare_dataset`.
    """
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST
    if not path.is_file():
        raise UserError(f"dataset manifest {path} does not exist; run `vp-driving prepare` first.")
    base = path.parent
    try:
        data = json.loads(path.read_text())
        return PreparedDataset(
            root=Path(data["root"]),
            source=data["source"],
            data_yaml=base / data["data_yaml"],
            det_labels={k: base / v for k, v in data["det_labels"].items()},
            images={k: base / v for k, v in data["images"].items()},
            lane_masks={k: base / v for k, v in data["lane_masks"].items()},
            names={k: list(v) for k, v in data["names"].items()},
            drivable_masks={k: base / v for k, v in data.get("drivable_masks", {}).items()},
        )
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
        raise UserError(f"{path} is not a dataset manifest written by `vp-driving prepare`.") from None


def manifest_summary(dataset: PreparedDataset) -> dict[str, Any]:
    """Counts for reports and model cards."""
    return {"source": dataset.source, "root": str(dataset.root), **{f"images_{k}": len(v) for k, v in dataset.names.items()}}


__all__ = [
    "DataConfig",
    "PrepareConfig",
    "PreparedDataset",
    "load_manifest",
    "manifest_summary",
    "obtain_data",
    "prepare_dataset",
    "resolve_root",
]
