"""Uploaded photos: decoding (through `core.image.read_image`, the one image decoder), durable
storage of product photos added with `POST /items` (`<index>/uploads/`, fsynced before the add
commits), and the safe mapping of a stored image path back to a file.

No routes here; paths never escape the catalog root or the uploads folder.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from fastapi import HTTPException

from visionpipes.core.errors import UserError
from visionpipes.core.image import ImageTooLarge, read_image
from visionpipes.retail.catalog import IMAGE_SUFFIXES
from visionpipes.retail.index.manifest import fsync_path
from visionpipes.retail.serve.settings import UPLOAD_FORMATS

#: Prefix of the image path of a photo uploaded through POST /items (kept in <index>/uploads/).
UPLOAD_PREFIX = "upload:"
UPLOADS_DIR = "uploads"


@dataclass
class Upload:
    """A decoded upload: the RGB pixels, the bytes as sent and PIL's name of their format."""

    pixels: np.ndarray
    data: bytes
    format: str


def _format_name(data: bytes) -> str:
    """PIL's name of the bytes' format, read from the header only (no pixel is decoded here: the
    decoding is `read_image`'s); it names the stored file's suffix."""
    from PIL import Image

    with Image.open(io.BytesIO(data), formats=sorted(UPLOAD_FORMATS)) as img:
        return (img.format or "png").lower()


def decode_upload(data: bytes, name: str, *, max_pixels: int | None = None) -> Upload:
    """Decode uploaded bytes to an HxWx3 uint8 RGB array: JPEG, PNG or WebP only (`UPLOAD_FORMATS`),
    at most `max_pixels` pixels (checked from the header, before decoding).

    Raises:
        HTTPException: 413 above `max_pixels`; 415 if the bytes are not a complete image in an allowed format.
    """
    try:
        pixels = read_image(data, name=f"upload {name!r}", formats=UPLOAD_FORMATS, max_pixels=max_pixels)
    except ImageTooLarge as err:
        raise HTTPException(413, str(err)) from None
    except UserError as err:
        raise HTTPException(415, str(err)) from None
    return Upload(pixels, data, _format_name(data))


def save_uploads(folder: Path, uploads: Sequence[Upload]) -> list[str]:
    """Write uploaded photos into `folder` under content-hash names, fsynced (file and folder) before
    returning their image paths (`upload:<name>`)."""
    folder.mkdir(exist_ok=True)
    paths = []
    for up in uploads:
        suffix = {"jpeg": "jpg"}.get(up.format, up.format)
        name = f"{hashlib.sha256(up.data).hexdigest()[:32]}.{suffix}"
        target = folder / name
        if not target.exists():
            tmp = folder / f".{name}.tmp"
            with open(tmp, "wb") as fh:
                fh.write(up.data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        paths.append(UPLOAD_PREFIX + name)
    fsync_path(folder)
    return paths


def resolve_image(image_path: str, *, catalog_root: Path | None, uploads: Path) -> Path | None:
    """The file of a stored image path, or None when there is none (no catalog root, a path outside
    it, or a missing file). Paths never escape the catalog root or the uploads folder."""
    if not image_path:
        return None
    if image_path.startswith(UPLOAD_PREFIX):
        name = image_path[len(UPLOAD_PREFIX) :]
        base, candidate = uploads.resolve(), (uploads / name).resolve()
    elif os.path.isabs(image_path):
        # A catalog that names its images by absolute path (`vp-retail data --source`); such paths come
        # only from the deployed catalog: uploads are always stored under the upload prefix.
        path = Path(image_path)
        return path if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES else None
    elif catalog_root is not None:
        base = catalog_root.resolve()
        candidate = (base / image_path).resolve()
    else:
        return None
    if candidate != base and base not in candidate.parents:
        return None
    return candidate if candidate.is_file() else None
