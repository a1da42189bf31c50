"""A synthetic BDD100K sample: road scenes in perspective (lane markings of every category and style,
cars, trucks, pedestrians, riders with their bikes, traffic signs and lights) written in the official
layout, plus short per-camera videos for the stream demo.

It only draws (OpenCV) and writes files through the `bdd100k` writers; it never trains or scores.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import model_validator

from visionpipes.core.config import ConfigModel, Field
from visionpipes.core.errors import UserError
from visionpipes.core.io import atomic_path
from visionpipes.driving.bdd100k.categories import LANE_CATEGORIES
from visionpipes.driving.bdd100k.labels import IMAGE_SIZE, Box2D, Frame, Label, Poly2D
from visionpipes.driving.bdd100k.masks import (
    LaneAttributes,
    lane_label,
    mask_name,
    poly2d_points,
    rasterize_drivable,
    rasterize_lanes,
    write_mask,
)

#: The file that marks a folder as a sample written by `write_sample` (safe to replace).
MARKER = "synth.json"


class SynthConfig(ConfigModel):
    """What `write_sample` writes.

    Attributes:
        images: images over both splits.
        seed: random seed; the same config writes the same files.
        val_fraction: share of the images in `val` (at least one image in each split when images >= 2).
        cameras: number of videos `videos/cam{i}.mp4`.
        video_frames: frames per video.
        video_size: (width, height) of the videos.
        fps: frame rate of the videos.
        image_size: (width, height) of the images (BDD100K: 1280x720).
        lane_thickness: line width of the lane masks, pixels at `image_size`.
        jpeg_quality: JPEG quality of the images.
    """

    images: int = Field(40, ge=1)
    seed: int = 0
    val_fraction: float = Field(0.25, ge=0.0, lt=1.0)
    cameras: int = Field(4, ge=0)
    video_frames: int = Field(48, ge=1)
    video_size: tuple[int, int] = (640, 360)
    fps: int = Field(10, ge=1)
    image_size: tuple[int, int] = IMAGE_SIZE
    lane_thickness: int = Field(8, ge=1)
    jpeg_quality: int = Field(90, ge=1, le=100)

    @model_validator(mode="after")
    def _sizes(self) -> SynthConfig:
        if min(*self.image_size, *self.video_size) < 64:
            raise ValueError("image and video sizes must be at least 64 pixels")
        return self


# Lane dividers: (category, style, probability)
_DIVIDERS = (
    ("single white", "dashed", 0.36),
    ("single white", "solid", 0.14),
    ("double yellow", "solid", 0.14),
    ("single yellow", "dashed", 0.10),
    ("double white", "solid", 0.09),
    ("single other", "dashed", 0.09),
    ("double other", "solid", 0.08),
)
_PAINT = {  # BGR
    "white": (235, 235, 235),
    "yellow": (40, 200, 235),
    "other": (60, 140, 240),
}


@dataclass
class _Marking:
    category: str
    style: str
    boundary: int  # index into the road's boundaries


@dataclass
class _Object:
    kind: str  # car, truck, pedestrian, rider, sign, light
    lane: float  # position across the road in lane units from the left edge (<0 or >n: sidewalk)
    depth: float  # 0 at the bottom of the image, 1 at the horizon
    speed: float  # depth change per second relative to the camera
    color: tuple[int, int, int]
    variant: int  # shape / bike kind / light colour
    height: float = 1.0  # for signs and lights: height above the road, in lane widths


@dataclass
class _Scene:
    horizon: float
    vanish_u: float
    lane_width: float  # lane width at the bottom row, in image widths
    left: float  # left road edge at the bottom row, in image widths
    lanes: int
    ego: int
    curve: float
    markings: list[_Marking]
    crosswalk: tuple[float, float] | None
    objects: list[_Object]
    attributes: dict[str, str]
    sky: tuple[int, int, int]
    ground: tuple[int, int, int]
    road: tuple[int, int, int]
    brightness: float
    dash_speed: float = 1.5

    # geometry, in normalised image coordinates (u across, v down) ---------------------------------
    def v_at(self, depth: float | np.ndarray) -> np.ndarray:
        return 1.0 - np.asarray(depth) * (1.0 - self.horizon - 0.02)

    def scale_at(self, depth: float | np.ndarray) -> np.ndarray:
        """Image size of one unit at the bottom row, at this depth (1 at the bottom)."""
        return (self.v_at(depth) - self.horizon) / (1.0 - self.horizon)

    def u_at(self, lane: float | np.ndarray, depth: float | np.ndarray) -> np.ndarray:
        """u of the point `lane` lane widths from the left road edge, at `depth` (a parabola in depth)."""
        u_bottom = self.left + np.asarray(lane) * self.lane_width
        depth = np.asarray(depth)
        return self.vanish_u + (u_bottom - self.vanish_u) * self.scale_at(depth) + self.curve * depth**2

    def boundary_bezier(self, lane: float, far: float = 1.0) -> list[tuple[float, float]]:
        """The cubic Bezier control polygon (normalised) of the line `lane` from depth 0 to `far`.

        u and v are polynomials of degree <= 2 in depth, so a cubic represents the line exactly.
        """
        p0 = np.array([self.u_at(lane, 0.0), self.v_at(0.0)], dtype=np.float64)
        p_mid = np.array([self.u_at(lane, far / 2), self.v_at(far / 2)], dtype=np.float64)
        p2 = np.array([self.u_at(lane, far), self.v_at(far)], dtype=np.float64)
        p1 = 2 * p_mid - (p0 + p2) / 2  # quadratic control point through the mid point
        q1 = p0 + 2 / 3 * (p1 - p0)
        q2 = p2 + 2 / 3 * (p1 - p2)
        return [tuple(p0), tuple(q1), tuple(q2), tuple(p2)]


def _make_scene(rng: np.random.Generator) -> _Scene:
    lanes = int(rng.integers(2, 5))
    lane_width = float(rng.uniform(0.22, 0.30))
    ego = int(rng.integers(0, lanes))
    left = 0.5 + float(rng.uniform(-0.05, 0.05)) - (ego + 0.5) * lane_width
    markings = [_Marking("road curb", "solid", 0), _Marking("road curb", "solid", lanes)]
    probs = np.array([p for _, _, p in _DIVIDERS])
    for boundary in range(1, lanes):
        cat, style, _ = _DIVIDERS[int(rng.choice(len(_DIVIDERS), p=probs / probs.sum()))]
        markings.append(_Marking(cat, style, boundary))
    crosswalk = None
    if rng.random() < 0.3:
        near = float(rng.uniform(0.08, 0.35))
        crosswalk = (near, near + float(rng.uniform(0.06, 0.1)))
    timeofday = str(rng.choice(["daytime", "daytime", "dawn/dusk", "night"]))
    brightness = {"daytime": 1.0, "dawn/dusk": 0.75, "night": 0.5}[timeofday]
    scene = _Scene(
        horizon=float(rng.uniform(0.40, 0.50)),
        vanish_u=float(rng.uniform(0.42, 0.58)),
        lane_width=lane_width,
        left=left,
        lanes=lanes,
        ego=ego,
        curve=float(rng.uniform(-0.15, 0.15)),
        markings=markings,
        crosswalk=crosswalk,
        objects=[],
        attributes={
            "weather": str(rng.choice(["clear", "overcast", "partly cloudy"])),
            "scene": str(rng.choice(["city street", "highway", "residential"])),
            "timeofday": timeofday,
        },
        sky=tuple(int(c) for c in rng.integers([170, 120, 60], [250, 200, 140])),
        ground=tuple(int(c) for c in rng.integers([60, 90, 60], [120, 150, 120])),
        road=tuple(int(c) for c in np.full(3, rng.integers(70, 115)) + rng.integers(-6, 7, 3)),
        brightness=brightness,
    )

    def color() -> tuple[int, int, int]:
        return tuple(int(c) for c in rng.integers(20, 236, 3))

    for _ in range(int(rng.integers(1, 6))):  # vehicles in lanes
        kind = "truck" if rng.random() < 0.3 else "car"
        lane = int(rng.integers(0, lanes)) + 0.5 + float(rng.uniform(-0.1, 0.1))
        scene.objects.append(
            _Object(kind, lane, float(rng.uniform(0.12, 0.8)), float(rng.uniform(-0.08, 0.08)), color(), 0)
        )
    for _ in range(int(rng.integers(0, 4))):  # pedestrians on the sidewalks
        side = -float(rng.uniform(0.3, 1.2)) if rng.random() < 0.5 else lanes + float(rng.uniform(0.3, 1.2))
        scene.objects.append(_Object("pedestrian", side, float(rng.uniform(0.08, 0.7)), -0.12, color(), 0))
    for _ in range(int(rng.integers(0, 3))):  # riders near the road edges
        lane = 0.25 if rng.random() < 0.5 else lanes - 0.25
        scene.objects.append(
            _Object("rider", lane, float(rng.uniform(0.08, 0.65)), -0.05, color(), int(rng.integers(0, 2)))
        )
    for _ in range(int(rng.integers(1, 4))):  # signs beside the road
        side = -float(rng.uniform(0.25, 0.6)) if rng.random() < 0.5 else lanes + float(rng.uniform(0.25, 0.6))
        scene.objects.append(
            _Object(
                "sign",
                side,
                float(rng.uniform(0.1, 0.6)),
                -0.12,
                color(),
                int(rng.integers(0, 3)),
                height=float(rng.uniform(0.5, 0.8)),
            )
        )
    for _ in range(int(rng.integers(0, 3))):  # lights over the road
        lane = float(rng.uniform(0.3, lanes - 0.3))
        scene.objects.append(
            _Object(
                "light",
                lane,
                float(rng.uniform(0.25, 0.7)),
                -0.12,
                (30, 30, 30),
                int(rng.integers(0, 3)),
                height=float(rng.uniform(1.2, 1.6)),
            )
        )
    return scene


# ------------------------------------------------------------------------------------------ drawing


def _px(points: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(points, dtype=np.float64) * np.array(size, dtype=np.float64)


def _poly(points: np.ndarray) -> np.ndarray:
    return np.round(points).astype(np.int32).reshape(-1, 1, 2)


def _draw_background(scene: _Scene, img: np.ndarray, size: tuple[int, int]) -> None:
    import cv2

    width, height = size
    hy = int(scene.horizon * height)
    for y in range(hy + 1):
        img[y] = np.array(scene.sky) * (0.75 + 0.25 * y / max(hy, 1))
    img[hy:] = scene.ground
    depths = np.linspace(0.0, 1.0, 40)
    left = _px(np.stack([scene.u_at(0.0, depths), scene.v_at(depths)], 1), size)
    right = _px(np.stack([scene.u_at(float(scene.lanes), depths), scene.v_at(depths)], 1), size)
    for side, sign in ((left, -1), (right, 1)):  # sidewalks: a lighter band outside each curb
        far = side.copy()
        far[:, 0] += sign * 0.9 * scene.lane_width * width * scene.scale_at(depths)
        cv2.fillPoly(img, [_poly(np.concatenate([side, far[::-1]]))], (150, 150, 155), cv2.LINE_AA)
    cv2.fillPoly(img, [_poly(np.concatenate([left, right[::-1]]))], scene.road, cv2.LINE_AA)


def _line_points(
    scene: _Scene, lane: float, size: tuple[int, int], samples: int = 120
) -> tuple[np.ndarray, np.ndarray]:
    depths = np.linspace(0.0, 1.0, samples)
    pts = _px(np.stack([scene.u_at(lane, depths), scene.v_at(depths)], 1), size)
    return pts, depths


def _draw_markings(scene: _Scene, img: np.ndarray, size: tuple[int, int], t: float) -> None:
    import cv2

    width = size[0]
    for marking in scene.markings:
        pts, depths = _line_points(scene, float(marking.boundary), size)
        scale = scene.scale_at(depths)
        if marking.category == "road curb":
            for i in range(len(pts) - 1):
                th = max(1, round(0.025 * scene.lane_width * width * 4 * scale[i]))
                cv2.line(img, _poly(pts[i])[0, 0], _poly(pts[i + 1])[0, 0], (200, 200, 200), th, cv2.LINE_AA)
            continue
        paint = _PAINT[
            "yellow" if "yellow" in marking.category else "other" if "other" in marking.category else "white"
        ]
        offsets = [0.0] if marking.category.startswith("single") else [-0.03, 0.03]
        z = 1.0 / np.maximum(scale, 1e-3)  # distance along the road: dashes repeat in z
        on = np.ones(len(pts), dtype=bool)
        if marking.style == "dashed":
            on = ((z * 0.9 + t * scene.dash_speed) % 1.0) < 0.5
        for off in offsets:
            shifted = pts.copy()
            shifted[:, 0] += off * scene.lane_width * width * scale
            for i in range(len(pts) - 1):
                if on[i]:
                    th = max(1, round(0.05 * scene.lane_width * width * scale[i]))
                    p, q = _poly(shifted[i])[0, 0], _poly(shifted[i + 1])[0, 0]
                    cv2.line(img, p, q, paint, th, cv2.LINE_AA)
    if scene.crosswalk is not None:
        near, far = scene.crosswalk
        stripes = 4 * scene.lanes
        for k in range(stripes):
            a, b = k / stripes, (k + 0.5) / stripes
            lanes = scene.lanes
            quad = np.array(
                [
                    [scene.u_at(a * lanes, near), scene.v_at(near)],
                    [scene.u_at(b * lanes, near), scene.v_at(near)],
                    [scene.u_at(b * lanes, far), scene.v_at(far)],
                    [scene.u_at(a * lanes, far), scene.v_at(far)],
                ]
            )
            cv2.fillPoly(img, [_poly(_px(quad, size))], _PAINT["white"], cv2.LINE_AA)


def _pt(x: float, y: float) -> tuple[int, int]:
    return round(x), round(y)


def _object_box(scene: _Scene, obj: _Object, size: tuple[int, int]) -> tuple[float, float, float, float]:
    """The object's full box (x1, y1, x2, y2) in pixels, before clipping."""
    width, height = size
    lane_px = scene.lane_width * width * float(scene.scale_at(obj.depth))
    u = float(scene.u_at(obj.lane, obj.depth)) * width
    v = float(scene.v_at(obj.depth)) * height
    if obj.kind == "car":
        w, h = 0.72 * lane_px, 0.55 * lane_px
    elif obj.kind == "truck":
        w, h = 0.82 * lane_px, 0.95 * lane_px
    elif obj.kind == "pedestrian":
        h = 0.55 * lane_px
        w = 0.22 * lane_px
    elif obj.kind == "rider":
        h = 0.58 * lane_px
        w = 0.24 * lane_px
    elif obj.kind == "sign":
        w = h = max(0.22 * lane_px, 10.0)
        v -= obj.height * lane_px
    else:  # light
        w, h = max(0.11 * lane_px, 6.0), max(0.28 * lane_px, 14.0)
        v -= obj.height * lane_px
    return u - w / 2, v - h, u + w / 2, v


