"""The BDD100K label files: Scalabel detection JSON (a list of frames) and the legacy per-image JSON,
parsed into `Frame`/`Label`/`Box2D`/`Poly2D` with one clear error per malformed entry, and written back.

Reads, validates and writes files; never scores, trains, or imports torch or ultralytics.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from visionpipes.core.errors import UserError
from visionpipes.core.io import atomic_path

#: Every BDD100K image is 1280 wide and 720 high; the official evaluation assumes it.
IMAGE_SIZE: tuple[int, int] = (1280, 720)


class BDD100KWarning(UserWarning):
    """Input that is usable but was partly skipped (e.g. labels of unknown categories)."""


# --------------------------------------------------------------------------------------------------
# Label types
# --------------------------------------------------------------------------------------------------


@dataclass
class Box2D:
    """A box in pixel corners `x1 <= x2`, `y1 <= y2` (Scalabel's inclusive convention)."""

    x1: float
    y1: float
    x2: float
    y2: float

    def to_dict(self) -> dict[str, float]:
        return {"x1": self.x1, "y1": self.y1, "x2": self.x2, "y2": self.y2}


@dataclass
class Poly2D:
    """A polyline or polygon: `types[i]` is `L` for a vertex, `C` for a Bezier control point."""

    vertices: list[tuple[float, float]]
    types: str
    closed: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"vertices": [[x, y] for x, y in self.vertices], "types": self.types, "closed": self.closed}


@dataclass
class Label:
    """One object of a frame: a box, polygons, or both, with its category and attributes."""

    id: str
    category: str
    attributes: dict[str, Any] = field(default_factory=dict)
    box2d: Box2D | None = None
    poly2d: list[Poly2D] | None = None
    score: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "category": self.category}
        if self.attributes:
            out["attributes"] = dict(self.attributes)
        if self.box2d is not None:
            out["box2d"] = self.box2d.to_dict()
        if self.poly2d is not None:
            out["poly2d"] = [poly.to_dict() for poly in self.poly2d]
        if self.score is not None:
            out["score"] = self.score
        return out


@dataclass
class Frame:
    """One image of a Scalabel label file: `labels` is None when the frame was never labelled."""

    name: str
    labels: list[Label] | None = None
    video_name: str | None = None
    frame_index: int | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    url: str | None = None
    timestamp: int | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        if self.url is not None:
            out["url"] = self.url
        if self.video_name is not None:
            out["videoName"] = self.video_name
        if self.frame_index is not None:
            out["frameIndex"] = self.frame_index
        if self.timestamp is not None:
            out["timestamp"] = self.timestamp
        if self.attributes:
            out["attributes"] = dict(self.attributes)
        out["labels"] = None if self.labels is None else [label.to_dict() for label in self.labels]
        return out


# --------------------------------------------------------------------------------------------------
# Reading and writing label JSON
# --------------------------------------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


def _parse_box(raw: Any, where: str) -> Box2D:
    if not isinstance(raw, dict) or not all(_is_number(raw.get(k)) for k in ("x1", "y1", "x2", "y2")):
        raise UserError(f"{where}: box2d must hold numbers x1, y1, x2, y2.")
    return Box2D(float(raw["x1"]), float(raw["y1"]), float(raw["x2"]), float(raw["y2"]))


def _parse_poly2d(raw: Any, where: str) -> list[Poly2D]:
    """Scalabel `[{vertices, types, closed}]`, or the legacy `[[x, y, type], ...]` (one open polyline)."""
    if not isinstance(raw, list):
        raise UserError(f"{where}: poly2d must be a list.")
    if raw and all(isinstance(v, list) for v in raw):  # legacy: one list of [x, y, type] vertices
        raw = [
            {
                "vertices": [v[:2] for v in raw],
                "types": "".join(str(v[2]) if len(v) > 2 else "L" for v in raw),
            }
        ]
    polys = []
    for poly in raw:
        if not isinstance(poly, dict) or not isinstance(poly.get("vertices"), list):
            raise UserError(f"{where}: each poly2d entry needs a 'vertices' list.")
        vertices = poly["vertices"]
        if not all(
            isinstance(v, list) and len(v) >= 2 and _is_number(v[0]) and _is_number(v[1]) for v in vertices
        ):
            raise UserError(f"{where}: poly2d vertices must be [x, y] number pairs.")
        types = poly.get("types", "L" * len(vertices))
        if not isinstance(types, str) or len(types) != len(vertices) or set(types) - {"L", "C"}:
            raise UserError(
                f"{where}: poly2d 'types' must be a string of L/C, one per vertex ({len(vertices)} vertices)."
            )
        if types and types[0] != "L":
            raise UserError(f"{where}: a poly2d must start with an 'L' vertex, not a Bezier control point.")
        polys.append(
            Poly2D([(float(v[0]), float(v[1])) for v in vertices], types, bool(poly.get("closed", False)))
        )
    return polys


