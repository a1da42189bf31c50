"""BDD100K drivable area in its official formats: the mask PNGs (`labels/drivable/masks/{train,val}/`),
the polygon JSON (`labels/drivable/polygons/drivable_{train,val}.json`) and the RGB colormaps
(`labels/drivable/colormaps/{train,val}/`).

A drivable mask is a one-channel 8-bit PNG named after its image (`abc.jpg` -> `abc.png`), one byte
per pixel: 0 direct (the ego vehicle's own lane), 1 alternative (lanes it could change to),
2 background (`DRIVABLE_CATEGORIES`, as `bdd100k/label/label.py`). Predicted masks are submitted in
exactly this format. The polygon JSON is a Scalabel list of frames whose labels carry `poly2d` areas
of category `direct` / `alternative` (the names the official `to_mask -m drivable` converter reads);
`area/drivable` / `area/alternative` and the legacy `drivable area` + `areaType` are read as well.

Public API (also used by the multi-task network's data and prediction code):

- `read_drivable_mask(path, *, expected_shape=None) -> np.ndarray`: the (H, W) uint8 mask, values in
  {0, 1, 2}; one `UserError` naming the file for a missing or unreadable file, a wrong mode
  (RGB colormap, 16-bit, ...), a wrong shape, or a value outside 0..2.
- `write_drivable_mask(path, mask) -> None`: an (H, W) integer mask with values in {0, 1, 2} written
  as the official one-channel PNG, atomically (parent folders created).
- `drivable_masks_from_polygons(json_path, height, width, *, names=None) -> dict[str, np.ndarray]`:
  the polygon JSON rasterised, keyed by frame name (the image name, e.g. `abc.jpg`); `names`
  restricts it to some frames. `iter_drivable_masks_from_polygons` yields the same pairs one at a
  time (the real `drivable_train.json` holds 70,000 frames: 64 GB of masks at once).
- `drivable_colormap(mask) -> np.ndarray`: the (H, W, 3) RGB rendering with the toolkit's colours
  (as in `labels/drivable/colormaps/`; for looking at, never scored).
- `drivable_masks_dir(root, split)` / `drivable_polygons_file(root, split)`: where a BDD100K root
  keeps them (None when absent). A real copy's masks are read in place.

Pure file I/O: never scores, trains, or imports torch.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterator
from pathlib import Path

import numpy as np

from visionpipes.core.errors import UserError
from visionpipes.core.io import atomic_path
from visionpipes.driving.bdd100k.categories import DRIVABLE_BACKGROUND, DRIVABLE_CATEGORIES
from visionpipes.driving.bdd100k.labels import load_frames
from visionpipes.driving.bdd100k.masks import mask_name, rasterize_drivable

#: Colours of `direct`, `alternative`, `background` (RGB), as `drivables` in `bdd100k/label/label.py`.
DRIVABLE_COLORS: tuple[tuple[int, int, int], ...] = ((219, 94, 86), (86, 211, 219), (0, 0, 0))
#: The largest valid mask value (background).
_MAX_VALUE = len(DRIVABLE_CATEGORIES) - 1


#: The first bytes of every PNG file.
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def drivable_masks_dir(root: str | os.PathLike, split: str) -> Path | None:
    """`root/labels/drivable/masks/<split>/` when that folder exists, else None."""
    path = Path(root) / "labels" / "drivable" / "masks" / split
    return path if path.is_dir() else None


def drivable_polygons_file(root: str | os.PathLike, split: str) -> Path | None:
    """`root/labels/drivable/polygons/drivable_<split>.json` when that file exists, else None."""
    path = Path(root) / "labels" / "drivable" / "polygons" / f"drivable_{split}.json"
    return path if path.is_file() else None


def _check_values(mask: np.ndarray, what: str) -> None:
    top = int(mask.max()) if mask.size else 0
    low = int(mask.min()) if mask.size else 0
    if top > _MAX_VALUE or low < 0:
        bad = np.unique(mask[(mask > _MAX_VALUE) | (mask < 0)])
        raise UserError(
            f"{what} holds value(s) {', '.join(str(int(v)) for v in bad[:5])}"
            f"{' ...' if len(bad) > 5 else ''}; a BDD100K drivable mask holds only 0 (direct), "
            f"1 (alternative) and 2 (background)."
        )


def read_drivable_mask(
    path: str | os.PathLike, *, expected_shape: tuple[int, int] | None = None
) -> np.ndarray:
    """Read an official drivable mask PNG.

    Args:
        path: the one-channel 8-bit PNG (mode `L`, or `P` whose indices are the values).
        expected_shape: (height, width) it must have, or None.

    Returns:
        The (H, W) uint8 mask, values in {0, 1, 2}.

    Raises:
        UserError: naming the file, if it is missing or unreadable, not one 8-bit channel (e.g. an RGB
            colormap), of the wrong shape, or holds a value other than 0, 1, 2.

    Example:
        >>> mask = read_drivable_mask("labels/drivable/masks/val/b1c66a42-6f7d68ca.png")  # doctest: +SKIP
        >>> (mask == 0).mean()  # share of directly drivable pixels  # doctest: +SKIP
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise UserError(f"drivable mask {path} does not exist.")
    # The official masks are PNGs: check the signature before any decoder sees the file (a process that
    # imported ultralytics has PIL's Image.open patched to try installing pi-heif on an unknown format).
    with path.open("rb") as handle:
        if handle.read(8) != PNG_SIGNATURE:
            raise UserError(f"drivable mask {path} is not a PNG file (BDD100K drivable masks are PNGs).")
    try:
        with Image.open(path) as img:
            mode = img.mode
            array = np.asarray(img)
    except (UnidentifiedImageError, OSError, ValueError, ImportError) as err:
        # ImportError: ultralytics' Image.open patch asks for pi-heif on a file PIL cannot identify
        if isinstance(err, ImportError):
            err = "PIL cannot identify it"
        raise UserError(f"drivable mask {path} is not a readable image ({err}).") from None
    if mode not in ("L", "P") or array.ndim != 2 or array.dtype != np.uint8:
        hint = " (labels/drivable/colormaps holds the RGB rendering; the masks are in labels/drivable/masks)"
        raise UserError(
            f"drivable mask {path} must be a one-channel 8-bit PNG, got mode {mode} with shape "
            f"{array.shape}{hint if array.ndim == 3 else ''}."
        )
    if expected_shape is not None and array.shape != tuple(expected_shape):
        raise UserError(
            f"drivable mask {path} is {array.shape[1]}x{array.shape[0]}, expected "
            f"{expected_shape[1]}x{expected_shape[0]} (width x height)."
        )
    _check_values(array, f"drivable mask {path}")
    return array


