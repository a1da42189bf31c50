"""Compaction (journal folded, tombstones and unreferenced uploads dropped), the missing/corrupt
journal errors and their recovery, and a redeploy refused while a real `vp-retail serve` has the
deployment open or while its journal holds live changes, then swapped in atomically."""

from __future__ import annotations

import shutil

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.retail import test_api as _api
from visionpipes.core.errors import UserError
from visionpipes.retail.cli import main
from visionpipes.retail.index.product_index import ProductIndex
from visionpipes.retail.serve.app import create_app
from visionpipes.retail.serve.settings import APIConfig

TOKEN, png, product_image = _api.TOKEN, _api.png, _api.product_image
embedder, index_dir = _api.embedder, _api.index_dir  # the fixtures of test_api
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _cli(*argv: str) -> int:
    with pytest.raises(SystemExit) as done:
        main(list(argv))
    return int(done.value.code or 0)


def _add(client, pid: str, i: int, replace: bool = False):
    files = [("images", ("p.png", png(product_image(i, size=72)), "image/png"))]
    return client.post("/items", data={"product_id": pid, "replace": str(replace).lower()}, files=files)


def test_compaction_folds_journal_drops_tombstones_and_unused_uploads(index_dir, embedder):
    config = APIConfig(token=TOKEN, compact_every=0)
    with TestClient(create_app(index_dir, embedder, config=config), headers=AUTH) as client:
        for n in range(4):
            assert _add(client, f"c-{n}", 60 + n).status_code == 201
        assert _add(client, "c-0", 70, replace=True).status_code == 201  # c-0's first photo is now unused
        assert client.delete("/items/c-1").status_code == 200  # so is c-1's
        assert client.delete("/items/sku-2").status_code == 200  # an HNSW tombstone
        before = client.get("/health").json()
        assert before["journal_changes"] > 0 and before["tombstones"] > 0
        assert len(list((index_dir / "uploads").iterdir())) == 5
        done = client.post("/admin/compact").json()
        assert done["uploads_removed"] == 2 and done["generation"] == before["generation"] + 1
        after = client.get("/health").json()
        assert after["journal_changes"] == 0 and after["tombstones"] == 0 and after["products"] == before["products"]
        assert client.get("/items/c-0/image").content == png(product_image(70, size=72))
        r = client.post("/search", params={"k": 1}, files={"image": ("q.png", png(product_image(63, size=72)), "image/png")})
        assert r.json()["results"][0]["product_id"] == "c-3"
    assert sorted(p.name for p in index_dir.glob("journal-*")) == [f"journal-{after['generation']}.sqlite"]
    with ProductIndex.open(index_dir) as idx:  # reopens from the new generation alone
        assert "c-3" in idx and "c-1" not in idx and "sku-2" not in idx


def test_server_compacts_every_n_writes(index_dir, embedder):
    with TestClient(create_app(index_dir, embedder, config=APIConfig(token=TOKEN, compact_every=3)), headers=AUTH) as client:
        gen = client.get("/health").json()["generation"]
        for n in range(3):
            assert _add(client, f"e-{n}", 80 + n).status_code == 201
        health = client.get("/health").json()
        assert health["generation"] == gen + 1 and health["journal_changes"] == 0


def test_missing_or_corrupt_journal_is_an_error_with_a_recovery(index_dir, capsys):
    with ProductIndex.open(index_dir) as idx:
        journal = index_dir / idx.manifest.journal
    journal.unlink()
    with pytest.raises(UserError, match=r"is missing; restore it from a backup, or run `vp-retail compact .*--reset-journal"):
        ProductIndex.open(index_dir)
    assert not journal.exists()  # not silently recreated
    assert _cli("compact", "--index", str(index_dir), "--reset-journal") == 0
    with ProductIndex.open(index_dir) as idx:
        assert len(idx) == 18
        journal = index_dir / idx.manifest.journal
    journal.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(UserError, match=r"not a readable SQLite file.*Recovery: restore it"):
        ProductIndex.open(index_dir)
    assert _cli("compact", "--index", str(index_dir), "--reset-journal") == 0
    assert list(index_dir.glob("journal-*.broken-*"))  # set aside, not deleted
    with ProductIndex.open(index_dir):
        pass
    capsys.readouterr()
    with ProductIndex.open(index_dir):
        assert _cli("compact", "--index", str(index_dir)) != 0
    assert "open in another process" in capsys.readouterr().err


def test_redeploy_refused_while_served_or_with_live_changes(deployed, serve, tmp_path):
    from visionpipes.retail.training.deploy import DeployParams, deploy_model

    out = tmp_path / "deploy"
    shutil.copytree(deployed / "deploy", out)
    params = DeployParams(factory="Flat", check_queries=False)
    args = (deployed / "model", deployed / "catalog", out, params)
    server = serve(out, "--token", TOKEN)
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as http:
        photo = png(product_image(5, size=64))
        r = http.post("/items", data={"product_id": "live-1"}, files=[("images", ("p.png", photo, "image/png"))])
        assert r.status_code == 201
        with pytest.raises(UserError, match="is being served"):
            deploy_model(*args, progress=False)
        assert http.get("/items/live-1").status_code == 200  # the live index is untouched
    server.stop()
    with pytest.raises(UserError, match="holds 1 live change"):
        deploy_model(*args, progress=False)
    with ProductIndex.open(out / "index") as idx:
        assert "live-1" in idx
    deploy_model(*args, progress=False, discard_live_changes=True)
    with ProductIndex.open(out / "index") as idx:
        assert "live-1" not in idx and idx.stats()["journal_changes"] == 0
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".deploy")) == []  # no leftovers


def test_live_changes_since_the_deployment_survive_compaction(index_dir):
    """What a reload replays (`ProductIndex.live_changes`): products with uploaded photos and the
    deleted ids, kept across snapshots, and updated when a deleted id comes back."""
    import numpy as np

    from visionpipes.retail.index.records import ProductRecord

    vec = np.eye(32, dtype=np.float32)[:1]
    with ProductIndex.open(index_dir) as idx:
        assert idx.live_changes("upload:") == ([], [])  # a fresh deployment: nothing live
        idx.add(ProductRecord("u-1", image_paths=["upload:aa.png"]), vec)
        idx.add(ProductRecord("u-2", image_paths=["upload:bb.png"]), vec)
        assert idx.delete_many(["sku-2", "u-2", "no-such"]) == ["sku-2", "u-2"]
        assert idx.live_changes("upload:") == (["u-1"], ["sku-2", "u-2"])  # an unknown id is not a change
        idx.save(compact=True)
    with ProductIndex.open(index_dir) as idx:  # from the compacted snapshot alone
        assert idx.stats()["journal_changes"] == 0
        assert idx.live_changes("upload:") == (["u-1"], ["sku-2", "u-2"])
        idx.add(ProductRecord("sku-2", image_paths=["upload:cc.png"]), vec)  # back, with a new photo
        idx.delete_many(["gone-elsewhere"], remember_all=True)  # a replayed delete of an id not here
        assert idx.live_changes("upload:") == (["sku-2", "u-1"], ["gone-elsewhere", "u-2"])
        idx.save(compact=True)
    with ProductIndex.open(index_dir) as idx:
        assert idx.live_changes("upload:") == (["sku-2", "u-1"], ["gone-elsewhere", "u-2"])
