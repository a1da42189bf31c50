"""Server limits of the query API (`APIConfig`): what `vp-retail serve --max-*` sets.

Validation only; no FastAPI, no index.
"""

from __future__ import annotations

from visionpipes.core.config import ConfigModel, Field


class APIConfig(ConfigModel):
    """Server limits.

    Attributes:
        max_upload_bytes: largest accepted image upload (413 above it).
        max_k: largest `k` a query may ask for (422 above it).
        max_batch: most images in one /search/batch request.
    """

    max_upload_bytes: int = Field(10 * 1024 * 1024, ge=1)
    max_k: int = Field(100, ge=1)
    max_batch: int = Field(64, ge=1)
