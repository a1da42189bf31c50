"""Run-time settings every visionpipes CLI applies first: offline hubs (model hubs, ultralytics,
DVC telemetry) and the CPU thread count. One place, so no command can forget one.

Nothing here downloads anything; it only sets environment variables and torch's thread count.
Ultralytics' settings folder and plot font are the driving package's (`driving.ultralytics_env`).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

#: Environment variables that make every model hub fail fast instead of reaching the network.
OFFLINE_ENV: dict[str, str] = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "YOLO_OFFLINE": "1",
    "YOLO_AUTOINSTALL": "0",
    "YOLO_VERBOSE": "False",
    "DVC_NO_ANALYTICS": "1",
    "DO_NOT_TRACK": "1",
}

@dataclass(frozen=True)
class RuntimeSettings:
    """What `apply_runtime_settings` applied."""

    threads: int
    cache_dir: Path


def find_project_root(start: Path | None = None) -> Path | None:
    """The nearest folder at or above `start` holding `.dvc/` and `packages/` (this monorepo)."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / ".dvc").is_dir() and (folder / "packages").is_dir():
            return folder
    return None


def default_cache_dir() -> Path:
    """`$VISIONPIPES_CACHE_DIR`, else `<project>/.cache`, else `~/.cache/visionpipes`."""
    env = os.environ.get("VISIONPIPES_CACHE_DIR")
    if env:
        return Path(env)
    root = find_project_root() or find_project_root(Path(__file__).parent)
    if root is not None:
        return root / ".cache"
    return Path.home() / ".cache" / "visionpipes"


def default_threads() -> int:
    """The CPU thread count of the project's compute: `$VISIONPIPES_THREADS`, else every logical core."""
    return int(os.environ.get("VISIONPIPES_THREADS", 0) or 0) or (os.cpu_count() or 1)


def apply_runtime_settings(threads: int | None = None) -> RuntimeSettings:
    """Apply the project's run-time settings to this process.

    Args:
        threads: CPU threads for torch; default `$VISIONPIPES_THREADS` or all cores.

    Returns:
        The settings applied.

    Example:
        >>> s = apply_runtime_settings(threads=1)
        >>> os.environ["HF_HUB_OFFLINE"]
        '1'
    """
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    cache = default_cache_dir()
    os.environ.setdefault("MPLCONFIGDIR", str(cache / "matplotlib"))
    n = threads or default_threads()
    # torch reads OMP_NUM_THREADS when it is first imported; set it already so that commands
    # which never need torch (metrics, --help) do not pay for importing it here.
    if threads or "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = str(n)
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return RuntimeSettings(threads=n, cache_dir=cache)
