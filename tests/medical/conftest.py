"""Shared fixtures of the medical tests: a small synthetic Task01 sample written once per session, and a
tiny model trained on it once per session."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest

from visionpipes.medical.msd.synth import SynthConfig, write_synthetic_task

#: Small enough that decoding the whole sample takes well under a second.
TINY = SynthConfig(cases=3, size=32, seed=7, test_cases=1)
#: A 2-epoch run of a tiny UNet: enough to produce checkpoints, logs and a model to export.
TINY_TRAIN = {
    "model": {"channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1},
    "data": {"roi_size": [32, 32, 32], "val_fraction": 0.34, "num_samples": 1, "batch_size": 2},
    "trainer": {"max_epochs": 2, "progress": False, "log_every_n_steps": 1},
}


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


@pytest.fixture
def tiny_train() -> dict:
    """The training section of `trained` (a fresh copy each time)."""
    return copy.deepcopy(TINY_TRAIN)


@pytest.fixture(scope="session")
def trained(synth_task_readonly: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The output folder of a 2-epoch run of a tiny UNet on the tiny synthetic sample (never modify it)."""
    from visionpipes.medical.training.config import SegmentationConfig
    from visionpipes.medical.training.fit import train

    out = tmp_path_factory.mktemp("run")
    train(synth_task_readonly, out, SegmentationConfig.from_params(TINY_TRAIN, source="TINY_TRAIN"))
    return out
