"""The device both driving models run on: the CLI's `--device` value (`auto`, `cpu`, a CUDA index
such as `0`, `cuda:1`, `mps`) decided by `core.device.select_device`, and that device as
ultralytics names it.

Runtime: imports torch and core.device only; no training code.
"""

from __future__ import annotations

import torch

from visionpipes.core.device import select_device


def model_device(preference: str | None = "auto") -> torch.device:
    """The torch device for `preference`: `auto` is CUDA, then MPS, then CPU (`select_device`); a
    bare CUDA index (`0`, ultralytics' spelling) means `cuda:0`.

    Raises:
        UserError: if an explicitly requested device is not available, or the name is unknown.
    """
    pref = str(preference or "auto").strip().lower()
    if pref.isdigit():
        pref = f"cuda:{pref}"
    return select_device(pref)


def ultralytics_device(device: str | torch.device) -> str | None:
    """A device as ultralytics takes it: `auto` -> None (ultralytics picks CUDA when present),
    `cuda:1` -> `1`, `cuda` -> `0`, `cpu`/`mps`/`0` unchanged."""
    name = str(device).lower()
    if name == "auto":
        return None
    if name == "cuda":
        return "0"
    return name.removeprefix("cuda:") if name.startswith("cuda:") else name
