"""A random road scene of the synthetic sample: the road's lanes and their dividers (category, style),
the moving objects (cars, trucks, pedestrians, riders, signs, lights) and where they are over time.

Scene geometry only: no drawing, no file writing, no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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


#: Depths (0 bottom row, 1 horizon) between which an object is drawn and labelled.
VISIBLE_DEPTHS: tuple[float, float] = (0.02, 0.95)


@dataclass
class Marking:
    category: str
    style: str
    boundary: int  # index into the road's boundaries


@dataclass
class SceneObject:
    kind: str  # car, truck, pedestrian, rider, sign, light
    lane: float  # position across the road in lane units from the left edge (<0 or >n: sidewalk)
    depth: float  # 0 at the bottom of the image, 1 at the horizon
    speed: float  # depth change per second relative to the camera
    color: tuple[int, int, int]
    variant: int  # shape / bike kind / light colour
    height: float = 1.0  # for signs and lights: height above the road, in lane widths


@dataclass
class Scene:
    horizon: float
    vanish_u: float
    lane_width: float  # lane width at the bottom row, in image widths
    left: float  # left road edge at the bottom row, in image widths
    lanes: int
    ego: int
    curve: float
    markings: list[Marking]
    crosswalk: tuple[float, float] | None
    objects: list[SceneObject]
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


def make_scene(rng: np.random.Generator) -> Scene:
    lanes = int(rng.integers(2, 5))
    lane_width = float(rng.uniform(0.22, 0.30))
    ego = int(rng.integers(0, lanes))
    left = 0.5 + float(rng.uniform(-0.05, 0.05)) - (ego + 0.5) * lane_width
    markings = [Marking("road curb", "solid", 0), Marking("road curb", "solid", lanes)]
    probs = np.array([p for _, _, p in _DIVIDERS])
    for boundary in range(1, lanes):
        cat, style, _ = _DIVIDERS[int(rng.choice(len(_DIVIDERS), p=probs / probs.sum()))]
        markings.append(Marking(cat, style, boundary))
    crosswalk = None
    if rng.random() < 0.3:
        near = float(rng.uniform(0.08, 0.35))
        crosswalk = (near, near + float(rng.uniform(0.06, 0.1)))
    timeofday = str(rng.choice(["daytime", "daytime", "dawn/dusk", "night"]))
    brightness = {"daytime": 1.0, "dawn/dusk": 0.75, "night": 0.5}[timeofday]
    scene = Scene(
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
            SceneObject(
                kind, lane, float(rng.uniform(0.12, 0.8)), float(rng.uniform(-0.08, 0.08)), color(), 0
            )
        )
    for _ in range(int(rng.integers(0, 4))):  # pedestrians on the sidewalks
        side = -float(rng.uniform(0.3, 1.2)) if rng.random() < 0.5 else lanes + float(rng.uniform(0.3, 1.2))
        scene.objects.append(
            SceneObject("pedestrian", side, float(rng.uniform(0.08, 0.7)), -0.12, color(), 0)
        )
    for _ in range(int(rng.integers(0, 3))):  # riders near the road edges
        lane = 0.25 if rng.random() < 0.5 else lanes - 0.25
        scene.objects.append(
            SceneObject(
                "rider", lane, float(rng.uniform(0.08, 0.65)), -0.05, color(), int(rng.integers(0, 2))
            )
        )
    for _ in range(int(rng.integers(1, 4))):  # signs beside the road
        side = -float(rng.uniform(0.25, 0.6)) if rng.random() < 0.5 else lanes + float(rng.uniform(0.25, 0.6))
        scene.objects.append(
            SceneObject(
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
            SceneObject(
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
