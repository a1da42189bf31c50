"""Drawing a synthetic road scene in perspective with OpenCV: background, lane markings of every
category and style, and the objects, with the box of each visible object for the det labels.

Draws into arrays; writes no files.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from visionpipes.driving.bdd100k.labels import Box2D, Label
from visionpipes.driving.synth.scene import VISIBLE_DEPTHS, Scene, SceneObject

# ------------------------------------------------------------------------------------------ drawing


_PAINT = {  # BGR
    "white": (235, 235, 235),
    "yellow": (40, 200, 235),
    "other": (60, 140, 240),
}


def to_pixels(points: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(points, dtype=np.float64) * np.array(size, dtype=np.float64)


def _poly(points: np.ndarray) -> np.ndarray:
    return np.round(points).astype(np.int32).reshape(-1, 1, 2)


def _draw_background(scene: Scene, img: np.ndarray, size: tuple[int, int]) -> None:
    import cv2

    width, height = size
    hy = int(scene.horizon * height)
    for y in range(hy + 1):
        img[y] = np.array(scene.sky) * (0.75 + 0.25 * y / max(hy, 1))
    img[hy:] = scene.ground
    depths = np.linspace(0.0, 1.0, 40)
    left = to_pixels(np.stack([scene.u_at(0.0, depths), scene.v_at(depths)], 1), size)
    right = to_pixels(np.stack([scene.u_at(float(scene.lanes), depths), scene.v_at(depths)], 1), size)
    for side, sign in ((left, -1), (right, 1)):  # sidewalks: a lighter band outside each curb
        far = side.copy()
        far[:, 0] += sign * 0.9 * scene.lane_width * width * scene.scale_at(depths)
        cv2.fillPoly(img, [_poly(np.concatenate([side, far[::-1]]))], (150, 150, 155), cv2.LINE_AA)
    cv2.fillPoly(img, [_poly(np.concatenate([left, right[::-1]]))], scene.road, cv2.LINE_AA)


def _line_points(
    scene: Scene, lane: float, size: tuple[int, int], samples: int = 120
) -> tuple[np.ndarray, np.ndarray]:
    depths = np.linspace(0.0, 1.0, samples)
    pts = to_pixels(np.stack([scene.u_at(lane, depths), scene.v_at(depths)], 1), size)
    return pts, depths


def _draw_markings(scene: Scene, img: np.ndarray, size: tuple[int, int], t: float) -> None:
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
            cv2.fillPoly(img, [_poly(to_pixels(quad, size))], _PAINT["white"], cv2.LINE_AA)


def _pt(x: float, y: float) -> tuple[int, int]:
    return round(x), round(y)


def _object_box(scene: Scene, obj: SceneObject, size: tuple[int, int]) -> tuple[float, float, float, float]:
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
    scene: Scene, obj: SceneObject, img: np.ndarray, size: tuple[int, int]
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


def render_scene(
    scene: Scene, size: tuple[int, int], t: float, rng: np.random.Generator
) -> tuple[np.ndarray, list[Label]]:
    """Draw the scene at time `t`; returns the BGR image and its box labels (clipped, occlusion-aware)."""
    import cv2

    width, height = size
    img = np.zeros((height, width, 3), dtype=np.uint8)
    _draw_background(scene, img, size)
    _draw_markings(scene, img, size, t)
    visible = [o for o in scene.objects if VISIBLE_DEPTHS[0] < o.depth < VISIBLE_DEPTHS[1]]
    parts: list[tuple[str, tuple, SceneObject]] = []
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
