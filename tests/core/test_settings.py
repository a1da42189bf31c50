"""Run-time settings: the font ultralytics' plotting needs lands where ultralytics itself looks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from visionpipes.core.settings import place_plot_font

# A fresh interpreter: ultralytics reads YOLO_CONFIG_DIR once, when it is first imported.
_PROBE = """
import json
from visionpipes.core.settings import apply_runtime_settings
apply_runtime_settings(threads=1)
from ultralytics.utils import USER_CONFIG_DIR
from ultralytics.utils.checks import check_font
print(json.dumps({"user_config_dir": str(USER_CONFIG_DIR), "check_font": str(check_font("Arial.ttf"))}))
"""


def test_font_lands_in_ultralytics_user_config_dir(tmp_path: Path) -> None:
    env = {**os.environ, "YOLO_CONFIG_DIR": str(tmp_path / "yolo")}
    done = subprocess.run(
        [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    user_config_dir = Path(found["user_config_dir"])
    assert user_config_dir == tmp_path / "yolo" / "Ultralytics"
    font = user_config_dir / "Arial.ttf"
    assert font.is_file() and font.read_bytes()[:4] == b"\x00\x01\x00\x00"  # a TrueType file
    assert Path(found["check_font"]) == font  # ultralytics takes it and would fetch nothing


def test_place_plot_font_is_idempotent_and_leaves_no_temporary(tmp_path: Path) -> None:
    first = place_plot_font(tmp_path / "Ultralytics")
    assert first == tmp_path / "Ultralytics" / "Arial.ttf" and first.is_file()
    size = first.stat().st_size
    assert place_plot_font(tmp_path / "Ultralytics") == first and first.stat().st_size == size
    assert [p.name for p in (tmp_path / "Ultralytics").iterdir()] == ["Arial.ttf"]
