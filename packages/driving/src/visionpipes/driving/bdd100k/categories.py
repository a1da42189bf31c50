"""The BDD100K class lists: the 10 detection classes with the official name and ignore mappings,
the lane categories, styles and directions with their bits in a lane mask, and the drivable classes.

Constants and one lookup only; no file I/O, no torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

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
