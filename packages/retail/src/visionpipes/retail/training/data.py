"""Training data of the embedding model: catalog views decoded once and kept in memory, the
held-out validation split, the unreadable-image check, and P products × K views batches through
`pytorch-metric-learning`'s `MPerClassSampler`.

No model and no loss here.
"""

from __future__ import annotations

from collections.abc import Sequence
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


def pk_sampler(labels: Sequence[int], p: int, k: int) -> torch.utils.data.Sampler:
    """A sampler of batches of P labels x K items per label (`pytorch_metric_learning`'s
    `MPerClassSampler`; items repeat when a label has fewer than K), with `len(labels) // (P x K)`
    batches (at least one) per epoch. Use it with `DataLoader(batch_size=sampler.batch_size)`.

    Its draws come from numpy's global generator, which `core.training.seed_everything` seeds.
    """
    from pytorch_metric_learning.samplers import MPerClassSampler

    p = max(1, min(p, len(set(int(x) for x in labels))))
    batch = p * k
    batches = max(1, len(labels) // batch)
    return MPerClassSampler(list(labels), m=k, batch_size=batch, length_before_new_iter=batches * batch)


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
