"""`vp-retail embed --engine ray` on a real local Ray instance (2 CPUs): the same `.npz` as the local
engine (vectors to 1e-6), Parquet shards that Ray Data reads back, a re-run that recomputes only a
deleted shard, and a bad image listed and skipped with exit 1. The model is conftest's `deployed`
(an untrained small embedding net exported to ONNX)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray instance with 2 CPUs for the session (the CLI joins it instead of starting one)."""
    from visionpipes.core.ray_batch import ray_cluster

    with ray_cluster(num_cpus=2) as info:
        yield info


def _cli(argv: list[str], capsys) -> tuple[int, str, str]:
    from visionpipes.retail import cli

    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    out, err = capsys.readouterr()
    return info.value.code, out, err


def _embed(model: Path, catalog: Path, out: Path, capsys, *ray: str) -> tuple[int, str, str]:
    argv = ["embed", "--model", str(model), "--catalog", str(catalog), "--out", str(out), "--no-progress"]
    if ray:
        argv += ["--engine", "ray", "--shard-size", "8", "--batch-size", "8", *ray]
    return _cli(argv, capsys)


def test_ray_embeddings_equal_the_local_engine_and_resume_by_shard(
    ray_local, deployed: Path, tmp_path: Path, capsys
) -> None:
    model, catalog = deployed / "deploy", deployed / "catalog"
    assert _embed(model, catalog, tmp_path / "local.npz", capsys)[0] == 0
    code, out, err = _embed(model, catalog, tmp_path / "ray.npz", capsys, "--address", ray_local.address, "--actors", "2")
    assert code == 0, err
    local, ray_npz = np.load(tmp_path / "local.npz"), np.load(tmp_path / "ray.npz")
    assert len(local["vectors"]) == 24
    np.testing.assert_allclose(ray_npz["vectors"], local["vectors"], atol=1e-6, rtol=0)
    for key in ("product_ids", "images", "model_version"):
        assert (ray_npz[key] == local[key]).all()

    shards = sorted((tmp_path / "ray.shards").iterdir())
    assert [p.name for p in shards] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    import ray

    table = ray.data.read_parquet(str(tmp_path / "ray.shards")).to_pandas()
    assert len(table) == 24 and set(table.columns) >= {"product_id", "image", "row", "vector"}

    stamps = {p.name: p.stat().st_mtime_ns for p in shards}
    shards[1].unlink()
    code, out, err = _embed(model, catalog, tmp_path / "ray.npz", capsys, "--address", ray_local.address)
    assert code == 0 and '"shards_computed": 1' in out, out + err
    assert shards[0].stat().st_mtime_ns == stamps[shards[0].name]  # finished shards are not recomputed
    assert shards[2].stat().st_mtime_ns == stamps[shards[2].name]
    np.testing.assert_allclose(np.load(tmp_path / "ray.npz")["vectors"], local["vectors"], atol=1e-6, rtol=0)

    code, out, _ = _embed(model, catalog, tmp_path / "ray.npz", capsys, "--address", ray_local.address)
    assert code == 0 and '"shards_computed": 0' in out  # nothing left to do


def test_a_bad_image_is_listed_and_skipped_with_exit_1(ray_local, deployed: Path, tmp_path: Path, capsys) -> None:
    catalog = Path(shutil.copytree(deployed / "catalog", tmp_path / "catalog"))
    bad = sorted((catalog / "images").rglob("*.*"))[3]
    bad.write_bytes(b"not an image")
    model = deployed / "deploy"
    assert _embed(model, catalog, tmp_path / "local.npz", capsys)[0] == 0
    code, _out, err = _embed(model, catalog, tmp_path / "ray.npz", capsys, "--address", ray_local.address)
    assert code == 1
    skipped = [line for line in err.splitlines() if line.startswith("skipped ")]
    assert len(skipped) == 1 and bad.name in skipped[0]
    local, ray_npz = np.load(tmp_path / "local.npz"), np.load(tmp_path / "ray.npz")
    assert len(ray_npz["vectors"]) == 23 and (ray_npz["images"] == local["images"]).all()
    np.testing.assert_allclose(ray_npz["vectors"], local["vectors"], atol=1e-6, rtol=0)
    code, _, err = _embed(model, catalog, tmp_path / "ray.npz", capsys, "--address", ray_local.address)
    # the skip survives a resume (it is recorded in its shard)
    assert code == 1 and bad.name in err


def test_engine_ray_without_ray_is_one_error(monkeypatch, deployed: Path, tmp_path: Path, capsys) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)
    code, _out, err = _embed(deployed / "deploy", deployed / "catalog", tmp_path / "e.npz", capsys, "--address", "x")
    assert code == 2 and "install visionpipes-core[ray]" in err and "Traceback" not in err
    assert not (tmp_path / "e.npz").exists()
