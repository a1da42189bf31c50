"""NIfTI volumes of an MSD task: decoding with one clear error per unreadable file, MSD's channels-last images
as channels-first arrays, and label maps written back with the scan's affine and header.

Pure file I/O with nibabel and numpy: no torch, no resampling or normalisation (the runtime does that).
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from visionpipes.core.errors import UserError
from visionpipes.core.io import atomic_path

_GZIP_MAGIC = b"\x1f\x8b"


def _gzip_stream_broken(path: Path) -> bool:
    """True if the gzip stream of `path` ends early or is corrupt (the header too short to sniff)."""
    try:
        with gzip.open(path, "rb") as fh:
            while fh.read(1 << 20):
                pass
    except (EOFError, zlib.error, gzip.BadGzipFile, OSError):
        return True
    return False


def read_nifti(path: str | os.PathLike) -> tuple[np.ndarray, Any]:
    """Open a NIfTI file and decode all its voxels.

    Args:
        path: a `.nii` or `.nii.gz` file.

    Returns:
        `(data, image)`: the voxel array (scaling applied, the file's axis order) and the nibabel image
        (for its affine and header).

    Raises:
        UserError: if the file is missing, a `.nii.gz` that is not gzip data, truncated, or not NIfTI.
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
        reference: the nibabel image the labels were predicted from.
        output: a `.nii` or `.nii.gz` path.

    Raises:
        UserError: if the output name or folder is unusable.
    """
    import nibabel as nib

    output = Path(output)
    check_output_path(output)
    header = reference.header.copy()
    image = nib.Nifti1Image(labels, reference.affine, header=header)
    image.set_data_dtype(labels.dtype)
    image.header.set_slope_inter(1.0, 0.0)
    image.header["cal_min"], image.header["cal_max"] = 0, int(labels.max()) if labels.size else 0
    payload = image.to_bytes()
    if output.name.endswith(".gz"):
        payload = gzip.compress(payload, compresslevel=1, mtime=0)
    with atomic_path(output) as tmp:
        tmp.write_bytes(payload)
    return output
