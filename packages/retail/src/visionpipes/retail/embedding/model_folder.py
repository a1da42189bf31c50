"""A trained model folder: `model.pt` (state dict) and `model.json` (a `core.artifact` record of
domain `retail`: the weights' checksum, the `EmbeddingConfig`, the version and training summary).

Reads and writes through `core.artifact` and `core.checkpoint`; trains nothing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from visionpipes.core.artifact import RECORD_FILE, file_entry, file_version, read_record, write_record
from visionpipes.core.checkpoint import load_checkpoint, state_dict_of
from visionpipes.core.config import parse_config
from visionpipes.core.errors import UserError
from visionpipes.core.io import atomic_path
from visionpipes.retail.embedding.config import EmbeddingConfig
from visionpipes.retail.embedding.network import EmbeddingNet

DOMAIN = "retail"
MODEL_WEIGHTS = "model.pt"
MODEL_CONFIG = RECORD_FILE


def save_model(folder: str | os.PathLike, model: EmbeddingNet, config: EmbeddingConfig, info: dict[str, Any]) -> Path:
    """Write `model.pt` (state dict) and `model.json` (record: config, version + `info`), each atomically."""
    import torch

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / MODEL_WEIGHTS) as tmp:
        torch.save(model.state_dict(), tmp)
    write_record(
        folder,
        domain=DOMAIN,
        files={"weights": file_entry(folder, MODEL_WEIGHTS)},
        config=config.to_dict(),
        version=file_version(folder / MODEL_WEIGHTS),
        **info,
    )
    return folder


def read_model_config(folder: str | os.PathLike) -> tuple[EmbeddingConfig, dict[str, Any]]:
    """The `EmbeddingConfig` and the whole record of a model or deploy folder's `model.json`.

    Raises:
        UserError: if the record is missing, malformed, of another domain, or its config is invalid.
    """
    record = read_record(folder, domain=DOMAIN)
    source = str(Path(folder) / MODEL_CONFIG)
    if not isinstance(record.get("config"), dict):
        raise UserError(f"model description {source} has no 'config' mapping.")
    return parse_config(EmbeddingConfig, record["config"], source=f"{source}:config"), record


def load_model(folder: str | os.PathLike) -> tuple[EmbeddingNet, EmbeddingConfig, dict[str, Any]]:
    """Load a model folder written by `save_model`: (model in eval mode, config, the whole record).

    Raises:
        UserError: if a file is missing, unreadable, changed since it was written, or the weights do
            not fit the config.
    """
    folder = Path(folder)
    weights = folder / MODEL_WEIGHTS
    if not (folder / MODEL_CONFIG).is_file() or not weights.is_file():
        missing = MODEL_CONFIG if not (folder / MODEL_CONFIG).is_file() else MODEL_WEIGHTS
        raise UserError(f"model folder {folder} has no {missing} (train a model first).")
    config, record = read_model_config(folder)
    read_record(folder, domain=DOMAIN, verify=True)
    model = EmbeddingNet.from_config(config)
    state = state_dict_of(load_checkpoint(weights, what="model weights"), path=weights, what="model weights")
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise UserError(
            f"model weights {weights} do not load into the model of {folder / MODEL_CONFIG} ({first})."
        ) from None
    return model.eval(), config, record
