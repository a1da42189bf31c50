"""BDD100K in its official formats: Scalabel detection JSON, the legacy per-image JSON, lane polygons,
bit-encoded lane masks and drivable masks, and the converters to lane masks, YOLO datasets and det JSON.

This module reads, validates, converts and writes files. It never scores (see `metrics`), never trains,
and never imports torch or ultralytics.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from visionpipes.core.errors import UserError
from visionpipes.core.io import atomic_path

#: Every BDD100K image is 1280 wide and 720 high; the official evaluation assumes it.
IMAGE_SIZE: tuple[int, int] = (1280, 720)

#: The 10 detection classes, in the order of their official ids 1..10.
DET_CATEGORIES: tuple[str, ...] = (
    "pedestrian",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
    "traffic light",
    "traffic sign",
)
#: Legacy names mapped onto the 10 classes (`bdd100k/configs/det.toml`, `[name_mapping]`).
NAME_MAPPING: Mapping[str, str] = MappingProxyType(
    {"bike": "bicycle", "caravan": "car", "motor": "motorcycle", "person": "pedestrian", "van": "car"}
)
#: Classes kept as ignore regions of the class they resemble (`[ignore_mapping]`).
IGNORE_MAPPING: Mapping[str, str] = MappingProxyType(
    {"other person": "pedestrian", "other vehicle": "car", "trailer": "truck"}
)

#: Lane categories, in the order of the ids 0..7 stored in bits 0-2 of a lane mask.
LANE_CATEGORIES: tuple[str, ...] = (
    "crosswalk",
    "double other",
    "double white",
    "double yellow",
    "road curb",
    "single other",
    "single white",
    "single yellow",
)
#: Lane directions (bit 5 of a lane mask) and styles (bit 4).
LANE_DIRECTIONS: tuple[str, ...] = ("parallel", "vertical")
LANE_STYLES: tuple[str, ...] = ("solid", "dashed")
#: A lane-mask pixel with no lane: every bit set, so bit 3 (background) is 1.
LANE_BACKGROUND: int = 255
LANE_BACKGROUND_BIT: int = 3
LANE_STYLE_BIT: int = 4
LANE_DIRECTION_BIT: int = 5

#: Drivable-area classes, one uint8 per pixel: 0 direct, 1 alternative, 2 background.
DRIVABLE_CATEGORIES: tuple[str, ...] = ("direct", "alternative", "background")
DRIVABLE_BACKGROUND: int = 2


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


# --------------------------------------------------------------------------------------------------
# Detection categories
# --------------------------------------------------------------------------------------------------


def resolve_det_category(category: str) -> tuple[str, bool] | None:
    """The detection class of a BDD100K category, and whether it is an ignore region.

    Returns:
        `(class name, ignored)`: `("car", False)` for `van`, `("pedestrian", True)` for
        `other person`; None for a category that is not a detection class.
    """
    name = NAME_MAPPING.get(category, category)
    if name in DET_CATEGORIES:
        return name, False
    if name in IGNORE_MAPPING:
        return IGNORE_MAPPING[name], True
    return None


@dataclass(frozen=True)
class DetectionBox:
    """A box label resolved to a detection class (`class_id` 0..9; `ignored` for ignore regions)."""

    label: Label
    category: str
    class_id: int
    ignored: bool

    @property
    def crowd(self) -> bool:
        return bool(self.label.attributes.get("crowd", False))


def detection_boxes(frame: Frame, unknown: Counter[str] | None = None) -> list[DetectionBox]:
    """The box labels of a frame resolved to the 10 classes; unknown categories are counted and skipped.

    Args:
        frame: the frame.
        unknown: a counter that receives the categories that were skipped.
    """
    out = []
    for label in frame.labels or []:
        if label.box2d is None:
            continue
        resolved = resolve_det_category(label.category)
        if resolved is None:
            if unknown is not None:
                unknown[label.category] += 1
            continue
        name, ignored = resolved
        out.append(DetectionBox(label, name, DET_CATEGORIES.index(name), ignored))
    return out


def warn_unknown_categories(unknown: Counter[str], source: str) -> None:
    """Emit one `BDD100KWarning` counting the labels skipped for unknown categories (none: no warning)."""
    if unknown:
        total = sum(unknown.values())
        names = ", ".join(f"{name!r} x{count}" for name, count in unknown.most_common())
        warnings.warn(
            f"{source}: skipped {total} box label(s) of unknown categories ({names}).",
            BDD100KWarning,
            stacklevel=2,
        )


# --------------------------------------------------------------------------------------------------
# Lane masks
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LaneAttributes:
    """The three lane sub-task values: category id 0..7, style 0/1 (solid/dashed), direction 0/1."""

    category: int
    style: int = 0
    direction: int = 0

    @property
    def value(self) -> int:
        return encode_lane_value(self.category, self.style, self.direction)


def encode_lane_value(category: int, style: int = 0, direction: int = 0) -> int:
    """One lane-mask byte: bits 0-2 category, bit 3 clear (foreground), bit 4 style, bit 5 direction.

    Raises:
        ValueError: if a value is out of range.
    """
    if not 0 <= category < len(LANE_CATEGORIES) or style not in (0, 1) or direction not in (0, 1):
        raise ValueError(
            f"lane values out of range: category={category}, style={style}, direction={direction}."
        )
    return category | (style << LANE_STYLE_BIT) | (direction << LANE_DIRECTION_BIT)


@dataclass
class LaneMaskBits:
    """A lane mask split into its fields (each HxW uint8); `background` is 1 where no lane is."""

    category: np.ndarray
    style: np.ndarray
    direction: np.ndarray
    background: np.ndarray


def decode_lane_mask(mask: np.ndarray) -> LaneMaskBits:
    """Split a lane mask into category (bits 0-2), background (bit 3), style (bit 4), direction (bit 5)."""
    mask = np.asarray(mask)
    if mask.dtype != np.uint8:
        raise ValueError(f"a lane mask is uint8, got {mask.dtype}.")
    return LaneMaskBits(
        category=mask & 0b111,
        style=(mask >> LANE_STYLE_BIT) & 1,
        direction=(mask >> LANE_DIRECTION_BIT) & 1,
        background=(mask >> LANE_BACKGROUND_BIT) & 1,
    )


def encode_lane_mask(bits: LaneMaskBits) -> np.ndarray:
    """Join the fields into a lane mask; background pixels become 255."""
    mask = (
        (bits.category.astype(np.uint8) & 0b111)
        | ((bits.style.astype(np.uint8) & 1) << LANE_STYLE_BIT)
        | ((bits.direction.astype(np.uint8) & 1) << LANE_DIRECTION_BIT)
    ).astype(np.uint8)
    mask[bits.background.astype(bool)] = LANE_BACKGROUND
    return mask


def lane_attributes(label: Label) -> LaneAttributes | None:
    """The lane values of a label, or None when the label is not a lane marking.

    A lane is a label of category `lane` (or `lane/<type>`) whose `laneTypes` (or legacy `laneType`)
    attribute names the category, or a label whose category is itself a lane type (as in the
    polygons that BDD100K's own `to_mask` reads). `laneStyle` and `laneDirection` default to solid
    and parallel, as in the official converter.
    """
    category = label.category
    attrs = label.attributes
    if category.startswith("lane/"):
        lane_type = category[len("lane/") :]
    elif category == "lane":
        lane_type = attrs.get("laneTypes", attrs.get("laneType"))
    elif category in LANE_CATEGORIES:
        lane_type = category
    else:
        return None
    if lane_type not in LANE_CATEGORIES:
        return None
    style = attrs.get("laneStyle", "solid")
    direction = attrs.get("laneDirection", "parallel")
    return LaneAttributes(
        LANE_CATEGORIES.index(lane_type),
        LANE_STYLES.index(style) if style in LANE_STYLES else 0,
        LANE_DIRECTIONS.index(direction) if direction in LANE_DIRECTIONS else 0,
    )


def lane_label(
    label_id: str,
    vertices: Sequence[tuple[float, float]],
    attributes: LaneAttributes,
    *,
    types: str | None = None,
) -> Label:
    """A lane-marking label as BDD100K writes it (category = lane type, with the three attributes)."""
    name = LANE_CATEGORIES[attributes.category]
    return Label(
        id=str(label_id),
        category=name,
        attributes={
            "laneDirection": LANE_DIRECTIONS[attributes.direction],
            "laneStyle": LANE_STYLES[attributes.style],
            "laneTypes": name,
        },
        poly2d=[Poly2D([(float(x), float(y)) for x, y in vertices], types or "L" * len(vertices), False)],
    )


def _bezier(points: np.ndarray, samples: int) -> np.ndarray:
    """Points of the Bezier curve with control polygon `points` (de Casteljau), end point excluded."""
    t = np.linspace(0.0, 1.0, samples, endpoint=False)[:, None, None]
    pts = np.broadcast_to(points[None], (samples, *points.shape)).copy()
    while pts.shape[1] > 1:
        pts = (1 - t) * pts[:, :-1] + t * pts[:, 1:]
    return pts[:, 0]


def poly2d_points(poly: Poly2D, *, samples_per_curve: int = 20) -> np.ndarray:
    """The polyline of a Poly2D as an (N, 2) float array, Bezier segments sampled.

    A run of `C` vertices between two `L` vertices is the control polygon of one Bezier curve
    (two `C` make the cubic of Scalabel's `CURVE4` path code). A closed polygon repeats its first point.
    """
    vertices = np.asarray(poly.vertices, dtype=np.float64).reshape(-1, 2)
    out: list[np.ndarray] = []
    i = 0
    n = len(vertices)
    while i < n:
        if poly.types[i] == "C" and i > 0:
            j = i
            while j < n and poly.types[j] == "C":
                j += 1
            end = j if j < n else None
            controls = [vertices[i - 1], *vertices[i:j]]
            if end is not None:
                controls.append(vertices[end])
            out.append(_bezier(np.asarray(controls), samples_per_curve)[1:])
            if end is None:  # a curve with no end vertex stops at its last control point
                out.append(vertices[j - 1 : j])
            i = j
        else:
            out.append(vertices[i : i + 1])
            i += 1
    pts = np.concatenate(out) if out else np.zeros((0, 2))
    if poly.closed and len(pts) > 1:
        pts = np.concatenate([pts, pts[:1]])
    return pts


_SHIFT = 4  # cv2 fixed-point bits: draw at 1/16 pixel precision


def _cv2_points(points: np.ndarray) -> np.ndarray:
    return np.round(points * (1 << _SHIFT)).astype(np.int32).reshape(-1, 1, 2)


def rasterize_lanes(
    labels: Iterable[Label], image_size: tuple[int, int] = IMAGE_SIZE, *, thickness: int = 3
) -> np.ndarray:
    """Draw the lane labels of a frame into a lane mask (background 255).

    Lanes are drawn as open polylines of `thickness` pixels, as BDD100K's `lanemark_to_masks` does
    (`closed` is not used for lanes); later labels overwrite earlier ones.

    Args:
        labels: the frame's labels; those that are not lanes are skipped.
        image_size: (width, height) of the mask.
        thickness: line width in pixels.

    Returns:
        An HxW uint8 lane mask.
    """
    import cv2

    width, height = image_size
    mask = np.full((height, width), LANE_BACKGROUND, dtype=np.uint8)
    for label in labels:
        attrs = lane_attributes(label)
        if attrs is None or not label.poly2d:
            continue
        for poly in label.poly2d:
            open_poly = Poly2D(poly.vertices, poly.types, closed=False)
            pts = poly2d_points(open_poly)
            if len(pts) == 0:
                continue
            cv2.polylines(
                mask,
                [_cv2_points(pts)],
                False,
                int(attrs.value),
                thickness=max(1, int(thickness)),
                lineType=cv2.LINE_8,
                shift=_SHIFT,
            )
    return mask


def drivable_category(label: Label) -> int | None:
    """0 direct / 1 alternative for a drivable-area label (`direct`, `area/drivable`, legacy
    `drivable area` with `areaType`), else None."""
    category = label.category
    if category in ("direct", "area/drivable"):
        return 0
    if category in ("alternative", "area/alternative"):
        return 1
    if category == "drivable area":
        return 1 if label.attributes.get("areaType") == "alternative" else 0
    return None


def rasterize_drivable(labels: Iterable[Label], image_size: tuple[int, int] = IMAGE_SIZE) -> np.ndarray:
    """Fill the drivable-area polygons of a frame into a drivable mask (0 direct, 1 alternative, 2 background)."""
    import cv2

    width, height = image_size
    mask = np.full((height, width), DRIVABLE_BACKGROUND, dtype=np.uint8)
    for label in labels:
        value = drivable_category(label)
        if value is None or not label.poly2d:
            continue
        polys = [_cv2_points(poly2d_points(Poly2D(p.vertices, p.types, True))) for p in label.poly2d]
        cv2.fillPoly(mask, [p for p in polys if len(p) >= 3], int(value), lineType=cv2.LINE_8, shift=_SHIFT)
    return mask


def read_mask(
    path: str | os.PathLike, *, expected_shape: tuple[int, int] | None = None, kind: str = "lane"
) -> np.ndarray:
    """Read a one-channel uint8 PNG mask (lane or drivable).

    Args:
        path: the PNG.
        expected_shape: (height, width) it must have, or None.
        kind: `lane` or `drivable`, for messages.

    Raises:
        UserError: if the file is missing, unreadable, not single-channel 8-bit, or of the wrong size.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{kind} mask {path} does not exist.")
    try:
        with Image.open(path) as img:
            mode = img.mode
            array = np.asarray(img)
    except (UnidentifiedImageError, OSError) as err:
        raise UserError(f"{kind} mask {path} is not a readable image ({err}).") from None
    if mode not in ("L", "P") or array.ndim != 2 or array.dtype != np.uint8:
        raise UserError(
            f"{kind} mask {path} must be a single-channel uint8 PNG (got mode {mode}, dtype {array.dtype}, "
            f"shape {array.shape})."
        )
    if expected_shape is not None and array.shape != tuple(expected_shape):
        raise UserError(
            f"{kind} mask {path} is {array.shape[1]}x{array.shape[0]}, expected "
            f"{expected_shape[1]}x{expected_shape[0]}."
        )
    return array


def check_mask_array(
    mask: np.ndarray, *, expected_shape: tuple[int, int] | None = None, what: str = "mask"
) -> None:
    """Check an in-memory mask is HxW uint8 (of `expected_shape` when given).

    Raises:
        UserError: naming `what` when the dtype or size is wrong.
    """
    mask = np.asarray(mask)
    if mask.dtype != np.uint8 or mask.ndim != 2:
        raise UserError(f"{what} must be a 2-D uint8 array (got dtype {mask.dtype}, shape {mask.shape}).")
    if expected_shape is not None and mask.shape != tuple(expected_shape):
        raise UserError(f"{what} has shape {mask.shape}, expected {tuple(expected_shape)}.")


def write_mask(path: str | os.PathLike, mask: np.ndarray) -> None:
    """Write an HxW uint8 mask as a one-channel PNG, atomically.

    Raises:
        UserError: if the mask is not 2-D uint8 or the folder does not exist.
    """
    from PIL import Image

    check_mask_array(mask, what=f"mask for {path}")
    with atomic_path(path) as tmp:
        Image.fromarray(mask, mode="L").save(tmp, format="PNG")


def mask_name(frame_name: str) -> str:
    """`abc.jpg` -> `abc.png` (the mask of an image has its stem, without folders)."""
    return Path(frame_name).with_suffix(".png").name


def lane_polygons_to_masks(
    polygons: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    image_size: tuple[int, int] = IMAGE_SIZE,
    thickness: int = 3,
) -> int:
    """Convert a lane polygon file (`lane_{split}.json`) into one lane mask PNG per frame.

    The whole file is read and checked before anything is written; each PNG is written atomically.

    Returns:
        The number of masks written.

    Raises:
        UserError: on a missing or malformed polygon file.
    """
    frames = load_frames(polygons, image_size=None)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for frame in frames:
        write_mask(
            out / mask_name(frame.name), rasterize_lanes(frame.labels or [], image_size, thickness=thickness)
        )
    return len(frames)


def drivable_polygons_to_masks(
    polygons: str | os.PathLike, out_dir: str | os.PathLike, *, image_size: tuple[int, int] = IMAGE_SIZE
) -> int:
    """Convert a drivable polygon file (`drivable_{split}.json`) into one drivable mask PNG per frame.

    Returns:
        The number of masks written.
    """
    frames = load_frames(polygons, image_size=None)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for frame in frames:
        write_mask(out / mask_name(frame.name), rasterize_drivable(frame.labels or [], image_size))
    return len(frames)


# --------------------------------------------------------------------------------------------------
# YOLO dataset (the layout ultralytics trains on) and predictions
# --------------------------------------------------------------------------------------------------


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


def detections_to_frame(
    name: str,
    boxes_xyxy: np.ndarray | Sequence[Sequence[float]],
    scores: np.ndarray | Sequence[float],
    class_ids: np.ndarray | Sequence[int],
    *,
    class_names: Sequence[str] = DET_CATEGORIES,
    first_id: int = 0,
    **frame_fields: Any,
) -> Frame:
    """A detector's output for one image as a det-JSON frame with `score` on every label.

    Args:
        name: the image name (`abc.jpg`).
        boxes_xyxy: (N, 4) pixel corners.
        scores: (N,) confidences.
        class_ids: (N,) indices into `class_names`.
        class_names: the detector's class names (default: the 10 BDD100K classes).
        first_id: the id of the first label (ids count up from it).
        frame_fields: other `Frame` fields (`video_name`, `frame_index`, ...).

    Raises:
        ValueError: if the arrays disagree in length or a class id is out of range.
    """
    boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    scores_arr = np.asarray(scores, dtype=np.float64).reshape(-1)
    classes = np.asarray(class_ids).astype(np.int64).reshape(-1)
    if not len(boxes) == len(scores_arr) == len(classes):
        raise ValueError(f"{len(boxes)} boxes, {len(scores_arr)} scores and {len(classes)} class ids differ.")
    if len(classes) and (classes.min() < 0 or classes.max() >= len(class_names)):
        raise ValueError(f"class ids must lie in 0..{len(class_names) - 1}.")
    labels = [
        Label(
            id=str(first_id + i),
            category=class_names[int(c)],
            box2d=Box2D(*(float(v) for v in box)),
            score=float(s),
        )
        for i, (box, s, c) in enumerate(zip(boxes, scores_arr, classes))
    ]
    return Frame(name=name, labels=labels, **frame_fields)