def check_drivable_array(
    mask: np.ndarray, *, what: str = "drivable mask", expected_shape: tuple[int, int] | None = None
) -> np.ndarray:
    """An in-memory drivable mask as (H, W) uint8, checked like a file.

    Raises:
        UserError: naming `what` when it is not a 2-D integer array (of `expected_shape`) with values
            in {0, 1, 2}.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2 or not (np.issubdtype(mask.dtype, np.integer) or mask.dtype == bool):
        raise UserError(f"{what} must be a 2-D integer array, got dtype {mask.dtype} and shape {mask.shape}.")
    if expected_shape is not None and mask.shape != tuple(expected_shape):
        raise UserError(f"{what} has shape {mask.shape}, expected {tuple(expected_shape)} (height, width).")
    _check_values(mask, what)
    return mask.astype(np.uint8, copy=False)


def write_drivable_mask(path: str | os.PathLike, mask: np.ndarray) -> None:
    """Write a drivable mask as the official one-channel PNG, atomically (the folder is created).

    Args:
        path: the PNG to write (`<image stem>.png` to be scored against the official masks).
        mask: (H, W) integers in {0, 1, 2}: 0 direct, 1 alternative, 2 background.

    Raises:
        UserError: naming the file, when `mask` is not 2-D, not integer, or holds another value.
    """
    from PIL import Image

    path = Path(path)
    array = check_drivable_array(mask, what=f"drivable mask for {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Image.fromarray(np.ascontiguousarray(array), mode="L").save(tmp, format="PNG")


def drivable_colormap(mask: np.ndarray) -> np.ndarray:
    """The (H, W, 3) RGB rendering of a drivable mask in the toolkit's colours."""
    array = check_drivable_array(mask)
    return np.asarray(DRIVABLE_COLORS, dtype=np.uint8)[array]


def iter_drivable_masks_from_polygons(
    json_path: str | os.PathLike, height: int, width: int, *, names: Collection[str] | None = None
) -> Iterator[tuple[str, np.ndarray]]:
    """Yield `(frame name, mask)` for each frame of a drivable polygon JSON, in file order.

    Areas are filled in label order (a later area overwrites an earlier one, as the official
    converter draws them); labels of other categories and frames without labels give background.

    Args:
        json_path: `drivable_<split>.json` (Scalabel list of frames, or the legacy format).
        height, width: the mask size (BDD100K: 720, 1280).
        names: only these frame names (None: all).

    Raises:
        UserError: on a missing or malformed file, a frame name given twice, or a bad size.
    """
    if int(height) < 1 or int(width) < 1:
        raise UserError(f"drivable mask size must be positive, got {width}x{height} (width x height).")
    frames = load_frames(json_path, image_size=None)
    seen: set[str] = set()
    for frame in frames:  # checked before the first mask is yielded
        if frame.name in seen:
            raise UserError(f"{json_path}: frame {frame.name!r} appears more than once.")
        seen.add(frame.name)
    wanted = None if names is None else set(names)
    for frame in frames:
        if wanted is not None and frame.name not in wanted:
            continue
        yield frame.name, rasterize_drivable(frame.labels or [], (int(width), int(height)))


def drivable_masks_from_polygons(
    json_path: str | os.PathLike, height: int, width: int, *, names: Collection[str] | None = None
) -> dict[str, np.ndarray]:
    """Rasterise a drivable polygon JSON: `{frame name: (height, width) uint8 mask}`.

    See `iter_drivable_masks_from_polygons` (the same masks one at a time, for large files).

    Example:
        >>> path = "labels/drivable/polygons/drivable_val.json"
        >>> masks = drivable_masks_from_polygons(path, 720, 1280)  # doctest: +SKIP
    """
    return dict(iter_drivable_masks_from_polygons(json_path, height, width, names=names))


def write_drivable_masks_from_polygons(
    json_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    height: int,
    width: int,
    *,
    names: Collection[str] | None = None,
) -> int:
    """Rasterise a drivable polygon JSON into `out_dir/<image stem>.png` (official masks).

    Returns:
        The number of masks written.
    """
    out = Path(out_dir)
    count = 0
    for name, mask in iter_drivable_masks_from_polygons(json_path, height, width, names=names):
        write_drivable_mask(out / mask_name(name), mask)
        count += 1
    return count


__all__ = [
    "DRIVABLE_BACKGROUND",
    "DRIVABLE_CATEGORIES",
    "DRIVABLE_COLORS",
    "check_drivable_array",
    "drivable_colormap",
    "drivable_masks_dir",
    "drivable_masks_from_polygons",
    "drivable_polygons_file",
    "iter_drivable_masks_from_polygons",
    "read_drivable_mask",
    "write_drivable_mask",
    "write_drivable_masks_from_polygons",
]
