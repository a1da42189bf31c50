"""Training of the product embedding model: a `core` backbone + projection head (`EmbeddingNet`) learnt
with a `pytorch-metric-learning` loss over product ids, strong augmentation and P-products x K-views
batches, run by `visionpipes.core.training.fit` (Lightning + DVCLive).

It writes a model folder (`model.pt`, `model.json`, Lightning checkpoints, DVCLive logs); it does not
export, embed catalogs or build indexes (see `training.deploy`).
"""

from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from visionpipes.core.device import resolve_precision
from visionpipes.core.errors import UserError
from visionpipes.core.io import write_json
from visionpipes.core.training import TrainConfig, fit, seed_everything
from visionpipes.retail.catalog import load_catalog
from visionpipes.retail.embedding.model_folder import save_model
from visionpipes.retail.training.data import ViewDataset, check_images, pk_sampler, split_views
from visionpipes.retail.training.module import EmbeddingModule
from visionpipes.retail.training.params import TrainParams


def train_embedding(catalog_path: str | os.PathLike, out_dir: str | os.PathLike, params: TrainParams) -> dict[str, Any]:
    """Train an embedding model on a catalog and write the model folder `out_dir`.

    Returns:
        The training summary (also written to `<out_dir>/train.json`).

    Raises:
        UserError: on a bad catalog, bad params, or a missing pretrained checkpoint.
    """
    architecture = params.embedding_config()  # reads a backbone spec file once, before any work
    catalog = load_catalog(catalog_path)
    problems = catalog.problems + check_images(catalog, params.image_size)
    if len(catalog) < 2:
        raise UserError(f"catalog {catalog_path} has {len(catalog)} usable product(s); training needs at least 2.")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(params.seed)
    train_items, val_items = split_views(catalog, params.val_views, params.seed)
    labels = [label for _, label in train_items]
    sampler = pk_sampler(labels, params.products_per_batch, params.views_per_product, seed=params.seed)
    train_set = ViewDataset(train_items, params.image_size)
    train_loader = DataLoader(
        train_set,
        batch_size=sampler.batch_size,
        sampler=sampler,
        drop_last=True,
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
    module = EmbeddingModule(params, num_classes=len(catalog), steps_per_epoch=len(train_loader))
    precision = resolve_precision(params.precision, params.accelerator)
    config = TrainConfig(
        max_epochs=params.epochs,
        accelerator=params.accelerator,
        devices=params.devices,
        strategy=params.strategy,
        num_nodes=params.num_nodes,
        # the P×K sampler shards itself by rank; validation embeds all held-out views on every rank
        use_distributed_sampler=False,
        precision=precision,
        seed=params.seed,
        log_every_n_steps=max(1, min(10, len(train_loader))),
        check_val_every_n_epoch=params.epochs,  # once, at the end: validation costs a catalog embedding
        progress=params.progress,
        logger=params.logger,
    )
    print(
        f"training {params.backbone} x{params.width_multiplier:g} ({params.loss}) on {len(catalog)} products, "
        f"{len(train_items)} views ({len(val_items)} held out), {params.epochs} epochs of {len(train_loader)} batches, "
        f"precision {precision}",
        flush=True,
    )
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=r".*Checkpoint directory .* exists and is not empty.*")
        result = fit(module, train_loader, val_loaders, config=config, out_dir=out_dir)
    seconds = time.perf_counter() - start
    batches = sampler.batches_per_rank(result.world_size) * result.world_size
    summary = {
        "products": len(catalog),
        "train_views": len(train_items),
        "val_views": len(val_items),
        "epochs": params.epochs,
        "seconds": round(seconds, 1),
        "images_per_second": round(params.epochs * batches * sampler.batch_size / max(seconds, 1e-9), 1),
        "precision": precision,
        "metrics": {k: round(v, 5) for k, v in result.metrics.items()},
        "resumed_from": str(result.resumed_from) if result.resumed_from else None,
        "skipped_rows": [str(p) for p in problems],
        "params": params.to_dict(),
    }
    if not result.is_global_zero:  # DDP: rank 0 writes the model folder
        return summary
    model = module.model.cpu().float().to(memory_format=torch.contiguous_format).eval()
    save_model(out_dir, model, architecture, {"training": summary})
    write_json(out_dir / "train.json", summary)
    print(json.dumps({k: summary[k] for k in ("seconds", "metrics")}), flush=True)
    return summary
