"""Retail index benchmark: recall@10 against exact search, queries/s and memory per vector for Flat, IVF
and HNSW configurations of `visionpipes.retail.index.faiss_index.VectorIndex`, on clustered (Gaussian-mixture)
L2-normalised vectors, in one run. Writes benchmarks/results/retail_index.json.

    .venv/bin/python benchmarks/retail_index.py                      # 1,000,000 x 256-d, 1,000 queries
    .venv/bin/python benchmarks/retail_index.py --n 200000 --queries 1000
    .venv/bin/python benchmarks/retail_index.py --backends milvus --milvus-sizes 100000 1000000 --dim 128
    nice -n 5 .venv/bin/python benchmarks/retail_index.py --sizes 100000 1000000 --dim 128 --queries 200 \
        --backends faiss milvus --pq-m 0 --out benchmarks/results/retail_index_milvus_1m.json

`--backends milvus` adds Milvus (`visionpipes.retail.index.milvus_index.MilvusVectorStore`, milvus-lite
in a temporary folder, HNSW) at each of `--milvus-sizes` (the first n vectors of the same data), its
recall@10 against exact FAISS search of those n vectors and its queries/s (one batched search call).
`--sizes` measures every backend at each size in one run (FAISS and Milvus rows carry `vectors`; each
size's recall and speed-up are against exact search of that size); without it the run is as before
(FAISS at `--n`, Milvus at `--milvus-sizes`). Each Milvus row records what milvus-lite really built:
its sealed segments and how many carry an index file of the requested type (milvus-lite builds one
FAISS index per sealed segment of at most 100,000 rows; rows still in its memtable are scanned exactly).

It measures the index only (no SQLite, no HTTP); every number in the JSON is measured in this run.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from faiss.contrib.evaluation import knn_intersection_measure

from visionpipes.core.io import write_json
from visionpipes.retail.index.faiss_index import SearchSettings, VectorIndex

ROOT = Path(__file__).resolve().parents[1]


def rss_bytes() -> int:
    """Resident memory of this process (Linux /proc), in bytes."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def clustered_vectors(
    n: int, dim: int, centres: np.ndarray, weights: np.ndarray, spread: float, rng: np.random.Generator
) -> np.ndarray:
    """`n` L2-normalised points of a Gaussian mixture (unequal cluster sizes), generated in chunks."""
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        labels = rng.choice(len(centres), size=m, p=weights)
        chunk = centres[labels] + spread * rng.standard_normal((m, dim), dtype=np.float32)
        faiss.normalize_L2(chunk)
        out[start : start + m] = chunk
    return out


def index_file_bytes(vi: VectorIndex) -> int:
    """Size of the index as FAISS writes it (what `ProductIndex.save` stores)."""
    with tempfile.NamedTemporaryFile(suffix=".faiss") as tmp:
        faiss.write_index(vi.cpu_index(), tmp.name)
        return os.path.getsize(tmp.name)


def timed_search(
    vi: VectorIndex, queries: np.ndarray, k: int, repeats: int, **kw: Any
) -> tuple[np.ndarray, float]:
    """Best-of-`repeats` wall time of one batched search of all queries; returns (ids, queries/s)."""
    best = float("inf")
    ids = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        _, ids = vi.search(queries, k, **kw)
        best = min(best, time.perf_counter() - t0)
    return ids, len(queries) / best


def milvus_segments(folder: Path, index_type: str) -> dict[str, Any]:
    """What milvus-lite built under `folder`: its sealed data segments (Parquet) and the vector index
    sidecar files of `index_type` beside them (`<segment>.<field>.<type>.idx`, milvus_lite.index.files)."""
    from milvus_lite.index.files import parse_index_sidecar_name

    data = sorted(p for p in folder.rglob("data_*.parquet"))
    names = [name for p in folder.rglob("*.idx") if (name := parse_index_sidecar_name(p.name))]
    kinds = sorted({name.index_type for name in names})
    indexed = [name for name in names if name.index_type == index_type.lower()]
    return {"segments": len(data), "segments_indexed": len(indexed), "index_files": kinds}


