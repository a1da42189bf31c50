"""NIfTI volumes of an MSD task: decoding with one clear error per unreadable file, MSD's channels-last images
as channels-first arrays, and label maps written back with the scan's affine and header.

Pure file I/O with nibabel and numpy: no torch, no resampling or normalisation (the runtime does that).
"""

from __future__ import annotations

import gzip
import math
import os
import warnings
import zlib
from pathlib import Path
from typing import Any, Literal

import numpy as np

from visionpipes.core.errors import UserError
from visionpipes.core.io import atomic_path

_GZIP_MAGIC = b"\x1f\x8b"

#: Largest decoded voxel array `read_nifti` accepts (bytes): a header declaring more is refused before reading.
MAX_VOLUME_BYTES = 8 * 1024**3
#: What to do with NaN/inf voxels: refuse the scan, or set them to 0 with a warning.
NonFinitePolicy = Literal["error", "zero"]


class NonFiniteWarning(UserWarning):
    """A scan held NaN/inf voxels that were set to 0 (`nonfinite="zero"`)."""


def check_nifti_header(image: Any, path: str | os.PathLike, max_bytes: int = MAX_VOLUME_BYTES) -> None:
    """Refuse a NIfTI header before its voxels are read: too large a volume, or an unusable affine.

    Args:
        image: the nibabel image as `nib.load` returns it (header parsed, voxels not read).
        path: the file, named in errors.
        max_bytes: budget for the decoded voxel array (voxel count x bytes per decoded voxel).

    Raises:
        UserError: if the declared volume exceeds `max_bytes`, or the voxel-to-world affine holds NaN/inf
            or is singular (a zero voxel size or collapsed axes).
    """
    shape = tuple(int(n) for n in image.shape)
    dtype = np.dtype(image.get_data_dtype())
    slope, inter = image.header.get_slope_inter()
    scaled = (slope is not None and slope != 1) or (inter is not None and inter != 0)
    itemsize = max(dtype.itemsize, 8) if scaled else dtype.itemsize
    nbytes = math.prod(shape) * itemsize
    if nbytes > max_bytes:
        raise UserError(
            f"{path} declares a {'x'.join(map(str, shape))} volume of {dtype} ({nbytes / 2**30:.1f} GiB "
            f"decoded), over the {max_bytes / 2**30:.1f} GiB budget; its header is wrong or the scan is too "
            f"large to read."
        )
    affine = np.asarray(image.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)):
        raise UserError(
            f"{path} has NaN or infinite values in its voxel-to-world affine (sform/qform), so its voxels "
            f"cannot be placed in space."
        )
    zooms = np.linalg.norm(affine[:3, :3], axis=0)
    if not np.all(zooms > 0) or abs(np.linalg.det(affine[:3, :3])) <= 1e-9 * float(np.prod(zooms)):
        raise UserError(
            f"{path} has a singular voxel-to-world affine (a zero voxel size or two parallel axes), so its "
            f"voxels cannot be placed in space."
        )


def finite_volume(
    volume: np.ndarray, source: str | os.PathLike, policy: NonFinitePolicy = "error"
) -> np.ndarray:
    """Refuse NaN/inf voxels (`error`), or set them to 0 with a `NonFiniteWarning` (`zero`).

    One NaN voxel would turn its whole channel into NaN after the z-score and an all-background label map
    would be written without a word; hence the default refusal.

    Raises:
        UserError: with `error`, if any voxel of `volume` is NaN or infinite (naming `source`).
    """
    bad = ~np.isfinite(volume)
    count = int(bad.sum())
    if not count:
        return volume
    if policy == "error":
        raise UserError(
            f"{source} holds {count} NaN or infinite voxel(s); fix the scan, or predict with "
            f"--nonfinite zero to set them to 0."
        )
    warnings.warn(f"{source}: set {count} NaN or infinite voxel(s) to 0.", NonFiniteWarning, stacklevel=2)
    return np.where(bad, 0, volume).astype(volume.dtype, copy=False)


def _gzip_stream_broken(path: Path) -> bool:
    """True if the gzip stream of `path` ends early or is corrupt (the header too short to sniff)."""
    try:
        with gzip.open(path, "rb") as fh:
            while fh.read(1 << 20):
                pass
    except (EOFError, zlib.error, gzip.BadGzipFile, OSError):
        return True
    return False


