"""Image → embedding for retrieval: a `core` backbone with global pooling and a linear projection head
(`EmbeddingNet`), the one image preprocessing every path shares (`prepare_images`), and the embedders
the index and the query API call (RGB uint8 arrays in, L2-normalised float32 rows out): `ImageEmbedder`
(torch) and `OnnxEmbedder` (the exported model in onnxruntime). A trained model is a folder holding
`model.pt` and `model.json` (`save_model`/`load_model`).

No training here and no weights are fetched: weights come from the caller or a local file.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from visionpipes.core.backbones import BackboneSpec, build_backbone, get_spec, inline_spec_file
from visionpipes.core.errors import UserError
from visionpipes.core.io import atomic_path, dataclass_from_params

#: ImageNet channel statistics, the usual input normalisation of CNN backbones.
MEAN = np.array((0.485, 0.456, 0.406), dtype=np.float32)
STD = np.array((0.229, 0.224, 0.225), dtype=np.float32)
POOLINGS = ("avg", "gem")
MODEL_WEIGHTS = "model.pt"
MODEL_CONFIG = "model.json"


@dataclass
class EmbeddingConfig:
    """The architecture of an embedding model (what `model.json` records).

    Attributes:
        backbone: a preset of `visionpipes.core.backbones` (e.g. 'resnet18', 'mobilenet_v2'), a
            backbone spec file (e.g. the `best_spec.yaml` of `vp-core search`; read once and recorded
            inline), or a spec mapping.
        width_multiplier: scales every stage's width (timm/torchvision style; 0.5 = half as wide).
        dimension: embedding dimension.
        image_size: square input size in pixels.
        pooling: 'avg' (global average) or 'gem' (generalised mean, p learnt, Radenović et al. 2018).
    """

    backbone: str | dict[str, Any] = "resnet18"
    width_multiplier: float = 1.0
    dimension: int = 128
    image_size: int = 96
    pooling: str = "gem"

    def check(self) -> None:
        """Raises: UserError on an invalid value."""
        if self.dimension < 2:
            raise UserError(f"embedding dimension must be at least 2, got {self.dimension}.")
        if not 32 <= self.image_size <= 1024:
            raise UserError(f"image_size must be between 32 and 1024, got {self.image_size}.")
        if not 0.05 <= self.width_multiplier <= 4:
            raise UserError(f"width_multiplier must be between 0.05 and 4, got {self.width_multiplier}.")
        if self.pooling not in POOLINGS:
            raise UserError(f"pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}.")
        try:
            self.backbone = inline_spec_file(self.backbone)
            _spec_of(self.backbone)
        except (ValueError, TypeError) as err:
            raise UserError(f"backbone: {err}") from None

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str) -> EmbeddingConfig:
        """Build from a mapping, refusing unknown keys.

        Raises:
            UserError: on an unknown key or an invalid value.
        """
        config = dataclass_from_params(cls, data, source=source, what="model keys", hint="")
        config.check()
        return config


def _spec_of(backbone: str | Mapping[str, Any]) -> BackboneSpec:
    return get_spec(backbone) if isinstance(backbone, str) else BackboneSpec.from_dict(backbone)


def scaled_spec(name: str | Mapping[str, Any], width_multiplier: float = 1.0) -> BackboneSpec:
    """The spec of backbone `name` (a preset, spec file or spec mapping) with every width (stem,
    stages, final conv) scaled."""
    spec = _spec_of(name)
    if width_multiplier == 1.0:
        return spec
    name = spec.name

    def scale(w: int) -> int:
        return max(8, round(w * width_multiplier / 8) * 8)

    spec.name = f"{name}_x{width_multiplier:g}"
    spec.stem_width = scale(spec.stem_width)
    for stage in spec.stages:
        stage.width = scale(stage.width)
    if spec.final_width:
        spec.final_width = scale(spec.final_width)
    return spec


class GeM(nn.Module):
    """Generalised-mean pooling over the spatial axes: (mean x^p)^(1/p), p learnt (init 3)."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=self.eps).pow(self.p).mean(dim=(2, 3)).pow(1.0 / self.p)


class EmbeddingNet(nn.Module):
    """Backbone → global pooling of its last feature map → linear projection → L2 normalisation.

    Args:
        backbone: a preset name of `visionpipes.core.backbones` (e.g. 'resnet18', 'mobilenet_v2').
        dimension: embedding dimension.
        width_multiplier: scales the backbone's widths.
        pooling: 'avg' or 'gem'.

    Example:
        >>> net = EmbeddingNet("resnet18", dimension=64).eval()
        >>> tuple(net(torch.zeros(2, 3, 64, 64)).shape)
        (2, 64)
    """

    def __init__(
        self, backbone: str | Mapping[str, Any] = "resnet18", dimension: int = 128, *, width_multiplier: float = 1.0, pooling: str = "avg"
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}.")
        self.backbone = build_backbone(scaled_spec(backbone, width_multiplier))
        self.pool = GeM() if pooling == "gem" else None
        self.head = nn.Linear(self.backbone.out_channels[-1], dimension)
        self.dimension = dimension

    @classmethod
    def from_config(cls, config: EmbeddingConfig) -> EmbeddingNet:
        return cls(config.backbone, config.dimension, width_multiplier=config.width_multiplier, pooling=config.pooling)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.backbone(x)[-1]
        pooled = self.pool(feat) if self.pool is not None else feat.mean(dim=(2, 3))
        return F.normalize(self.head(pooled), dim=1)


