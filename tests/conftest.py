"""Shared test set-up: the project's run-time settings (offline hubs, thread count), the location of
the real fixtures in `../shared/fixtures` beside the project, and `require`, the one rule for a missing
prerequisite: skip on a developer's machine (with the reason), fail under CI (env `CI` set)."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from visionpipes.core.settings import apply_runtime_settings

apply_runtime_settings()

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"
BIN = Path(sys.executable).parent


def under_ci() -> bool:
    """Whether the suite runs under CI (the runner sets `CI` to a non-empty value other than false/0)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require_prerequisite(condition: object, reason: str) -> None:
    """Go on when `condition` is true; otherwise skip locally and fail under CI.

    A missing browser, fixture folder or console script means a broken install step on CI, which a
    skip would turn green; on a developer's machine it is a set-up the test cannot use.

    Args:
        condition: what the test needs (truthy when present).
        reason: one sentence naming what is missing and how to get it.

    Raises:
        pytest.fail.Exception: under CI when `condition` is false.
        pytest.skip.Exception: elsewhere when `condition` is false.
    """
    if condition:
        return
    if under_ci():
        pytest.fail(f"{reason} (CI is set: a missing prerequisite fails instead of skipping)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def require() -> Callable[[object, str], None]:
    """`require(condition, reason)`: skip locally, fail under CI (see `require_prerequisite`)."""
    return require_prerequisite


@pytest.fixture(scope="session")
def console_script(require: Callable[[object, str], None]) -> Callable[[str], Path]:
    """`console_script(name)`: the path of an installed console script beside this Python (or
    `require`'s skip/fail when it is not installed)."""

    def find(name: str) -> Path:
        path = BIN / name
        require(
            path.is_file() or shutil.which(name, path=str(BIN)),
            f"{name} is not installed beside {sys.executable}",
        )
        return path

    return find


@pytest.fixture(scope="session")
def fixtures_dir(require: Callable[[object, str], None]) -> Path:
    """`../shared/fixtures`; skips locally and fails under CI where it is absent."""
    require(FIXTURES.is_dir(), f"real fixtures not found at {FIXTURES} (CI has them beside the clone)")
    return FIXTURES
