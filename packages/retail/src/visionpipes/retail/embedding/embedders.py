"""The embedders the index, the query API and the evaluation call (RGB uint8 arrays in,
L2-normalised float32 rows out): `OnnxEmbedder` (a deployed model in onnxruntime), `ImageEmbedder`
(a torch module), and `load_embedder`, which picks one for a deploy folder, `.onnx` file or trained
model folder by reading its `model.json` record through `core.artifact`.

Torch is imported only when a torch model is embedded; nothing here trains.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from visionpipes.core.artifact import file_version
from visionpipes.core.errors import UserError
from visionpipes.retail.embedding.model_folder import (
    MODEL_CONFIG,
    MODEL_WEIGHTS,
    load_model,
    read_model_config,
)
from visionpipes.retail.embedding.preprocess import prepare_images

#: Any callable from images (HxWx3 uint8 arrays) to (n, dimension) float32 embeddings.
Embedder = Callable[[Sequence[np.ndarray]], np.ndarray]
MODEL_ONNX = "model.onnx"


class ImageEmbedder:
    """Embeds RGB images (HxWx3 uint8 arrays) with a torch module such as `EmbeddingNet`, in eval mode.

    Args:
        model: maps a (n, 3, H, W) float tensor to (n, dimension) embeddings.
        image_size: images are resized to this square size.
        model_version: recorded in the index manifest; queries are refused against another version.
        batch_size: images per forward pass.
    """

    def __init__(self, model: Any, *, image_size: int = 128, model_version: str, batch_size: int = 32) -> None:
        self.model = model.eval()
        self.image_size = int(image_size)
        self.model_version = str(model_version)
        self.batch_size = int(batch_size)
        self.dimension = int(self(np.zeros((8, 8, 3), dtype=np.uint8)[None]).shape[1])

    def __call__(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """(n, dimension) float32 L2-normalised embeddings of `images`."""
        import torch
        from torch.nn import functional as F

        out = []
        device = next(self.model.parameters()).device
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                x = torch.from_numpy(prepare_images(images[start : start + self.batch_size], self.image_size))
                emb = self.model(x.to(device))
                out.append(F.normalize(emb.float(), dim=1).cpu().numpy())
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 0), dtype=np.float32)


class OnnxEmbedder:
    """Embeds RGB images with an exported ONNX embedding model in onnxruntime (`core.export.OnnxRunner`).

    Args:
        path: the `.onnx` file (input (n, 3, S, S) float32, output (n, dimension)).
        image_size: S.
        model_version: default: `core.artifact.file_version(path)`.
        threads: onnxruntime intra-op threads (None: all cores).
        batch_size: images per run.

    Raises:
        UserError: if the file is missing or not loadable.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        image_size: int,
        model_version: str | None = None,
        threads: int | None = None,
        batch_size: int = 64,
    ) -> None:
        from visionpipes.core.export import OnnxRunner

        self.path = Path(path)
        self.runner = OnnxRunner(self.path, threads=threads)
        self.image_size = int(image_size)
        self.model_version = model_version or file_version(self.path)
        self.batch_size = int(batch_size)
        self.dimension = int(self(np.zeros((1, 8, 8, 3), dtype=np.uint8)).shape[1])

    def __call__(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """(n, dimension) float32 L2-normalised embeddings of `images`."""
        out = []
        for start in range(0, len(images), self.batch_size):
            x = prepare_images(images[start : start + self.batch_size], self.image_size)
            emb = np.asarray(self.runner(x)[0], dtype=np.float32)
            out.append(emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12))
        return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def load_embedder(path: str | os.PathLike, *, threads: int | None = None) -> ImageEmbedder | OnnxEmbedder:
    """An embedder for `path`: a deploy folder or `.onnx` file (onnxruntime), or a trained model
    folder holding `model.pt` (torch). The image size and version come from the `model.json` record
    beside the model (read through `core.artifact.read_record`, checksums verified).

    Raises:
        UserError: if `path` is none of these, or its files are unreadable or changed.
    """
    path = Path(path)
    onnx = path if path.suffix == ".onnx" else path / MODEL_ONNX
    if onnx.is_file():
        if not (onnx.parent / MODEL_CONFIG).is_file():
            raise UserError(f"ONNX model {onnx} has no {MODEL_CONFIG} beside it giving its image size.")
        from visionpipes.core.artifact import read_record

        config, record = read_model_config(onnx.parent)
        read_record(onnx.parent, domain="retail", verify=True)
        return OnnxEmbedder(onnx, image_size=config.image_size, model_version=record.get("version"), threads=threads)
    if (path / MODEL_WEIGHTS).is_file():
        model, config, record = load_model(path)
        return ImageEmbedder(model, image_size=config.image_size, model_version=record["version"], batch_size=64)
    raise UserError(f"model {path} is neither an .onnx file nor a folder holding {MODEL_ONNX} or {MODEL_WEIGHTS}.")
