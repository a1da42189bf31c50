"""Shared fixtures for the retail tests: small clustered embedding catalogs (real FAISS, real SQLite), a
small deployed index (real ONNX model, index, manifest), and `vp-retail serve` in a real child process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import pytest

from visionpipes.retail.index.records import ProductRecord


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
    """One OpenMP thread for FAISS and torch: on a shared 2-core machine spinning OpenMP threads make
    the tests' small jobs 10x slower."""
    import torch

    previous = faiss.omp_get_max_threads(), torch.get_num_threads()
    faiss.omp_set_num_threads(1)
    torch.set_num_threads(1)
    yield
    faiss.omp_set_num_threads(previous[0])
    torch.set_num_threads(previous[1])


@pytest.fixture
def catalog() -> Catalog:
    return clustered_catalog(300, 16)


@pytest.fixture
def make_catalog():
    """The `clustered_catalog` builder, for tests that need other sizes or seeds."""
    return clustered_catalog


# -- a tiny deployed index and a real server process ------------------------------------------------
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def deployed(tmp_path_factory) -> Path:
    """A deploy folder (ONNX model, index, manifest, model card) over a small synthetic catalog, built
    with an untrained (random) small embedding model: fast, and a catalog photo still finds itself."""
    import torch

    from visionpipes.retail.embedding.config import EmbeddingConfig
    from visionpipes.retail.embedding.model_folder import save_model
    from visionpipes.retail.embedding.network import EmbeddingNet
    from visionpipes.retail.synth import SynthConfig, write_catalog
    from visionpipes.retail.training.deploy import DeployParams, deploy_model

    root = tmp_path_factory.mktemp("deployed")
    write_catalog(root / "catalog", SynthConfig(products=12, views=2, queries=1, size=64, seed=5))
    torch.manual_seed(0)
    config = EmbeddingConfig(backbone="resnet18", width_multiplier=0.25, dimension=32, image_size=64, pooling="avg")
    save_model(root / "model", EmbeddingNet.from_config(config).eval(), config, {"training": {"params": {"loss": "none"}}})
    deploy_model(root / "model", root / "catalog", root / "deploy", DeployParams(factory="Flat"), progress=False)
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """`vp-retail serve` in a child process on a free loopback port."""

    def __init__(self, index: Path, *extra: str, log: Path | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log or os.devnull, "ab")  # noqa: SIM115 - closed in stop()
        env = {**os.environ, "VISIONPIPES_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        cmd = [sys.executable, "-m", "visionpipes.retail.cli", "serve", "--index", str(index), "--port", str(self.port)]
        self.proc = subprocess.Popen([*cmd, "--threads", "1", *extra], stdout=self.log, stderr=self.log, env=env)

    def wait_ready(self, timeout: float = 60.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode} before answering")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError(f"server on {self.url} not ready after {timeout} s")

    def kill(self) -> None:
        """SIGKILL: no shutdown handler, no flush, no close."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()


@pytest.fixture
def serve():
    """Start servers (`serve(index_dir)`), each stopped at the end of the test."""
    started: list[Server] = []

    def start(index: Path, *extra: str, log: Path | None = None) -> Server:
        server = Server(index, *extra, log=log)
        started.append(server)
        server.wait_ready()
        return server

    yield start
    for server in started:
        server.stop()
