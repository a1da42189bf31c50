"""Ultralytics' side effects, kept in check by `driving.ultralytics_env`: its settings folder and the
plot font land in the project cache where ultralytics itself looks (nothing fetched), its settings
go offline, and the shared image reader still answers a non-image with one clear error after
ultralytics patched `PIL.Image.open` process-wide (to try an optional HEIF plugin)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from visionpipes.core.errors import UserError
from visionpipes.core.image import read_image
from visionpipes.driving.ultralytics_env import place_plot_font

# A fresh interpreter: ultralytics reads YOLO_CONFIG_DIR once, when it is first imported.
_PROBE = """
import json
from visionpipes.core.settings import apply_runtime_settings
from visionpipes.driving.ultralytics_env import apply_ultralytics_env
apply_runtime_settings(threads=1)
apply_ultralytics_env()
from ultralytics.utils import USER_CONFIG_DIR
from ultralytics.utils.checks import check_font
print(json.dumps({"user_config_dir": str(USER_CONFIG_DIR), "check_font": str(check_font("Arial.ttf"))}))
"""

_CACHE_PROBE = """
import json, os
from visionpipes.driving.ultralytics_env import prepare_ultralytics
folder = prepare_ultralytics()
from ultralytics.utils import SETTINGS
print(json.dumps({"folder": str(folder), "env": os.environ["YOLO_CONFIG_DIR"], "sync": SETTINGS["sync"]}))
"""


def _probe(code: str, env: dict[str, str]) -> dict:
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_font_lands_in_ultralytics_user_config_dir(tmp_path: Path) -> None:
    found = _probe(_PROBE, {**os.environ, "YOLO_CONFIG_DIR": str(tmp_path / "yolo")})
    user_config_dir = Path(found["user_config_dir"])
    assert user_config_dir == tmp_path / "yolo" / "Ultralytics"
    font = user_config_dir / "Arial.ttf"
    assert font.is_file() and font.read_bytes()[:4] == b"\x00\x01\x00\x00"  # a TrueType file
    assert Path(found["check_font"]) == font  # ultralytics takes it and would fetch nothing


def test_config_dir_defaults_to_the_project_cache_and_settings_go_offline(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "YOLO_CONFIG_DIR"}
    env["VISIONPIPES_CACHE_DIR"] = str(tmp_path / "cache")
    found = _probe(_CACHE_PROBE, env)
    assert found["env"] == str(tmp_path / "cache" / "ultralytics")
    assert Path(found["folder"]) == tmp_path / "cache" / "ultralytics" / "Ultralytics"
    assert (Path(found["folder"]) / "Arial.ttf").is_file() and found["sync"] is False


def test_place_plot_font_is_idempotent_and_leaves_no_temporary(tmp_path: Path) -> None:
    first = place_plot_font(tmp_path / "Ultralytics")
    assert first == tmp_path / "Ultralytics" / "Arial.ttf" and first.is_file()
    size = first.stat().st_size
    assert place_plot_font(tmp_path / "Ultralytics") == first and first.stat().st_size == size
    assert [p.name for p in (tmp_path / "Ultralytics").iterdir()] == ["Arial.ttf"]


def test_core_image_reader_after_ultralytics_import(tmp_path: Path) -> None:
    import ultralytics  # noqa: F401  (the import is the side effect under test)

    bad = tmp_path / "frame.jpg"
    bad.write_bytes(b"definitely not a jpeg")
    with pytest.raises(UserError, match=r"frame\.jpg is not a readable image"):
        read_image(bad)
