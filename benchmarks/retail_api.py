"""Query API under load: 100,000 indexed products served by a real `vp-retail serve` process, a
bounded load from this (second) process on loopback: p50/p99 latency of POST /search at 1 and at 8
concurrent clients, and the throughput of POST /search/batch.

The index holds 100,000 products with clustered unit vectors (not embeddings of 100,000 photos: that
would take hours on 2 cores and changes nothing in the query path's cost); the queries are real
photos from a synthetic catalog, embedded by the server with the deployed ONNX model (`--deploy`,
e.g. data/retail/deploy) or, without one, an untrained model of the default architecture (same cost).

    .venv/bin/python benchmarks/retail_api.py [--deploy data/retail/deploy] [--items 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from visionpipes.retail.index.product_index import ProductIndex
from visionpipes.retail.index.records import ProductRecord

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def default_model(work: Path) -> Path:
    """A deploy-style model folder (model.onnx + model.json) of the default architecture, untrained."""
    import torch

    from visionpipes.core.artifact import file_entry, file_version, write_record
    from visionpipes.retail.embedding.network import EmbeddingNet
    from visionpipes.retail.training.deploy import export_model
    from visionpipes.retail.training.params import TrainParams

    params = TrainParams()
    config = params.embedding_config()
    torch.manual_seed(0)
    model = EmbeddingNet.from_config(config).eval()
    sample = np.random.default_rng(0).integers(0, 256, (2, config.image_size, config.image_size, 3), dtype=np.uint8)
    folder = work / "model"
    folder.mkdir()
    export_model(model, config, sample, folder / "model.onnx", atol=1e-4)
    write_record(
        folder,
        domain="retail",
        files={"onnx": file_entry(folder, "model.onnx")},
        config=config.to_dict(),
        version=file_version(folder / "model.onnx"),
    )
    return folder


def build_index(directory: Path, n: int, dimension: int, version: str, model: Path, factory: str) -> float:
    """`n` products, one clustered unit vector each, 20 categories; returns seconds to build."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((256, dimension)).astype(np.float32)
    vectors = centres[rng.integers(0, 256, n)] + 0.5 * rng.standard_normal((n, dimension)).astype(np.float32)
    records = [
        ProductRecord(f"sku-{i:06d}", title=f"product {i}", category=f"cat-{i % 20:02d}", metadata={"i": i})
        for i in range(n)
    ]
    start = time.perf_counter()
    index = ProductIndex.build(
        directory,
        records,
        [v[None] for v in vectors],
        dimension=dimension,
        factory=factory,
        model_version=version,
        extra={"model": str(model.resolve())},
    )
    index.close()
    return time.perf_counter() - start


def query_photos(work: Path, count: int = 32) -> list[bytes]:
    from visionpipes.retail.synth import SynthConfig, write_catalog

    write_catalog(work / "photos", SynthConfig(products=count, views=1, queries=0, seed=9))
    return [p.read_bytes() for p in sorted((work / "photos" / "images").rglob("*.png"))]


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def run_load(url: str, photos: list[bytes], clients: int, requests: int) -> dict[str, float]:
    """`requests` POST /search spread over `clients` threads, each with its own connection."""
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    per_client = requests // clients

    def worker(w: int) -> None:
        nonlocal errors
        with httpx.Client(base_url=url, timeout=60) as http:
            for i in range(per_client):
                photo = photos[(w * per_client + i) % len(photos)]
                t0 = time.perf_counter()
                r = http.post("/search", params={"k": 10}, files={"image": ("q.png", photo, "image/png")})
                dt = time.perf_counter() - t0
                with lock:
                    if r.status_code == 200:
                        latencies.append(dt * 1000)
                    else:
                        errors += 1

    start = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(w,)) for w in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return {
        "clients": clients,
        "requests": len(latencies),
        "errors": errors,
        "p50_ms": round(percentile(latencies, 50), 2),
        "p99_ms": round(percentile(latencies, 99), 2),
        "mean_ms": round(statistics.fmean(latencies), 2),
        "requests_per_s": round(len(latencies) / wall, 1),
    }


def run_batch(url: str, photos: list[bytes], batch: int, rounds: int) -> dict[str, float]:
    with httpx.Client(base_url=url, timeout=120) as http:
        files = [("images", (f"{i}.png", photos[i % len(photos)], "image/png")) for i in range(batch)]
        http.post("/search/batch", params={"k": 10}, files=files)  # warm-up
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            r = http.post("/search/batch", params={"k": 10}, files=files)
            times.append(time.perf_counter() - t0)
            assert r.status_code == 200, r.text
    return {
        "batch": batch,
        "rounds": rounds,
        "p50_ms": round(percentile([t * 1000 for t in times], 50), 1),
        "images_per_s": round(batch * rounds / sum(times), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deploy", help="deploy folder whose model.onnx the server uses (default: untrained)")
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--factory", default="Flat")
    parser.add_argument("--requests", type=int, default=200, help="requests per concurrency level")
    parser.add_argument("--server-threads", type=int, default=None, help="onnxruntime threads in the server")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "retail_api.json"))
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="retail_api_"))
    server = None
    try:
        model = Path(args.deploy) if args.deploy else default_model(work)
        meta = json.loads((model / "model.json").read_text())
        dimension = int(meta["config"]["dimension"])
        print(f"building a {args.factory} index of {args.items} products ({dimension}-d) ...", flush=True)
        build_s = build_index(work / "index", args.items, dimension, meta["version"], model / "model.onnx", args.factory)
        photos = query_photos(work)
        port = free_port()
        cmd = [sys.executable, "-m", "visionpipes.retail.cli", "serve", "--index", str(work / "index"), "--port", str(port)]
        if args.server_threads:
            cmd += ["--threads", str(args.server_threads)]
        log = open(work / "server.log", "wb")  # noqa: SIM115
        t0 = time.perf_counter()
        server = subprocess.Popen(cmd, stdout=log, stderr=log, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        url = f"http://127.0.0.1:{port}"
        while True:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                if server.poll() is not None or time.perf_counter() - t0 > 300:
                    raise SystemExit((work / "server.log").read_text()[-2000:]) from None
                time.sleep(0.3)
        startup_s = time.perf_counter() - t0
        run_load(url, photos, 1, 20)  # warm-up
        results = {
            "items": args.items,
            "factory": args.factory,
            "dimension": dimension,
            "model": "deployed" if args.deploy else "untrained default architecture",
            "index_build_s": round(build_s, 1),
            "server_startup_s": round(startup_s, 1),
            "search": [run_load(url, photos, c, args.requests) for c in (1, 8)],
            "search_batch": run_batch(url, photos, 16, 10),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_avg": os.getloadavg()},
        }
        print(json.dumps(results, indent=2))
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
