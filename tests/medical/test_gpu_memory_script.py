"""benchmarks/medical_gpu_memory.py (issue #13's GPU memory check): it refuses to run without CUDA in one line,
and its plan -> network -> training-step set-up works on a CPU for a tiny plan (no CUDA numbers)."""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "medical_gpu_memory.py"


@pytest.fixture(scope="module")
def script():
    """Import the script by path (importlib import mode puts no benchmarks folder on sys.path)."""
    spec = importlib.util.spec_from_file_location("medical_gpu_memory", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_refuses_without_cuda_in_one_line(script):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--steps", "2"], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == script.NO_CUDA
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_plans_follow_the_gpu_memory_and_the_80_gb_budget(script):
    entries = script.plans(40.0, 2)
    assert [(e["volume"], e["budget"]) for e in entries] == [
        ("mri", "gpu"), ("mri", "80gb"), ("ct", "gpu"), ("ct", "80gb"),
    ]  # fmt: skip
    by = {(e["volume"], e["budget"]): e for e in entries}
    for volume, channels, regions in (("mri", 4, 3), ("ct", 1, 2)):
        small, big = by[(volume, "gpu")], by[(volume, "80gb")]
        assert (small["in_channels"], small["regions"]) == (channels, regions)
        assert small["plan"]["memory_gb"] == 40.0 and big["plan"]["memory_gb"] == 80.0
        # nnU-Net's rule: patch and batch fill the budget (the batch is rounded: the estimate may pass the
        # budget by half a sample)
        assert small["plan"]["estimated_gb"] < big["plan"]["estimated_gb"]
        for e, budget in ((small, 40.0), (big, 80.0)):
            per_sample = e["plan"]["estimated_gb"] / e["plan"]["batch_size"]
            assert e["plan"]["estimated_gb"] <= budget + per_sample / 2 + 1e-6


def test_measure_trains_a_tiny_plan_on_cpu(script):
    spec = {"shape": (32, 32, 32), "spacing": (1.0, 1.0, 1.0), "modality": ["CT"], "classes": 2, "cases": 4,
            "stats": script.geometry.VOLUMES["ct"]["stats"]}  # fmt: skip
    plan = script.geometry.plan(spec, {"device": "cuda", "memory_gb": 8, "cpu_cores": 2})
    entry = {"volume": "tiny", "budget": "8gb", "in_channels": 1, "regions": 2, "plan": plan}
    result = script.measure(entry, device="cpu", steps=2, precision="32-true", patch=[16, 16, 16], batch=1)
    assert result["steps_done"] == 2 and not result["oom"]
    assert result["patch_size"] == [16, 16, 16] and result["batch_size"] == 1
    assert result["features"] == plan["features"] and result["estimated_gb"] == plan["estimated_gb"]
    assert len(result["losses"]) == 2 and all(math.isfinite(v) for v in result["losses"]) and result["finite"]
    assert result["step_s"] > 0 and result["parameters"] > 0
    assert "max_reserved_gib" not in result and "within_20pct" not in result
    with pytest.raises(ValueError, match="precision"):
        script.measure(entry, device="cpu", steps=1, precision="fp8")