def check_box(
    box: Box2D, *, where: str, image_size: tuple[int, int] | None = IMAGE_SIZE, tolerance: float = 1.0
) -> None:
    """Check that a box is well ordered and inside the image.

    Args:
        box: the box.
        where: the file, frame and label id, for the message.
        image_size: (width, height) the box must fit in (with `tolerance` pixels), or None to skip.
        tolerance: pixels a corner may lie outside the image (rounding of x2 = 1280 and such).

    Raises:
        UserError: if x2 < x1, y2 < y1, or the box leaves the image.
    """
    if box.x2 < box.x1:
        raise UserError(f"{where}: box2d has x2 ({box.x2:g}) < x1 ({box.x1:g}).")
    if box.y2 < box.y1:
        raise UserError(f"{where}: box2d has y2 ({box.y2:g}) < y1 ({box.y1:g}).")
    if image_size is not None:
        width, height = image_size
        if (
            box.x1 < -tolerance
            or box.y1 < -tolerance
            or box.x2 > width + tolerance
            or box.y2 > height + tolerance
        ):
            raise UserError(
                f"{where}: box2d ({box.x1:g}, {box.y1:g}, {box.x2:g}, {box.y2:g}) lies outside the "
                f"{width}x{height} image."
            )


def _parse_label(raw: Any, where: str, image_size: tuple[int, int] | None) -> Label:
    if not isinstance(raw, dict):
        raise UserError(f"{where}: each label must be a JSON object.")
    label_id = raw.get("id", "")
    where = f"{where} label id {label_id!r}"
    category = raw.get("category")
    if not isinstance(category, str):
        raise UserError(f"{where}: 'category' must be a string.")
    attributes = raw.get("attributes") or {}
    if not isinstance(attributes, dict):
        raise UserError(f"{where}: 'attributes' must be an object.")
    box = None
    if raw.get("box2d") is not None:
        box = _parse_box(raw["box2d"], where)
        check_box(box, where=where, image_size=image_size)
    poly2d = _parse_poly2d(raw["poly2d"], where) if raw.get("poly2d") is not None else None
    score = raw.get("score")
    if score is not None and not _is_number(score):
        raise UserError(f"{where}: 'score' must be a number.")
    return Label(
        id=str(label_id),
        category=category,
        attributes=dict(attributes),
        box2d=box,
        poly2d=poly2d,
        score=None if score is None else float(score),
    )


def _parse_frame(raw: Any, source: str, index: int, image_size: tuple[int, int] | None) -> Frame:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise UserError(f"{source}: frame #{index} must be an object with a string 'name'.")
    where = f"{source}: frame {raw['name']!r}"
    labels_raw = raw.get("labels")
    if labels_raw is not None and not isinstance(labels_raw, list):
        raise UserError(f"{where}: 'labels' must be a list or null.")
    labels = None if labels_raw is None else [_parse_label(lab, where, image_size) for lab in labels_raw]
    attributes = raw.get("attributes") or {}
    if not isinstance(attributes, dict):
        raise UserError(f"{where}: 'attributes' must be an object.")
    frame_index = raw.get("frameIndex", raw.get("index"))
    return Frame(
        name=raw["name"],
        labels=labels,
        video_name=raw.get("videoName"),
        frame_index=int(frame_index) if _is_number(frame_index) else None,
        attributes=dict(attributes),
        url=raw.get("url"),
        timestamp=int(raw["timestamp"]) if _is_number(raw.get("timestamp")) else None,
    )


