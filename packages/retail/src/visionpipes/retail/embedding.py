"""Image → embedding for retrieval: a `core` backbone with global pooling and a linear projection head,
and `ImageEmbedder`, the callable (RGB uint8 arrays in, L2-normalised float32 rows out) the index and the
query API use. No training here and no weights are fetched: weights come from the caller or a local file.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from visionpipes.core.backbones import build_backbone
from visionpipes.core.errors import UserError

#: ImageNet channel statistics, the usual input normalisation of CNN backbones.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


class EmbeddingNet(nn.Module):
    """Backbone → global average pool of its last feature map → linear projection → L2 normalisation.

    Args:
        backbone: a preset name of `visionpipes.core.backbones` (e.g. 'resnet18', 'mobilenet_v2').
        dimension: embedding dimension.

    Example:
        >>> net = EmbeddingNet("resnet18", dimension=64).eval()
        >>> tuple(net(torch.zeros(2, 3, 64, 64)).shape)
        (2, 64)
    """

    def __init__(self, backbone: str = "resnet18", dimension: int = 128) -> None:
        super().__init__()
        self.backbone = build_backbone(backbone)
        self.head = nn.Linear(self.backbone.out_channels[-1], dimension)
        self.dimension = dimension

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.backbone(x)[-1].mean(dim=(2, 3))
        return F.normalize(self.head(feat), dim=1)


class ImageEmbedder:
    """Embeds RGB images (HxWx3 uint8 arrays) with a module such as `EmbeddingNet`, in eval mode.

    Args:
        model: maps a (n, 3, H, W) float tensor to (n, dimension) embeddings.
        image_size: images are resized to this square size.
        model_version: recorded in the index manifest; queries are refused against another version.
        batch_size: images per forward pass.
    """

    def __init__(
        self, model: nn.Module, *, image_size: int = 128, model_version: str, batch_size: int = 32
    ) -> None:
        self.model = model.eval()
        self.image_size = int(image_size)
        self.model_version = str(model_version)
        self.batch_size = int(batch_size)
        self.dimension = int(self(np.zeros((8, 8, 3), dtype=np.uint8)[None]).shape[1])

    def _tensor(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        batch = []
        for i, img in enumerate(images):
            arr = np.asarray(img)
            if arr.ndim != 3 or arr.shape[2] != 3:
                raise UserError(f"image {i} has shape {arr.shape}, expected (height, width, 3) RGB.")
            t = torch.from_numpy(np.array(arr, dtype=np.uint8)).permute(2, 0, 1).float().div_(255.0)
            batch.append(
                F.interpolate(t[None], size=(self.image_size,) * 2, mode="bilinear", antialias=True)[0]
            )
        x = torch.stack(batch)
        mean = torch.tensor(MEAN).view(1, 3, 1, 1)
        std = torch.tensor(STD).view(1, 3, 1, 1)
        return (x - mean) / std

    @torch.inference_mode()
    def __call__(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """(n, dimension) float32 L2-normalised embeddings of `images`."""
        out = []
        for start in range(0, len(images), self.batch_size):
            emb = self.model(self._tensor(images[start : start + self.batch_size]))
            out.append(F.normalize(emb.float(), dim=1).cpu().numpy())
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 0), dtype=np.float32)
