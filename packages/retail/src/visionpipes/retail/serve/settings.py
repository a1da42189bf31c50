"""Server settings of the query API (`APIConfig`): what `vp-retail serve --max-* / --token /
--allowed-host / --cors-origin / --compact-every` set.

Validation only; no FastAPI, no index.
"""

from __future__ import annotations

from visionpipes.core.config import ConfigModel, Field

#: Image formats the API decodes (Pillow names); everything else (EPS, TIFF, GIF, ...) is refused with 415.
UPLOAD_FORMATS = ("JPEG", "PNG", "WEBP")


class APIConfig(ConfigModel):
    """Server limits and access control.

    Attributes:
        max_upload_bytes: largest accepted image upload (413 above it).
        max_body_bytes: largest request body, refused (413) from its Content-Length or as it streams,
            before the multipart form is parsed.
        max_pixels: largest image (width x height from its header) decoded (413 above it).
        max_k: largest `k` a query may ask for (422 above it).
        max_batch: most images in one /search/batch request.
        max_item_images: most photos in one POST /items (422 above it).
        max_metadata_bytes: largest metadata JSON of POST /items (422 above it).
        max_metadata_depth: deepest nesting of that JSON (422 above it).
        token: the API token every write needs (`Authorization: Bearer T` or `X-API-Token: T`);
            None: writes are refused with 403.
        protect_reads: reads need the token too (the page, /health and /docs stay open).
        allowed_hosts: Host header names answered (DNS-rebinding defence); None or `*`: any.
        cors_origins: origins allowed cross-origin requests (none by default: no CORS headers).
        compact_every: compact the index after this many writes (0: never; see `vp-retail compact`).
    """

    max_upload_bytes: int = Field(10 * 1024 * 1024, ge=1)
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1)
    max_pixels: int = Field(40_000_000, ge=1)
    max_k: int = Field(100, ge=1)
    max_batch: int = Field(64, ge=1)
    max_item_images: int = Field(16, ge=1)
    max_metadata_bytes: int = Field(16 * 1024, ge=2)
    max_metadata_depth: int = Field(8, ge=1)
    token: str | None = Field(None, min_length=16, repr=False)
    protect_reads: bool = False
    allowed_hosts: list[str] | None = None
    cors_origins: list[str] = Field(default_factory=list)
    compact_every: int = Field(0, ge=0)
