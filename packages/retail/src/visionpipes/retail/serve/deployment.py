"""Finding what a deploy folder holds for serving and querying: the index directory, the ONNX model
its manifest names, and the catalog image folder.

Reads manifests only; the model itself is loaded by `embedding.embedders.load_embedder`
(through the deploy folder's `model.json` record, `core.artifact.read_record`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from visionpipes.core.errors import UserError
from visionpipes.retail.index.manifest import MANIFEST_NAME, read_manifest

#: The index directory inside a deploy folder.
INDEX_DIR = "index"


def find_index_dir(path: str | Path) -> Path:
    """An index directory given itself or a deploy folder holding `index/`.

    Raises:
        UserError: if neither holds a manifest.
    """
    path = Path(path)
    if (path / MANIFEST_NAME).is_file():
        return path
    if (path / INDEX_DIR / MANIFEST_NAME).is_file():
        return path / INDEX_DIR
    if not path.exists():
        raise UserError(f"index directory {path} does not exist.")
    raise UserError(f"{path} is neither an index directory (manifest.json) nor a deploy folder holding index/.")


def manifest_model(index_dir: Path, model: str | Path | None = None) -> Path:
    """The model that embeds queries for `index_dir`: `model` when given, else the manifest's
    `model` entry (relative to the index directory, or absolute).

    Raises:
        UserError: if the manifest names none, or the model it names is missing.
    """
    if model is not None:
        return Path(model)
    named = read_manifest(index_dir).extra.get("model")
    if not named:
        raise UserError(f"index directory {index_dir} names no model in its manifest; pass --model.")
    path = Path(named) if os.path.isabs(named) else index_dir / named
    if not path.is_file():
        raise UserError(f"model {path} named by the manifest of {index_dir} does not exist; pass --model.")
    return path


def manifest_catalog_root(index_dir: Path, extra: dict[str, Any]) -> Path | None:
    """The catalog image folder a deployed index names in its manifest (relative to the index
    directory, or absolute), or None when it names none or the folder is gone."""
    for key in ("catalog_root", "catalog_root_absolute"):
        value = extra.get(key)
        if value:
            root = Path(value) if os.path.isabs(value) else index_dir / value
            if root.is_dir():
                return root
    return None
