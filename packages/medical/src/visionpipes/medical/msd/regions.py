"""Labels <-> regions of an MSD task: the overlapping regions a model predicts, derived from the label *names*
of `dataset.json`, and the conversions between a label map and region channels.

The regions are the ones each task's community reports (`REGION_CONVENTIONS` says which, for model cards):
BraTS' TC/WT/ET for brain tumours (Task01); for an organ with its tumour (Task03_Liver as in LiTS, Task07_Pancreas)
the organ *including* the tumour and the tumour; for tumour-only tasks (Task06_Lung, Task10_Colon) the tumour;
one region per label otherwise (Task09_Spleen, Task08_HepaticVessel).

Numpy only; it never reads files.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from visionpipes.core.errors import UserError

RegionScheme = Literal["auto", "brain_tumour", "liver", "pancreas", "tumour_only", "per_label"]
#: Every scheme `regions_from_labels` accepts.
REGION_SCHEMES: tuple[str, ...] = ("auto", "brain_tumour", "liver", "pancreas", "tumour_only", "per_label")
#: One sentence per scheme saying which convention its regions follow (model cards, metrics).
REGION_CONVENTIONS: dict[str, str] = {
    "brain_tumour": "BraTS convention: TC (tumour core: non-enhancing + enhancing), WT (whole tumour: all "
    "tumour labels), ET (enhancing tumour).",
    "liver": "LiTS convention (Task03_Liver): 'liver' is the liver including the tumour (labels 1+2), "
    "'tumour' the tumour alone (label 2).",
    "pancreas": "Task07_Pancreas convention: 'pancreas' is the pancreas including the tumour (labels 1+2), "
    "'tumour' the tumour alone (label 2).",
    "tumour_only": "Tumour-only convention (Task06_Lung, Task10_Colon): 'tumour' is the tumour label.",
    "per_label": "One region per label of dataset.json, named after it.",
}


@dataclass(frozen=True)
class Region:
    """A region a model predicts as one sigmoid channel: the union of some task labels.

    Attributes:
        name: short name (`TC`, `WT`, `ET`, or the label name for generic tasks).
        labels: the label values that belong to the region.
    """

    name: str
    labels: frozenset[int]


_SPELLINGS = (("tumour", "tumor"), ("oedematous", "edematous"), ("oedema", "edema"))
_BRAIN_TUMOUR_CLASSES = ("edema", "non_enhancing", "enhancing")
_KNOWN_BRAIN_TUMOUR_NAMES = (
    "edema / peritumoral edema; non-enhancing tumour / necrosis / necrotic tumour core / NCR / NET; "
    "enhancing tumour / GD-enhancing tumour / ET"
)


def normalise_label_name(name: str) -> str:
    """Lower case, British spellings made American, punctuation as spaces (to compare label names)."""
    text = name.strip().lower()
    for old, new in _SPELLINGS:
        text = text.replace(old, new)
    text = re.sub(r"[-_/,()]+", " ", text)
    return re.sub(r"\s+", " ", text).strip()


_TUMOUR_WORDS = frozenset(
    {"tumor", "tumors", "cancer", "cancers", "lesion", "lesions", "primaries", "nodule"}
)
#: The organs whose tasks report the organ including its tumour, and the scheme of each.
_ORGAN_SCHEMES = {"liver": "liver", "pancreas": "pancreas"}


def is_tumour_name(name: str) -> bool:
    """Whether a label name denotes a tumour (`cancer`, `tumour`, `colon cancer primaries`, `lesion` ...).

    Example:
        >>> is_tumour_name("colon cancer primaries"), is_tumour_name("Tumour"), is_tumour_name("liver")
        (True, True, False)
    """
    return bool(set(normalise_label_name(name).split()) & _TUMOUR_WORDS)


def _organ_with_tumour(foreground: Mapping[int, str]) -> tuple[str, int, int] | None:
    """`(scheme, organ value, tumour value)` when the labels are exactly a known organ and a tumour."""
    if len(foreground) != 2:
        return None
    tumours = [v for v, n in foreground.items() if is_tumour_name(n)]
    organs = [v for v, n in foreground.items() if normalise_label_name(n) in _ORGAN_SCHEMES]
    if len(tumours) != 1 or len(organs) != 1:
        return None
    return _ORGAN_SCHEMES[normalise_label_name(foreground[organs[0]])], organs[0], tumours[0]


def detect_scheme(labels: Mapping[int | str, str]) -> str:
    """The scheme `auto` picks for these label names (see `regions_from_labels`).

    Example:
        >>> detect_scheme({0: "background", 1: "liver", 2: "cancer"}), detect_scheme({0: "background", 1: "cancer"})
        ('liver', 'tumour_only')
    """
    foreground = {int(k): v for k, v in labels.items() if int(k) != 0}
    if any(brain_tumour_class(v) for v in foreground.values()):
        return "brain_tumour"
    organ = _organ_with_tumour(foreground)
    if organ is not None:
        return organ[0]
    if foreground and all(is_tumour_name(v) for v in foreground.values()):
        return "tumour_only"
    return "per_label"


def brain_tumour_class(name: str) -> str | None:
    """The brain-tumour sub-region a label name denotes: `edema`, `non_enhancing`, `enhancing`, or None.

    Necrotic and non-enhancing core both count as `non_enhancing` (BraTS' NCR/NET).

    Example:
        >>> brain_tumour_class("non-enhancing tumor"), brain_tumour_class("enhancing tumour")
        ('non_enhancing', 'enhancing')
    """
    text = normalise_label_name(name)
    words = set(text.split())
    if "non enhancing" in text or "nonenhancing" in text or "necro" in text or words & {"ncr", "net"}:
        return "non_enhancing"
    if "enhancing" in text or text == "et":
        return "enhancing"
    if "edema" in text or "edematous" in text or text == "ed":
        return "edema"
    return None


def regions_from_labels(
    labels: Mapping[int | str, str],
    *,
    scheme: RegionScheme = "auto",
    source: str | os.PathLike = "dataset.json",
) -> tuple[Region, ...]:
    """Derive the predicted regions from the label names of a `dataset.json`.

    Brain-tumour tasks (some label named edema / enhancing / necrotic ...) give the nested BraTS regions
    in MONAI's order: TC (tumour core: non-enhancing + enhancing), WT (whole tumour: all tumour labels),
    ET (enhancing tumour). For Task01 (1 edema, 2 non-enhancing tumor, 3 enhancing tumour) that is
    TC={2,3}, WT={1,2,3}, ET={3}; BraTS 2021's 1/2/4 numbering works the same way by name.
    An organ and its tumour (`liver` + `cancer`, Task03; `pancreas` + `cancer`, Task07) give the organ
    including the tumour, named after the organ, and `tumour` (LiTS' convention): liver={1,2}, tumour={2}.
    Labels that all name tumours (`cancer`, Task06_Lung; `colon cancer primaries`, Task10_Colon) give one
    region `tumour` (all of them). Every other task gets one region per foreground label, named after it.

    Args:
        labels: label value -> name, value 0 the background.
        scheme: `auto` (decide by the names, `detect_scheme`), `brain_tumour`, `liver`, `pancreas`,
            `tumour_only` or `per_label`.
        source: the file named in errors.

    Returns:
        The regions, one model output channel each.

    Raises:
        UserError: if a brain-tumour task has a label name that is not a known sub-region, lacks one of
            edema / non-enhancing / enhancing tumour; if a `liver` / `pancreas` / `tumour_only` scheme is
            asked of labels that are not that organ and a tumour / only tumours; or if there is no
            foreground label.

    Example:
        >>> regions_from_labels({0: "background", 1: "edema", 2: "non-enhancing tumor", 3: "enhancing tumour"})
        (Region(name='TC', labels=frozenset({2, 3})), Region(name='WT', labels=frozenset({1, 2, 3})), \
Region(name='ET', labels=frozenset({3})))
    """
    names = {int(k): v for k, v in labels.items()}
    foreground = {k: v for k, v in sorted(names.items()) if k != 0}
    if not foreground:
        raise UserError(f"{source}: 'labels' declares no foreground label, so there is nothing to segment.")
    if scheme not in REGION_SCHEMES:
        raise ValueError(f"scheme must be one of {', '.join(REGION_SCHEMES)}, not {scheme!r}.")
    classes = {k: brain_tumour_class(v) for k, v in foreground.items()}
    if scheme == "auto":
        scheme = detect_scheme(names)
    if scheme == "per_label":
        return tuple(Region(name, frozenset({value})) for value, name in foreground.items())
    if scheme in _ORGAN_SCHEMES.values():
        organ = _organ_with_tumour(foreground)
        if organ is None or organ[0] != scheme:
            raise UserError(
                f"{source}: region scheme '{scheme}' needs exactly two labels, '{scheme}' and a tumour "
                f"(e.g. 'cancer'), but 'labels' names {list(foreground.values())}."
            )
        _, organ_value, tumour_value = organ
        return (
            Region(normalise_label_name(foreground[organ_value]), frozenset({organ_value, tumour_value})),
            Region("tumour", frozenset({tumour_value})),
        )
    if scheme == "tumour_only":
        not_tumour = [v for v in foreground.values() if not is_tumour_name(v)]
        if not_tumour:
            raise UserError(
                f"{source}: region scheme 'tumour_only' needs tumour labels only (cancer, tumour, lesion ...), "
                f"but 'labels' also names {not_tumour}."
            )
        if len(foreground) > 1:  # several tumour kinds: one region each, under their names
            return tuple(Region(name, frozenset({value})) for value, name in foreground.items())
        return (Region("tumour", frozenset(foreground)),)
    for value, cls in classes.items():
        if cls is None:
            raise UserError(
                f"{source}: label {value} '{foreground[value]}' is not a known brain-tumour sub-region name "
                f"(known: {_KNOWN_BRAIN_TUMOUR_NAMES}); rename it so it can be mapped to TC/WT/ET."
            )
    by_class = {c: frozenset(v for v, cls in classes.items() if cls == c) for c in _BRAIN_TUMOUR_CLASSES}
    for c in _BRAIN_TUMOUR_CLASSES:
        if not by_class[c]:
            raise UserError(
                f"{source}: the brain-tumour labels {list(foreground.values())} name no "
                f"{c.replace('_', '-')} tumour region, so TC/WT/ET cannot be derived."
                if c != "edema"
                else f"{source}: the brain-tumour labels {list(foreground.values())} name no edema, "
                "so WT cannot be derived."
            )
    core = by_class["non_enhancing"] | by_class["enhancing"]
    return (
        Region("TC", core),
        Region("WT", core | by_class["edema"]),
        Region("ET", by_class["enhancing"]),
    )


def region_convention(regions: Sequence[Region]) -> str:
    """The sentence of `REGION_CONVENTIONS` that `regions` follow (for model cards and reports).

    Example:
        >>> region_convention(regions_from_labels({0: "background", 1: "liver", 2: "cancer"}))[:16]
        'LiTS convention '
    """
    names = [r.name for r in regions]
    if names == ["TC", "WT", "ET"]:
        return REGION_CONVENTIONS["brain_tumour"]
    if len(regions) == 2 and names[1] == "tumour" and regions[1].labels < regions[0].labels:
        return REGION_CONVENTIONS.get(
            names[0], f"'{names[0]}' includes the tumour; 'tumour' is the tumour alone."
        )
    if names == ["tumour"]:
        return REGION_CONVENTIONS["tumour_only"]
    return REGION_CONVENTIONS["per_label"]


def labels_to_regions(label_map: np.ndarray, regions: Sequence[Region]) -> np.ndarray:
    """Turn an MSD label map into one boolean channel per region.

    Args:
        label_map: integer labels, any spatial shape.
        regions: from `regions_from_labels`.

    Returns:
        `(len(regions), *label_map.shape)` bool array.

    Example:
        >>> regs = regions_from_labels({0: "background", 1: "edema", 2: "non-enhancing", 3: "enhancing"})
        >>> labels_to_regions(np.array([0, 1, 2, 3]), regs).astype(int).tolist()
        [[0, 0, 1, 1], [0, 1, 1, 1], [0, 0, 0, 1]]
    """
    label_map = np.asarray(label_map)
    return np.stack([np.isin(label_map, sorted(r.labels)) for r in regions], axis=0)


def _nesting(regions: Sequence[Region]) -> tuple[list[int], list[int]]:
    """Painting order (outer regions first) and, per region, the one label it adds to its sub-regions.

    Raises:
        ValueError: if two regions partly overlap, or a region does not add exactly one label.
    """
    sets = [r.labels for r in regions]
    for i, a in enumerate(sets):
        for b in sets[i + 1 :]:
            if a & b and not (a <= b or b <= a):
                raise ValueError(f"regions {sorted(a)} and {sorted(b)} partly overlap: not a nested set.")
    own = []
    for i, a in enumerate(sets):
        inner = set().union(*(b for j, b in enumerate(sets) if j != i and b < a))
        rest = a - inner
        if len(rest) != 1:
            raise ValueError(
                f"region {regions[i].name} {sorted(a)} adds {sorted(rest)} to its sub-regions; "
                "a label map needs exactly one label per region."
            )
        own.append(next(iter(rest)))
    order = sorted(range(len(sets)), key=lambda i: -len(sets[i]))
    return order, own


def regions_to_labels(
    region_probs_or_masks: np.ndarray,
    regions: Sequence[Region],
    *,
    threshold: float = 0.5,
) -> np.ndarray:
    """Turn region channels back into an MSD label map.

    Nested regions are painted outer first (WT -> edema 1, then TC -> non-enhancing 2, then ET ->
    enhancing 3 for Task01); where two disjoint regions both claim a voxel, the higher probability wins.

    Args:
        region_probs_or_masks: `(len(regions), *spatial)`: booleans, or probabilities in [0, 1].
        regions: from `regions_from_labels`.
        threshold: probability above which a voxel belongs to a region (ignored for booleans).

    Returns:
        The label map, `spatial` shape, uint8 (int16 if a label exceeds 255).

    Raises:
        ValueError: if the channel count differs from `len(regions)`, or the regions cannot be written
            as one label map (partial overlaps).

    Example:
        >>> regs = regions_from_labels({0: "background", 1: "edema", 2: "non-enhancing", 3: "enhancing"})
        >>> regions_to_labels(labels_to_regions(np.array([0, 1, 2, 3]), regs), regs).tolist()
        [0, 1, 2, 3]
    """
    x = np.asarray(region_probs_or_masks)
    if x.shape[0] != len(regions):
        raise ValueError(f"got {x.shape[0]} region channels for {len(regions)} regions.")
    order, own = _nesting(regions)
    if x.dtype == bool:
        masks, probs = x, x.astype(np.float32)
    else:
        probs = x.astype(np.float32, copy=False)
        masks = probs > threshold
    top = max(own)
    out = np.zeros(x.shape[1:], dtype=np.uint8 if top <= 255 else np.int16)
    owner = np.full(x.shape[1:], -1, dtype=np.int16)
    owner_prob = np.zeros(x.shape[1:], dtype=np.float32)
    sets = [r.labels for r in regions]
    for i in order:
        # A voxel already painted by an enclosing region (or by nothing) is overwritten; one painted by a
        # disjoint region only if this region is more probable there.
        enclosing = [j for j in range(len(regions)) if j != i and sets[i] < sets[j]]
        take = masks[i] & (np.isin(owner, [-1, *enclosing]) | (probs[i] > owner_prob))
        out[take] = own[i]
        owner[take] = i
        owner_prob[take] = probs[i][take]
    return out
