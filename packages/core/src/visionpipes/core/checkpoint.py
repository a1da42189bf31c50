"""The one checkpoint loader: a torch file (state dict, Lightning checkpoint, or a dict holding
one) read on the CPU with `weights_only=True`, every failure one `UserError` naming the file; and
the one single-file model format `{config, state_dict, extra}` (`save_model_file`/`load_model_file`).

No Lightning import: predictors and exporters load training checkpoints through this.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["load_checkpoint", "load_model_file", "load_state_into", "save_model_file", "state_dict_of"]

C = TypeVar("C")


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


def save_model_file(
    path: str | os.PathLike, config: Any, state_dict: Mapping[str, Any], extra: Mapping[str, Any] | None = None
) -> None:
    """Save a model as one torch file `{config, state_dict, extra}` (atomically); `config` is a
    `core.config.ConfigModel` (stored as plain values, so loading needs no pickled classes).

    Raises:
        UserError: if the folder does not exist.
    """
    import torch

    from visionpipes.core.io import atomic_path

    with atomic_path(path) as tmp:
        torch.save({"config": config.to_dict(), "state_dict": dict(state_dict), "extra": dict(extra or {})}, tmp)


def load_model_file(path: str | os.PathLike, config_type: type[C], *, what: str) -> tuple[C, dict[str, Any], dict[str, Any]]:
    """Read a file written by `save_model_file`: its config (validated as `config_type`), state dict and extra.

    Raises:
        UserError: if the file is missing, unreadable, or not such a file (naming `what`).
    """
    from visionpipes.core.config import parse_config
    from visionpipes.core.errors import UserError

    data = load_checkpoint(path, what=what)
    if not isinstance(data, dict) or not isinstance(data.get("config"), dict) or "state_dict" not in data:
        raise UserError(f"{path} is not a {what} saved by visionpipes (no config and state_dict).")
    config = parse_config(config_type, data["config"], source=f"{what} {path}: config")
    return config, data["state_dict"], dict(data.get("extra") or {})


def load_state_into(model: Any, state_dict: Mapping[str, Any], *, path: str | os.PathLike, what: str) -> Any:
    """`model.load_state_dict(state_dict)`, a mismatch being one `UserError` naming the file; the
    model is returned in eval mode."""
    from visionpipes.core.errors import UserError

    try:
        model.load_state_dict(state_dict)
    except (KeyError, TypeError, RuntimeError) as err:
        detail = " ".join(str(err).split())[:300] or type(err).__name__
        raise UserError(f"{path} is not a {what} saved by visionpipes ({detail}).") from None
    return model.eval()
