"""Acknowledged adds survive `kill -9`: a real `vp-retail serve` process takes a burst of concurrent
POST /items, is killed with SIGKILL mid-burst, and after a restart every acknowledged product is
served (its record, its uploaded photo, and found by searching with that photo)."""

from __future__ import annotations

import io
import shutil
import threading
import time

import httpx
import numpy as np
from PIL import Image

TOKEN = "durability-token-0123456789"


def _photo(i: int) -> bytes:
    rng = np.random.default_rng(1000 + i)
    img = Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_acknowledged_adds_survive_kill_9(deployed, serve, tmp_path):
    index = tmp_path / "deploy"
    shutil.copytree(deployed / "deploy", index)
    server = serve(index, "--token", TOKEN, log=tmp_path / "server.log")

    acked: dict[str, bytes] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def client(worker: int) -> None:
        with httpx.Client(base_url=server.url, timeout=30, headers={"Authorization": f"Bearer {TOKEN}"}) as http:
            for n in range(200):
                if stop.is_set():
                    return
                pid = f"burst-{worker}-{n}"
                photo = _photo(worker * 1000 + n)
                try:
                    r = http.post(
                        "/items",
                        data={"product_id": pid, "title": f"burst {worker}/{n}", "category": "burst"},
                        files=[("images", (f"{pid}.png", photo, "image/png"))],
                    )
                except httpx.HTTPError:
                    return  # the server died under this request: not acknowledged
                if r.status_code == 201:
                    with lock:
                        acked[pid] = photo

    threads = [threading.Thread(target=client, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while len(acked) < 25 and time.monotonic() < deadline:
        time.sleep(0.02)
    server.kill()  # mid-burst: the clients are still sending
    stop.set()
    for t in threads:
        t.join(timeout=60)
    assert len(acked) >= 25, f"only {len(acked)} adds were acknowledged before the kill"

    restarted = serve(index, log=tmp_path / "server2.log")
    with httpx.Client(base_url=restarted.url, timeout=30) as http:
        health = http.get("/health").json()
        assert health["products"] >= 12 + len(acked)
        for pid, photo in acked.items():
            item = http.get(f"/items/{pid}")
            assert item.status_code == 200, pid
            assert item.json()["category"] == "burst"
            assert http.get(f"/items/{pid}/image").content == photo
        # Every acknowledged product is in the vector index: its own photo finds it at cosine 1.
        for pid in list(acked)[:: max(1, len(acked) // 5)]:
            r = http.post("/search", params={"k": 100}, files={"image": ("q.png", acked[pid], "image/png")})
            scores = {h["product_id"]: h["score"] for h in r.json()["results"]}
            assert scores.get(pid, 0.0) > 0.9999
