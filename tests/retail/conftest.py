"""Shared fixtures for the retail tests: small clustered embedding catalogs (real FAISS, real SQLite)."""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np
import pytest

from visionpipes.retail.store import ProductRecord


@dataclass
class Catalog:
    records: list[ProductRecord]
    vectors: list[np.ndarray]

    def unit(self, i: int, view: int = 0) -> np.ndarray:
        v = self.vectors[i][view]
        return v / np.linalg.norm(v)


def clustered_catalog(n: int, dim: int, *, views: int = 2, centres: int = 12, seed: int = 0) -> Catalog:
    """`n` products with `views` noisy views each around one of `centres` Gaussian cluster centres."""
    rng = np.random.default_rng(seed)
    mu = rng.standard_normal((centres, dim)).astype(np.float32)
    records, vectors = [], []
    for i in range(n):
        base = mu[i % centres] + 0.6 * rng.standard_normal(dim).astype(np.float32)
        vectors.append(base + 0.15 * rng.standard_normal((views, dim)).astype(np.float32))
        records.append(
            ProductRecord(
                product_id=f"sku-{i:04d}",
                title=f"product {i}",
                category=("shoes", "bags", "hats")[i % 3],
                metadata={"n": i},
                image_paths=[f"img/{i}_{v}.png" for v in range(views)],
            )
        )
    return Catalog(records, vectors)


@pytest.fixture(autouse=True, scope="session")
def _single_faiss_thread():
    """One OpenMP thread: on a shared 2-core machine FAISS's spinning threads make small jobs 10x slower."""
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(previous)


@pytest.fixture
def catalog() -> Catalog:
    return clustered_catalog(300, 16)


@pytest.fixture
def make_catalog():
    """The `clustered_catalog` builder, for tests that need other sizes or seeds."""
    return clustered_catalog