def milvus_rows(
    args: argparse.Namespace, base: np.ndarray, queries: np.ndarray, sizes: list[int] | None = None
) -> list[dict[str, Any]]:
    """Recall@k and queries/s of the Milvus store (milvus-lite) at each of `sizes` (default
    `args.milvus_sizes`)."""
    from visionpipes.retail.index.milvus_index import MilvusSpec, MilvusVectorStore, parse_factory

    rows = []
    for n in sizes or args.milvus_sizes:
        n = min(n, len(base))
        exact = faiss.IndexFlatIP(args.dim)
        exact.add(base[:n])
        _, truth = exact.search(queries, args.k)
        with tempfile.TemporaryDirectory(dir=ROOT / "benchmarks") as tmp:
            store = MilvusVectorStore(
                Path(tmp), MilvusSpec.new(args.milvus_index, args.dim), settings=SearchSettings()
            )
            t = time.perf_counter()
            store.add(base[:n], np.arange(n, dtype=np.int64), ["all"] * n)
            store.compact()  # flush: segments sealed and indexed
            add_s = time.perf_counter() - t
            kind, build = parse_factory(args.milvus_index)
            # milvus-lite builds the segments' indexes in a background thread after the flush; until a
            # segment's index file exists, its rows are searched exactly. Wait for every sealed segment.
            t = time.perf_counter()
            built = milvus_segments(Path(tmp), kind)
            while kind != "FLAT" and built["segments_indexed"] < built["segments"]:
                if time.perf_counter() - t > args.milvus_index_wait:
                    print(
                        f"milvus: indexes still missing after {args.milvus_index_wait}s: {built}", flush=True
                    )
                    break
                time.sleep(0.5)
                built = milvus_segments(Path(tmp), kind)
            built["index_wait_s"] = round(time.perf_counter() - t, 2)
            print(f"milvus {args.milvus_index} n={n}: {built}", flush=True)
            variants = [{"ef_search": e} for e in args.ef_search] if store.spec.index_type == "HNSW" else [{}]
            for params in variants:
                found, qps = timed_search(store, queries, args.k, args.repeats, **params)
                recall = knn_intersection_measure(found[:, : args.k], truth[:, : args.k])
                rows.append(
                    {
                        "config": f"milvus-lite {args.milvus_index}",
                        "backend": "milvus",
                        "vectors": n,
                        **params,
                        "device": store.device,
                        f"recall@{args.k}": round(recall, 4),
                        "queries_per_s": round(qps, 1),
                        "add_s": round(add_s, 2),
                        "index_type": kind,
                        "build_params": build,
                        **built,
                    }
                )
                print(
                    f"milvus {args.milvus_index} n={n} {params}: recall@{args.k} {recall:.4f}, {qps:,.0f} q/s, "
                    f"add+flush {add_s:.1f}s",
                    flush=True,
                )
            store.close()
    return rows


