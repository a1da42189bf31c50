"""The YOLO dataset layout ultralytics trains on, written from BDD100K det JSON: `data.yaml`,
`images/<split>` (symlinks or copies) and `labels/<split>/<stem>.txt` (normalised boxes).

Writes files; never trains or imports ultralytics.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from visionpipes.core.errors import UserError
from visionpipes.core.io import atomic_path
from visionpipes.driving.bdd100k.categories import DET_CATEGORIES
from visionpipes.driving.bdd100k.detection import detection_boxes, warn_unknown_categories
from visionpipes.driving.bdd100k.labels import IMAGE_SIZE, Frame, load_frames


@dataclass(frozen=True)
class YoloSplit:
    """One split to convert: its det JSON and the folder holding its images."""

    name: str
    labels: Path
    images: Path


@dataclass(frozen=True)
class YoloDataset:
    """What `det_to_yolo` wrote: the `data.yaml` and, per split, images and boxes."""

    data_yaml: Path
    images: dict[str, int]
    boxes: dict[str, int]


def yolo_lines(frame: Frame, image_size: tuple[int, int], unknown: Counter[str] | None = None) -> list[str]:
    """YOLO label lines `class cx cy w h` (normalised, clipped to the image) for a frame's boxes.

    Ignore regions (`other person`, `other vehicle`, `trailer`) are left out: YOLO has no ignore class.
    """
    width, height = image_size
    lines = []
    for det in detection_boxes(frame, unknown):
        if det.ignored:
            continue
        box = det.label.box2d
        assert box is not None
        x1, x2 = np.clip([box.x1, box.x2], 0, width)
        y1, y2 = np.clip([box.y1, box.y2], 0, height)
        w, h = (x2 - x1) / width, (y2 - y1) / height
        if w <= 0 or h <= 0:
            continue
        cx, cy = (x1 + x2) / 2 / width, (y1 + y2) / 2 / height
        lines.append(f"{det.class_id} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}")
    return lines


def det_to_yolo(
    splits: Sequence[YoloSplit],
    out_dir: str | os.PathLike,
    *,
    copy_images: bool = False,
    image_size: tuple[int, int] = IMAGE_SIZE,
) -> YoloDataset:
    """Write BDD100K detection labels as an ultralytics YOLO dataset.

    Layout: `out/images/<split>/<name>` (symlinks to the originals, or copies), `out/labels/<split>/
    <stem>.txt` (`class cx cy w h`, normalised), and `out/data.yaml` (`path`, `train`, `val`, `names`
    with the 10 classes). A split named neither `train` nor `val` is listed under its own name; when
    there is no `val` split, `val` points at the first split. The dataset is built in a temporary
    folder and renamed into place.

    Args:
        splits: the splits to convert.
        out_dir: the dataset folder; replaced if it already holds a dataset (`data.yaml`).
        copy_images: copy the images instead of symlinking them.
        image_size: (width, height) of the images.

    Returns:
        What was written.

    Raises:
        UserError: on malformed labels, a missing image file, or an `out_dir` that holds other files.
    """
    import yaml

    if not splits:
        raise UserError("det_to_yolo needs at least one split.")
    out = Path(out_dir).resolve()
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "data.yaml").is_file())):
        raise UserError(f"output folder {out} exists and is not a YOLO dataset; refusing to overwrite it.")
    out.parent.mkdir(parents=True, exist_ok=True)
    parsed = []
    for split in splits:
        frames = load_frames(split.labels, image_size=image_size)
        for frame in frames:
            image = split.images / frame.name
            if not image.is_file():
                raise UserError(
                    f"image file {image} (frame {frame.name!r} of {split.labels}) does not exist."
                )
        parsed.append((split, frames))

    images: dict[str, int] = {}
    boxes: dict[str, int] = {}
    with atomic_path(out, is_dir=True) as tmp:
        for split, frames in parsed:
            unknown: Counter[str] = Counter()
            image_dir = tmp / "images" / split.name
            label_dir = tmp / "labels" / split.name
            image_dir.mkdir(parents=True)
            label_dir.mkdir(parents=True)
            n_boxes = 0
            for frame in frames:
                source = (split.images / frame.name).resolve()
                target = image_dir / Path(frame.name).name
                if copy_images:
                    shutil.copy2(source, target)
                else:
                    target.symlink_to(source)
                lines = yolo_lines(frame, image_size, unknown)
                n_boxes += len(lines)
                (label_dir / f"{Path(frame.name).stem}.txt").write_text(
                    "".join(f"{line}\n" for line in lines)
                )
            warn_unknown_categories(unknown, str(split.labels))
            images[split.name] = len(frames)
            boxes[split.name] = n_boxes
        names = [s.name for s, _ in parsed]
        data = {
            "path": str(out),
            "train": f"images/{'train' if 'train' in names else names[0]}",
            "val": f"images/{'val' if 'val' in names else names[0]}",
        }
        for name in names:
            if name not in ("train", "val"):
                data[name] = f"images/{name}"
        data["names"] = dict(enumerate(DET_CATEGORIES))
        (tmp / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return YoloDataset(out / "data.yaml", images, boxes)
