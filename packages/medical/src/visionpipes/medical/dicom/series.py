"""Find, choose and read DICOM image series onto a voxel grid in the NIfTI (RAS) convention.

Geometry comes from the headers (ImagePositionPatient, ImageOrientationPatient, PixelSpacing), never
from file names or InstanceNumber. This module only reads; it writes nothing and runs no model.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_rescale
from pydicom.uid import (
    UID,
    CTImageStorage,
    EnhancedCTImageStorage,
    EnhancedMRImageStorage,
    EnhancedPETImageStorage,
    LegacyConvertedEnhancedCTImageStorage,
    LegacyConvertedEnhancedMRImageStorage,
    LegacyConvertedEnhancedPETImageStorage,
    MRImageStorage,
    PositronEmissionTomographyImageStorage,
)

from visionpipes.core.errors import UserError

#: Single-frame cross-sectional image storage classes this reader stacks into a volume.
SLICE_IMAGE_SOP_CLASSES = frozenset({CTImageStorage, MRImageStorage, PositronEmissionTomographyImageStorage})
#: Multi-frame (enhanced) image classes: images, but not read here (one file holds the whole volume).
MULTIFRAME_IMAGE_SOP_CLASSES = frozenset(
    {
        EnhancedCTImageStorage,
        EnhancedMRImageStorage,
        EnhancedPETImageStorage,
        LegacyConvertedEnhancedCTImageStorage,
        LegacyConvertedEnhancedMRImageStorage,
        LegacyConvertedEnhancedPETImageStorage,
    }
)
#: Slices closer than this along the normal (mm) are at the same position.
DUPLICATE_POSITION_MM = 1e-3
#: A gap may differ from the others by this fraction of the slice spacing (or 1e-3 mm) and still be regular.
SPACING_TOLERANCE = 0.01
#: Headers may differ by this much (direction cosines, pixel spacing ratio) and still be "the same".
HEADER_TOLERANCE = 1e-4
#: Channels share a grid when every grid corner lies within this many mm across their series.
GRID_TOLERANCE_MM = 0.01

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_READ_ERRORS = (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError, struct.error)
_REQUIRED_GEOMETRY = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns")


@dataclass(frozen=True)
class SeriesInfo:
    """One DICOM series found in a folder (headers only).

    Attributes:
        uid: the SeriesInstanceUID.
        description: the SeriesDescription ("" when absent).
        modality: the Modality tag, e.g. "CT", "MR", "RTSTRUCT", "SEG".
        sop_class_uid: the SOPClassUID of the series' first file.
        files: the series' files, sorted by path (not by slice position).
        series_number: the SeriesNumber, or None when absent.
    """

    uid: str
    description: str
    modality: str
    sop_class_uid: str
    files: tuple[Path, ...]
    series_number: int | None = None

    @property
    def number_of_instances(self) -> int:
        """How many files (instances) the series has."""
        return len(self.files)

    @property
    def sop_class_name(self) -> str:
        """The SOP class in words, e.g. "CT Image Storage"."""
        return UID(self.sop_class_uid).name

    @property
    def is_image(self) -> bool:
        """Whether this reader can stack the series into a volume (CT, MR or PET slices)."""
        return self.sop_class_uid in SLICE_IMAGE_SOP_CLASSES

    def __str__(self) -> str:
        return (
            f"'{self.description}' ({self.modality}, {self.number_of_instances} instance(s), "
            f"SeriesInstanceUID {self.uid})"
        )


@dataclass(frozen=True)
class SeriesGeometry:
    """Where a series' voxels lie: the grid `read_series` returns, with its slices in order.

    Attributes:
        series: the series described.
        shape: the volume shape `(columns, rows, slices)`, i.e. NIfTI `(X, Y, Z)` order.
        affine: 4x4 voxel-to-world matrix in RAS millimetres (nibabel's convention).
        files: the files in slice order (ascending position along the slice normal).
        sop_instance_uids: the SOPInstanceUID of each file, in the same order.
    """

    series: SeriesInfo
    shape: tuple[int, int, int]
    affine: np.ndarray
    files: tuple[Path, ...]
    sop_instance_uids: tuple[str, ...]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along X, Y, Z."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]


def find_series(folder: str | os.PathLike) -> list[SeriesInfo]:
    """Scan `folder` recursively for DICOM files and group them by SeriesInstanceUID.

    Non-DICOM files (and DICOM files without a SeriesInstanceUID, such as a DICOMDIR) are skipped.

    Args:
        folder: the folder to scan.

    Returns:
        The series, ordered by SeriesNumber, then description, then UID.

    Raises:
        UserError: if `folder` is not a folder, holds no DICOM series at all, or holds a file that
            starts as DICOM but whose header cannot be read.
    """
    root = Path(folder)
    if not root.is_dir():
        raise UserError(f"DICOM input {root} is not a folder.")
    groups: dict[str, list[tuple[Path, Dataset]]] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        try:
            header = _dcmread(path, pixels=False)
        except _READ_ERRORS as err:
            raise UserError(f"{path} is a DICOM file whose header cannot be read ({err}).") from err
        uid = header.get("SeriesInstanceUID") if header is not None else None
        if uid:
            groups.setdefault(str(uid), []).append((path, header))
    if not groups:
        raise UserError(f"no DICOM series found in {root} (searched recursively).")
    found = [_series_info(uid, members) for uid, members in groups.items()]
    return sorted(found, key=lambda s: (s.series_number is None, s.series_number or 0, s.description, s.uid))


def read_geometry(info: SeriesInfo) -> SeriesGeometry:
    """Check a series' headers and work out its grid, without decoding pixels.

    Raises:
        UserError: as `read_series`, except for pixel decoding.
    """
    require_image_series(info)
    items = [(path, _read(path, info, pixels=False)) for path in info.files]
    return _geometry(info, items)


def read_series(info: SeriesInfo) -> tuple[np.ndarray, np.ndarray, SeriesGeometry]:
    """Read an image series into a float32 volume with the NIfTI (RAS) voxel convention.

    `volume[i, j, k]` is column `i`, row `j` of the `k`-th slice in ascending position along the slice
    normal (ImageOrientationPatient row x column direction), so the array and affine match what nibabel
    gives for the same volume saved as NIfTI. RescaleSlope/RescaleIntercept (or a modality LUT) are
    applied, so CT comes out in Hounsfield units.

    Args:
        info: an image series from `find_series`.

    Returns:
        `(volume, affine, geometry)`: volume `(X, Y, Z)` float32, the 4x4 RAS affine, and the geometry
        (slice order, SOPInstanceUIDs) that `write_seg` needs.

    Raises:
        UserError: naming the series (and file) when it is not an image series, is multi-frame or colour,
            has one slice, lacks a geometry tag, mixes orientations, image sizes or pixel spacings, has two
            slices at one position, misses slices, has irregular spacing, is sheared (gantry tilt), or its
            pixel data cannot be decoded.
    """
    require_image_series(info)
    items = [(path, _read(path, info, pixels=True)) for path in info.files]
    geometry = _geometry(info, items)
    by_path = dict(items)
    slices = []
    for path in geometry.files:
        ds = by_path[path]
        try:
            pixels = apply_rescale(ds.pixel_array, ds)
        except (AttributeError, ValueError, RuntimeError, NotImplementedError, TypeError) as err:
            raise UserError(f"{path} (series {info}): pixel data cannot be decoded ({err}).") from err
        slices.append(np.asarray(pixels, dtype=np.float32).T)
    volume = np.ascontiguousarray(np.stack(slices, axis=-1))
    return volume, geometry.affine.copy(), geometry


def read_channels(chosen: Mapping[str, SeriesInfo]) -> tuple[np.ndarray, np.ndarray, list[SeriesGeometry]]:
    """Read one series per channel onto their common grid.

    Args:
        chosen: `{modality: series}` in channel order (`choose_series`' result).

    Returns:
        `(volume, affine, geometries)`: volume `(C, X, Y, Z)` float32, the shared RAS affine (the first
        channel's), one geometry per channel.

    Raises:
        UserError: as `read_series` for each channel, or when the channels' grids differ (shape, or a grid
            corner more than `GRID_TOLERANCE_MM` apart).
    """
    if not chosen:
        raise UserError("no DICOM series was chosen to read.")
    volumes, geometries = [], []
    reference: tuple[str, SeriesGeometry] | None = None
    for modality, info in chosen.items():
        volume, _, geometry = read_series(info)
        if reference is None:
            reference = (modality, geometry)
        else:
            _check_same_grid(reference, (modality, geometry))
        volumes.append(volume)
        geometries.append(geometry)
    return np.stack(volumes), geometries[0].affine.copy(), geometries


def require_image_series(info: SeriesInfo) -> None:
    """Raise unless this reader can stack `info` (single-frame CT, MR or PET slices).

    Raises:
        UserError: naming the series and its SOP class (RT Structure Set, Segmentation, multi-frame ...).
    """
    if info.is_image:
        return
    if info.sop_class_uid in MULTIFRAME_IMAGE_SOP_CLASSES:
        raise UserError(
            f"series {info} is a multi-frame {info.sop_class_name} object, which this reader does not "
            f"stack; export it as single-frame CT/MR/PET slices."
        )
    raise UserError(
        f"series {info} is a {info.sop_class_name} object, not an image series that can be segmented "
        f"(CT, MR or PET image slices)."
    )


# --- helpers -------------------------------------------------------------------------------------------


def _series_info(uid: str, members: list[tuple[Path, Dataset]]) -> SeriesInfo:
    first = members[0][1]
    meta = getattr(first, "file_meta", None) or Dataset()
    sop_class = first.get("SOPClassUID") or meta.get("MediaStorageSOPClassUID", "")
    number = first.get("SeriesNumber")
    return SeriesInfo(
        uid=uid,
        description=str(first.get("SeriesDescription", "") or "").strip(),
        modality=str(first.get("Modality", "") or ""),
        sop_class_uid=str(sop_class),
        files=tuple(path for path, _ in members),
        series_number=None if number in (None, "") else int(number),
    )


def _dcmread(path: Path, *, pixels: bool) -> Dataset | None:
    """The dataset in `path`, or None when it is not DICOM.

    Besides DICOM files proper (preamble, "DICM", meta header), accepts a bare little-endian dataset
    as older exports write it (it starts at group 0008, e.g. pydicom's rtstruct.dcm) when it carries a
    SOPClassUID and a SeriesInstanceUID.
    """
    try:
        return pydicom.dcmread(path, stop_before_pixels=not pixels)
    except InvalidDicomError:
        pass
    with open(path, "rb") as fh:
        if fh.read(2) != b"\x08\x00":
            return None
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=not pixels, force=True)
    except _READ_ERRORS:
        return None
    return ds if "SOPClassUID" in ds and "SeriesInstanceUID" in ds else None


def _read(path: Path, info: SeriesInfo, *, pixels: bool) -> Dataset:
    try:
        ds = _dcmread(path, pixels=pixels)
    except _READ_ERRORS as err:
        raise UserError(f"{path} (series {info}) cannot be read as DICOM ({err}).") from err
    if ds is None:
        raise UserError(f"{path} (series {info}) is no longer a DICOM file.")
    return ds


def _floats(ds: Dataset, keyword: str) -> np.ndarray:
    return np.asarray([float(v) for v in ds[keyword].value], dtype=np.float64)


def _geometry(info: SeriesInfo, items: list[tuple[Path, Dataset]]) -> SeriesGeometry:
    """Check the headers of one series and derive its slice order and RAS affine."""
    for path, ds in items:
        if str(ds.get("SOPClassUID", "")) != info.sop_class_uid:
            raise UserError(
                f"{path} is a {UID(str(ds.get('SOPClassUID', ''))).name} object inside series {info}, "
                f"which mixes SOP classes."
            )
        missing = [kw for kw in _REQUIRED_GEOMETRY if kw not in ds or ds[kw].value in (None, "", [])]
        if missing:
            raise UserError(
                f"{path} (series {info}) has no {', '.join(missing)}, so its slice cannot be placed in space."
            )
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise UserError(
                f"{path} (series {info}) is a multi-frame image, which this reader does not stack."
            )
        if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
            raise UserError(f"{path} (series {info}) is a colour image; only greyscale CT/MR/PET is read.")
    if len(items) < 2:
        raise UserError(
            f"series {info} has a single slice ({items[0][0]}); a 3-D volume needs at least two slices."
        )
    first_path, first = items[0]
    orientation = _floats(first, "ImageOrientationPatient")
    spacing = _floats(first, "PixelSpacing")
    size = (int(first.Rows), int(first.Columns))
    for path, ds in items[1:]:
        if not np.allclose(_floats(ds, "ImageOrientationPatient"), orientation, atol=HEADER_TOLERANCE):
            raise UserError(
                f"series {info} mixes orientations: ImageOrientationPatient of {path} differs from {first_path}."
            )
        if (int(ds.Rows), int(ds.Columns)) != size:
            raise UserError(
                f"series {info} mixes image sizes: {path} is {ds.Rows}x{ds.Columns} pixels, "
                f"{first_path} is {size[0]}x{size[1]}."
            )
        if not np.allclose(_floats(ds, "PixelSpacing"), spacing, rtol=HEADER_TOLERANCE, atol=0):
            raise UserError(f"series {info} mixes PixelSpacing: {path} differs from {first_path}.")
    row_dir, col_dir = orientation[:3], orientation[3:]
    if (
        abs(np.linalg.norm(row_dir) - 1) > 1e-3
        or abs(np.linalg.norm(col_dir) - 1) > 1e-3
        or abs(row_dir @ col_dir) > 1e-3
    ):
        raise UserError(
            f"ImageOrientationPatient of series {info} ({first_path}) is not two orthogonal unit vectors."
        )
    row_dir, col_dir = row_dir / np.linalg.norm(row_dir), col_dir / np.linalg.norm(col_dir)
    normal = np.cross(row_dir, col_dir)

    positions = np.stack([_floats(ds, "ImagePositionPatient") for _, ds in items])
    order = np.argsort(positions @ normal, kind="stable")
    paths = [items[i][0] for i in order]
    positions = positions[order]
    along = positions @ normal
    gaps = np.diff(along)
    close = np.flatnonzero(gaps < DUPLICATE_POSITION_MM)
    if close.size:
        i = int(close[0])
        raise UserError(
            f"series {info} has two slices at the same position ({along[i]:.3f} mm along the normal): "
            f"{paths[i]} and {paths[i + 1]}."
        )
    smallest = float(gaps.min())
    tolerance = max(DUPLICATE_POSITION_MM, SPACING_TOLERANCE * smallest)
    if np.any(np.abs(gaps - smallest) > tolerance):
        multiples = gaps / smallest
        if np.all(np.abs(multiples - np.round(multiples)) * smallest <= tolerance):
            i = int(np.argmax(gaps))
            missing = int(np.round(multiples - 1).sum())
            raise UserError(
                f"series {info} is missing {missing} slice(s): slices are {smallest:.3f} mm apart but "
                f"{paths[i]} and {paths[i + 1]} are {gaps[i]:.3f} mm apart."
            )
        raise UserError(
            f"series {info} has irregular slice spacing: gaps along the normal range from {smallest:.3f} to "
            f"{float(gaps.max()):.3f} mm (tolerance {tolerance:.3f} mm)."
        )
    offsets = positions - positions[0]
    in_plane = offsets - np.outer(offsets @ normal, normal)
    shear_tolerance = max(tolerance, HEADER_TOLERANCE * float(np.linalg.norm(offsets, axis=1).max()))
    if float(np.linalg.norm(in_plane, axis=1).max()) > shear_tolerance:
        raise UserError(
            f"series {info} is sheared: its slices shift within the image plane from one to the next "
            f"(gantry tilt), which a voxel grid cannot hold; resample it first."
        )
    step = float(along[-1] - along[0]) / (len(items) - 1)
    row_spacing, col_spacing = float(spacing[0]), float(spacing[1])
    affine = np.eye(4)
    affine[:3, 0] = row_dir * col_spacing  # X: along a row, column index increasing
    affine[:3, 1] = col_dir * row_spacing  # Y: down a column, row index increasing
    affine[:3, 2] = normal * step
    affine[:3, 3] = positions[0]
    by_path = dict(items)
    return SeriesGeometry(
        series=info,
        shape=(size[1], size[0], len(items)),
        affine=_LPS_TO_RAS @ affine,
        files=tuple(paths),
        sop_instance_uids=tuple(str(by_path[p].SOPInstanceUID) for p in paths),
    )


def _corners(geometry: SeriesGeometry) -> np.ndarray:
    extent = np.array(geometry.shape, dtype=np.float64) - 1
    grid = np.array(np.meshgrid(*[[0.0, e] for e in extent], indexing="ij")).reshape(3, -1)
    return (geometry.affine @ np.vstack([grid, np.ones(grid.shape[1])]))[:3].T


def _check_same_grid(reference: tuple[str, SeriesGeometry], other: tuple[str, SeriesGeometry]) -> None:
    (ref_name, ref), (name, geo) = reference, other
    if ref.shape != geo.shape:
        raise UserError(
            f"channels '{ref_name}' and '{name}' are on different grids: series {ref.series} is "
            f"{ref.shape} voxels, series {geo.series} is {geo.shape}; resample them to one grid first."
        )
    distance = float(np.linalg.norm(_corners(ref) - _corners(geo), axis=1).max())
    if distance > GRID_TOLERANCE_MM:
        raise UserError(
            f"channels '{ref_name}' and '{name}' are on different grids: series {ref.series} and "
            f"{geo.series} have the same size but their corners lie up to {distance:.3f} mm apart; "
            f"resample them to one grid first."
        )
