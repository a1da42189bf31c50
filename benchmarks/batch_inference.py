"""Batch inference benchmark (#14): the same 2,000-image synthetic catalog and 8 synthetic scans through the
local engine and through Ray Data (`--engine ray`) with 1 and 2 actors on this machine, in one run:
throughput of each, Ray's overhead at one actor, and the outputs checked equal. Writes
benchmarks/results/batch_inference.json.

    .venv/bin/python benchmarks/batch_inference.py            # ~5-10 min on a loaded 2-core machine

The retail model is the pipeline's default architecture (core resnet18 at half width, GeM, 128-d, 96 px)
with random weights exported to ONNX (throughput does not depend on the weights); the medical model is
the tests' tiny UNet trained for one epoch on the 8 scans and deployed to ONNX. Ray runs on one local
instance (`ray_cluster`, all CPUs) started once; its start-up is reported apart, and each Ray job's time
includes starting its actors (each imports torch and loads the model). Each engine gets the machine's
CPU threads (local: onnxruntime/torch default; Ray: the CPUs divided among the actors).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "batch_inference.json"


def _retail(work: Path, images: int, actors: list[int]) -> dict[str, Any]:
    import torch

    from visionpipes.retail.catalog import load_catalog
    from visionpipes.retail.embedding.batch import embed_catalog, embed_catalog_ray
    from visionpipes.retail.embedding.config import EmbeddingConfig
    from visionpipes.retail.embedding.embedders import load_embedder
    from visionpipes.retail.embedding.model_folder import save_model
    from visionpipes.retail.embedding.network import EmbeddingNet
    from visionpipes.retail.synth import SynthConfig, write_catalog
    from visionpipes.retail.training.deploy import DeployParams, deploy_model

    start = time.perf_counter()
    # 100 products x 20 views: the generator designs at most ~100 products differing in 2 attributes
    write_catalog(work / "catalog", SynthConfig(products=100, views=images // 100, queries=0, size=128, seed=1))
    torch.manual_seed(0)
    config = EmbeddingConfig(backbone="resnet18", width_multiplier=0.5, dimension=128, image_size=96, pooling="gem")
    save_model(work / "model", EmbeddingNet.from_config(config).eval(), config, {"training": {"params": {"loss": "none"}}})
    deploy_model(work / "model", work / "catalog", work / "deploy", DeployParams(factory="Flat"), progress=False)
    print(f"retail: catalog + model in {time.perf_counter() - start:.0f} s", flush=True)
    catalog = load_catalog(work / "catalog")
    model = work / "deploy"

    t0 = time.perf_counter()
    local = embed_catalog(load_embedder(model), catalog, progress=False)
    rows: dict[str, Any] = {"local": _row(len(local.labels), time.perf_counter() - t0)}
    print(f"retail local: {rows['local']}", flush=True)
    for n in actors:
        t0 = time.perf_counter()
        result = embed_catalog_ray(model, catalog, work / f"shards{n}", actors=n, shard_size=256, progress=False)
        rows[f"ray_{n}_actors"] = _row(len(result.embedded.labels), time.perf_counter() - t0)
        rows[f"ray_{n}_actors"]["max_abs_diff_vs_local"] = float(np.abs(result.embedded.vectors - local.vectors).max())
        # time inside the actors' shard calls (read, embed, write Parquet): the rest is actor start-up
        # (torch import, model load) and Ray's scheduling
        rows[f"ray_{n}_actors"]["actor_shard_seconds"] = round(sum(result.shard_seconds.values()), 2)
        print(f"retail ray {n}: {rows[f'ray_{n}_actors']}", flush=True)
    return {"images": len(local.labels), "model": config.model_dump(), "shard_size": 256, **rows}


def _medical(work: Path, scans: int, actors: list[int]) -> dict[str, Any]:
    import nibabel as nib

    from visionpipes.medical.msd.synth import SynthConfig, write_synthetic_task
    from visionpipes.medical.runtime.batch import list_scans, predict_scans_ray
    from visionpipes.medical.runtime.predictor import Predictor
    from visionpipes.medical.training.config import SegmentationConfig
    from visionpipes.medical.training.deploy import DeployConfig, deploy
    from visionpipes.medical.training.fit import train

    start = time.perf_counter()
    task = write_synthetic_task(work / "Task01_BrainTumour", SynthConfig(cases=scans, size=48, seed=3, test_cases=0))
    params = {
        "model": {"channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1},
        "data": {"roi_size": [32, 32, 32], "val_fraction": 0.25, "num_samples": 1, "batch_size": 2},
        "trainer": {"max_epochs": 1, "progress": False, "log_every_n_steps": 1},
    }
    train(task, work / "run", SegmentationConfig.from_params(params, source="benchmark"))
    deploy(work / "run" / "checkpoints" / "last.ckpt", work / "mdeploy", config=DeployConfig(formats=["onnx"]))
    print(f"medical: scans + model in {time.perf_counter() - start:.0f} s", flush=True)
    model, folder = work / "mdeploy", task / "imagesTr"
    n_scans = len(list_scans(folder))

    (work / "segs_local").mkdir()
    t0 = time.perf_counter()
    local = Predictor.load(model).predict_folder(folder, work / "segs_local")
    rows: dict[str, Any] = {"local": _row(len(local.written), time.perf_counter() - t0, unit="scans")}
    print(f"medical local: {rows['local']}", flush=True)
    for n in actors:
        out = work / f"segs{n}"
        out.mkdir()
        t0 = time.perf_counter()
        result, _ = predict_scans_ray(model, list_scans(folder), out, actors=n, progress=False)
        row = _row(len(result.written), time.perf_counter() - t0, unit="scans")
        row["label_maps_equal_local"] = all(
            np.array_equal(np.asarray(nib.load(p).dataobj), np.asarray(nib.load(work / "segs_local" / p.name).dataobj))
            for p in result.written
        )
        rows[f"ray_{n}_actors"] = row
        print(f"medical ray {n}: {row}", flush=True)
    return {"scans": n_scans, "scan_shape": [4, 48, 48, 48], **rows}


def _row(count: int, seconds: float, unit: str = "images") -> dict[str, Any]:
    return {unit: count, "seconds": round(seconds, 2), f"{unit}_per_second": round(count / seconds, 2)}


def _overheads(section: dict[str, Any], unit: str) -> None:
    local = section["local"][f"{unit}_per_second"]
    for key, row in list(section.items()):
        if key.startswith("ray_"):
            row["overhead_vs_local"] = round(local / row[f"{unit}_per_second"] - 1, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--scans", type=int, default=8)
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    from visionpipes.core.ray_batch import ray_cluster
    from visionpipes.core.settings import apply_runtime_settings

    apply_runtime_settings()
    work = Path(tempfile.mkdtemp(prefix="batch_inference_"))
    try:
        load_before = os.getloadavg()
        t0 = time.perf_counter()
        with ray_cluster() as cluster:
            start_s = time.perf_counter() - t0
            print(f"ray: local instance ({cluster.cpus:.0f} CPUs) started in {start_s:.1f} s", flush=True)
            retail = _retail(work, args.images, args.actors)
            medical = _medical(work, args.scans, args.actors)
        _overheads(retail, "images")
        _overheads(medical, "scans")
        result = {
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "load_average_before": [round(x, 2) for x in load_before],
                "load_average_after": [round(x, 2) for x in os.getloadavg()],
                "note": "2 cores shared with other engineers' jobs and a running dvc repro",
            },
            "ray": {"version": __import__("ray").__version__, "cluster_start_seconds": round(start_s, 2)},
            "retail_embed": retail,
            "medical_predict": medical,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
