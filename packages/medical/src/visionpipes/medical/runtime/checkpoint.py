"""A `vp-medical train` checkpoint as an eager network plus its model description (regions, modalities,
window, spacing), read through the core checkpoint loader.

It reads what training saved; it never imports Lightning or the training modules.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch

from visionpipes.core.checkpoint import load_checkpoint, state_dict_of
from visionpipes.core.config import parse_config
from visionpipes.core.errors import UserError
from visionpipes.medical.runtime.networks import ModelConfig, build_model

#: What inference needs besides the weights (saved as the training module's hyper-parameters).
DESCRIPTION_KEYS: tuple[str, ...] = (
    "model",
    "regions",
    "modality",
    "labels",
    "roi_size",
    "pixdim",
    "normalization",
)


def load_training_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a training checkpoint (`best.ckpt` / `last.ckpt`) as a dict, on the CPU.

    Raises:
        UserError: if the file is missing or not a visionpipes medical checkpoint.
    """
    ckpt = load_checkpoint(path, what="model checkpoint")
    hp = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not isinstance(hp, dict) or not {"model", "regions", "modality", "roi_size"} <= set(hp):
        raise UserError(
            f"model checkpoint {path} was not written by `vp-medical train` (no model description)."
        )
    return ckpt


def model_description(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """What inference needs besides the weights, from a checkpoint's hyper-parameters: the network
    (`model`), `regions`, `modality`, `labels`, `roi_size`, `pixdim` and `normalization` (per-channel
    entries of `planning.normalization`; None in checkpoints from before it: non-zero z-score per channel)."""
    out = {k: hparams.get(k) for k in DESCRIPTION_KEYS}
    out["labels"] = {str(k): v for k, v in (out["labels"] or {}).items()}
    if hparams.get("previous_stage"):  # a 3d_cascade_fullres model (`runtime.cascade`)
        out["previous_stage"] = dict(hparams["previous_stage"])
    return out


def network_from_checkpoint(path: str | os.PathLike) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The eager network of a `vp-medical train` checkpoint and its `model_description`.

    Raises:
        UserError: if the checkpoint is missing or not one of ours.
    """
    ckpt = load_training_checkpoint(path)
    description = model_description(ckpt["hyper_parameters"])
    return _network(ckpt, description, "net.", path), description


def cascade_input_channels(description: Mapping[str, Any]) -> int:
    """Input channels of a model description's network: its modalities, plus one per foreground label of
    the previous stage for a cascade's full-resolution network."""
    prev = description.get("previous_stage")
    return len(description["modality"]) + (len(prev["foreground_labels"]) if prev else 0)


def _network(
    ckpt: Mapping[str, Any], description: Mapping[str, Any], prefix: str, path: str | os.PathLike
) -> torch.nn.Module:
    config = parse_config(ModelConfig, description["model"], source=f"model checkpoint {path}")
    net = build_model(config, cascade_input_channels(description), len(description["regions"]))
    weights = state_dict_of(ckpt, path=path, what="model checkpoint")
    net.load_state_dict({k.removeprefix(prefix): v for k, v in weights.items() if k.startswith(prefix)})
    return net.eval()


def lowres_network_from_checkpoint(path: str | os.PathLike) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The low-resolution network a 3d_cascade_fullres checkpoint carries (its `prev_net.` weights) and
    that network's description.

    Raises:
        UserError: if the checkpoint is missing, not one of ours, or not a cascade's.
    """
    ckpt = load_training_checkpoint(path)
    prev = ckpt["hyper_parameters"].get("previous_stage")
    if not prev:
        raise UserError(f"model checkpoint {path} is not a 3d_cascade_fullres model (no previous stage).")
    return _network(ckpt, prev["description"], "prev_net.", path), dict(prev["description"])
