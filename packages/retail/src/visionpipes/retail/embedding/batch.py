"""Batch embedding of catalogs and query sets with progress: unreadable images are reported with
their row and left out, the rest embedded in batches by any embedder, in this process or (`--engine
ray`) on a Ray Data actor pool writing resumable Parquet shards (`embed_catalog_ray`).

It neither trains, scores nor indexes (see `training.evaluate`, `index`).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from visionpipes.core.errors import UserError
from visionpipes.retail.catalog import Catalog, CatalogProblem, QuerySet
from visionpipes.retail.embedding.embedders import Embedder
from visionpipes.retail.embedding.preprocess import read_view


@dataclass
class EmbeddedImages:
    """Embeddings of a list of images, the images that could not be read left out."""

    vectors: np.ndarray
    labels: list[str]
    relpaths: list[str]
    problems: list[CatalogProblem] = field(default_factory=list)
    seconds: float = 0.0
    rows: list[int] = field(default_factory=list)


def embed_images(
    embedder: Embedder,
    items: Sequence[tuple[Path, str, str, int]],
    *,
    source: str,
    batch_size: int = 64,
    progress: bool = True,
    what: str = "images",
) -> EmbeddedImages:
    """Embed (path, label, relpath, row) items in batches, printing progress to stderr; unreadable
    images are reported with their row and left out."""
    from tqdm import tqdm

    size = int(getattr(embedder, "image_size", 0)) or None
    vectors, labels, relpaths, problems, rows = [], [], [], [], []
    start = time.perf_counter()
    bar = tqdm(total=len(items), desc=f"embedding {what}", unit="img", disable=not progress, file=sys.stderr)
    for lo in range(0, len(items), batch_size):
        chunk = items[lo : lo + batch_size]
        images = []
        for path, label, rel, row in chunk:
            try:
                images.append(read_view(path, size))
            except UserError as err:
                problems.append(CatalogProblem(source, row, str(err)))
                continue
            labels.append(label)
            relpaths.append(rel)
            rows.append(row)
        if images:
            vectors.append(np.asarray(embedder(images), dtype=np.float32))
        bar.update(len(chunk))
    bar.close()
    dim = vectors[0].shape[1] if vectors else 0
    return EmbeddedImages(
        np.concatenate(vectors) if vectors else np.zeros((0, dim), np.float32),
        labels,
        relpaths,
        problems,
        time.perf_counter() - start,
        rows,
    )


def embed_catalog(embedder: Embedder, catalog: Catalog, *, progress: bool = True, batch_size: int = 64) -> EmbeddedImages:
    """Embed every view of a catalog (see `embed_images`)."""
    items = [(v.path, pid, v.relpath, v.row) for pid, v in catalog.views()]
    return embed_images(
        embedder, items, source=catalog.source, batch_size=batch_size, progress=progress, what="catalog"
    )


def embed_queries(embedder: Embedder, queries: QuerySet, *, progress: bool = True) -> EmbeddedImages:
    """Embed every query photo (see `embed_images`)."""
    items = [(q.path, q.product_id, q.relpath, q.row) for q in queries.queries]
    return embed_images(embedder, items, source=str(queries.root / "queries.csv"), progress=progress, what="queries")


# -- the Ray engine: Parquet shards, one actor pool, resumable -------------------------------------
#: A shard's Parquet file: columns product_id, image (catalog-relative path), row (CSV line), vector
#: (fixed-size list of float32); schema metadata: the shard's content key, the model version and the
#: rows left out (JSON). The `.npz` of the local engine is these shards concatenated in shard order.
SHARD_NAME = "part-{:05d}.parquet"
_META_KEY, _META_VERSION, _META_PROBLEMS = b"visionpipes.key", b"visionpipes.model_version", b"visionpipes.problems"


def write_shard(path: Path, embedded: EmbeddedImages, *, key: str, model_version: str) -> Path:
    """Write one shard's embeddings as Parquet, atomically (see `SHARD_NAME` for the layout)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from visionpipes.core.io import atomic_path

    vectors = np.ascontiguousarray(embedded.vectors, dtype=np.float32)
    column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), vectors.shape[1])
    table = pa.table(
        {
            "product_id": pa.array(embedded.labels, pa.string()),
            "image": pa.array(embedded.relpaths, pa.string()),
            "row": pa.array(embedded.rows, pa.int64()),
            "vector": column,
        }
    )
    problems = json.dumps([[p.source, p.row, p.message] for p in embedded.problems])
    table = table.replace_schema_metadata(
        {_META_KEY: key.encode(), _META_VERSION: model_version.encode(), _META_PROBLEMS: problems.encode()}
    )
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path


def shard_key(path: Path) -> str | None:
    """The content key a shard file was written for (None if it is missing or unreadable)."""
    import pyarrow.parquet as pq

    try:
        metadata = pq.read_schema(path).metadata or {}
    except (OSError, ValueError):
        return None
    return metadata.get(_META_KEY, b"").decode() or None


