"""Shared fixtures of the medical tests: a small synthetic Task01 sample written once per session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from visionpipes.medical.synth import SynthConfig, write_synthetic_task

#: Small enough that decoding the whole sample takes well under a second.
TINY = SynthConfig(cases=3, size=32, seed=7, test_cases=1)


@pytest.fixture(scope="session")
def tiny_config() -> SynthConfig:
    """The configuration of `synth_task_readonly`."""
    return TINY


@pytest.fixture(scope="session")
def synth_task_readonly(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic Task01_BrainTumour sample shared by all tests: never modify it (use `synth_task`)."""
    return write_synthetic_task(tmp_path_factory.mktemp("msd") / "Task01_BrainTumour", TINY)


@pytest.fixture
def synth_task(synth_task_readonly: Path, tmp_path: Path) -> Path:
    """A private copy of the synthetic sample that a test may corrupt."""
    return Path(shutil.copytree(synth_task_readonly, tmp_path / "Task01_BrainTumour"))
