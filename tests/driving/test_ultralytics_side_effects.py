"""ultralytics patches `PIL.Image.open` process-wide when imported (to try an optional HEIF
plugin); the shared image reader must still answer a non-image with one clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from visionpipes.core.errors import UserError
from visionpipes.core.image import read_image


def test_core_image_reader_after_ultralytics_import(tmp_path: Path) -> None:
    import ultralytics  # noqa: F401  (the import is the side effect under test)

    bad = tmp_path / "frame.jpg"
    bad.write_bytes(b"definitely not a jpeg")
    with pytest.raises(UserError, match=r"frame\.jpg is not a readable image"):
        read_image(bad)
