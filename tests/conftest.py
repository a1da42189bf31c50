"""Shared test set-up: the project's run-time settings (offline hubs, thread count) and the
location of the real fixtures in `../shared/fixtures` beside the project."""

from __future__ import annotations

from pathlib import Path

import pytest

from visionpipes.core.settings import apply_runtime_settings

apply_runtime_settings()

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """`../shared/fixtures`; tests that need it skip with a reason where it is absent."""
    if not FIXTURES.is_dir():
        pytest.skip(f"real fixtures not found at {FIXTURES} (CI has them beside the clone)")
    return FIXTURES