def read_nifti(path: str | os.PathLike, max_bytes: int = MAX_VOLUME_BYTES) -> tuple[np.ndarray, Any]:
    """Open a NIfTI file, check its header (`check_nifti_header`) and decode all its voxels.

    Args:
        path: a `.nii` or `.nii.gz` file.
        max_bytes: budget for the decoded voxel array.

    Returns:
        `(data, image)`: the voxel array (scaling applied, the file's axis order) and the nibabel image
        (for its affine and header).

    Raises:
        UserError: if the file is missing, a `.nii.gz` that is not gzip data, truncated, or not NIfTI, or
            its header declares a volume over `max_bytes` or an unusable (NaN or singular) affine.
    """
    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist.")
    if path.name.endswith(".gz"):
        with open(path, "rb") as fh:
            if fh.read(2) != _GZIP_MAGIC:
                raise UserError(f"{path} is named .gz but is not gzip-compressed data.")
    try:
        image = nib.load(path)
        if not isinstance(image, nib.Nifti1Image | nib.Nifti2Image):
            raise UserError(f"{path} is a {type(image).__name__}, not a NIfTI image.")
        check_nifti_header(image, path, max_bytes)
        data = np.asanyarray(image.dataobj)
    except UserError:
        raise
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise UserError(f"{path} is truncated or its compressed data is corrupt ({err}).") from None
    except (ImageFileError, OSError, ValueError) as err:
        if path.name.endswith(".gz") and _gzip_stream_broken(path):
            raise UserError(f"{path} is truncated: its gzip stream ends early.") from None
        raise UserError(f"{path} is not a readable NIfTI file ({err}).") from None
    return data, image


def to_channels_first(data: np.ndarray, num_channels: int, source: str | os.PathLike = "image") -> np.ndarray:
    """MSD image voxels (3-D, or 4-D channels last) -> `(C, X, Y, Z)` float32.

    Args:
        data: voxels as stored: `(X, Y, Z)` for one modality, `(X, Y, Z, C)` for several.
        num_channels: the number of modalities the task declares.
        source: the file, named in errors.

    Raises:
        UserError: if the number of dimensions or channels does not match `num_channels`.
    """
    if data.ndim == 3:
        if num_channels != 1:
            raise UserError(
                f"{source} is a 3-D volume with 1 channel, but {num_channels} modalities are expected "
                "(4-D, channels last)."
            )
        return np.ascontiguousarray(data[None], dtype=np.float32)
    if data.ndim == 4:
        if data.shape[-1] != num_channels:
            raise UserError(
                f"{source} has {data.shape[-1]} channels (shape {tuple(data.shape)}), but "
                f"{num_channels} modalities are expected."
            )
        return np.ascontiguousarray(np.moveaxis(data, -1, 0), dtype=np.float32)
    raise UserError(f"{source} has {data.ndim} dimensions (shape {tuple(data.shape)}); expected 3-D or 4-D.")


def read_image_volume(path: str | os.PathLike, num_channels: int) -> tuple[np.ndarray, Any]:
    """Read an MSD image as `(C, X, Y, Z)` float32 plus its nibabel image (affine, header).

    Raises:
        UserError: if the file is missing, corrupt, or its channels do not match `num_channels`.
    """
    data, image = read_nifti(path)
    return to_channels_first(data, num_channels, path), image


#: File-name endings of NIfTI volumes.
NIFTI_SUFFIXES: tuple[str, ...] = (".nii", ".nii.gz")


def check_output_path(output: Path) -> None:
    """Raises `UserError` unless `output` ends in `.nii` / `.nii.gz` and its folder exists."""
    if not output.name.endswith(NIFTI_SUFFIXES):
        raise UserError(f"output {output} must end in .nii or .nii.gz.")
    parent = output.parent if str(output.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"output folder {parent} does not exist (for {output}).")


def write_label_map(labels: np.ndarray, reference: Any, output: str | os.PathLike) -> Path:
    """Write a label map as NIfTI with `reference`'s affine and header (3-D, integer), atomically.

    Args:
        labels: `(X, Y, Z)` integer labels on the reference's grid.
        reference: the nibabel image the labels were predicted from, or a 4x4 affine (RAS mm) for labels
            predicted from another format (a DICOM series).
        output: a `.nii` or `.nii.gz` path.

    Raises:
        UserError: if the output name or folder is unusable.
    """
    import nibabel as nib

    output = Path(output)
    check_output_path(output)
    if isinstance(reference, np.ndarray):
        image = nib.Nifti1Image(labels, reference)
        image.set_qform(reference, code=1)
        image.set_sform(reference, code=1)
    else:
        image = nib.Nifti1Image(labels, reference.affine, header=reference.header.copy())
    image.set_data_dtype(labels.dtype)
    image.header.set_slope_inter(1.0, 0.0)
    image.header["cal_min"], image.header["cal_max"] = 0, int(labels.max()) if labels.size else 0
    payload = image.to_bytes()
    if output.name.endswith(".gz"):
        payload = gzip.compress(payload, compresslevel=1, mtime=0)
    with atomic_path(output) as tmp:
        tmp.write_bytes(payload)
    return output
