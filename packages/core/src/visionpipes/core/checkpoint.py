"""The one checkpoint loader: a torch file (state dict, Lightning checkpoint, or a dict holding
one) read on the CPU with `weights_only=True`, every failure one `UserError` naming the file.

No Lightning import: predictors and exporters load training checkpoints through this.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["load_checkpoint", "state_dict_of"]


def load_checkpoint(path: str | os.PathLike, *, what: str = "checkpoint", weights_only: bool = True) -> Any:
    """Read a torch file on the CPU.

    Args:
        path: the file.
        what: how to call it in errors (`lane model`, `pretrained checkpoint`, ...).
        weights_only: torch's safe unpickler (tensors, containers, primitives only); keep it True
            for any file that did not come from this project.

    Returns:
        What the file holds (usually a dict).

    Raises:
        UserError: if the file is missing or not a readable torch file.
    """
    import torch

    from visionpipes.core.errors import UserError

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist.")
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as err:  # torch raises many types for a file that is not a checkpoint
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"{what} {path} is not a readable PyTorch file ({first}).") from None


def state_dict_of(
    data: Any, *, path: str | os.PathLike, what: str = "checkpoint", keys: Iterable[str] = ("state_dict", "model")
) -> dict[str, Any]:
    """The state dict inside what `load_checkpoint` returned: the object itself, or the first of
    `keys` it holds (Lightning's `state_dict`, torchvision's training scripts' `model`).

    Raises:
        UserError: if no state dict of tensors is found.
    """
    import torch

    from visionpipes.core.errors import UserError

    if isinstance(data, dict):
        for key in keys:
            if isinstance(data.get(key), dict):
                data = data[key]
                break
    if not isinstance(data, dict) or not data or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise UserError(f"{what} {path} does not hold a state dict of tensors.")
    return data
