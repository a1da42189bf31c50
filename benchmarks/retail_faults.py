"""Fault benchmark of the retail API: a real `vp-retail serve` on loopback over a small deployed index
(an untrained small model over a 12-product synthetic catalog: the cheapest real deployment), client
threads mixing searches, adds, replaces and deletes for a fixed number of requests, the server killed
with SIGKILL at seeded random moments and restarted, a redeploy attempted while serving, a
compaction run mid-way, and a reload mid-run onto a new deployment (another model, 24-d instead of
32-d) beside the served one (`POST /admin/reload`: the live writes are replayed into it). Reports acknowledged writes lost, wrong answers after restart, p50/p99 per
route (from the server's `/metrics` histograms, summed over the server's lives) and the server's RSS.

Loopback only, bounded in requests and time; writes results to benchmarks/results/retail_faults.json.

    .venv/bin/python benchmarks/retail_faults.py [--requests 300] [--clients 3] [--kills 2] [--seed 0]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "bench-token-" + "0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def photo(n: int) -> bytes:
    rng = np.random.default_rng(10_000 + n)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def make_deployment(work: Path) -> tuple[Path, Path, Path, Path]:
    """Model folder, catalog and deploy folder (as tests/retail/conftest.py's `deployed`), and the
    deploy folder a reload switches to (another random model, 24-d) beside it."""
    import torch

    from visionpipes.retail.embedding.config import EmbeddingConfig
    from visionpipes.retail.embedding.model_folder import save_model
    from visionpipes.retail.embedding.network import EmbeddingNet
    from visionpipes.retail.synth import SynthConfig, write_catalog
    from visionpipes.retail.training.deploy import DeployParams, deploy_model

    torch.set_num_threads(1)
    write_catalog(work / "catalog", SynthConfig(products=12, views=2, queries=1, size=64, seed=5))
    torch.manual_seed(0)
    config = EmbeddingConfig(backbone="resnet18", width_multiplier=0.25, dimension=32, image_size=64, pooling="avg")
    save_model(work / "model", EmbeddingNet.from_config(config).eval(), config, {"training": {"params": {"loss": "none"}}})
    deploy_model(work / "model", work / "catalog", work / "deploy", DeployParams(factory="HNSW16"), progress=False)
    torch.manual_seed(1)
    config = EmbeddingConfig(backbone="resnet18", width_multiplier=0.25, dimension=24, image_size=64, pooling="avg")
    save_model(work / "model2", EmbeddingNet.from_config(config).eval(), config, {"training": {"params": {"loss": "none"}}})
    deploy_model(work / "model2", work / "catalog", work / "deploy.next", DeployParams(factory="HNSW16"), progress=False)
    return work / "model", work / "catalog", work / "deploy", work / "deploy.next"


class Server:
    def __init__(self, deploy: Path, log: Path) -> None:
        self.deploy, self.log = deploy, log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        env = {**os.environ, "VISIONPIPES_THREADS": "1", "VP_RETAIL_TOKEN": TOKEN}
        cmd = [sys.executable, "-m", "visionpipes.retail.cli", "serve", "--index", str(self.deploy),
               "--port", str(self.port), "--threads", "1"]
        with open(self.log, "ab") as fh:
            self.proc = subprocess.Popen(cmd, stdout=fh, stderr=fh, env=env)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited ({self.proc.returncode}); see {self.log}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("server not ready")

    def rss_mib(self) -> float:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
        return float("nan")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)


def scrape(url: str) -> dict[str, dict[float, float]]:
    """Cumulative latency bucket counts per route from /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, dict[float, float]] = {}
    for fam in text_string_to_metric_families(httpx.get(url + "/metrics", timeout=10).text):
        for s in fam.samples:
            if s.name == "retail_http_request_seconds_bucket":
                le = float("inf") if s.labels["le"] == "+Inf" else float(s.labels["le"])
                out.setdefault(s.labels["route"], {})[le] = s.value
    return out


