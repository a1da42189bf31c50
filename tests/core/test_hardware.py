"""The hardware a plan is made for: probed here, or overridden so a GPU plan can be made on a laptop."""

from __future__ import annotations

import os

import pytest
import torch

from visionpipes.core.errors import UserError
from visionpipes.core.hardware import CPU_MEMORY_SHARE, probe_hardware


def test_probe_this_machine() -> None:
    hw = probe_hardware()
    assert hw.device == ("cuda" if torch.cuda.is_available() else "cpu")
    assert hw.cpu_cores == os.cpu_count() and hw.probed
    if hw.device == "cpu":
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
        assert hw.memory_gb == pytest.approx(ram * CPU_MEMORY_SHARE, abs=0.01)


def test_gpu_plan_on_a_laptop_is_marked_not_probed() -> None:
    hw = probe_hardware("cuda", memory_gb=80, cpu_cores=16)
    assert (hw.device, hw.memory_gb, hw.cpu_cores, hw.gpus) == ("cuda", 80.0, 16, max(1, torch.cuda.device_count()))
    assert not hw.probed


def test_bad_overrides_are_one_sentence() -> None:
    with pytest.raises(UserError, match="plan device must be auto, cpu, cuda or mps, got 'tpu'"):
        probe_hardware("tpu")
    with pytest.raises(UserError, match="memory_gb must be > 0"):
        probe_hardware("cpu", memory_gb=0)
