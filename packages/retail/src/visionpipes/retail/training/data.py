"""Training data of the embedding model: catalog views decoded once and kept in memory, the
held-out validation split, the unreadable-image check, and P products × K views batches through
`pytorch-metric-learning`'s `MPerClassSampler`, shared out whole between DDP ranks (`PKBatchSampler`).

No model and no loss here.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from visionpipes.core.errors import UserError
from visionpipes.retail.catalog import Catalog, CatalogProblem
from visionpipes.retail.embedding.preprocess import read_view


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


def _rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the initialised `torch.distributed` group, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class PKBatchSampler(torch.utils.data.Sampler[int]):
    """P×K batches of `MPerClassSampler`, shared out whole between DDP ranks.

    Lightning's own sharding (`DistributedSamplerWrapper`, rank r takes every W-th index) would cut
    each batch's K views of a product across the ranks (with K = 2, no rank would see a positive pair),
    and without sharding every rank would train on the same batches. So the training loader keeps this
    sampler (`TrainConfig.use_distributed_sampler=False`) and, under DDP, every rank draws the same
    epoch (numpy seeded with `seed + epoch`, the global generator restored after) and takes batches
    r, r+W, r+2W, ...: `ceil(batches / W)` whole P×K batches per rank, so an epoch still covers about
    the same number of views and the global batch is W×P×K. In one process it is exactly the inner
    sampler (same draws from numpy's global generator, same length).

    Use it with `DataLoader(batch_size=sampler.batch_size, drop_last=True)`; the rank is read from the
    initialised process group, so build it before or after Lightning starts the processes.
    """

    def __init__(self, inner: torch.utils.data.Sampler[int], batch_size: int, seed: int = 0) -> None:
        self.inner = inner
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0

    @property
    def batches(self) -> int:
        """P×K batches per epoch in one process."""
        return len(self.inner) // self.batch_size  # type: ignore[arg-type]

    def batches_per_rank(self, world: int) -> int:
        """P×K batches each of `world` ranks trains per epoch."""
        return self.batches if world == 1 else math.ceil(self.batches / world)

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning before each epoch: the draw of a distributed epoch depends on it."""
        self.epoch = epoch

    def __len__(self) -> int:
        _, world = _rank_and_world()
        return len(self.inner) if world == 1 else self.batches_per_rank(world) * self.batch_size  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[int]:
        rank, world = _rank_and_world()
        if world == 1:
            return iter(self.inner)
        need = self.batches_per_rank(world) * world
        state = np.random.get_state()  # noqa: NPY002 - MPerClassSampler draws from numpy's global generator
        try:
            np.random.seed((self.seed + self.epoch) % 2**32)  # noqa: NPY002
            drawn: list[int] = []
            while len(drawn) < need * self.batch_size:
                drawn.extend(int(i) for i in self.inner)
        finally:
            np.random.set_state(state)  # noqa: NPY002
        batches = [drawn[b * self.batch_size : (b + 1) * self.batch_size] for b in range(need)]
        return iter([i for batch in batches[rank::world] for i in batch])


def pk_sampler(labels: Sequence[int], p: int, k: int, seed: int = 0) -> PKBatchSampler:
    """A sampler of batches of P labels x K items per label (`pytorch_metric_learning`'s
    `MPerClassSampler`; items repeat when a label has fewer than K), with `len(labels) // (P x K)`
    batches (at least one) per epoch, shared out whole between DDP ranks (see `PKBatchSampler`).
    Use it with `DataLoader(batch_size=sampler.batch_size)`.

    In one process its draws come from numpy's global generator, which
    `core.training.seed_everything` seeds; under DDP from `seed + epoch`.
    """
    from visionpipes.retail.training.losses import metric_learning

    MPerClassSampler = metric_learning().samplers.MPerClassSampler

    p = max(1, min(p, len(set(int(x) for x in labels))))
    batch = p * k
    batches = max(1, len(labels) // batch)
    inner = MPerClassSampler(list(labels), m=k, batch_size=batch, length_before_new_iter=batches * batch)
    return PKBatchSampler(inner, batch, seed)


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