def _draw_object(
    scene: _Scene, obj: _Object, img: np.ndarray, size: tuple[int, int]
) -> list[tuple[str, tuple]]:
    """Draw one object; returns its labelled parts as (category, full box) — riders give two."""
    import cv2

    x1, y1, x2, y2 = _object_box(scene, obj, size)
    w, h = x2 - x1, y2 - y1
    dark = tuple(int(c * 0.45) for c in obj.color)
    if obj.kind in ("car", "truck"):
        if obj.kind == "truck":
            cv2.rectangle(img, _pt(x1, y1), _pt(x2, y2 - 0.12 * h), (205, 205, 200), -1)  # cargo box
            cv2.rectangle(
                img, _pt(x1 + 0.08 * w, y2 - 0.35 * h), _pt(x2 - 0.08 * w, y2 - 0.08 * h), obj.color, -1
            )
        else:
            cv2.rectangle(img, _pt(x1, y1 + 0.35 * h), _pt(x2, y2 - 0.1 * h), obj.color, -1)
            roof = np.array(
                [
                    [x1 + 0.15 * w, y1 + 0.38 * h],
                    [x1 + 0.25 * w, y1],
                    [x2 - 0.25 * w, y1],
                    [x2 - 0.15 * w, y1 + 0.38 * h],
                ]
            )
            cv2.fillPoly(img, [_poly(roof)], obj.color, cv2.LINE_AA)
            cv2.fillPoly(
                img,
                [
                    _poly(
                        roof * [1, 1]
                        + [
                            [0.05 * w, 0.06 * h],
                            [0.03 * w, 0.06 * h],
                            [-0.03 * w, 0.06 * h],
                            [-0.05 * w, 0.0],
                        ]
                    )
                ],
                dark,
            )
        for wx in (x1 + 0.04 * w, x2 - 0.2 * w):  # wheels
            cv2.rectangle(img, _pt(wx, y2 - 0.16 * h), _pt(wx + 0.16 * w, y2), (20, 20, 20), -1)
        for lx in (x1 + 0.04 * w, x2 - 0.14 * w):  # tail lights
            cv2.rectangle(
                img,
                _pt(lx, y2 - 0.42 * h if obj.kind == "car" else y2 - 0.3 * h),
                _pt(lx + 0.1 * w, y2 - 0.32 * h if obj.kind == "car" else y2 - 0.22 * h),
                (20, 20, 210),
                -1,
            )
        return [(obj.kind, (x1, y1, x2, y2))]
    if obj.kind in ("pedestrian", "rider"):
        parts = []
        if obj.kind == "rider":
            # the bike under the rider: two wheels and a frame, wider than the rider
            bw = 1.9 * w
            bx1, by1, bx2, by2 = x1 - 0.45 * w, y2 - 0.45 * h, x1 - 0.45 * w + bw, y2
            r = 0.22 * h
            for cx in (bx1 + r, bx2 - r):
                cv2.circle(
                    img, _pt(cx, by2 - r), max(1, int(r)), (25, 25, 25), max(1, int(0.06 * h)), cv2.LINE_AA
                )
            frame_color = (40, 40, 180) if obj.variant else (160, 90, 30)
            if obj.variant:  # motorcycle: a solid body between the wheels
                cv2.rectangle(img, _pt(bx1 + r, by2 - 1.6 * r), _pt(bx2 - r, by2 - 0.8 * r), frame_color, -1)
            else:
                cv2.line(
                    img,
                    _pt(bx1 + r, by2 - r),
                    _pt(bx1 + 0.5 * bw, by2 - 1.7 * r),
                    frame_color,
                    max(1, int(0.05 * h)),
                )
                cv2.line(
                    img,
                    _pt(bx2 - r, by2 - r),
                    _pt(bx1 + 0.5 * bw, by2 - 1.7 * r),
                    frame_color,
                    max(1, int(0.05 * h)),
                )
            parts.append(("motorcycle" if obj.variant else "bicycle", (bx1, by1, bx2, by2)))
            y2_person = y2 - 0.25 * h
        else:
            y2_person = y2
        ph = y2_person - y1
        cx = (x1 + x2) / 2
        cv2.circle(
            img, _pt(cx, y1 + 0.1 * ph), max(1, int(0.1 * ph)), (150, 170, 200), -1, cv2.LINE_AA
        )  # head
        cv2.rectangle(
            img, _pt(x1 + 0.12 * w, y1 + 0.2 * ph), _pt(x2 - 0.12 * w, y1 + 0.6 * ph), obj.color, -1
        )
        leg = max(1, int(0.16 * w))
        cv2.line(img, _pt(cx - 0.15 * w, y1 + 0.6 * ph), _pt(x1 + 0.15 * w, y2_person), dark, leg)
        cv2.line(img, _pt(cx + 0.15 * w, y1 + 0.6 * ph), _pt(x2 - 0.15 * w, y2_person), dark, leg)
        parts.append((obj.kind, (x1, y1, x2, y2_person)))
        return parts
    # signs and lights stand on a pole
    ground = float(scene.v_at(obj.depth)) * size[1]
    cx = (x1 + x2) / 2
    cv2.line(img, _pt(cx, y2), _pt(cx, ground), (90, 90, 90), max(1, int(0.12 * w)))
    if obj.kind == "sign":
        if obj.variant == 0:  # red octagon
            ang = np.linspace(0, 2 * np.pi, 9)[:-1] + np.pi / 8
            pts = np.stack([cx + 0.5 * w * np.cos(ang), (y1 + y2) / 2 + 0.5 * h * np.sin(ang)], 1)
            cv2.fillPoly(img, [_poly(pts)], (30, 30, 200), cv2.LINE_AA)
        elif obj.variant == 1:  # blue circle
            cv2.circle(img, _pt(cx, (y1 + y2) / 2), max(1, int(w / 2)), (190, 90, 20), -1, cv2.LINE_AA)
            cv2.circle(img, _pt(cx, (y1 + y2) / 2), max(1, int(w / 4)), (240, 240, 240), -1, cv2.LINE_AA)
        else:  # yellow diamond
            pts = np.array([[cx, y1], [x2, (y1 + y2) / 2], [cx, y2], [x1, (y1 + y2) / 2]])
            cv2.fillPoly(img, [_poly(pts)], (20, 200, 235), cv2.LINE_AA)
        return [("traffic sign", (x1, y1, x2, y2))]
    cv2.rectangle(img, _pt(x1, y1), _pt(x2, y2), (25, 25, 25), -1)
    lit = [(40, 40, 235), (30, 190, 235), (60, 220, 60)][obj.variant]
    for k in range(3):
        color = lit if k == obj.variant else (60, 60, 60)
        cv2.circle(img, _pt(cx, y1 + (k + 0.5) * h / 3), max(1, int(0.36 * w)), color, -1, cv2.LINE_AA)
    return [("traffic light", (x1, y1, x2, y2))]


