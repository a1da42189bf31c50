"""BDD100K masks: the bit-encoded lane PNG (category, style, direction, background bits), lane and
drivable polygons rasterised into masks, and the one reader/writer of mask PNGs.

Reads and writes files; never scores, trains, or imports torch.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from visionpipes.core.errors import UserError
from visionpipes.core.io import atomic_path
from visionpipes.driving.bdd100k.categories import (
    DRIVABLE_BACKGROUND,
    LANE_BACKGROUND,
    LANE_BACKGROUND_BIT,
    LANE_CATEGORIES,
    LANE_DIRECTION_BIT,
    LANE_DIRECTIONS,
    LANE_STYLE_BIT,
    LANE_STYLES,
)
from visionpipes.driving.bdd100k.labels import IMAGE_SIZE, Label, Poly2D, load_frames


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
    except (
        UnidentifiedImageError,
        OSError,
        ValueError,
        ImportError,
    ) as err:  # ImportError: ultralytics' Image.open patch (pi-heif)
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
