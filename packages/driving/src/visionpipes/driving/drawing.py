"""Drawing on frames: lane masks painted in their category colours and tracked boxes labelled with
class, track id and score, for the evaluation's overlays and the streams' annotated videos.

Runtime: OpenCV and NumPy only; never imports training code.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from visionpipes.driving.bdd100k.categories import LANE_BACKGROUND

#: BGR colours of the 8 lane categories in overlays.
LANE_COLORS: tuple[tuple[int, int, int], ...] = (
    (255, 255, 255),  # crosswalk
    (180, 105, 255),  # double other
    (255, 200, 0),  # double white
    (0, 215, 255),  # double yellow
    (0, 0, 255),  # road curb
    (255, 0, 255),  # single other
    (0, 255, 0),  # single white
    (0, 255, 255),  # single yellow
)


def lane_overlay(image_bgr: np.ndarray, mask: np.ndarray, alpha: float = 0.7) -> np.ndarray:
    """Paint a lane mask over an image (category colours; dashed lanes drawn lighter)."""
    out = image_bgr.copy()
    lane = mask != LANE_BACKGROUND
    if not lane.any():
        return out
    colors = np.asarray(LANE_COLORS, dtype=np.float32)
    paint = colors[(mask & 0b111)[lane]]
    dashed = ((mask >> 4) & 1)[lane].astype(bool)
    paint[dashed] = 0.5 * paint[dashed] + 127.5
    out[lane] = ((1 - alpha) * out[lane] + alpha * paint).astype(np.uint8)
    return out


#: BGR colour of each detection class in the annotated videos.
CLASS_COLORS: tuple[tuple[int, int, int], ...] = (
    (60, 20, 220),
    (0, 140, 255),
    (255, 144, 30),
    (180, 130, 70),
    (0, 215, 255),
    (128, 0, 128),
    (147, 20, 255),
    (50, 205, 50),
    (0, 255, 255),
    (255, 255, 0),
)


def annotate(frame: np.ndarray, tracks: np.ndarray, lane_mask: np.ndarray | None, class_names: Sequence[str]) -> np.ndarray:
    """Draw lane markings, then boxes with class, track id and score."""
    import cv2

    out = lane_overlay(frame, lane_mask) if lane_mask is not None else frame.copy()
    for x1, y1, x2, y2, track_id, score, cls, _ in tracks:
        color = CLASS_COLORS[int(cls) % len(CLASS_COLORS)]
        p1, p2 = (int(x1), int(y1)), (int(x2), int(y2))
        cv2.rectangle(out, p1, p2, color, 2)
        label = f"{class_names[int(cls)]} #{int(track_id)} {score:.2f}"
        cv2.putText(out, label, (p1[0], max(12, p1[1] - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.45, color, 1, cv2.LINE_AA)
    return out