_LIGHT_COLOR = ("R", "Y", "G")


def _render(
    scene: _Scene, size: tuple[int, int], t: float, rng: np.random.Generator
) -> tuple[np.ndarray, list[Label]]:
    """Draw the scene at time `t`; returns the BGR image and its box labels (clipped, occlusion-aware)."""
    import cv2

    width, height = size
    img = np.zeros((height, width, 3), dtype=np.uint8)
    _draw_background(scene, img, size)
    _draw_markings(scene, img, size, t)
    visible = [o for o in scene.objects if 0.02 < o.depth < 0.95]
    parts: list[tuple[str, tuple, _Object]] = []
    for obj in sorted(visible, key=lambda o: -o.depth):  # far to near
        parts.extend((cat, box, obj) for cat, box in _draw_object(scene, obj, img, size))
    img = np.clip(img.astype(np.float32) * scene.brightness + rng.normal(0, 4, img.shape), 0, 255).astype(
        np.uint8
    )
    img = cv2.GaussianBlur(img, (3, 3), 0)

    labels: list[Label] = []
    boxes = np.array([box for _, box, _ in parts], dtype=np.float64).reshape(-1, 4)
    clipped = boxes.copy()
    clipped[:, [0, 2]] = np.clip(clipped[:, [0, 2]], 0, width - 1)
    clipped[:, [1, 3]] = np.clip(clipped[:, [1, 3]], 0, height - 1)
    for i, (cat, _, obj) in enumerate(parts):
        x1, y1, x2, y2 = clipped[i]
        full = (boxes[i, 2] - boxes[i, 0]) * (boxes[i, 3] - boxes[i, 1])
        area = max(x2 - x1, 0) * max(y2 - y1, 0)
        if x2 - x1 < 4 or y2 - y1 < 4 or area < 0.3 * full:
            continue
        share = 0.0  # the largest share of this box that one nearer object covers
        for j in range(i + 1, len(parts)):  # nearer objects are drawn later
            if parts[j][2] is obj:
                continue
            ix = max(0.0, min(x2, clipped[j, 2]) - max(x1, clipped[j, 0]))
            iy = max(0.0, min(y2, clipped[j, 3]) - max(y1, clipped[j, 1]))
            share = max(share, ix * iy / max(area, 1e-6))
        if share > 0.7:
            continue
        attributes: dict[str, Any] = {
            "occluded": bool(share > 0.1),
            "truncated": bool(area < full - 1e-6),
            "crowd": False,
        }
        if cat == "traffic light":
            attributes["trafficLightColor"] = _LIGHT_COLOR[obj.variant]
        labels.append(
            Label(
                str(len(labels)),
                cat,
                attributes,
                box2d=Box2D(*(round(float(v), 3) for v in (x1, y1, x2, y2))),
            )
        )
    return img, labels


