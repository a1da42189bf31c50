"""Run-time settings: every CLI's offline environment comes from core; ultralytics' settings folder
and plot font are the driving package's (`tests/driving/test_ultralytics_side_effects.py`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from visionpipes.core.settings import OFFLINE_ENV

# A fresh interpreter, without the variables the test session already set.
_PROBE = """
import json, os, sys
from visionpipes.core.settings import apply_runtime_settings
s = apply_runtime_settings(threads=1)
print(json.dumps({"env": {k: os.environ.get(k) for k in %r}, "threads": s.threads,
                  "yolo_config_dir": os.environ.get("YOLO_CONFIG_DIR"),
                  "imported": [m for m in ("ultralytics", "torch", "matplotlib") if m in sys.modules]}))
"""


def test_offline_env_for_every_cli_and_no_ultralytics_side_effects(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in OFFLINE_ENV and k != "YOLO_CONFIG_DIR"}
    env["VISIONPIPES_CACHE_DIR"] = str(tmp_path / "cache")
    done = subprocess.run(
        [sys.executable, "-c", _PROBE % (list(OFFLINE_ENV),)],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["env"] == OFFLINE_ENV  # YOLO_OFFLINE, YOLO_AUTOINSTALL, HF_HUB_OFFLINE, ... set for every CLI
    assert found["env"]["YOLO_OFFLINE"] == "1" and found["env"]["YOLO_AUTOINSTALL"] == "0"
    assert found["threads"] == 1
    # ultralytics' settings folder and font are left to the driving package; nothing heavy imported
    assert found["yolo_config_dir"] is None and not (tmp_path / "cache" / "ultralytics").exists()
    assert found["imported"] == []
