"""What a stream run writes while it runs: per camera a JSON Lines label log (flushed per batch,
converted to the BDD100K JSON at the end; with the multi-task model each frame also carries its
drivable area as Scalabel `area/drivable` / `area/alternative` polygons) and an annotated video in
segments (one per frame size), and the cameras' `status.json`.

Runtime: OpenCV and the standard library only; no per-frame fsync (throughput), no training code.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from visionpipes.core.io import atomic_path, write_json
from visionpipes.driving.bdd100k.categories import DRIVABLE_BACKGROUND
from visionpipes.driving.bdd100k.labels import Frame, Label, Poly2D

#: Scalabel categories of the drivable-area polygons, by drivable-mask value (0 direct, 1 alternative),
#: as BDD100K's `drivable_{split}.json` names them (`bdd100k.masks.drivable_category` reads them back).
DRIVABLE_LABEL_CATEGORIES: tuple[str, str] = ("area/drivable", "area/alternative")


def drivable_labels(mask: np.ndarray, *, first_id: int = 0, epsilon: float = 1.0, min_area: float = 4.0) -> list[Label]:
    """A drivable mask as BDD100K drivable-area labels: one label per area type present, its
    `poly2d` the closed outlines of its regions and of their holes (OpenCV contours, simplified by
    Douglas-Peucker with `epsilon` pixels). `bdd100k.masks.rasterize_drivable` fills them back
    into the mask (even-odd: a hole's outline cuts it out).

    Args:
        mask: HxW uint8 official drivable mask (0 direct, 1 alternative, 2 background).
        first_id: the id of the first label (the frame's boxes come before).
        epsilon: simplification tolerance in pixels (0: every contour vertex).
        min_area: regions (with their holes) and holes smaller than this many pixels are left out.

    Returns:
        Up to two labels, `area/drivable` then `area/alternative`.
    """
    import cv2

    mask = np.asarray(mask)
    labels: list[Label] = []
    for value, category in enumerate(DRIVABLE_LABEL_CATEGORIES):
        if value == DRIVABLE_BACKGROUND:
            continue
        region = (mask == value).astype(np.uint8)
        if not region.any():
            continue
        contours, hierarchy = cv2.findContours(region, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
        areas = [cv2.contourArea(c) for c in contours]
        polys: list[Poly2D] = []
        for k, contour in enumerate(contours):
            parent = hierarchy[0][k][3]  # RETR_CCOMP: outer outlines have none, holes their region
            if areas[k] < min_area or (parent >= 0 and areas[parent] < min_area):
                continue
            points = (cv2.approxPolyDP(contour, epsilon, True) if epsilon > 0 else contour).reshape(-1, 2)
            if len(points) < 3:
                continue
            polys.append(Poly2D([(float(x), float(y)) for x, y in points], "L" * len(points), True))
        if polys:
            labels.append(Label(id=str(first_id + len(labels)), category=category, poly2d=polys))
    return labels


class LabelLog:
    """One camera's frames as JSON Lines, written as they come (memory stays bounded on a live camera).

    Args:
        path: the `.jsonl` file (replaced: a run starts a new log).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._file = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 - open for the whole run

    def write(self, frame: Frame) -> None:
        """Append one frame (buffered; `flush` makes it visible to readers)."""
        self._file.write(json.dumps(frame.to_dict()) + "\n")

    def flush(self) -> None:
        """Hand the buffered frames to the operating system (no fsync)."""
        if not self._file.closed:
            self._file.flush()

    def close(self) -> None:
        """Flush and close (idempotent)."""
        if not self._file.closed:
            self._file.close()

    def to_json(self, target: str | os.PathLike) -> Path:
        """Write the logged frames as one BDD100K JSON list at `target`, atomically, line by line.

        A last line cut short (a run killed mid-write) is left out.
        """
        self.close()
        target = Path(target)
        with atomic_path(target) as tmp, open(self.path, encoding="utf-8") as src, open(tmp, "w", encoding="utf-8") as dst:
            dst.write("[")
            first = True
            for line in src:
                line = line.strip()
                if not line:
                    continue
                try:
                    json.loads(line)
                except json.JSONDecodeError:
                    continue
                dst.write(("" if first else ",\n") + line)
                first = False
            dst.write("]\n")
        return target


class VideoSegments:
    """An annotated video that follows the frame size: a change of size closes the current file and
    starts a new segment (`cam0.mp4`, then `cam0-1.mp4`, `cam0-2.mp4`, ...), so no frame is dropped.

    Each segment is written to a temporary `<name>.tmp.mp4` beside it and renamed when finalised
    (`close`, or the next segment), so a segment file is always a complete, playable video.

    Args:
        path: the first segment's path (`.mp4`).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.segments: list[Path] = []
        self._writer: Any = None
        self._size: tuple[int, int] | None = None
        self._current: Path | None = None

    def _segment_path(self, k: int) -> Path:
        return self.path if k == 0 else self.path.with_name(f"{self.path.stem}-{k}{self.path.suffix}")

    def write(self, image: np.ndarray, fps: float) -> None:
        """Append one BGR frame; opens the next segment when the size differs from the current one."""
        import cv2

        size = (int(image.shape[1]), int(image.shape[0]))
        if self._writer is not None and size != self._size:
            self._finalise()
        if self._writer is None:
            final = self._segment_path(len(self.segments))
            tmp = final.with_name(final.name + ".tmp.mp4")
            writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
            if not writer.isOpened():
                raise RuntimeError(f"cannot open a video writer for {final} ({size[0]}x{size[1]}).")
            self._writer, self._size, self._current = writer, size, final
        self._writer.write(image)

    def _finalise(self) -> None:
        if self._writer is None or self._current is None:
            return
        self._writer.release()
        tmp = self._current.with_name(self._current.name + ".tmp.mp4")
        os.replace(tmp, self._current)
        self.segments.append(self._current)
        self._writer, self._size, self._current = None, None, None

    def close(self) -> None:
        """Finalise the current segment (idempotent)."""
        self._finalise()


def write_status(path: str | os.PathLike, status: dict[str, Any]) -> None:
    """Write the cameras' status atomically (a reader never sees a half-written file)."""
    write_json(path, status)