def _lane_labels(scene: _Scene, size: tuple[int, int]) -> list[Label]:
    labels = []
    for marking in scene.markings:
        vertices = _px(np.array(scene.boundary_bezier(float(marking.boundary), far=0.97)), size)
        attrs = LaneAttributes(LANE_CATEGORIES.index(marking.category), int(marking.style == "dashed"), 0)
        labels.append(lane_label(str(len(labels)), [tuple(v) for v in vertices], attrs, types="LCCL"))
    if scene.crosswalk is not None:
        for depth in scene.crosswalk:  # the near and far edges of the crosswalk, across the road
            ends = np.array(
                [
                    [scene.u_at(0.0, depth), scene.v_at(depth)],
                    [scene.u_at(float(scene.lanes), depth), scene.v_at(depth)],
                ]
            )
            attrs = LaneAttributes(LANE_CATEGORIES.index("crosswalk"), 0, 1)
            labels.append(lane_label(str(len(labels)), [tuple(v) for v in _px(ends, size)], attrs))
    return labels


def _drivable_labels(scene: _Scene, size: tuple[int, int]) -> list[Label]:
    labels = []
    far = 0.97
    for lane in range(scene.lanes):
        if abs(lane - scene.ego) > 1:
            continue
        left = poly2d_points(Poly2D(scene.boundary_bezier(float(lane), far), "LCCL"), samples_per_curve=16)
        right = poly2d_points(
            Poly2D(scene.boundary_bezier(float(lane + 1), far), "LCCL"), samples_per_curve=16
        )
        ring = _px(np.concatenate([left, right[::-1]]), size)
        category = "direct" if lane == scene.ego else "alternative"
        labels.append(
            Label(
                str(len(labels)), category, poly2d=[Poly2D([tuple(p) for p in ring], "L" * len(ring), True)]
            )
        )
    return labels


