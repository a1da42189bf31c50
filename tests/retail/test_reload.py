"""A running `vp-retail serve` switches to a new deployment (another model, another embedding
dimension) with `POST /admin/reload` / `vp-retail reload` without losing the adds, replaces and deletes
it acknowledged: they are re-embedded with the new model and found after the reload and after a
restart; reads go on during the reload; a broken new deployment is refused and the old one keeps
serving; kill -9 in the middle of a reload leaves a folder that serves one deployment or the other,
every acknowledged write included. Real servers on loopback (subprocesses), a real second model."""

from __future__ import annotations

import csv
import io
import json
import shutil
import threading

import httpx
import numpy as np
import pytest
from PIL import Image

TOKEN = "reload-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _photo(i: int) -> bytes:
    rng = np.random.default_rng(7000 + i)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def next_deployment(deployed, tmp_path_factory):
    """A second deploy folder over the same catalog: another (random) model, 24-d instead of 32-d."""
    import torch

    from visionpipes.retail.embedding.config import EmbeddingConfig
    from visionpipes.retail.embedding.model_folder import save_model
    from visionpipes.retail.embedding.network import EmbeddingNet
    from visionpipes.retail.training.deploy import DeployParams, deploy_model

    root = tmp_path_factory.mktemp("next")
    torch.manual_seed(1)
    config = EmbeddingConfig(
        backbone="resnet18", width_multiplier=0.25, dimension=24, image_size=64, pooling="avg"
    )
    save_model(
        root / "model",
        EmbeddingNet.from_config(config).eval(),
        config,
        {"training": {"params": {"loss": "none"}}},
    )
    deploy_model(
        root / "model", deployed / "catalog", root / "deploy", DeployParams(factory="Flat"), progress=False
    )
    return root / "deploy"


@pytest.fixture
def folders(deployed, next_deployment, tmp_path):
    served, new = tmp_path / "deploy", tmp_path / "deploy.next"
    shutil.copytree(deployed / "deploy", served)
    shutil.copytree(next_deployment, new)
    with open(deployed / "catalog" / "catalog.csv", newline="") as fh:
        catalog_ids = sorted({row["product_id"] for row in csv.DictReader(fh)})
    return served, new, catalog_ids


def _live_writes(http: httpx.Client, catalog_ids: list[str]) -> dict[str, bytes]:
    """Adds, a replace of a catalog product and two deletes (one catalog, one added); what should be found."""
    found = {}
    for n in range(3):
        pid, photo = f"live-{n}", _photo(n)
        r = http.post(
            "/items",
            data={"product_id": pid, "category": "live"},
            files=[("images", ("p.png", photo, "image/png"))],
        )
        assert r.status_code == 201, r.text
        found[pid] = photo
    replaced, photo = catalog_ids[0], _photo(50)
    r = http.post(
        "/items",
        data={"product_id": replaced, "replace": "true", "category": "replaced"},
        files=[("images", ("p.png", photo, "image/png"))],
    )
    assert r.status_code == 201 and r.json()["replaced"]
    found[replaced] = photo
    assert http.delete(f"/items/{catalog_ids[1]}").status_code == 200
    assert http.delete("/items/live-2").status_code == 200
    del found["live-2"]
    return found


def _check(http: httpx.Client, found: dict[str, bytes], deleted: list[str], *, dimension: int) -> None:
    health = http.get("/health").json()
    assert health["dimension"] == dimension
    for pid, photo in found.items():
        assert http.get(f"/items/{pid}/image").content == photo, pid
        r = http.post("/search", params={"k": 3}, files={"image": ("q.png", photo, "image/png")})
        top = r.json()["results"][0]
        assert top["product_id"] == pid and top["score"] > 0.9999, (pid, r.json())
    for pid in deleted:
        assert http.get(f"/items/{pid}").status_code == 404, pid


def test_reload_keeps_live_writes_under_the_new_model(folders, serve, tmp_path):
    served, new, catalog_ids = folders
    server = serve(served, "--token", TOKEN, log=tmp_path / "server.log")
    deleted = [catalog_ids[1], "live-2"]
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as http:
        found = _live_writes(http, catalog_ids)
        old_version = http.get("/health").json()["model_version"]

        # A broken new deployment (model.json altered: its checksum no longer matches) is refused, clearly.
        broken = tmp_path / "deploy.broken"
        shutil.copytree(new, broken)
        record = json.loads((broken / "model.json").read_text())
        record["files"]["onnx"]["sha256"] = "0" * 64
        (broken / "model.json").write_text(json.dumps(record))
        r = http.post("/admin/reload", json={"deployment": str(broken)})
        assert r.status_code == 422 and "model.onnx" in r.json()["detail"], r.text
        assert httpx.post(server.url + "/admin/reload", json={"deployment": str(new)}).status_code == 401
        r = http.post("/admin/reload", json={"deployment": str(tmp_path.parent)})
        assert r.status_code == 422 and "beside the served one" in r.json()["detail"]
        assert http.get("/health").json()["model_version"] == old_version  # the old one goes on serving
        _check(http, found, deleted, dimension=32)

        # Searches run all through the reload: none fails.
        stop, answers = threading.Event(), []

        def reader() -> None:
            with httpx.Client(base_url=server.url, timeout=60) as reads:
                while not stop.is_set():
                    r = reads.post(
                        "/search", params={"k": 2}, files={"image": ("q.png", _photo(1), "image/png")}
                    )
                    answers.append(r.status_code)

        thread = threading.Thread(target=reader)
        thread.start()
        r = http.post("/admin/reload", json={"deployment": str(new)})
        stop.set()
        thread.join()
        assert r.status_code == 200, r.text
        done = r.json()
        assert done["products_replayed"] == 3 and done["deletions_replayed"] == 2
        assert done["model_version"] != old_version and answers and set(answers) == {200}
        assert not new.exists() and (tmp_path / done["previous_deployment"]).is_dir()
        _check(http, found, deleted, dimension=24)
        photo = _photo(99)  # writes go on, into the new deployment (a restart onto it: the next test)
        r = http.post(
            "/items", data={"product_id": "after"}, files=[("images", ("p.png", photo, "image/png"))]
        )
        assert r.status_code == 201
        _check(http, {"after": photo}, [], dimension=24)


def test_kill_9_during_a_reload_serves_old_or_new_with_every_write(folders, serve, tmp_path, monkeypatch):
    served, new, catalog_ids = folders
    deleted = [catalog_ids[1], "live-2"]
    monkeypatch.setenv("VP_RETAIL_RELOAD_FAULT", "after-replay")
    server = serve(served, "--token", TOKEN, log=tmp_path / "s1.log")
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as http:
        found = _live_writes(http, catalog_ids)
        with pytest.raises(httpx.HTTPError):  # killed after the replay, before the swap
            http.post("/admin/reload", json={"deployment": str(new)})
    server.proc.wait(timeout=30)
    monkeypatch.setenv("VP_RETAIL_RELOAD_FAULT", "after-swap")
    server = serve(served, "--token", TOKEN, log=tmp_path / "s2.log")
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as http:
        _check(http, found, deleted, dimension=32)  # the old deployment, every write kept
        with pytest.raises(httpx.HTTPError):  # the replay again (idempotent), killed after the swap
            http.post("/admin/reload", json={"deployment": str(new)})
    server.proc.wait(timeout=30)
    monkeypatch.delenv("VP_RETAIL_RELOAD_FAULT")
    server = serve(served, log=tmp_path / "s3.log")
    with httpx.Client(base_url=server.url, timeout=60) as http:
        _check(http, found, deleted, dimension=24)  # the new deployment, every write replayed
