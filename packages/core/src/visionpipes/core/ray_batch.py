"""Sharded, resumable batch inference on Ray Data, shared by the domains' `--engine ray` verbs: join or
start a Ray cluster (`ray_cluster`), and run a pool of actors, each loading its model once, over shard
descriptions (`run_shards`); every actor writes its shard's output itself, so a finished shard survives
a crash and a re-run skips it (the domain decides what "finished" means: see `content_key`).

Ray is the optional extra `visionpipes-core[ray]`, imported only inside these functions. This module is
runtime: it never imports training code, Lightning, DVCLive, Optuna, nor any domain.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from visionpipes.core.errors import UserError

#: The one sentence `--engine ray` answers with when Ray Data is not installed.
MISSING_RAY = "--engine ray needs Ray Data, which is not installed: install visionpipes-core[ray] (pip install 'visionpipes-core[ray]')."


def require_ray() -> Any:
    """The `ray` module with `ray.data` imported.

    Raises:
        UserError: "install visionpipes-core[ray]" when Ray Data is not installed.
    """
    try:
        import ray
        import ray.data  # the extra brings pyarrow and pandas with it
    except ImportError:
        raise UserError(MISSING_RAY) from None
    return ray


@dataclass(frozen=True)
class ClusterInfo:
    """The cluster a batch job runs on.

    Attributes:
        address: the GCS address of the cluster.
        started: whether `ray_cluster` started it (and so stops it at the end).
        cpus: CPUs the cluster has in all.
        gpus: GPUs the cluster has in all.
    """

    address: str
    started: bool
    cpus: float
    gpus: float


def _quiet_ray_data(ray: Any) -> None:
    """No progress bars or per-operator logs from Ray Data: the verbs print their own progress."""
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.enable_operator_progress_bars = False
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


#: The niceness of a local cluster's worker processes (the actors). Ray's default is +15 (its control plane
#: keeps priority on a saturated node); on a machine shared with other programs that leaves the actors a
#: sliver of the CPU (at +15, CFS weighs a process ~28x below one at 0), which was most of Ray's "overhead"
#: against the local engine, which runs at the caller's niceness. `RAY_worker_niceness` in the environment
#: still wins; a joined cluster keeps its own setting.
LOCAL_WORKER_NICENESS = 0


@contextlib.contextmanager
def _worker_niceness(value: int) -> Iterator[None]:
    """`RAY_worker_niceness` (Ray's config `worker_niceness`, read by the raylet `ray.init` starts) set to
    `value` unless the environment sets it already; restored afterwards."""
    key = "RAY_worker_niceness"
    before = os.environ.get(key)
    if before is None:
        os.environ[key] = str(value)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)


@contextlib.contextmanager
def ray_cluster(address: str | None = None, *, num_cpus: int | None = None) -> Iterator[ClusterInfo]:
    """Connect to a Ray cluster for the duration of the block.

    With `address` (`ray://...`, `HOST:PORT` or `auto`) the driver joins that cluster; without it a local
    one is started (`num_cpus` CPUs, no dashboard, actors at niceness `LOCAL_WORKER_NICENESS`) and shut
    down at the end. A driver already connected
    (a test session's fixture, a notebook) is reused and left connected.

    Raises:
        UserError: if Ray is not installed, or the cluster at `address` cannot be reached.
    """
    ray = require_ray()
    _quiet_ray_data(ray)
    if ray.is_initialized():
        yield _info(ray, started=False)
        return
    try:
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            with _worker_niceness(LOCAL_WORKER_NICENESS):
                ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise UserError(
            f"cannot connect to the Ray cluster at {address or 'a new local instance'}: {err}"
        ) from None
    try:
        yield _info(ray, started=not address)
    finally:
        ray.shutdown()  # stops a local cluster; only disconnects from a joined one


def _info(ray: Any, *, started: bool) -> ClusterInfo:
    resources = ray.cluster_resources()
    return ClusterInfo(
        address=str(ray.get_runtime_context().gcs_address),
        started=started,
        cpus=float(resources.get("CPU", 0.0)),
        gpus=float(resources.get("GPU", 0.0)),
    )


class ShardWorker(Protocol):
    """What `run_shards` runs in each actor: built once per actor (the model loads here), then called
    once per shard description; it writes the shard's output and returns a JSON-able summary."""

    def __init__(self, *, use_gpu: bool, **kwargs: Any) -> None: ...

    def process(self, shard: Mapping[str, Any]) -> dict[str, Any]: ...


class ShardActor:
    """The Ray Data callable class around a `ShardWorker`: one row = one shard description (JSON).

    An exception while processing a shard is caught and returned as the shard's `error`: one bad shard
    never fails the job, and its output is not written, so a re-run retries it.
    """

    def __init__(
        self, worker: type, kwargs: Mapping[str, Any], use_gpu: bool, threads: int | None = None
    ) -> None:
        if threads:  # the actor's CPU share is its default thread count (torch, onnxruntime, OpenMP)
            from visionpipes.core.settings import apply_runtime_settings

            os.environ["VISIONPIPES_THREADS"] = str(threads)
            apply_runtime_settings(threads)
        self.worker = worker(use_gpu=use_gpu, **kwargs)

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        import numpy as np

        out = [json.dumps(process_shard(self.worker, json.loads(text))) for text in batch["shard"]]
        return {"result": np.array(out, dtype=object)}


def process_shard(worker: Any, shard: Mapping[str, Any]) -> dict[str, Any]:
    """One shard through a constructed worker: its summary plus `id`, `seconds` (wall), `cpu_seconds`
    (this process's CPU time, all threads), `start`/`end` (epoch seconds: where the job's time went) and
    `pid`; an exception becomes the summary's `error` (`"<Type>: <message>"`), so one bad shard never
    fails the job."""
    start, wall, cpu = time.time(), time.perf_counter(), time.process_time()
    try:
        result = dict(worker.process(shard))
    except Exception as err:  # a shard the worker could not finish is reported, not fatal
        result = {"error": f"{type(err).__name__}: {err}"}
    result.update(
        id=shard["id"],
        seconds=time.perf_counter() - wall,
        cpu_seconds=time.process_time() - cpu,
        start=start,
        end=time.time(),
        pid=os.getpid(),
    )
    return result


#: The open `recorded_runs` blocks (innermost last).
_RECORDERS: list[list[dict[str, Any]]] = []


@contextlib.contextmanager
def recorded_runs() -> Iterator[list[dict[str, Any]]]:
    """Record every `run_shards` / `run_shards_local` call made inside the block (by any verb): a list
    that receives, per call, `{"engine", "actors", "called", "returned", "summaries"}` (epoch seconds), so
    a benchmark can split a job's time into start-up (actors starting: process, imports, model load) and
    shard work without changing the verbs."""
    runs: list[dict[str, Any]] = []
    _RECORDERS.append(runs)
    try:
        yield runs
    finally:
        _RECORDERS.remove(runs)


def _record(engine: str, actors: int, called: float, summaries: list[dict[str, Any]], **extra: Any) -> None:
    for runs in _RECORDERS:
        runs.append(
            {
                "engine": engine,
                "actors": actors,
                "called": called,
                "returned": time.time(),
                "summaries": summaries,
                **extra,
            }
        )


def cpus_per_actor(cluster: ClusterInfo, actors: int) -> int:
    """Each actor's whole share of the cluster's CPUs (at least 1): the CPUs it reserves and the intra-op
    threads its model session should use, so `actors` actors never oversubscribe the cores (with one
    actor on one machine, the same thread count as the local engine)."""
    return max(1, int(cluster.cpus // max(actors, 1)))


def run_shards_local(
    shards: Sequence[Mapping[str, Any]],
    worker: Any,
    *,
    worker_kwargs: Mapping[str, Any] | None = None,
    on_result: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """The local engine of a `--engine` verb: the same shards through the same worker as `run_shards`,
    one after the other in this process (no Ray), with the same summaries.

    Args:
        shards: as for `run_shards`.
        worker: a `ShardWorker` class (constructed here with `use_gpu=False` and `worker_kwargs`) or an
            already constructed worker.
        on_result: called with each shard's summary as it is done.

    Returns:
        The summaries, sorted by `id`.
    """
    called = time.time()
    if isinstance(worker, type):
        worker = worker(use_gpu=False, **dict(worker_kwargs or {}))
    results = []
    for shard in shards:
        result = process_shard(worker, json.loads(json.dumps(dict(shard))))  # what an actor receives
        results.append(result)
        if on_result:
            on_result(result)
    results.sort(key=lambda r: r["id"])
    _record("local", 1, called, results)
    return results


def run_shards(
    shards: Sequence[Mapping[str, Any]],
    worker: type,
    *,
    worker_kwargs: Mapping[str, Any] | None = None,
    actors: int = 1,
    cpus_per_actor: float = 1.0,
    gpus_per_actor: float | None = None,
    on_result: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Process every shard description with a fixed pool of `actors` Ray actors running `worker`.

    `Dataset.map_batches` with a callable class and `compute=ActorPoolStrategy(size=actors)`, one shard
    per block and per batch, so any idle actor takes the next shard. Call inside `ray_cluster`.

    Args:
        shards: JSON-able mappings, each with a unique `id`; the worker's `process` receives one.
        worker: a `ShardWorker` class, importable on the cluster's nodes (it is pickled by reference).
        worker_kwargs: keyword arguments of its constructor (JSON-able or picklable).
        actors: actors in the pool.
        cpus_per_actor: CPUs reserved per actor; also the actor's default thread count (`VISIONPIPES_THREADS`,
            `OMP_NUM_THREADS`, torch), which a worker's models use unless given their own.
        gpus_per_actor: GPUs per actor; None: 1 where the cluster has GPUs, else 0 (CPU actors).
        on_result: called with each shard's summary as it arrives (progress).

    Returns:
        The summaries (the worker's dict plus `id`, `seconds`, `pid`, and `error` for a failed shard),
        sorted by `id`.

    Raises:
        UserError: if Ray is not installed or `actors` < 1.
    """
    ray = require_ray()
    if actors < 1:
        raise UserError(f"--actors must be at least 1, not {actors}.")
    if not shards:
        return []
    if gpus_per_actor is None:
        gpus_per_actor = 1.0 if ray.cluster_resources().get("GPU", 0.0) >= 1 else 0.0
    called = time.time()
    rows = [{"shard": json.dumps(dict(shard))} for shard in shards]
    dataset = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
        ShardActor,
        fn_constructor_kwargs={
            "worker": worker,
            "kwargs": dict(worker_kwargs or {}),
            "use_gpu": gpus_per_actor > 0,
            "threads": max(1, int(cpus_per_actor)),
        },
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=cpus_per_actor,
        num_gpus=gpus_per_actor or None,
    )
    results = []
    for row in dataset.iter_rows():
        result = json.loads(row["result"])
        results.append(result)
        if on_result:
            on_result(result)
    results.sort(key=lambda r: r["id"])
    _record("ray", actors, called, results, cpus_per_actor=cpus_per_actor)
    return results


def content_key(*parts: Any) -> str:
    """A sha256 over JSON-able parts (a shard's inputs, the model version): a shard's output carries
    the key it was computed for, and a re-run recomputes it when the key differs."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def add_engine_options(parser: argparse.ArgumentParser) -> None:
    """The options every `--engine ray` verb shares: `--engine`, `--address`, `--actors`,
    `--num-cpus`, `--gpus-per-actor`."""
    group = parser.add_argument_group("batch engine (Ray Data: install visionpipes-core[ray])")
    group.add_argument(
        "--engine", choices=["local", "ray"], default="local",
        help="local: this process (default); ray: an actor pool on a Ray cluster, resumable shard by shard",
    )  # fmt: skip
    group.add_argument(
        "--address", help="Ray: join this cluster (HOST:PORT, ray://..., auto); default: start a local one"
    )
    group.add_argument(
        "--actors",
        type=int,
        default=1,
        help="Ray: actors in the pool, each loading the model once (default 1)",
    )
    group.add_argument(
        "--num-cpus", type=int, help="Ray: CPUs of the local cluster started without --address (default: all)"
    )
    group.add_argument(
        "--gpus-per-actor", type=float,
        help="Ray: GPUs per actor (default: 1 where the cluster has GPUs, else CPU actors)",
    )  # fmt: skip