def _image_name(rng: np.random.Generator) -> str:
    a, b = rng.integers(0, 2**32, size=2)
    return f"{int(a):08x}-{int(b):08x}.jpg"


def _write_video(path: Path, scene: _Scene, config: SynthConfig, rng: np.random.Generator) -> None:
    import cv2

    width, height = config.video_size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), float(config.fps), (width, height))
    if not writer.isOpened():
        raise UserError(f"OpenCV cannot write mp4v video {path} on this system.")
    try:
        for k in range(config.video_frames):
            for obj in scene.objects:  # the camera moves forward; the others move at their own speed
                obj.depth += obj.speed / config.fps
                if obj.depth < 0.03:  # passed the camera: reappears far ahead
                    obj.depth = 0.85
                elif obj.depth > 0.9:
                    obj.depth = 0.12
            img, _ = _render(scene, (width, height), k / config.fps, rng)
            writer.write(img)
    finally:
        writer.release()


def write_sample(out_dir: str | os.PathLike, config: SynthConfig | None = None) -> dict[str, Any]:
    """Write a synthetic sample in the BDD100K layout (plus camera videos).

    Layout: `images/100k/{train,val}/*.jpg`, `labels/det_20/det_{split}.json`,
    `labels/lane/polygons/lane_{split}.json`, `labels/lane/masks/{split}/*.png`,
    `labels/drivable/polygons/drivable_{split}.json`, `labels/drivable/masks/{split}/*.png`,
    `videos/cam{i}.mp4`, and `synth.json` (the config and counts). Everything is written to a
    temporary folder and renamed into place.

    Args:
        out_dir: the folder; replaced when it holds an earlier sample, refused when it holds other files.
        config: what to write (default `SynthConfig()`).

    Returns:
        A summary: images and boxes per split, videos.

    Raises:
        UserError: on a bad config or an `out_dir` that holds other files.

    Example:
        >>> write_sample("data/driving/raw", SynthConfig(images=8, seed=1))  # doctest: +SKIP
    """
    import cv2

    config = config or SynthConfig()
    out = Path(out_dir).resolve()
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MARKER).is_file())):
        raise UserError(
            f"output folder {out} exists and is not a synthetic sample; refusing to overwrite it."
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(config.seed)
    n_val = round(config.images * config.val_fraction)
    if config.images >= 2 and config.val_fraction > 0:
        n_val = min(max(n_val, 1), config.images - 1)
    splits = {"train": config.images - n_val, "val": n_val}
    summary: dict[str, Any] = {"images": {}, "boxes": {}, "videos": []}
    with atomic_path(out, is_dir=True) as tmp:
        for split, count in splits.items():
            image_dir = tmp / "images" / "100k" / split
            lane_dir = tmp / "labels" / "lane" / "masks" / split
            drivable_dir = tmp / "labels" / "drivable" / "masks" / split
            for folder in (
                image_dir,
                lane_dir,
                drivable_dir,
                tmp / "labels" / "det_20",
                tmp / "labels" / "lane" / "polygons",
                tmp / "labels" / "drivable" / "polygons",
            ):
                folder.mkdir(parents=True, exist_ok=True)
            det, lanes, drivable = [], [], []
            for _ in range(count):
                scene = _make_scene(rng)
                name = _image_name(rng)
                img, boxes = _render(scene, config.image_size, 0.0, rng)
                if not cv2.imwrite(
                    str(image_dir / name), img, [cv2.IMWRITE_JPEG_QUALITY, config.jpeg_quality]
                ):
                    raise UserError(f"could not write image {image_dir / name}.")
                det.append(Frame(name, boxes, attributes=dict(scene.attributes)))
                lane_labels = _lane_labels(scene, config.image_size)
                lanes.append(Frame(name, lane_labels, attributes=dict(scene.attributes)))
                write_mask(
                    lane_dir / mask_name(name),
                    rasterize_lanes(lane_labels, config.image_size, thickness=config.lane_thickness),
                )
                area_labels = _drivable_labels(scene, config.image_size)
                drivable.append(Frame(name, area_labels, attributes=dict(scene.attributes)))
                write_mask(drivable_dir / mask_name(name), rasterize_drivable(area_labels, config.image_size))
            for path, frames in (
                (tmp / "labels" / "det_20" / f"det_{split}.json", det),
                (tmp / "labels" / "lane" / "polygons" / f"lane_{split}.json", lanes),
                (tmp / "labels" / "drivable" / "polygons" / f"drivable_{split}.json", drivable),
            ):
                path.write_text(json.dumps([frame.to_dict() for frame in frames]))
            summary["images"][split] = count
            summary["boxes"][split] = sum(len(frame.labels or []) for frame in det)
        if config.cameras:
            (tmp / "videos").mkdir()
        for cam in range(config.cameras):
            video = tmp / "videos" / f"cam{cam}.mp4"
            _write_video(video, _make_scene(rng), config, rng)
            summary["videos"].append(f"videos/{video.name}")
        (tmp / MARKER).write_text(json.dumps({"config": config.to_dict(), **summary}, indent=2) + "\n")
    summary["out"] = str(out)
    return summary