def _parse_legacy(raw: dict[str, Any], source: str, index: int, image_size: tuple[int, int] | None) -> Frame:
    """The legacy per-image format: `{name, attributes, frames: [{timestamp, objects: [...]}]}`."""
    if not isinstance(raw.get("name"), str):
        raise UserError(f"{source}: legacy image #{index} must have a string 'name'.")
    frames = raw["frames"]
    if not isinstance(frames, list) or not frames or not isinstance(frames[0], dict):
        raise UserError(f"{source}: image {raw['name']!r}: 'frames' must be a non-empty list of objects.")
    objects = frames[0].get("objects")
    converted = {
        "name": raw["name"],
        "url": raw.get("url"),
        "attributes": raw.get("attributes"),
        "timestamp": frames[0].get("timestamp", raw.get("timestamp")),
        "labels": objects,
    }
    return _parse_frame(converted, source, index, image_size)


def parse_frames(
    data: Any, *, source: str = "<json>", image_size: tuple[int, int] | None = IMAGE_SIZE
) -> list[Frame]:
    """Turn decoded label JSON into frames.

    Accepts a Scalabel list of frames, a Scalabel dataset `{frames: [...], config}`, one legacy
    per-image object `{name, frames: [{objects: [...]}]}`, or a list of legacy objects.

    Args:
        data: the decoded JSON.
        source: the file it came from, for messages.
        image_size: (width, height) every box must fit in, or None to skip that check.

    Returns:
        The frames, in file order.

    Raises:
        UserError: if the JSON is not a list of frames, or a frame or label is malformed (the message
            names the frame and the label id).
    """
    if isinstance(data, dict) and isinstance(data.get("frames"), list):
        items = data["frames"]
        if items and isinstance(items[0], dict) and "objects" in items[0]:
            return [_parse_legacy(data, source, 0, image_size)]
        data = items
    if not isinstance(data, list):
        raise UserError(f"{source} is not a list of frames (found a JSON {type(data).__name__}).")
    frames = []
    for i, item in enumerate(data):
        if isinstance(item, dict) and "frames" in item and "labels" not in item:
            frames.append(_parse_legacy(item, source, i, image_size))
        else:
            frames.append(_parse_frame(item, source, i, image_size))
    return frames


def _read_json(path: Path) -> Any:
    if not path.is_file():
        what = "is a folder, not a JSON file" if path.is_dir() else "does not exist"
        raise UserError(f"label file {path} {what}.")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"label file {path} is not valid JSON ({err}).") from None


def load_frames(path: str | os.PathLike, *, image_size: tuple[int, int] | None = IMAGE_SIZE) -> list[Frame]:
    """Read a BDD100K label file (Scalabel or legacy format) into frames.

    Args:
        path: a `.json` file.
        image_size: (width, height) every box must fit in, or None to skip that check.

    Raises:
        UserError: if the file is missing, not JSON, not a list of frames, or holds a bad box.

    Example:
        >>> frames = load_frames("labels/det_20/det_val.json")  # doctest: +SKIP
        >>> frames[0].labels[0].box2d.x1  # doctest: +SKIP
    """
    path = Path(path)
    return parse_frames(_read_json(path), source=str(path), image_size=image_size)


def frames_to_json(frames: Iterable[Frame]) -> list[dict[str, Any]]:
    """Frames as the Scalabel JSON list (`labels: null` kept for unlabelled frames)."""
    return [frame.to_dict() for frame in frames]


def save_frames(path: str | os.PathLike, frames: Iterable[Frame]) -> None:
    """Write frames as a Scalabel JSON list, atomically.

    Raises:
        UserError: if the output folder does not exist.
    """
    data = frames_to_json(frames)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data))


def frame_to_legacy(frame: Frame) -> dict[str, Any]:
    """One frame in the legacy per-image format (`frames[0].objects[]`)."""
    objects = []
    for label in frame.labels or []:
        obj = label.to_dict()
        if label.poly2d is not None:  # legacy polylines: [[x, y, type], ...], one per label
            obj["poly2d"] = [
                [x, y, t] for poly in label.poly2d for (x, y), t in zip(poly.vertices, poly.types)
            ]
        objects.append(obj)
    out: dict[str, Any] = {"name": frame.name}
    if frame.url is not None:
        out["url"] = frame.url
    out["attributes"] = dict(frame.attributes)
    out["frames"] = [{"timestamp": frame.timestamp or 10000, "objects": objects}]
    return out


def save_legacy(path: str | os.PathLike, frame: Frame) -> None:
    """Write one frame as a legacy per-image JSON file, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(frame_to_legacy(frame)))
