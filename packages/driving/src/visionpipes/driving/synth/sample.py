"""The synthetic BDD100K sample: its typed config, the scenes rendered and written in the official
layout (images, det JSON, lane and drivable polygons and masks) plus short per-camera videos.

It only draws and writes files through the `bdd100k` writers; it never trains or scores.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import model_validator

from visionpipes.core.config import ConfigModel, Field
from visionpipes.core.errors import UserError
from visionpipes.core.io import atomic_path
from visionpipes.driving.bdd100k.categories import DRIVABLE_CATEGORIES, LANE_CATEGORIES
from visionpipes.driving.bdd100k.drivable import write_drivable_mask
from visionpipes.driving.bdd100k.labels import IMAGE_SIZE, Frame, Label, Poly2D
from visionpipes.driving.bdd100k.masks import (
    LaneAttributes,
    lane_label,
    mask_name,
    poly2d_points,
    rasterize_drivable,
    rasterize_lanes,
    write_mask,
)
from visionpipes.driving.synth.render import render_scene, to_pixels
from visionpipes.driving.synth.scene import VISIBLE_DEPTHS, Scene, make_scene

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


def _lane_labels(scene: Scene, size: tuple[int, int]) -> list[Label]:
    labels = []
    for marking in scene.markings:
        vertices = to_pixels(np.array(scene.boundary_bezier(float(marking.boundary), far=0.97)), size)
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
            labels.append(lane_label(str(len(labels)), [tuple(v) for v in to_pixels(ends, size)], attrs))
    return labels


#: Objects that end the drivable area of their lane (BDD100K's areas stop at the vehicle ahead).
_BLOCKING = ("car", "truck")


def drivable_labels(scene: Scene, size: tuple[int, int], *, far: float = 0.97) -> list[Label]:
    """The drivable areas of a scene as BDD100K labels: the ego lane (between its two lane markings)
    `direct`, the lanes beside it `alternative`, nothing elsewhere (background).

    Each area is the closed polygon between the lane's left and right boundaries (the lines the lane
    labels mark), from the bottom row (depth 0) to the nearest visible car or truck in that lane (the
    bottom edge of its box: the road beyond it is hidden) or to depth `far`.
    """
    labels = []
    for lane in range(scene.lanes):
        if abs(lane - scene.ego) > 1:
            continue
        end = min(
            [far]
            + [
                obj.depth
                for obj in scene.objects
                if obj.kind in _BLOCKING
                and VISIBLE_DEPTHS[0] < obj.depth < VISIBLE_DEPTHS[1]
                and int(obj.lane) == lane
            ]
        )
        left = poly2d_points(Poly2D(scene.boundary_bezier(float(lane), end), "LCCL"), samples_per_curve=32)
        right = poly2d_points(
            Poly2D(scene.boundary_bezier(float(lane + 1), end), "LCCL"), samples_per_curve=32
        )
        ring = to_pixels(np.concatenate([left, right[::-1]]), size)
        category = DRIVABLE_CATEGORIES[0] if lane == scene.ego else DRIVABLE_CATEGORIES[1]
        labels.append(
            Label(
                str(len(labels)), category, poly2d=[Poly2D([tuple(p) for p in ring], "L" * len(ring), True)]
            )
        )
    return labels


def _image_name(rng: np.random.Generator) -> str:
    a, b = rng.integers(0, 2**32, size=2)
    return f"{int(a):08x}-{int(b):08x}.jpg"


def _write_video(path: Path, scene: Scene, config: SynthConfig, rng: np.random.Generator) -> None:
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
            img, _ = render_scene(scene, (width, height), k / config.fps, rng)
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
                scene = make_scene(rng)
                name = _image_name(rng)
                img, boxes = render_scene(scene, config.image_size, 0.0, rng)
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
                area_labels = drivable_labels(scene, config.image_size)
                drivable.append(Frame(name, area_labels, attributes=dict(scene.attributes)))
                area = rasterize_drivable(area_labels, config.image_size)
                write_drivable_mask(drivable_dir / mask_name(name), area)
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
            _write_video(video, make_scene(rng), config, rng)
            summary["videos"].append(f"videos/{video.name}")
        (tmp / MARKER).write_text(json.dumps({"config": config.to_dict(), **summary}, indent=2) + "\n")
    summary["out"] = str(out)
    return summary