def quantile(buckets: dict[float, float], q: float) -> float | None:
    """histogram_quantile: linear interpolation inside the bucket holding the q-th observation."""
    edges = sorted(buckets)
    total = buckets[edges[-1]]
    if not total:
        return None
    rank, prev_edge, prev_count = q * total, 0.0, 0.0
    for edge in edges:
        if buckets[edge] >= rank:
            if edge == float("inf"):
                return prev_edge
            return prev_edge + (edge - prev_edge) * (rank - prev_count) / max(buckets[edge] - prev_count, 1e-12)
        prev_edge, prev_count = edge, buckets[edge]
    return prev_edge


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--clients", type=int, default=3)
    ap.add_argument("--kills", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/retail_faults.json"))
    args = ap.parse_args()
    rng = random.Random(args.seed)
    t_start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="retail-faults-"))
    model, catalog, deploy, deploy_next = make_deployment(work)
    t_deploy = time.perf_counter() - t_start
    server = Server(deploy, work / "server.log")
    server.start()
    rss_start = server.rss_mib()

    state_lock = threading.Lock()
    acked: dict[str, int] = {}  # product -> photo number of its last acknowledged add/replace
    deleted: set[str] = set()  # acknowledged deletes (not re-added since)
    uncertain: set[str] = set()  # a write whose answer never came (the server died under it)
    issued = [0]
    up = threading.Event()
    up.set()
    errors: list[str] = []
    histograms: list[dict[str, dict[float, float]]] = []
    kill_at = sorted(rng.sample(range(args.requests // 5, args.requests * 9 // 10), args.kills))
    events: list[dict] = []

    def client(worker: int) -> None:
        crng = random.Random(args.seed * 100 + worker)
        with httpx.Client(timeout=30, headers=AUTH) as http:
            while True:
                with state_lock:
                    if issued[0] >= args.requests:
                        return
                    issued[0] += 1
                    n = issued[0]
                    # Each client replaces and deletes only its own products: two clients writing the same id
                    # at once would be acknowledged in an order the server need not have applied them in.
                    known = sorted(p for p in acked if p.startswith(f"w{worker}-"))
                up.wait(120)
                op = crng.choices(["search", "add", "replace", "delete"], [0.45, 0.3, 0.1, 0.15])[0]
                if op in ("replace", "delete") and not known:
                    op = "add"
                pid = f"w{worker}-{n}" if op == "add" else crng.choice(known) if known else ""
                pic = 100_000 * worker + n
                try:
                    if op == "search":
                        r = http.post(server.url + "/search", params={"k": 5},
                                      files={"image": ("q.png", photo(crng.randrange(n + 1)), "image/png")})
                    elif op in ("add", "replace"):
                        r = http.post(server.url + "/items", data={"product_id": pid, "replace": "true"},
                                      files=[("images", ("p.png", photo(pic), "image/png"))])
                    else:
                        r = http.delete(server.url + f"/items/{pid}")
                except httpx.HTTPError:
                    if op != "search":
                        with state_lock:
                            uncertain.add(pid)
                    continue
                with state_lock:
                    if op in ("add", "replace") and r.status_code == 201:
                        acked[pid] = pic
                        deleted.discard(pid)
                    elif op == "delete" and r.status_code == 200:
                        acked.pop(pid, None)
                        deleted.add(pid)
                    elif r.status_code not in (200, 201, 404):
                        errors.append(f"{op} {pid}: {r.status_code} {r.text[:120]}")

    def chaos() -> None:
        from visionpipes.core.errors import UserError
        from visionpipes.retail.training.deploy import DeployParams, deploy_model

        pending = list(kill_at)
        todo = {"redeploy": args.requests // 3, "compact": args.requests // 2, "reload": args.requests * 2 // 3}
        while pending or todo:
            time.sleep(0.01)
            now = issued[0]
            if "redeploy" in todo and now >= todo["redeploy"]:
                del todo["redeploy"]
                try:
                    deploy_model(model, catalog, deploy, DeployParams(factory="HNSW16"), progress=False)
                    events.append({"at": now, "event": "redeploy", "result": "replaced (BAD)"})
                except UserError as err:
                    events.append({"at": now, "event": "redeploy", "result": f"refused: {err}"[:160]})
            if "compact" in todo and now >= todo["compact"]:
                del todo["compact"]
                up.wait(120)
                r = httpx.post(server.url + "/admin/compact", headers=AUTH, timeout=60)
                events.append({"at": now, "event": "compact", "status": r.status_code, **r.json()})
            if "reload" in todo and now >= todo["reload"]:
                del todo["reload"]
                up.wait(120)
                before = httpx.get(server.url + "/health", timeout=30).json()["model_version"]
                r = httpx.post(server.url + "/admin/reload", headers=AUTH, json={"deployment": str(deploy_next)},
                               timeout=300)
                after = httpx.get(server.url + "/health", timeout=30).json()
                events.append({"at": now, "event": "reload", "status": r.status_code, "model_before": before,
                               "model_after": after["model_version"], "dimension_after": after["dimension"],
                               **(r.json() if r.status_code == 200 else {"detail": r.text[:200]})})
            if pending and now >= pending[0]:
                pending.pop(0)
                histograms.append(scrape(server.url))
                up.clear()
                server.kill()
                events.append({"at": now, "event": "SIGKILL"})
                server.start()
                up.set()

    threads = [threading.Thread(target=client, args=(w,)) for w in range(args.clients)]
    chaos_thread = threading.Thread(target=chaos)
    t_load = time.perf_counter()
    for t in [*threads, chaos_thread]:
        t.start()
    for t in [*threads, chaos_thread]:
        t.join()
    load_seconds = time.perf_counter() - t_load
    rss_end_live = server.rss_mib()
    histograms.append(scrape(server.url))
    server.kill()  # one last SIGKILL, then check every acknowledged write
    server.start()
    lost, wrong = [], []
    with httpx.Client(base_url=server.url, timeout=30, headers=AUTH) as http:
        for pid, pic in sorted(acked.items()):
            if pid in uncertain:
                continue
            r = http.get(f"/items/{pid}")
            if r.status_code != 200 or http.get(f"/items/{pid}/image").content != photo(pic):
                lost.append(pid)
                continue
            hits = http.post("/search", params={"k": 3}, files={"image": ("q.png", photo(pic), "image/png")}).json()
            if pid not in [h["product_id"] for h in hits["results"]]:
                wrong.append(f"{pid}: acknowledged, not found by its photo")
        for pid in sorted(deleted - uncertain):
            if http.get(f"/items/{pid}").status_code != 404:
                wrong.append(f"{pid}: deleted, still returned")
        health = http.get("/health").json()
    rss_restart = server.rss_mib()
    server.kill()

    routes: dict[str, dict[float, float]] = {}
    for h in histograms:
        for route, buckets in h.items():
            acc = routes.setdefault(route, {})
            for le, v in buckets.items():
                acc[le] = acc.get(le, 0.0) + v
    latency = {
        route: {"requests": int(b[float("inf")]),
                "p50_ms": round(1000 * (quantile(b, 0.5) or 0), 1), "p99_ms": round(1000 * (quantile(b, 0.99) or 0), 1)}
        for route, b in sorted(routes.items()) if b.get(float("inf"))
    }
    result = {
        "command": " ".join(["benchmarks/retail_faults.py", *sys.argv[1:]]),
        "requests": args.requests, "clients": args.clients, "seed": args.seed, "kills": len(kill_at) + 1,
        "acknowledged_products_checked": len([p for p in acked if p not in uncertain]),
        "acknowledged_deletes_checked": len(deleted - uncertain),
        "uncertain_writes_excluded": len(uncertain),
        "acknowledged_writes_lost": len(lost), "lost": lost[:20],
        "wrong_answers_after_restart": len(wrong), "wrong": wrong[:20],
        "unexpected_statuses": errors[:20],
        "events": events,
        "latency_per_route_from_metrics": latency,
        "server_rss_mib": {"first_start": rss_start, "end_of_load_last_life": rss_end_live,
                           "after_final_restart": rss_restart},
        "final_health": {k: health[k] for k in ("products", "vectors", "tombstones", "journal_changes", "generation",
                                                "dimension", "model_version")},
        "seconds": {"deploy": round(t_deploy, 1), "load": round(load_seconds, 1),
                    "total": round(time.perf_counter() - t_start, 1)},
    }
    shutil.rmtree(work, ignore_errors=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
