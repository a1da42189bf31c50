"""Choose one DICOM series per channel of a task: by `--series` override, else by SeriesDescription.

Works on `SeriesInfo` headers only; it reads no pixels and never guesses between two candidates.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from visionpipes.core.errors import UserError
from visionpipes.medical.dicom.series import SeriesInfo, require_image_series


def parse_series_overrides(items: Sequence[str]) -> dict[str, str]:
    """Parse `--series MODALITY=DESCRIPTION_OR_UID` values into `{modality: description_or_uid}`.

    Raises:
        UserError: if an item has no `=`, an empty side, or names a modality twice.
    """
    overrides: dict[str, str] = {}
    for item in items:
        modality, sep, value = item.partition("=")
        modality, value = modality.strip(), value.strip()
        if not sep or not modality or not value:
            raise UserError(f"--series '{item}' is not MODALITY=DESCRIPTION_OR_UID.")
        if modality.lower() in (m.lower() for m in overrides):
            raise UserError(f"--series names modality '{modality}' twice.")
        overrides[modality] = value
    return overrides


def choose_series(
    series: Sequence[SeriesInfo], modalities: Sequence[str], overrides: Mapping[str, str] | None = None
) -> dict[str, SeriesInfo]:
    """Pick one image series per channel of a task.

    The rule, per modality name of the task (e.g. "FLAIR", "T1w", "t1gd", "T2w"):

    1. `overrides[modality]` wins: the series whose SeriesInstanceUID equals it, else the one whose
       SeriesDescription equals it (case-insensitive, whole description).
    2. Otherwise, the image series whose SeriesDescription contains the modality name as a whole word
       (case-insensitive; words are runs of letters and digits, so "T1w" matches "T1w SAG 3D" and
       "T1w_MPRAGE" but not "T1 post-contrast t1gd"). A series chosen by an override is not a candidate
       for another channel, and one series matching two channels is ambiguous.
    3. A single-channel task whose name matches no description takes the folder's only image series.

    Args:
        series: the series found (`find_series`).
        modalities: the task's channel names in channel order (dataset.json `modality` values).
        overrides: `{modality: description_or_uid}` from `--series` (modality names case-insensitive).

    Returns:
        `{modality: series}` in the order of `modalities`.

    Raises:
        UserError: if a channel has no series or several, an override names an unknown modality or no
            (or several) series, or the chosen series is not an image series (RT structure set, SEG, ...).
    """
    if not modalities:
        raise UserError("the task names no modality, so no DICOM series can be chosen.")
    by_key = {m.lower(): m for m in modalities}
    chosen: dict[str, SeriesInfo] = {}
    for key, value in (overrides or {}).items():
        modality = by_key.get(key.strip().lower())
        if modality is None:
            raise UserError(
                f"--series names modality '{key}', but the task's modalities are {', '.join(modalities)}."
            )
        chosen[modality] = _series_by_override(series, modality, value)
    taken = {info.uid: m for m, info in chosen.items()}
    images = [s for s in series if s.is_image and s.uid not in taken]
    matched: dict[str, str] = {}
    for modality in modalities:
        if modality in chosen:
            continue
        matches = [s for s in images if _mentions(s.description, modality)]
        hint = f"choose one with --series {modality}=DESCRIPTION_OR_UID"
        if len(matches) > 1:
            raise UserError(
                f"modality '{modality}' is ambiguous: the descriptions of {len(matches)} series contain it "
                f"({_listing(matches)}); {hint}."
            )
        if len(matches) == 1:
            info = matches[0]
            if info.uid in matched:
                raise UserError(
                    f"series {info} matches both modality '{matched[info.uid]}' and '{modality}'; {hint}."
                )
            matched[info.uid] = modality
            chosen[modality] = info
        elif len(modalities) == 1 and len(images) == 1:
            chosen[modality] = images[0]
        elif len(modalities) == 1 and images:
            raise UserError(
                f"the folder holds {len(images)} image series and none is named '{modality}' "
                f"({_listing(images)}); {hint}."
            )
        else:
            found = _listing(series) if series else "none"
            raise UserError(
                f"no image series for modality '{modality}': no SeriesDescription contains it as a word "
                f"(series found: {found}); {hint}."
            )
    return {m: chosen[m] for m in modalities}


def _listing(series: Sequence[SeriesInfo]) -> str:
    return "; ".join(str(s) for s in series)


def _words(text: str) -> list[str]:
    return [w for w in re.split(r"[^0-9a-z]+", text.lower()) if w]


def _mentions(description: str, name: str) -> bool:
    """Whether `name`'s words occur, consecutively and whole, in `description` (case-insensitive)."""
    want, have = _words(name), _words(description)
    return bool(want) and any(have[i : i + len(want)] == want for i in range(len(have) - len(want) + 1))


def _series_by_override(series: Sequence[SeriesInfo], modality: str, value: str) -> SeriesInfo:
    value = value.strip()
    matches = [s for s in series if s.uid == value] or [
        s for s in series if s.description.lower() == value.lower()
    ]
    if not matches:
        found = _listing(series) if series else "none"
        raise UserError(
            f"--series {modality}={value} matches no SeriesInstanceUID or SeriesDescription "
            f"(series found: {found})."
        )
    if len(matches) > 1:
        raise UserError(
            f"--series {modality}={value} matches {len(matches)} series ({_listing(matches)}); "
            f"give the SeriesInstanceUID instead."
        )
    require_image_series(matches[0])
    return matches[0]
