"""What a server is serving, switchable while it serves: the deployment (`Served`: the folder, its open
index, the model that embeds queries for it, its uploads and catalog photos) and the holder
(`ServedDeployment`) the routes read it from, one consistent deployment per request.

A request takes the current deployment once (`use()`) and embeds and searches with that one only, so
a reload (`serve.reload`) never mixes the old model with the new index; the old deployment is closed
once the requests still using it are done (`drain`). No routes here.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from visionpipes.core.errors import UserError
from visionpipes.retail.index.faiss_index import SearchSettings
from visionpipes.retail.index.product_index import ProductIndex
from visionpipes.retail.index.snapshot import DirectoryLock
from visionpipes.retail.serve.deployment import manifest_catalog_root
from visionpipes.retail.serve.uploads import UPLOADS_DIR

Embedder = Callable[[Sequence[np.ndarray]], np.ndarray]


@dataclass(eq=False)
class Served:
    """One deployment open for serving.

    Attributes:
        root: the folder `vp-retail serve --index` names (a deploy folder, or an index directory).
        index_dir: its index directory.
        index: the open index.
        embedder: images → (n, dimension) embeddings, the model the index was built with.
        images_root: the catalog photo folder (None: catalog photos unavailable).
        users: requests using this deployment now (see `ServedDeployment.use`).
    """

    root: Path
    index_dir: Path
    index: ProductIndex
    embedder: Embedder
    images_root: Path | None
    users: int = 0

    @property
    def uploads(self) -> Path:
        """The folder photos added through `POST /items` are kept in (inside the index directory)."""
        return self.index_dir / UPLOADS_DIR

    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        return np.asarray(self.embedder(images), dtype=np.float32)


def open_served(
    root: Path,
    index_dir: Path,
    embedder: Embedder,
    *,
    model_version: str | None = None,
    settings: SearchSettings | None = None,
    catalog_root: str | Path | None = None,
    lock: DirectoryLock | None = None,
) -> Served:
    """Open `index_dir` for serving with `embedder` (probed once: its dimension and version must be the index's).

    Raises:
        UserError: if the index is missing, corrupted, open elsewhere, or built with another model.
    """
    version = model_version if model_version is not None else getattr(embedder, "model_version", None)
    probe = np.asarray(embedder([np.zeros((32, 32, 3), dtype=np.uint8)]))
    if probe.ndim != 2 or probe.shape[0] != 1:
        if lock is not None:
            lock.release()
        raise UserError(f"the embedder returned shape {probe.shape} for one image, expected (1, dimension).")
    index = ProductIndex.open(
        index_dir, dimension=int(probe.shape[1]), model_version=version, settings=settings, lock=lock
    )
    if catalog_root is None:
        catalog_root = manifest_catalog_root(index_dir, index.manifest.extra)
    return Served(Path(root), Path(index_dir), index, embedder, Path(catalog_root) if catalog_root else None)


class ServedDeployment:
    """The deployment a server answers from; swapped whole by a reload.

    Args:
        served: the deployment opened at start.
        settings: FAISS query settings (kept for the deployments a reload opens).
        threads: onnxruntime threads of the models a reload loads.
    """

    def __init__(
        self, served: Served, *, settings: SearchSettings | None = None, threads: int | None = None
    ) -> None:
        self._current = served
        self._cond = threading.Condition()
        self.settings = settings
        self.threads = threads

    @property
    def current(self) -> Served:
        """The deployment answering now (for a single read; a request that embeds and searches uses `use`)."""
        return self._current

    @contextmanager
    def use(self) -> Iterator[Served]:
        """The current deployment, counted as in use until the block ends (a reload closes it only then)."""
        with self._cond:
            served = self._current
            served.users += 1
        try:
            yield served
        finally:
            with self._cond:
                served.users -= 1
                self._cond.notify_all()

    def swap(self, new: Served) -> Served:
        """Make `new` the current deployment; returns the previous one (still open)."""
        with self._cond:
            old, self._current = self._current, new
        return old

    def drain(self, old: Served, timeout: float = 60.0) -> bool:
        """Wait until no request uses `old` any more; False if some still did after `timeout` seconds."""
        with self._cond:
            return self._cond.wait_for(lambda: old.users == 0, timeout=timeout)

    def close(self) -> None:
        """Close the current deployment (server shutdown)."""
        self._current.index.close()
