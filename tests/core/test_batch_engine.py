"""`visionpipes.core.ray_batch` on a real local Ray instance (2 CPUs, started once for this file): an actor
pool loads its worker once per actor, every shard is processed once, a failing shard is reported without
failing the job, and `--engine ray` without Ray installed is one clear error."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from visionpipes.core.errors import UserError
from visionpipes.core.ray_batch import (
    MISSING_RAY,
    content_key,
    ray_cluster,
    recorded_runs,
    require_ray,
    run_shards,
    run_shards_local,
)


class CountingWorker:
    """Writes `<out>/<id>.txt` holding its actor's pid and construction count; shard 3 raises."""

    def __init__(self, *, use_gpu: bool, out: str) -> None:
        self.out = Path(out)
        self.loads = len(list(self.out.glob(f"load-{os.getpid()}-*"))) + 1
        (self.out / f"load-{os.getpid()}-{self.loads}").touch()
        self.use_gpu = use_gpu

    def process(self, shard: dict) -> dict:
        if shard["id"] == 3:
            raise ValueError("shard 3 is unreadable")
        (self.out / f"{shard['id']}.txt").write_text(str(shard["value"] * 2))
        return {
            "doubled": shard["value"] * 2,
            "gpu": self.use_gpu,
            "threads": os.environ.get("VISIONPIPES_THREADS"),
            "nice": os.nice(0),
        }


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray instance with 2 CPUs for the session (started and stopped by `ray_cluster`)."""
    with ray_cluster(num_cpus=2) as info:
        yield info


@pytest.mark.slow
def test_actor_pool_runs_every_shard_once_and_reports_a_failing_one(ray_local, tmp_path: Path) -> None:
    assert ray_local.cpus == 2 and ray_local.gpus == 0
    shards = [{"id": i, "value": i} for i in range(8)]
    seen = []
    with recorded_runs() as runs:
        results = run_shards(
            shards, CountingWorker, worker_kwargs={"out": str(tmp_path)}, actors=2, on_result=seen.append
        )
    assert [r["id"] for r in results] == list(range(8)) and len(seen) == 8
    assert all(r["threads"] == "1" for r in results if r["id"] != 3)  # each actor's CPU share, not all cores
    # the actors run at the driver's priority, not at Ray's default of +15 (a sliver of a shared CPU)
    assert all(r["nice"] == os.nice(0) for r in results if r["id"] != 3)
    (run,) = runs
    assert run["engine"] == "ray" and run["actors"] == 2 and run["summaries"] == results
    assert all(run["called"] <= r["start"] <= r["end"] <= run["returned"] for r in results)
    assert results[3]["error"] == "ValueError: shard 3 is unreadable"
    assert all(r["doubled"] == 2 * r["id"] and r["gpu"] is False for r in results if r["id"] != 3)
    assert sorted(p.name for p in tmp_path.glob("?.txt")) == [f"{i}.txt" for i in range(8) if i != 3]
    loads = sorted(p.name for p in tmp_path.glob("load-*"))
    pids = {r["pid"] for r in results}
    assert len(loads) == len(pids) <= 2  # one model load per actor, never one per shard
    assert all(name.endswith("-1") for name in loads)


def test_the_local_engine_runs_the_same_worker_with_the_same_summaries(tmp_path: Path) -> None:
    shards = [{"id": i, "value": i} for i in (2, 3, 0, 1)]
    seen = []
    with recorded_runs() as runs:
        results = run_shards_local(
            shards, CountingWorker, worker_kwargs={"out": str(tmp_path)}, on_result=seen.append
        )
    assert [r["id"] for r in seen] == [2, 3, 0, 1] and [r["id"] for r in results] == [0, 1, 2, 3]
    assert results[3]["error"] == "ValueError: shard 3 is unreadable"
    assert [r["doubled"] for r in results if r["id"] != 3] == [0, 2, 4]
    assert {r["pid"] for r in results} == {os.getpid()} and all(r["cpu_seconds"] >= 0 for r in results)
    assert len(list(tmp_path.glob("load-*"))) == 1  # the worker is built once
    assert [run["engine"] for run in runs] == ["local"]
    worker = CountingWorker(use_gpu=False, out=str(tmp_path))  # or an already built one
    assert run_shards_local([{"id": 0, "value": 5}], worker)[0]["doubled"] == 10


def test_joining_a_running_cluster_leaves_it_running(ray_local) -> None:
    import ray

    with ray_cluster(ray_local.address) as info:
        assert info.started is False and info.address == ray_local.address
    assert ray.is_initialized()


def test_content_key_follows_the_inputs() -> None:
    assert content_key("v1", ["a", 1]) == content_key("v1", ["a", 1])
    assert content_key("v1", ["a", 1]) != content_key("v2", ["a", 1])
    assert content_key("v1", ["a", 1]) != content_key("v1", ["a", 2])


def test_without_ray_installed_the_error_names_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets where it is not installed
    with pytest.raises(UserError, match=r"install visionpipes-core\[ray\]") as info:
        require_ray()
    assert str(info.value) == MISSING_RAY
    with pytest.raises(UserError, match=r"install visionpipes-core\[ray\]"), ray_cluster():
        pass
