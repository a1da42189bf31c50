"""Training data of the embedding model: catalog views decoded once and kept in memory, the
held-out validation split, the unreadable-image check, and P products × K views batches cut from
passes of `pytorch-metric-learning`'s `MPerClassSampler` over every product, shared out whole between
DDP ranks (`PKBatchSampler`).

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
    """Batches of P products x K views that visit every product once per pass, shared out whole
    between DDP ranks.

    The views come from `pytorch-metric-learning`'s `MPerClassSampler` with `batch_size=None`: one
    iteration of it is one pass over every product, K views each (repeated when a product has fewer),
    in a random product order. Batches are cut from consecutive passes, P products each; at the seam
    of two passes a product already in the batch waits for the next batch, so every batch holds P
    distinct products and every product comes once per pass. The undelivered rest of a pass carries
    over to the next epoch. (`MPerClassSampler` with a `batch_size` draws each batch's products
    independently: in an epoch some products come three times or more and others not at all; on the
    retail sample that cost 0.02 Recall@1 and 0.034 mAP, mean of three seeds, see the package README.)

    An epoch has `len(labels) // (P x K)` batches (at least one) in one process. Lightning's own
    sharding (`DistributedSamplerWrapper`, rank r takes every W-th index) would cut each batch's K
    views of a product across the ranks (with K = 2, no rank would see a positive pair), and without
    sharding every rank would train on the same batches. So the training loader keeps this sampler
    (`TrainConfig.use_distributed_sampler=False`) and, under DDP, every rank draws the same epoch
    (numpy seeded with `seed + epoch`, the global generator restored after) and takes batches
    r, r+W, r+2W, ...: `ceil(batches / W)` whole P×K batches per rank, so an epoch still covers about
    the same number of views and the global batch is W×P×K. In one process the draws come from
    numpy's global generator, which `core.training.seed_everything` seeds.

    Use it with `DataLoader(batch_size=sampler.batch_size, drop_last=True)`; the rank is read from the
    initialised process group, so build it before or after Lightning starts the processes.
    """

    def __init__(self, labels: Sequence[int], p: int, k: int, seed: int = 0) -> None:
        from visionpipes.retail.training.losses import metric_learning

        MPerClassSampler = metric_learning().samplers.MPerClassSampler

        self.labels = [int(x) for x in labels]
        products = len(set(self.labels))
        if products == 0 or k < 1:
            raise UserError(f"P x K batches need at least one product and K >= 1 (got {products}, K = {k}).")
        self.k = k
        self.p = max(1, min(p, products))
        self.batch_size = self.p * k
        self.seed = seed
        self.epoch = 0
        #: one iteration = one pass: every product once, K views each, products in random order
        self.inner = MPerClassSampler(self.labels, m=k, batch_size=None, length_before_new_iter=k * products)
        self._waiting: list[list[int]] = []  # K-view blocks of the current pass not yet in a batch

    @property
    def batches(self) -> int:
        """P×K batches per epoch in one process."""
        return max(1, len(self.labels) // self.batch_size)

    def batches_per_rank(self, world: int) -> int:
        """P×K batches each of `world` ranks trains per epoch."""
        return self.batches if world == 1 else math.ceil(self.batches / world)

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning before each epoch: the draw of a distributed epoch depends on it."""
        self.epoch = epoch

    def __len__(self) -> int:
        _, world = _rank_and_world()
        return self.batches_per_rank(world) * self.batch_size

    def _next_batch(self) -> list[int]:
        """P distinct products' K-view blocks, the earliest waiting ones first (a new pass when needed)."""
        batch: list[int] = []
        taken: set[int] = set()
        i = 0
        while len(taken) < self.p:
            if i == len(self._waiting):
                drawn = [int(x) for x in self.inner]
                self._waiting.extend(drawn[j : j + self.k] for j in range(0, len(drawn), self.k))
            label = self.labels[self._waiting[i][0]]
            if label in taken:  # at the seam of two passes: this product waits for the next batch
                i += 1
                continue
            taken.add(label)
            batch.extend(self._waiting.pop(i))
        return batch

    def __iter__(self) -> Iterator[int]:
        rank, world = _rank_and_world()
        if world == 1:
            return iter([i for _ in range(self.batches) for i in self._next_batch()])
        need = self.batches_per_rank(world) * world
        state = np.random.get_state()  # noqa: NPY002 - MPerClassSampler draws from numpy's global generator
        try:
            np.random.seed((self.seed + self.epoch) % 2**32)  # noqa: NPY002
            batches = [self._next_batch() for _ in range(need)]
        finally:
            np.random.set_state(state)  # noqa: NPY002
        return iter([i for batch in batches[rank::world] for i in batch])


def pk_sampler(labels: Sequence[int], p: int, k: int, seed: int = 0) -> PKBatchSampler:
    """A sampler of batches of P labels x K items per label that visits every label once per pass
    (`PKBatchSampler` over `pytorch_metric_learning`'s `MPerClassSampler`; items repeat when a label
    has fewer than K), with `len(labels) // (P x K)` batches (at least one) per epoch, shared out whole
    between DDP ranks. Use it with `DataLoader(batch_size=sampler.batch_size)`.
    """
    return PKBatchSampler(labels, p, k, seed)


def split_views(
    catalog: Catalog, val_views: int, seed: int
) -> tuple[list[tuple[Path, int]], list[tuple[Path, int]]]:
    """(train, validation) items: per product, `val_views` views held out when it has more than that."""
    rng = np.random.default_rng([seed, 7])
    train, val = [], []
    for label, product in enumerate(catalog.products.values()):
        views = [v.path for v in product.views]
        held = (
            set(rng.choice(len(views), val_views, replace=False).tolist())
            if len(views) > val_views
            else set()
        )
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