def read_shard(path: Path) -> EmbeddedImages:
    """The embeddings and left-out rows of one shard file."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    metadata = table.schema.metadata or {}
    dim = table.schema.field("vector").type.list_size
    flat = table.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    problems = [CatalogProblem(s, int(r), m) for s, r, m in json.loads(metadata.get(_META_PROBLEMS, b"[]"))]
    return EmbeddedImages(
        np.asarray(flat, dtype=np.float32).reshape(-1, dim),
        table.column("product_id").to_pylist(),
        table.column("image").to_pylist(),
        problems,
        rows=table.column("row").to_pylist(),
    )


class RayEmbedWorker:
    """The `core.ray_batch.ShardWorker` of `vp-retail embed --engine ray`: loads the embedder once per
    actor, then embeds a shard of catalog views exactly as `embed_images` does and writes its Parquet."""

    def __init__(self, *, use_gpu: bool, model: str, threads: int, batch_size: int) -> None:
        from visionpipes.retail.embedding.embedders import load_embedder

        self.embedder = load_embedder(model, threads=threads)  # onnxruntime takes CUDA first where it has it
        self.batch_size = batch_size
        self.use_gpu = use_gpu

    def process(self, shard: dict) -> dict:
        """Embed and write one shard (`id`, `key`, `out`, `source`, `items`: [path, label, relpath, row])."""
        items = [(Path(p), label, rel, int(row)) for p, label, rel, row in shard["items"]]
        embedded = embed_images(self.embedder, items, source=shard["source"], batch_size=self.batch_size, progress=False)
        if not embedded.labels:
            embedded.vectors = np.zeros((0, int(self.embedder.dimension)), np.float32)
        version = str(getattr(self.embedder, "model_version", ""))
        write_shard(Path(shard["out"]), embedded, key=shard["key"], model_version=version)
        return {"images": len(embedded.labels), "skipped": len(embedded.problems)}


@dataclass
class ShardedEmbedding:
    """What `embed_catalog_ray` did: the catalog's embeddings assembled from the shards (in catalog order,
    as `embed_catalog` returns them), the shards computed now and those already finished, and the shards
    that failed (`(shard id, reason)`; not written, retried by a re-run), and each computed shard's
    seconds inside its actor (reading, embedding, writing: the job's time less Ray's own)."""

    embedded: EmbeddedImages
    model_version: str
    shards: list[Path]
    computed: list[int]
    failed: list[tuple[int, str]]
    shard_seconds: dict[int, float] = field(default_factory=dict)


def embed_catalog_ray(
    model: str | Path,
    catalog: Catalog,
    shards_dir: Path,
    *,
    address: str | None = None,
    actors: int = 1,
    num_cpus: int | None = None,
    gpus_per_actor: float | None = None,
    shard_size: int = 1024,
    batch_size: int = 64,
    progress: bool = True,
) -> ShardedEmbedding:
    """Embed every view of `catalog` on Ray Data into Parquet shards under `shards_dir`, resumably.

    The views are cut, in catalog order, into shards of `shard_size`; a shard whose file exists with the
    same content key (its views and the model version) is skipped, the others go to an actor pool
    (`core.ray_batch.run_shards`). With `shard_size` a multiple of `batch_size` every model run sees the
    same images as the local engine's, so the vectors are the same numbers.

    Raises:
        UserError: if Ray is not installed, the model cannot be loaded, or the cluster cannot be reached.
    """
    from visionpipes.core.ray_batch import content_key, ray_cluster, require_ray, run_shards
    from visionpipes.retail.embedding.embedders import load_embedder

    require_ray()
    if shard_size < 1:
        raise UserError(f"--shard-size must be at least 1, not {shard_size}.")
    version = str(getattr(load_embedder(model, threads=1), "model_version", ""))  # fails here, not in an actor
    shards_dir.mkdir(parents=True, exist_ok=True)
    items = [(str(v.path), pid, v.relpath, v.row) for pid, v in catalog.views()]
    plan, todo = [], []
    for i, lo in enumerate(range(0, len(items), shard_size)):
        chunk = items[lo : lo + shard_size]
        shard = {"id": i, "out": str(shards_dir / SHARD_NAME.format(i)), "source": catalog.source, "items": chunk}
        shard["key"] = content_key(version, catalog.source, chunk)
        plan.append(shard)
        if shard_key(Path(shard["out"])) != shard["key"]:
            todo.append(shard)
    start = time.perf_counter()
    done = 0

    def report(result: dict) -> None:
        nonlocal done
        done += 1
        if progress:
            what = result.get("error") or f"{result.get('images', 0)} images"
            print(f"embed: shard {result['id']} ({done}/{len(todo)} to compute): {what}", file=sys.stderr)

    results = []
    if todo:
        with ray_cluster(address, num_cpus=num_cpus) as cluster:
            threads = max(1, int(cluster.cpus // max(actors, 1)))  # each actor's share of the CPUs
            results = run_shards(
                todo,
                RayEmbedWorker,
                worker_kwargs={"model": str(model), "threads": threads, "batch_size": batch_size},
                actors=actors,
                cpus_per_actor=threads,
                gpus_per_actor=gpus_per_actor,
                on_result=report,
            )
    failed = [(r["id"], r["error"]) for r in results if "error" in r]
    bad = {i for i, _ in failed}
    parts = [read_shard(Path(s["out"])) for s in plan if s["id"] not in bad]
    dim = next((p.vectors.shape[1] for p in parts if p.vectors.size), 0)
    embedded = EmbeddedImages(
        np.concatenate([p.vectors for p in parts]) if parts else np.zeros((0, dim), np.float32),
        [label for p in parts for label in p.labels],
        [rel for p in parts for rel in p.relpaths],
        [problem for p in parts for problem in p.problems],
        time.perf_counter() - start,
        [row for p in parts for row in p.rows],
    )
    computed = sorted(r["id"] for r in results if "error" not in r)
    seconds = {r["id"]: float(r["seconds"]) for r in results}
    return ShardedEmbedding(embedded, version, [Path(s["out"]) for s in plan], computed, failed, seconds)