def faiss_rows(
    args: argparse.Namespace, base: np.ndarray, ids: np.ndarray, queries: np.ndarray, *, tag: bool
) -> tuple[list[dict[str, Any]], float]:
    """Recall@k (against this size's exact search, the first configuration) and queries/s of the FAISS
    configurations on `base`; returns the rows and the faster exact search's queries/s."""
    n = len(base)
    nlist = args.nlist or (1024 if n >= 500_000 else int(4 * np.sqrt(n)))
    configs: list[tuple[str, str, list[dict[str, int]]]] = [
        ("Flat", "Flat", [{}]),
        (f"IVF{nlist},Flat", f"IVF{nlist},Flat", [{"nprobe": p} for p in args.nprobe]),
    ]
    if args.pq_m:
        configs.append(
            (f"IVF{nlist},PQ{args.pq_m}", f"IVF{nlist},PQ{args.pq_m}", [{"nprobe": p} for p in args.nprobe])
        )
    if args.hnsw_m:
        configs.append(
            (f"HNSW{args.hnsw_m}", f"HNSW{args.hnsw_m}", [{"ef_search": e} for e in args.ef_search])
        )

    results: list[dict[str, Any]] = []
    truth = None
    exact_qps = 0.0
    default_threshold = best_threshold = faiss.cvar.distance_compute_blas_threshold
    for name, factory, variants in configs:
        rss0 = rss_bytes()
        vi = VectorIndex.create(factory, args.dim, use_gpu=None, settings=SearchSettings())
        t = time.perf_counter()
        vi.train(base)
        train_s = time.perf_counter() - t
        t = time.perf_counter()
        vi.add(base, ids)
        add_s = time.perf_counter() - t
        rss_delta = rss_bytes() - rss0
        file_bytes = index_file_bytes(vi)
        print(
            f"{name} n={n}: train {train_s:.1f}s, add {add_s:.1f}s, {file_bytes / n:.1f} B/vector", flush=True
        )
        if factory == "Flat":
            # Exact search two ways: FAISS's own SIMD scan (its default below `distance_compute_blas_threshold`
            # queries) and BLAS matrix products; the faster one is the baseline, and is kept for the others.
            variants = [{"blas": 0}, {"blas": 1}]
        for params in variants:
            search_kw = {k: v for k, v in params.items() if k != "blas"}
            if "blas" in params:
                faiss.cvar.distance_compute_blas_threshold = 20 if params["blas"] else default_threshold
            found, qps = timed_search(
                vi, queries, args.k, 1 if factory == "Flat" else args.repeats, **search_kw
            )
            if truth is None:  # the first configuration is exact search: the ground truth
                truth = found
            if factory == "Flat" and qps > exact_qps:
                exact_qps, best_threshold = qps, faiss.cvar.distance_compute_blas_threshold
            # recall@k against exact search: the share of the exact top-k ids found (FAISS contrib)
            recall = knn_intersection_measure(found[:, : args.k], truth[:, : args.k])
            row = {
                "config": name,
                **({"backend": "faiss", "vectors": n} if tag else {}),
                "factory": factory,
                **params,
                "device": vi.device,
                f"recall@{args.k}": round(recall, 4),
                "queries_per_s": round(qps, 1),
                "train_s": round(train_s, 2),
                "add_s": round(add_s, 2),
                "bytes_per_vector_file": round(file_bytes / n, 1),
                "bytes_per_vector_rss": round(rss_delta / n, 1),
            }
            results.append(row)
            print(
                f"  {params}: recall@{args.k} {recall:.4f}, {qps:,.0f} q/s ({qps / exact_qps:.1f}x exact)",
                flush=True,
            )
        if factory == "Flat":
            faiss.cvar.distance_compute_blas_threshold = best_threshold
        del vi
    faiss.cvar.distance_compute_blas_threshold = default_threshold
    return results, exact_qps


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=1_000_000, help="indexed vectors")
    parser.add_argument("--dim", type=int, default=256, help="embedding dimension")
    parser.add_argument("--queries", type=int, default=1000, help="query vectors (held out, same mixture)")
    parser.add_argument("--centres", type=int, default=3000, help="Gaussian-mixture centres")
    parser.add_argument(
        "--spread", type=float, default=0.06, help="per-coordinate std of a cluster around its centre"
    )
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument(
        "--nlist", type=int, default=0, help="IVF lists (default: 1024 for >= 500k vectors, else 4*sqrt(n))"
    )
    parser.add_argument("--nprobe", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--ef-search", type=int, nargs="+", default=[32, 128])
    parser.add_argument(
        "--hnsw-m", type=int, default=32, help="FAISS HNSW graph degree (0 to skip FAISS HNSW)"
    )
    parser.add_argument(
        "--pq-m", type=int, default=32, help="PQ sub-quantizers for IVF-PQ (0 to skip IVF-PQ)"
    )
    parser.add_argument(
        "--repeats", type=int, default=2, help="timed repeats of each batched search (best kept)"
    )
    parser.add_argument("--threads", type=int, default=0, help="FAISS OpenMP threads (default: all cores)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        help="measure every backend at each of these vector counts in one run (default: --n only)",
    )
    parser.add_argument("--backends", nargs="+", choices=("faiss", "milvus"), default=["faiss"])
    parser.add_argument(
        "--milvus-sizes",
        type=int,
        nargs="+",
        default=[100_000],
        help="vector counts the Milvus backend is measured at (each <= --n)",
    )
    parser.add_argument(
        "--milvus-index",
        default="HNSW",
        help="Milvus index type (HNSW, HNSW,M=32, IVF_FLAT,nlist=1024, FLAT)",
    )
    parser.add_argument(
        "--milvus-index-wait",
        type=float,
        default=3600,
        help="seconds to wait for milvus-lite's background index builds before searching",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "retail_index.json")
    args = parser.parse_args()
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    threads = faiss.omp_get_max_threads()
    if args.sizes:
        args.n = max(args.sizes)  # the data of the largest size; smaller sizes index its first n vectors
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    # Centres on the sphere; cluster sizes from a Dirichlet, so some products types are far more common.
    centres = rng.standard_normal((args.centres, args.dim), dtype=np.float32)
    faiss.normalize_L2(centres)
    weights = rng.dirichlet(np.full(args.centres, 2.0))
    base = clustered_vectors(args.n, args.dim, centres, weights, args.spread, rng)
    queries = clustered_vectors(args.queries, args.dim, centres, weights, args.spread, rng)
    ids = np.arange(args.n, dtype=np.int64)
    print(
        f"data: {args.n} x {args.dim} ({args.centres} centres) + {args.queries} queries in {time.perf_counter() - t0:.1f}s",
        flush=True,
    )

    sizes = sorted(set(args.sizes)) if args.sizes else [args.n]
    results: list[dict[str, Any]] = []
    exact_by_size: dict[int, float] = {}
    for n in sizes:
        if "faiss" in args.backends:
            rows, exact_by_size[n] = faiss_rows(args, base[:n], ids[:n], queries, tag=bool(args.sizes))
            results += rows
        if "milvus" in args.backends and args.sizes:
            results += milvus_rows(args, base[:n], queries, [n])
    if "milvus" in args.backends and not args.sizes:
        results += milvus_rows(args, base, queries)
    exact_qps = exact_by_size.get(max(sizes), 0.0)
    for r in results:  # relative to the faster exact search of the same size, measured above
        exact = exact_by_size.get(r.get("vectors", max(sizes)), 0.0) if args.sizes else exact_qps
        r["speedup_vs_exact"] = round(r["queries_per_s"] / exact, 2) if exact else None
    goal = [r for r in results if r[f"recall@{args.k}"] >= 0.95 and (r["speedup_vs_exact"] or 0) >= 10]
    report = {
        "benchmark": "retail_index",
        "command": "python benchmarks/retail_index.py "
        + f"--n {args.n} --dim {args.dim} --queries {args.queries} --centres {args.centres} --spread {args.spread}"
        + f" --backends {' '.join(args.backends)} --pq-m {args.pq_m} --hnsw-m {args.hnsw_m}"
        + (f" --sizes {' '.join(map(str, sizes))}" if args.sizes else "")
        + (
            f" --milvus-sizes {' '.join(map(str, args.milvus_sizes))}"
            if "milvus" in args.backends and not args.sizes
            else ""
        )
        + (f" --milvus-index {args.milvus_index}" if "milvus" in args.backends else ""),
        "data": {
            "vectors": args.n,
            "dim": args.dim,
            "queries": args.queries,
            "distribution": f"Gaussian mixture, {args.centres} centres on the unit sphere, Dirichlet(2) sizes, "
            f"per-coordinate std {args.spread}, L2-normalised",
            "metric": "inner product (cosine)",
        },
        "k": args.k,
        "search": f"one batched call of all {args.queries} queries, best of {args.repeats} (Flat: 1)",
        "exact_baseline_queries_per_s": round(exact_qps, 1),
        "machine": {
            "cpus": os.cpu_count(),
            "faiss_threads": threads,
            "faiss": faiss.__version__,
            "gpus": faiss.get_num_gpus(),
            "python": platform.python_version(),
        },
        "results": results,
        "goal": "a configuration with recall@10 >= 0.95 at >= 10x exact search's queries/s",
        "goal_met_by": [
            f"{r['config']} { ({k: r[k] for k in ('vectors', 'nprobe', 'ef_search') if k in r}) }"
            for r in goal
        ],
        "total_s": round(time.perf_counter() - t0, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, report)
    print(
        f"wrote {args.out} in {report['total_s']}s; goal met by: {report['goal_met_by'] or 'none'}",
        flush=True,
    )


if __name__ == "__main__":
    main()
