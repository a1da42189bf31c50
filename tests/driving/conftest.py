"""Shared fixtures of the driving tests: the real BDD100K files under ../shared/fixtures/bdd100k."""

from __future__ import annotations

from pathlib import Path

import pytest

from visionpipes.driving.ultralytics_env import apply_ultralytics_env

# ultralytics reads YOLO_CONFIG_DIR once, at import: point it at the project cache first, as the
# driving CLI and modules do.
apply_ultralytics_env()

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "bdd100k"


@pytest.fixture(scope="session")
def bdd_fixtures(require) -> Path:
    """The BDD100K fixture folder (official toolkit test files); skips locally and fails under CI
    when it is absent."""
    require((FIXTURES / "det" / "gt.json").is_file(), f"BDD100K fixtures not found at {FIXTURES}")
    return FIXTURES
