"""Training of the product embedding model: a `core` backbone + projection head (`EmbeddingNet`) learnt
with a metric-learning loss over product ids (`visionpipes.retail.losses`), strong augmentation and
P-products x K-views batches, run by `visionpipes.core.training.fit` (Lightning + DVCLive).

It writes a model folder (`model.pt`, `model.json`, Lightning checkpoints, DVCLive logs); it does not
export, embed catalogs or build indexes (see `visionpipes.retail.deploy`).
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning
import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from visionpipes.core.device import resolve_precision
from visionpipes.core.errors import UserError
from visionpipes.core.io import dataclass_from_params, write_json
from visionpipes.core.training import TrainConfig, fit, seed_everything
from visionpipes.retail.catalog import Catalog, CatalogProblem, load_catalog
from visionpipes.retail.embedding import (
    MEAN,
    STD,
    EmbeddingConfig,
    EmbeddingNet,
    load_pretrained_backbone,
    resize_rgb,
    save_model,
)
from visionpipes.retail.losses import LOSSES, build_loss

AUGMENTATIONS = ("strong", "light", "none")


@dataclass
class TrainParams:
    """Everything `train_embedding` needs (the `train` section of `params.yaml`).

    Attributes:
        backbone, width_multiplier, dimension, image_size, pooling: the model (see `EmbeddingConfig`).
        loss: 'proxy_anchor', 'multi_similarity' or 'arcface'.
        loss_options: keyword arguments of the loss (its paper's values when empty).
        epochs: training epochs.
        products_per_batch: P, products in a batch.
        views_per_product: K, views of each product in a batch (batch size = P x K).
        lr: AdamW learning rate of the backbone and head.
        loss_lr_multiplier: learning-rate factor of the loss's own parameters (proxies, class weights).
        weight_decay: AdamW weight decay.
        warmup_epochs: linear warm-up before the cosine decay.
        augment: 'strong', 'light' or 'none'.
        val_views: views per product held out of training to measure Recall@1 (0: none).
        seed: random seed.
        pretrained: a local checkpoint seeding the backbone (never downloaded), or None.
        accelerator: Lightning accelerator ('auto', 'cpu', 'gpu').
        precision: Lightning precision; 'auto' is bf16-mixed where the hardware computes bf16
            natively (a CUDA GPU with bf16, a CPU with AVX512-BF16 or AMX: ~1.7x faster training
            here), else 32-true.
        num_workers: data-loader worker processes.
        progress: show progress bars.
        logger: 'dvclive', 'csv' or 'none' (see `core.training.TrainConfig`).
    """

    backbone: str | dict[str, Any] = "resnet18"
    width_multiplier: float = 0.5
    dimension: int = 128
    image_size: int = 96
    pooling: str = "gem"
    loss: str = "arcface"
    loss_options: dict[str, float] = field(default_factory=dict)
    epochs: int = 70
    products_per_batch: int = 16
    views_per_product: int = 4
    lr: float = 2e-3
    loss_lr_multiplier: float = 5.0
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    augment: str = "strong"
    val_views: int = 1
    seed: int = 0
    pretrained: str | None = None
    accelerator: str = "auto"
    precision: str = "auto"
    num_workers: int = 0
    progress: bool = True
    logger: str = "dvclive"

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "train params") -> TrainParams:
        """Build from a mapping, refusing unknown keys.

        Raises:
            UserError: on an unknown key or a bad value.
        """
        params = dataclass_from_params(cls, data, source=source)
        params.check(source)
        return params

    def model_config(self) -> EmbeddingConfig:
        """The architecture; a backbone spec file is read here and recorded inline.

        Raises:
            UserError: if the backbone spec file is missing or invalid.
        """
        config = EmbeddingConfig(self.backbone, self.width_multiplier, self.dimension, self.image_size, self.pooling)
        config.check()
        return config

    def check(self, source: str = "train params") -> None:
        """Raises: UserError on a value out of range."""
        self.model_config()
        if self.loss not in LOSSES:
            raise UserError(f"{source}: loss must be one of {', '.join(LOSSES)}, got {self.loss!r}.")
        if self.augment not in AUGMENTATIONS:
            raise UserError(f"{source}: augment must be one of {', '.join(AUGMENTATIONS)}, got {self.augment!r}.")
        for name in ("epochs", "products_per_batch", "views_per_product"):
            if int(getattr(self, name)) < 1:
                raise UserError(f"{source}: {name} must be at least 1, got {getattr(self, name)}.")
        if self.loss == "multi_similarity" and self.views_per_product < 2:
            raise UserError(f"{source}: multi_similarity needs views_per_product >= 2 (positive pairs in a batch).")
        if self.val_views < 0:
            raise UserError(f"{source}: val_views must be 0 or more, got {self.val_views}.")
        if not self.lr > 0:
            raise UserError(f"{source}: lr must be positive, got {self.lr}.")


class BatchAugment(torch.nn.Module):
    """Augmentation of a whole batch at once (one `grid_sample`, vectorised colour and erasing), on
    whatever device the batch is: float images in [0, 1], (n, 3, H, W) in and out.

    'strong': random zoom-crop (area 35-100 %), aspect change, rotation (+-30 deg on half the images),
    translation; brightness, contrast, saturation and a per-channel colour cast (lighting; no hue
    shift: colour is part of a product's identity); Gaussian blur on 30 %; sensor noise; a random
    occluding rectangle on 30 %. 'light': milder zoom and colour only. 'none': identity.

    Args:
        strength: 'strong', 'light' or 'none'.
    """

    def __init__(self, strength: str = "strong") -> None:
        super().__init__()
        if strength not in AUGMENTATIONS:
            raise ValueError(f"augmentation must be one of {', '.join(AUGMENTATIONS)}, got {strength!r}.")
        self.strength = strength

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.strength == "none":
            return x
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self._augment(x.float())

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        strong = self.strength == "strong"
        n, dev = x.shape[0], x.device

        def uniform(lo: float, hi: float, *shape: int) -> torch.Tensor:
            return torch.empty(n, *shape, device=dev).uniform_(lo, hi)

        # Geometry: output pixel -> input coordinate in [-1, 1] (affine_grid), zooming into a crop.
        area = uniform(0.35 if strong else 0.7, 1.0)
        aspect = torch.exp(uniform(math.log(0.75), math.log(1.33)))
        sx = (area * aspect).sqrt().clamp(max=1.0)
        sy = (area / aspect).sqrt().clamp(max=1.0)
        angle = uniform(-math.pi / 6, math.pi / 6) * (torch.rand(n, device=dev) < 0.5) if strong else torch.zeros(n, device=dev)
        cos, sin = torch.cos(angle), torch.sin(angle)
        tx, ty = uniform(-1, 1) * (1 - sx), uniform(-1, 1) * (1 - sy)
        theta = torch.stack(
            [torch.stack([sx * cos, -sy * sin, tx], 1), torch.stack([sx * sin, sy * cos, ty], 1)], 1
        )
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        # Lighting and colour.
        jitter = 0.4 if strong else 0.2
        x = x * uniform(1 - jitter, 1 + jitter, 1, 1, 1)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * uniform(1 - jitter, 1 + jitter, 1, 1, 1) + mean
        gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
        x = gray + (x - gray) * uniform(1 - jitter * 0.75, 1 + jitter * 0.75, 1, 1, 1)
        if strong:
            x = x * uniform(0.92, 1.08, 3, 1, 1)
            blur = torch.rand(n, device=dev) < 0.3
            if blur.any():
                x[blur] = _gaussian_blur(x[blur], uniform(0.3, 1.5)[blur])
            x = x + torch.randn_like(x[:, :1]) * uniform(0.0, 0.03, 1, 1, 1)  # grey sensor noise
            x = _erase(x, torch.rand(n, device=dev) < 0.3)
        return x.clamp(0.0, 1.0)


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, size: int = 5) -> torch.Tensor:
    """Blur each image with its own Gaussian sigma (one grouped conv)."""
    n, c, h, w = x.shape
    r = torch.arange(size, device=x.device, dtype=x.dtype) - size // 2
    k1 = torch.exp(-(r[None] ** 2) / (2 * sigma[:, None] ** 2))
    k1 = k1 / k1.sum(dim=1, keepdim=True)
    k2 = (k1[:, :, None] * k1[:, None, :]).repeat_interleave(c, dim=0)[:, None]
    out = F.conv2d(F.pad(x.reshape(1, n * c, h, w), [size // 2] * 4, mode="reflect"), k2, groups=n * c)
    return out.reshape(n, c, h, w)


def _erase(x: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
    """Paint a random rectangle (2-15 % of the image) of a random colour on the images in `which`."""
    n, _, h, w = x.shape
    dev = x.device
    area = torch.empty(n, device=dev).uniform_(0.02, 0.15)
    aspect = torch.exp(torch.empty(n, device=dev).uniform_(math.log(0.3), math.log(3.3)))
    eh = (area / aspect).sqrt().clamp(max=1.0)
    ew = (area * aspect).sqrt().clamp(max=1.0)
    y0 = torch.rand(n, device=dev) * (1 - eh)
    x0 = torch.rand(n, device=dev) * (1 - ew)
    ys = (torch.arange(h, device=dev) + 0.5) / h
    xs = (torch.arange(w, device=dev) + 0.5) / w
    inside_y = (ys[None] >= y0[:, None]) & (ys[None] < (y0 + eh)[:, None])
    inside_x = (xs[None] >= x0[:, None]) & (xs[None] < (x0 + ew)[:, None])
    mask = (inside_y[:, :, None] & inside_x[:, None, :] & which[:, None, None])[:, None]
    colour = torch.rand(n, 3, 1, 1, device=dev)
    return torch.where(mask, colour, x)


def normalize_tensor(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] float images → ImageNet-normalised (as `embedding.prepare_images` does)."""
    mean = torch.as_tensor(MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.as_tensor(STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def read_view(path: Path, size: int) -> np.ndarray:
    """One catalog image as a size x size RGB uint8 array (the same resize as at query time).

    Raises:
        UserError: if the file is missing or not a readable image.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            return resize_rgb(np.asarray(img.convert("RGB")), size)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise UserError(f"image {path} is not a readable image ({err}).") from None


class ViewDataset(Dataset):
    """(uint8 image tensor (3, S, S), label) pairs, decoded and resized once, then kept in memory
    (S x S x 3 bytes per view: 27 kB at 96 px)."""

    def __init__(self, items: Sequence[tuple[Path, int]], size: int) -> None:
        self.items = list(items)
        self.size = size
        self._cache: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = self._cache.get(i)
        if image is None:
            path, _ = self.items[i]
            image = torch.from_numpy(np.array(read_view(path, self.size))).permute(2, 0, 1).contiguous()
            self._cache[i] = image
        return image, self.items[i][1]


class PKBatchSampler(Sampler[list[int]]):
    """Batches of P labels x K items per label (items repeat when a label has fewer than K).

    Args:
        labels: label of every item.
        p: labels per batch.
        k: items per label per batch.
        seed: base seed; epoch e draws with seed + e.
        batches: batches per epoch (default: items // (p * k), at least 1).
    """

    def __init__(self, labels: Sequence[int], p: int, k: int, *, seed: int = 0, batches: int | None = None) -> None:
        self.by_label: dict[int, np.ndarray] = {}
        for i, label in enumerate(labels):
            self.by_label.setdefault(int(label), []).append(i)  # type: ignore[arg-type]
        self.by_label = {k_: np.array(v) for k_, v in self.by_label.items()}
        self.p = min(p, len(self.by_label))
        self.k = k
        self.seed = seed
        self.epoch = 0
        self.batches = batches or max(1, len(labels) // (self.p * self.k))

    def __len__(self) -> int:
        return self.batches

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        label_ids = np.array(sorted(self.by_label))
        order = rng.permutation(label_ids)
        pos = 0
        for _ in range(self.batches):
            if pos + self.p > len(order):
                order, pos = rng.permutation(label_ids), 0
            batch: list[int] = []
            for label in order[pos : pos + self.p]:
                items = self.by_label[int(label)]
                batch.extend(rng.choice(items, self.k, replace=len(items) < self.k).tolist())
            pos += self.p
            yield batch


def leave_one_out_recall(
    query: np.ndarray, query_labels: np.ndarray, gallery: np.ndarray, gallery_labels: np.ndarray
) -> float:
    """Share of queries whose nearest gallery embedding (cosine) has the query's label."""
    if len(query) == 0 or len(gallery) == 0:
        return math.nan
    nearest = np.argmax(query @ gallery.T, axis=1)
    return float(np.mean(gallery_labels[nearest] == query_labels))


class EmbeddingModule(lightning.LightningModule):
    """The Lightning wrapper: `EmbeddingNet` + loss, AdamW with warm-up and cosine decay; validation
    logs `val/recall_at_1` of held-out views against the training views (embedded without augmentation)."""

    def __init__(self, params: TrainParams, num_classes: int, steps_per_epoch: int) -> None:
        super().__init__()
        self.params = params
        self.model = EmbeddingNet.from_config(params.model_config())
        if params.pretrained:
            load_pretrained_backbone(self.model, params.pretrained)
        self.loss = build_loss(params.loss, num_classes, params.dimension, **dict(params.loss_options))
        self.steps_per_epoch = steps_per_epoch
        self.augment = BatchAugment(params.augment)
        self._val: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {0: [], 1: []}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def on_fit_start(self) -> None:
        # NHWC is the faster layout for oneDNN and cuDNN convolutions (2x with bf16 on CPU here).
        self.model.to(memory_format=torch.channels_last)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        x = normalize_tensor(self.augment(x.float() / 255.0)).contiguous(memory_format=torch.channels_last)
        loss = self.loss(self.model(x).float(), y)
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y))
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        x, y = batch
        emb = self.model(normalize_tensor(x.float() / 255.0).contiguous(memory_format=torch.channels_last))
        self._val[dataloader_idx].append((emb.detach().float().cpu(), y.detach().cpu()))

    def on_validation_epoch_end(self) -> None:
        parts = {i: v for i, v in self._val.items() if v}
        if len(parts) == 2:
            q, ql = (torch.cat(t).numpy() for t in zip(*parts[0]))
            g, gl = (torch.cat(t).numpy() for t in zip(*parts[1]))
            self.log("val/recall_at_1", leave_one_out_recall(q, ql, g, gl), prog_bar=True)
        self._val = {0: [], 1: []}

    def configure_optimizers(self) -> Any:
        p = self.params
        groups = [
            {"params": list(self.model.parameters()), "lr": p.lr},
            {"params": list(self.loss.parameters()), "lr": p.lr * p.loss_lr_multiplier, "weight_decay": 0.0},
        ]
        groups = [g for g in groups if g["params"]]
        optimizer = torch.optim.AdamW(groups, weight_decay=p.weight_decay)
        total = max(1, p.epochs * self.steps_per_epoch)
        warmup = int(p.warmup_epochs * self.steps_per_epoch)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            t = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def split_views(catalog: Catalog, val_views: int, seed: int) -> tuple[list[tuple[Path, int]], list[tuple[Path, int]]]:
    """(train, validation) items: per product, `val_views` views held out when it has more than that."""
    rng = np.random.default_rng([seed, 7])
    train, val = [], []
    for label, product in enumerate(catalog.products.values()):
        views = [v.path for v in product.views]
        held = set(rng.choice(len(views), val_views, replace=False).tolist()) if len(views) > val_views else set()
        for i, path in enumerate(views):
            (val if i in held else train).append((path, label))
    return train, val


def check_images(catalog: Catalog, size: int) -> list[CatalogProblem]:
    """Drop (in place) catalog views whose file is not a readable image; return them as problems."""
    problems = []
    for pid in list(catalog.products):
        product = catalog.products[pid]
        good = []
        for view in product.views:
            try:
                read_view(view.path, size)
                good.append(view)
            except UserError as err:
                problems.append(CatalogProblem(catalog.source, view.row, str(err)))
        product.views = good
        if not good:
            del catalog.products[pid]
    return problems


def train_embedding(catalog_path: str | os.PathLike, out_dir: str | os.PathLike, params: TrainParams) -> dict[str, Any]:
    """Train an embedding model on a catalog and write the model folder `out_dir`.

    Returns:
        The training summary (also written to `<out_dir>/train.json`).

    Raises:
        UserError: on a bad catalog, bad params, or a missing pretrained checkpoint.
    """
    params.check()
    catalog = load_catalog(catalog_path)
    problems = catalog.problems + check_images(catalog, params.image_size)
    if len(catalog) < 2:
        raise UserError(f"catalog {catalog_path} has {len(catalog)} usable product(s); training needs at least 2.")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(params.seed)
    train_items, val_items = split_views(catalog, params.val_views, params.seed)
    labels = [label for _, label in train_items]
    sampler = PKBatchSampler(labels, params.products_per_batch, params.views_per_product, seed=params.seed)
    train_set = ViewDataset(train_items, params.image_size)
    train_loader = DataLoader(
        train_set,
        batch_sampler=sampler,
        num_workers=params.num_workers,
        persistent_workers=params.num_workers > 0,
    )
    val_loaders = None
    if val_items:
        eval_batch = 128
        val_loaders = [
            DataLoader(ViewDataset(val_items, params.image_size), batch_size=eval_batch),
            DataLoader(train_set, batch_size=eval_batch),
        ]
    module = EmbeddingModule(params, num_classes=len(catalog), steps_per_epoch=len(sampler))
    precision = resolve_precision(params.precision, params.accelerator)
    config = TrainConfig(
        max_epochs=params.epochs,
        accelerator=params.accelerator,
        precision=precision,
        seed=params.seed,
        log_every_n_steps=max(1, min(10, len(sampler))),
        check_val_every_n_epoch=params.epochs,  # once, at the end: validation costs a catalog embedding
        progress=params.progress,
        logger=params.logger,
    )
    print(
        f"training {params.backbone} x{params.width_multiplier:g} ({params.loss}) on {len(catalog)} products, "
        f"{len(train_items)} views ({len(val_items)} held out), {params.epochs} epochs of {len(sampler)} batches, "
        f"precision {precision}",
        flush=True,
    )
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=r".*Checkpoint directory .* exists and is not empty.*")
        result = fit(module, train_loader, val_loaders, config=config, out_dir=out_dir)
    seconds = time.perf_counter() - start
    summary = {
        "products": len(catalog),
        "train_views": len(train_items),
        "val_views": len(val_items),
        "epochs": params.epochs,
        "seconds": round(seconds, 1),
        "images_per_second": round(params.epochs * len(sampler) * sampler.p * sampler.k / max(seconds, 1e-9), 1),
        "precision": precision,
        "metrics": {k: round(v, 5) for k, v in result.metrics.items()},
        "resumed_from": str(result.resumed_from) if result.resumed_from else None,
        "skipped_rows": [str(p) for p in problems],
        "params": asdict(params),
    }
    model = module.model.cpu().float().to(memory_format=torch.contiguous_format).eval()
    save_model(out_dir, model, params.model_config(), {"training": summary})
    write_json(out_dir / "train.json", summary)
    print(json.dumps({k: summary[k] for k in ("seconds", "metrics")}), flush=True)
    return summary
