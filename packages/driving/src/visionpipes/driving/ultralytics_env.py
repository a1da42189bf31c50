"""Ultralytics' process set-up for the driving package: its settings folder (`YOLO_CONFIG_DIR`,
under the project cache), the plot font it would otherwise download, and its settings switched to
offline (no sync, no logger integrations). Applied by the driving CLI and by every driving module
before it imports ultralytics.

The offline environment variables every CLI needs (YOLO_OFFLINE, YOLO_AUTOINSTALL, HF_HUB_OFFLINE,
...) stay in `core.settings`; nothing here downloads anything.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

#: The folder under `YOLO_CONFIG_DIR` where ultralytics keeps its settings and looks for fonts
#: (`ultralytics.utils.USER_CONFIG_DIR`, made by `get_user_config_dir(sub_dir="Ultralytics")`).
ULTRALYTICS_SUBDIR = "Ultralytics"

#: Ultralytics settings that would reach the network or log elsewhere than our folders.
OFFLINE_SETTINGS: dict[str, Any] = {
    "sync": False,
    "dvc": False,
    "mlflow": False,
    "clearml": False,
    "comet": False,
    "raytune": False,
    "tensorboard": False,
    "wandb": False,
    "vscode_msg": False,
    "openvino_msg": False,
}


def place_plot_font(folder: Path) -> Path | None:
    """Put a TrueType font at `<folder>/Arial.ttf`, where ultralytics' `check_font` looks before it
    would download one; `folder` is ultralytics' `USER_CONFIG_DIR`.

    The font is matplotlib's DejaVuSans, copied once and renamed into place (never half-written).

    Args:
        folder: the folder to hold `Arial.ttf` (created if missing).

    Returns:
        The font's path, or None when matplotlib (the font's source) is not installed.
    """
    target = folder / "Arial.ttf"
    if target.exists():
        return target
    try:
        import matplotlib

        font = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    except ImportError:
        return None
    if not font.exists():
        return None
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".Arial.ttf.{os.getpid()}.tmp"
    try:
        shutil.copyfile(font, tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def apply_ultralytics_env() -> Path:
    """Point ultralytics at the project's settings folder and place its plot font there, before
    ultralytics is imported (it reads `YOLO_CONFIG_DIR` once, at import).

    `YOLO_CONFIG_DIR` is kept when already set; otherwise it becomes `<project cache>/ultralytics`
    (`core.settings.default_cache_dir`). Does not import ultralytics.

    Returns:
        The `YOLO_CONFIG_DIR` folder (created).
    """
    from visionpipes.core.settings import default_cache_dir

    folder = Path(os.environ.setdefault("YOLO_CONFIG_DIR", str(default_cache_dir() / "ultralytics"))).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    place_plot_font(folder / ULTRALYTICS_SUBDIR)
    return folder


def prepare_ultralytics() -> Path:
    """Make ultralytics work offline in this process and return its settings folder.

    Applies the project's run-time settings and `apply_ultralytics_env`, switches off ultralytics'
    telemetry and logger integrations (its DVCLive callback would write its own `dvclive/` folder
    and `dvc.yaml`), and places the plot font again at `USER_CONFIG_DIR`, which only matters when
    ultralytics was imported before `YOLO_CONFIG_DIR` was set (a no-op otherwise). Keeps torch's
    CPU thread count when ultralytics selects a device.
    """
    from visionpipes.core.settings import apply_runtime_settings

    apply_runtime_settings()
    apply_ultralytics_env()
    from ultralytics.utils import SETTINGS, USER_CONFIG_DIR

    wanted = {k: v for k, v in OFFLINE_SETTINGS.items() if k in SETTINGS and SETTINGS[k] != v}
    if wanted:
        SETTINGS.update(wanted)
    place_plot_font(Path(USER_CONFIG_DIR))
    import torch
    from ultralytics.utils import torch_utils

    # ultralytics' select_device sets torch's CPU threads to its NUM_THREADS, one less than the
    # cores: a single thread on a 2-core machine, which halves CPU training and validation speed.
    # Keep the project's thread count (VISIONPIPES_THREADS, default all cores) instead.
    torch_utils.NUM_THREADS = torch.get_num_threads()
    return Path(USER_CONFIG_DIR)
