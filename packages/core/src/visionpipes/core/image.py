"""The one image decoder of visionpipes: files or bytes in, an HxWx3 uint8 array out, with one kind
of error (`UserError` naming the file or upload), an optional allow-list of formats and an optional
pixel budget checked from the header before any pixel is decoded.

Pillow decodes; nothing here imports torch or OpenCV.
"""

from __future__ import annotations

import io
import os
from collections.abc import Collection
from pathlib import Path

import numpy as np

from visionpipes.core.errors import UserError

__all__ = ["ImageTooLarge", "read_image"]


#: Leading bytes of the formats an allow-list usually names; checked before Pillow sees the data, so a
#: refused format never reaches a parser (and never reaches plugin hooks others patch into Image.open).
_SIGNATURES: dict[str, tuple[bytes, ...]] = {
    "JPEG": (b"\xff\xd8\xff",),
    "PNG": (b"\x89PNG\r\n\x1a\n",),
    "WEBP": (b"RIFF",),  # and "WEBP" at byte 8, checked below
    "GIF": (b"GIF87a", b"GIF89a"),
    "BMP": (b"BM",),
    "TIFF": (b"II*\x00", b"MM\x00*"),
}


def _sniff_allowed(head: bytes, allowed: list[str]) -> bool:
    """Whether `head` starts like one of the `allowed` formats (True for formats without a known signature)."""
    for fmt in allowed:
        sigs = _SIGNATURES.get(fmt)
        if sigs is None:
            return True
        if any(head.startswith(sig) for sig in sigs) and (fmt != "WEBP" or head[8:12] == b"WEBP"):
            return True
    return False


class ImageTooLarge(UserError):
    """The image's header declares more pixels than the budget allows."""


def read_image(
    source: str | os.PathLike | bytes,
    *,
    order: str = "RGB",
    formats: Collection[str] | None = None,
    max_pixels: int | None = None,
    name: str | None = None,
) -> np.ndarray:
    """Decode an image file (or its bytes) as an HxWx3 uint8 array.

    Args:
        source: a file path, or the encoded bytes (an upload).
        order: `RGB` (Pillow, torchvision) or `BGR` (OpenCV, ultralytics).
        formats: Pillow format names allowed (e.g. `{"JPEG", "PNG", "WEBP"}`); None allows any.
        max_pixels: refuse images whose header declares more pixels than this (None: Pillow's own
            decompression-bomb limit only).
        name: how to call the image in errors (default: the path, or `uploaded image`).

    Returns:
        The pixels, HxWx3 uint8, in `order`.

    Raises:
        UserError: if the file is missing, not a decodable image, not of a format in `formats` (only
            those formats' parsers are tried);
            `ImageTooLarge` (a `UserError`) above `max_pixels`.

    Example:
        >>> import PIL.Image
        >>> buf = io.BytesIO(); PIL.Image.new("L", (4, 3)).save(buf, "PNG")
        >>> read_image(buf.getvalue()).shape
        (3, 4, 3)
    """
    from PIL import Image, UnidentifiedImageError

    if order not in ("RGB", "BGR"):
        raise ValueError(f"order must be RGB or BGR, got {order!r}.")
    if isinstance(source, (bytes, bytearray, memoryview)):
        label = name or "uploaded image"
        stream: io.BytesIO | Path = io.BytesIO(bytes(source))
    else:
        path = Path(source)
        label = name or f"image file {path}"
        if not path.is_file():
            raise UserError(f"{label} does not exist.")
        stream = path
    allowed = sorted({f.upper() for f in formats}) if formats is not None else None
    if allowed is not None:
        if isinstance(stream, io.BytesIO):
            head = stream.getvalue()[:16]
        else:
            with open(stream, "rb") as fh:
                head = fh.read(16)
        if not _sniff_allowed(head, allowed):
            raise UserError(f"{label} is not an image of an allowed format ({', '.join(allowed)}).")
    try:
        # With an allow-list, Pillow only tries those plugins: no other format's parser ever sees the bytes.
        with Image.open(stream, formats=allowed) as img:
            width, height = img.size
            if max_pixels is not None and width * height > max_pixels:
                raise ImageTooLarge(
                    f"{label} is {width}x{height} = {width * height:,} pixels, over the limit of {max_pixels:,}."
                )
            pixels = np.asarray(img.convert("RGB"))
    except UserError:
        raise
    except UnidentifiedImageError as err:
        if allowed is not None:
            raise UserError(f"{label} is not an image of an allowed format ({', '.join(allowed)}).") from None
        raise UserError(f"{label} is not a readable image ({err}).") from None
    except (OSError, ValueError, SyntaxError, ImportError, Image.DecompressionBombError) as err:
        # ImportError: ultralytics patches Image.open process-wide to try an optional HEIF plugin.
        raise UserError(f"{label} is not a readable image ({err}).") from None
    if order == "BGR":
        pixels = np.ascontiguousarray(pixels[:, :, ::-1])
    return pixels