def resize_rgb(image: np.ndarray, size: int, *, index: int = 0) -> np.ndarray:
    """An HxWx3 uint8 image resized (antialiased bilinear, aspect not kept) to size x size.

    Raises:
        UserError: if the array is not HxWx3.
    """
    from PIL import Image

    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise UserError(f"image {index} has shape {arr.shape}, expected (height, width, 3) RGB.")
    if arr.shape[:2] == (size, size):
        return np.ascontiguousarray(arr, dtype=np.uint8)
    return np.asarray(Image.fromarray(arr.astype(np.uint8, copy=False)).resize((size, size), Image.BILINEAR))


def normalize_batch(batch: np.ndarray) -> np.ndarray:
    """(n, S, S, 3) uint8 → (n, 3, S, S) float32 with ImageNet mean/std."""
    x = batch.astype(np.float32) / 255.0
    x = (x - MEAN) / STD
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def prepare_images(images: Sequence[np.ndarray], size: int) -> np.ndarray:
    """The model input for RGB uint8 images: (n, 3, size, size) float32, resized and normalised.

    Raises:
        UserError: if an image is not HxWx3.
    """
    if len(images) == 0:
        return np.zeros((0, 3, size, size), dtype=np.float32)
    return normalize_batch(np.stack([resize_rgb(img, size, index=i) for i, img in enumerate(images)]))


class ImageEmbedder:
    """Embeds RGB images (HxWx3 uint8 arrays) with a torch module such as `EmbeddingNet`, in eval mode.

    Args:
        model: maps a (n, 3, H, W) float tensor to (n, dimension) embeddings.
        image_size: images are resized to this square size.
        model_version: recorded in the index manifest; queries are refused against another version.
        batch_size: images per forward pass.
    """

    def __init__(self, model: nn.Module, *, image_size: int = 128, model_version: str, batch_size: int = 32) -> None:
        self.model = model.eval()
        self.image_size = int(image_size)
        self.model_version = str(model_version)
        self.batch_size = int(batch_size)
        self.dimension = int(self(np.zeros((8, 8, 3), dtype=np.uint8)[None]).shape[1])

    @torch.inference_mode()
    def __call__(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """(n, dimension) float32 L2-normalised embeddings of `images`."""
        out = []
        device = next(self.model.parameters()).device
        for start in range(0, len(images), self.batch_size):
            x = torch.from_numpy(prepare_images(images[start : start + self.batch_size], self.image_size))
            emb = self.model(x.to(device))
            out.append(F.normalize(emb.float(), dim=1).cpu().numpy())
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 0), dtype=np.float32)


def file_version(path: str | os.PathLike) -> str:
    """A model version derived from a file's bytes: `sha256:<first 16 hex digits>`."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return f"sha256:{digest.hexdigest()[:16]}"


class OnnxEmbedder:
    """Embeds RGB images with an exported ONNX embedding model in onnxruntime (`core.export.OnnxRunner`).

    Args:
        path: the `.onnx` file (input (n, 3, S, S) float32, output (n, dimension)).
        image_size: S.
        model_version: default: `file_version(path)`.
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


def save_model(folder: str | os.PathLike, model: EmbeddingNet, config: EmbeddingConfig, info: dict[str, Any]) -> Path:
    """Write `model.pt` (state dict) and `model.json` (config + `info`) into `folder`, each atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / MODEL_WEIGHTS) as tmp:
        torch.save(model.state_dict(), tmp)
    version = file_version(folder / MODEL_WEIGHTS)
    with atomic_path(folder / MODEL_CONFIG) as tmp:
        tmp.write_text(json.dumps({"config": asdict(config), "version": version, **info}, indent=2) + "\n")
    return folder


def load_model(folder: str | os.PathLike) -> tuple[EmbeddingNet, EmbeddingConfig, dict[str, Any]]:
    """Load a model folder written by `save_model`: (model in eval mode, config, the whole model.json).

    Raises:
        UserError: if a file is missing, unreadable, or the weights do not fit the config.
    """
    folder = Path(folder)
    meta_path, weights = folder / MODEL_CONFIG, folder / MODEL_WEIGHTS
    for p in (meta_path, weights):
        if not p.is_file():
            raise UserError(f"model folder {folder} has no {p.name} (train a model first).")
    try:
        meta = json.loads(meta_path.read_text())
        config = EmbeddingConfig.from_dict(meta["config"], source=str(meta_path))
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise UserError(f"model description {meta_path} is unreadable ({err!r}).") from None
    model = EmbeddingNet.from_config(config)
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except (RuntimeError, OSError, EOFError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"model weights {weights} do not load into the model of {meta_path} ({first}).") from None
    return model.eval(), config, meta


def load_pretrained_backbone(model: EmbeddingNet, path: str | os.PathLike) -> int:
    """Seed `model` from a local checkpoint (never downloaded): a state dict of the backbone, of a
    whole `EmbeddingNet`, or a Lightning checkpoint holding one. Returns the number of tensors loaded.

    Raises:
        UserError: if the file is missing, unreadable, or shares no tensor of matching shape.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"pretrained checkpoint {path} does not exist (it is never downloaded).")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, ValueError) as err:
        raise UserError(f"pretrained checkpoint {path} is not a readable torch file ({err}).") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise UserError(f"pretrained checkpoint {path} does not hold a state dict.")
    own = model.backbone.state_dict()
    picked: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for prefix in ("model.backbone.", "backbone.", ""):
            if key.startswith(prefix) and key[len(prefix) :] in own:
                name = key[len(prefix) :]
                if torch.is_tensor(value) and value.shape == own[name].shape:
                    picked[name] = value
                break
    if not picked:
        raise UserError(f"pretrained checkpoint {path} has no tensor that fits the {model.backbone.spec.name} backbone.")
    model.backbone.load_state_dict(picked, strict=False)
    return len(picked)


Embedder = Callable[[Sequence[np.ndarray]], np.ndarray]
