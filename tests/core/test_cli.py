"""`vp-core` as users run it: a real subprocess, its exit codes and its one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

VP_CORE = str(Path(sys.executable).with_name("vp-core"))


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([VP_CORE, *args], capture_output=True, text=True, timeout=300)


def test_help_of_every_verb() -> None:
    for verb in ([], ["backbones"], ["demo"]):
        out = run(*verb, "--help")
        assert out.returncode == 0 and "usage: vp-core" in out.stdout


def test_backbones_list_spec_and_profile() -> None:
    listed = run("backbones")
    assert listed.returncode == 0 and "resnext50_32x4d" in listed.stdout.split()
    spec = json.loads(run("backbones", "resnet18", "--spec").stdout)
    assert [s["depth"] for s in spec["resnet18"]["stages"]] == [2, 2, 2, 2]
    table = run("backbones", "mobilenet_v2", "--profile", "--size", "64", "--repeats", "1")
    assert table.returncode == 0, table.stderr
    row = next(line for line in table.stdout.splitlines() if line.startswith("mobilenet_v2"))
    assert row.split()[1] == "2.22"  # millions of parameters


def test_unknown_backbone_is_one_line_and_exit_2() -> None:
    out = run("backbones", "resnet1000")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [out.stderr.strip()]
    assert "unknown backbone 'resnet1000'" in out.stderr and "Traceback" not in out.stderr


def test_network_library_loads_without_the_training_stack_and_search_needs_the_nas_extra() -> None:
    """Importing the library and the CLI pulls in neither Optuna nor Lightning; without Optuna the
    search verb says which extra to install, in one line."""
    code = (
        "import sys\n"
        "import visionpipes.core.backbones, visionpipes.core.blocks, visionpipes.core.profile, "
        "visionpipes.core.export, visionpipes.core.workspace, visionpipes.core.cli\n"
        "print(sorted(m for m in ('optuna', 'lightning', 'dvclive') if m in sys.modules))\n"
        "sys.modules['optuna'] = None  # as if the nas extra were not installed\n"
        "from visionpipes.core.cli import main\n"
        "main(['search', '--out', 'unused', '--trials', '1'])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.stdout.strip() == "[]"
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [
        "error: the architecture search needs Optuna, which is not installed; install visionpipes-core[nas] "
        "(e.g. pip install -e 'packages/core[nas]')."
    ]
