"""`vp-retail`: the command line of the retail package, one verb per intention
(synth, train, evaluate, embed, index, deploy; serve, compact and query are in `serve.command`).

Each verb is a thin wrapper over a library function. Options default to the `params.yaml` section of
the verb when `--params FILE` is given (that is how the DVC stages call them); an option given on
the command line wins. Heavy modules (torch, faiss, fastapi) are imported only by the verbs that
need them, so `--help` is fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from visionpipes.core.cli_common import params_section, run_main
from visionpipes.core.errors import UserError
from visionpipes.core.ray_batch import add_engine_options
from visionpipes.retail.serve.command import add_serving_verbs


def _merge(config_cls: type, section: Mapping[str, Any], overrides: Mapping[str, Any], *, source: str) -> Any:
    """`config_cls` (a `ConfigModel`) from `section` with the non-None `overrides` on top.

    Raises:
        UserError: naming `source` and the key, on an unknown key (with the closest valid one) or a bad value.
    """
    from visionpipes.core.config import parse_config

    values = {**section, **{k: v for k, v in overrides.items() if v is not None}}
    return parse_config(config_cls, values, source=source)


def _print(result: Mapping[str, Any]) -> None:
    print(json.dumps(result, indent=2, default=str))


# -- verbs ---------------------------------------------------------------------------------------
def _synth_section(args: argparse.Namespace) -> dict[str, Any]:
    data = params_section(args.params, "data", required=True)
    synth = data.get("synth") or {}
    if not isinstance(synth, dict):
        raise UserError(f"{args.params}: data.synth must be a mapping.")
    return synth


def _cmd_synth(args: argparse.Namespace) -> None:
    from visionpipes.retail.synth import SynthConfig, replace_catalog

    config = _merge(
        SynthConfig,
        _synth_section(args),
        {"products": args.products, "views": args.views, "queries": args.queries, "size": args.size, "seed": args.seed},
        source=f"{args.params}:data.synth",
    )
    summary = replace_catalog(args.out, config, overwrite=args.overwrite)
    _print({k: v for k, v in summary.items() if k != "config"} | {"out": str(args.out)})


def _cmd_data(args: argparse.Namespace) -> None:
    from visionpipes.retail.catalog import prepare_catalog
    from visionpipes.retail.synth import SynthConfig, write_catalog

    data = params_section(args.params, "data", required=True)
    source = args.source or data.get("source")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    if source:
        summary = prepare_catalog(source, args.out, queries=args.queries or data.get("queries"))
        for line in summary["skipped_rows"]:
            print(f"skipped {line}", file=sys.stderr)
        _print({k: v for k, v in summary.items() if k != "skipped_rows"} | {"skipped_rows": len(summary["skipped_rows"])})
        return
    config = _merge(SynthConfig, _synth_section(args), {}, source=f"{args.params}:data.synth")
    summary = write_catalog(args.out, config)
    _print({k: v for k, v in summary.items() if k != "config"} | {"out": str(args.out), "source": "synthetic"})


def _cmd_plan(args: argparse.Namespace) -> None:
    from visionpipes.core.plan import plan_verb
    from visionpipes.retail.planning import make_plan

    plan_verb(
        args.catalog,
        args.out,
        make_plan,
        params=args.params,
        device=args.device,
        memory_gb=args.memory_gb,
        cpu_cores=args.cpu_cores,
    )


def _cmd_train(args: argparse.Namespace) -> None:
    from visionpipes.retail.planning import resolve_train_section

    section = params_section(args.params, "train", required=True)
    overrides = {
        "epochs": args.epochs,
        "loss": args.loss,
        "backbone": args.backbone,
        "dimension": args.dimension,
        "image_size": args.image_size,
        "seed": args.seed,
        "pretrained": args.pretrained,
        "accelerator": args.accelerator,
    }
    if args.no_progress:
        overrides["progress"] = False
    section |= {k: v for k, v in overrides.items() if v is not None}  # a flag replaces an auto value
    # auto keys and the plan first: their errors come before torch and Lightning are imported
    section, plan = resolve_train_section(section, args.plan, source=f"{args.params or 'options'}:train")
    if plan is not None:
        section["plan"] = plan.summary()
    from visionpipes.retail.training.params import TrainParams
    from visionpipes.retail.training.train import train_embedding

    params = _merge(TrainParams, section, {}, source=f"{args.params or 'options'}:train")
    summary = train_embedding(args.catalog, args.out, params)
    _print({k: summary[k] for k in ("products", "train_views", "val_views", "epochs", "seconds", "metrics")})


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from visionpipes.retail.training.evaluate import evaluate_model

    queries = args.queries or args.catalog
    metrics = evaluate_model(args.model, args.catalog, queries, args.out, progress=not args.no_progress)
    _print({k: v for k, v in metrics.items() if k != "skipped_rows"} | {"skipped_rows": len(metrics["skipped_rows"])})


def _save_embeddings(out: Path, embedded: Any, model_version: str) -> None:
    """The `.npz` every engine writes (vectors, product_ids, images, model_version), atomically."""
    import numpy as np

    from visionpipes.core.io import atomic_path

    with atomic_path(out) as tmp, open(tmp, "wb") as fh:
        np.savez(
            fh,
            vectors=embedded.vectors,
            product_ids=np.array(embedded.labels),
            images=np.array(embedded.relpaths),
            model_version=np.array(model_version),
        )


def _cmd_embed(args: argparse.Namespace) -> int | None:
    from visionpipes.retail.catalog import load_catalog

    catalog = load_catalog(args.catalog)
    out = Path(args.out)
    if args.engine == "ray":
        return _embed_ray(args, catalog, out)
    from visionpipes.retail.embedding.batch import embed_catalog
    from visionpipes.retail.embedding.embedders import load_embedder

    embedder = load_embedder(args.model)
    embedded = embed_catalog(embedder, catalog, progress=not args.no_progress, batch_size=args.batch_size)
    _save_embeddings(out, embedded, getattr(embedder, "model_version", ""))
    for problem in [*catalog.problems, *embedded.problems]:
        print(f"skipped {problem}", file=sys.stderr)
    _print(
        {
            "images": len(embedded.labels),
            "dimension": int(embedded.vectors.shape[1]) if len(embedded.labels) else 0,
            "images_per_second": round(len(embedded.labels) / max(embedded.seconds, 1e-9), 1),
            "skipped_rows": len(catalog.problems) + len(embedded.problems),
            "out": str(out),
        }
    )
    return None


def _embed_ray(args: argparse.Namespace, catalog: Any, out: Path) -> int:
    """`embed --engine ray`: Parquet shards (resumable) on an actor pool, then the same `.npz` as the
    local engine, assembled from the shards in catalog order; every skipped image is listed, exit 1."""
    from visionpipes.core.ray_batch import require_ray
    from visionpipes.retail.embedding.batch import embed_catalog_ray

    require_ray()  # the one clear error before anything loads
    if not out.parent.is_dir():
        raise UserError(f"output folder {out.parent} does not exist (for {out}).")
    shards_dir = Path(args.shards) if args.shards else out.with_suffix(".shards")
    result = embed_catalog_ray(
        args.model,
        catalog,
        shards_dir,
        address=args.address,
        actors=args.actors,
        num_cpus=args.num_cpus,
        gpus_per_actor=args.gpus_per_actor,
        shard_size=args.shard_size,
        batch_size=args.batch_size,
        progress=not args.no_progress,
    )
    embedded = result.embedded
    problems = [*catalog.problems, *embedded.problems]
    if not result.failed:
        _save_embeddings(out, embedded, result.model_version)
    for problem in problems:
        print(f"skipped {problem}", file=sys.stderr)
    for shard, reason in result.failed:
        print(f"failed: shard {shard} ({result.shards[shard]}): {reason}", file=sys.stderr)
    _print(
        {
            "engine": "ray",
            "images": len(embedded.labels),
            "dimension": int(embedded.vectors.shape[1]) if len(embedded.labels) else 0,
            "shards": len(result.shards),
            "shards_computed": len(result.computed),
            "shards_failed": len(result.failed),
            "seconds": round(embedded.seconds, 2),
            "skipped_rows": len(problems),
            "shards_dir": str(shards_dir),
            "out": str(out) if not result.failed else None,
        }
    )
    if result.failed:
        print(f"{len(result.failed)} shards failed; {out} not written: re-run to retry them", file=sys.stderr)
    return 1 if problems or result.failed else 0


def _cmd_index(args: argparse.Namespace) -> None:
    import numpy as np

    from visionpipes.retail.catalog import load_catalog
    from visionpipes.retail.index.product_index import ProductIndex
    from visionpipes.retail.index.records import catalog_records

    path = Path(args.embeddings)
    if not path.is_file():
        raise UserError(f"embeddings file {path} does not exist (run vp-retail embed first).")
    try:
        with np.load(path, allow_pickle=False) as data:
            vectors = data["vectors"]
            labels = [str(x) for x in data["product_ids"]]
            relpaths = [str(x) for x in data["images"]]
            version = str(data["model_version"])
    except (OSError, ValueError, KeyError) as err:
        raise UserError(f"embeddings file {path} is not an embeddings .npz written by vp-retail embed ({err}).") from None
    catalog = load_catalog(args.catalog)
    records, grouped = catalog_records(catalog, labels, relpaths, vectors)
    if not records:
        raise UserError(f"no product of {args.catalog} has an embedding in {path}.")
    extra = {"catalog_root_absolute": str(Path(catalog.root).resolve())}
    if args.model:
        extra["model"] = str(Path(args.model).resolve())
    index = ProductIndex.build(
        args.out,
        records,
        grouped,
        dimension=int(vectors.shape[1]),
        factory=args.factory or ("HNSW" if args.backend == "milvus" else "Flat"),
        model_version=args.model_version or version,
        extra=extra,
        backend=args.backend,
        milvus_uri=args.milvus_uri,
    )
    stats = index.stats()
    index.close()
    keys = ("products", "vectors", "factory", "dimension", "model_version", "backend")
    _print({k: stats[k] for k in keys} | {"out": args.out})


def _cmd_deploy(args: argparse.Namespace) -> None:
    from visionpipes.retail.training.deploy import DeployParams, deploy_model

    section = params_section(args.params, "deploy", required=True)
    overrides = {"factory": args.factory, "backend": args.backend, "milvus_uri": args.milvus_uri,
                 "milvus_index": args.milvus_index}
    params = _merge(DeployParams, section, overrides, source=f"{args.params or 'options'}:deploy")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    summary = deploy_model(
        args.model,
        args.catalog,
        args.out,
        params,
        eval_metrics=args.eval_metrics,
        progress=not args.no_progress,
        discard_live_changes=args.discard_live_changes,
    )
    _print({k: v for k, v in summary.items() if k != "skipped_rows"} | {"skipped_rows": len(summary["skipped_rows"])})
    if args.reload_url:
        from visionpipes.retail.serve.command import request_reload

        _print({"reload": request_reload(args.reload_url, args.out, None)})


#: Environment variable holding the API token of `vp-retail serve` (so it stays out of `ps`).
def build_parser() -> argparse.ArgumentParser:
    """The `vp-retail` argument parser (one sub-command per verb)."""
    parser = argparse.ArgumentParser(
        prog="vp-retail", description="Visual product search: synthetic catalogs, embedding training, FAISS index, HTTP API."
    )
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = verbs.add_parser("synth", help="write a synthetic product catalog (catalog.csv + images + queries.csv)")
    p.add_argument("out", help="folder to write (created; replaced with --overwrite)")
    p.add_argument("--products", type=int, help="number of products (default 100)")
    p.add_argument("--views", type=int, help="catalog photos per product (default 8)")
    p.add_argument("--queries", type=int, help="held-out query photos per product (default 2)")
    p.add_argument("--size", type=int, help="image size in pixels (default 128)")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--params", help="params.yaml whose 'data.synth' section gives the defaults")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=_cmd_synth)

    p = verbs.add_parser("data", help="the pipeline's catalog: a real catalog's description, or the synthetic one")
    p.add_argument("--out", required=True, help="catalog folder to write (replaced)")
    p.add_argument("--params", help="params.yaml: data.source (a real catalog) or data.synth")
    p.add_argument("--source", help="a real catalog (catalog.csv, its folder, or an image-folder layout)")
    p.add_argument("--queries", help="the real catalog's queries.csv (default: beside its catalog.csv)")
    p.set_defaults(func=_cmd_data)

    p = verbs.add_parser("plan", help="plan training settings (image size, embedding dimension, P x K batch, epochs) from the catalog and the hardware")
    p.add_argument("catalog", help="catalog folder (catalog.csv or image-folder layout)")
    p.add_argument("--out", required=True, help="plan JSON to write")
    p.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), help="plan for this device (overrides plan.device)")
    p.add_argument("--memory-gb", type=float, help="memory budget in GB (overrides plan.memory_gb; default: probed)")
    p.add_argument("--cpu-cores", type=int, help="CPU cores (overrides plan.cpu_cores; default: probed)")
    p.add_argument("--params", help="params.yaml: its 'plan' section, train.val_views, and the planned keys it sets explicitly")
    p.set_defaults(func=_cmd_plan)

    p = verbs.add_parser("train", help="train the embedding model on a catalog (metric learning over product ids)")
    p.add_argument("--catalog", required=True, help="catalog folder (catalog.csv or image-folder layout)")
    p.add_argument("--out", required=True, help="model folder to write (model.pt, model.json, checkpoints, dvclive)")
    p.add_argument("--params", help="params.yaml whose 'train' section gives the defaults")
    p.add_argument("--epochs", type=int, help="training epochs")
    p.add_argument("--loss", choices=("proxy_anchor", "multi_similarity", "arcface"), help="metric-learning loss")
    p.add_argument("--backbone", help="core backbone preset (resnet18, mobilenet_v2, ...)")
    p.add_argument("--dimension", type=int, help="embedding dimension")
    p.add_argument("--image-size", type=int, help="input size in pixels")
    p.add_argument("--seed", type=int, help="random seed")
    p.add_argument("--pretrained", help="local checkpoint seeding the backbone (never downloaded)")
    p.add_argument("--accelerator", help="auto, cpu or gpu")
    p.add_argument("--plan", help="plan JSON of `vp-retail plan`: the values of train keys set to auto (recorded in the model)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_train)

    p = verbs.add_parser("evaluate", help="Recall@1/5/10 and mAP of held-out queries; recall curve and sample plots")
    p.add_argument("--model", required=True, help="trained model folder, deploy folder or .onnx file")
    p.add_argument("--catalog", required=True, help="catalog folder searched")
    p.add_argument("--queries", help="queries.csv or a folder holding one (default: the catalog folder)")
    p.add_argument("--out", required=True, help="folder for metrics.json, recall.json and plots/")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_evaluate)

    p = verbs.add_parser("embed", help="embed every catalog image with a model (ONNX or trained), with progress")
    p.add_argument("--model", required=True, help="deploy folder / .onnx file (onnxruntime) or trained model folder")
    p.add_argument("--catalog", required=True, help="catalog folder")
    p.add_argument("--out", required=True, help=".npz to write (vectors, product_ids, images, model_version)")
    p.add_argument("--batch-size", type=int, default=64, help="images per model run")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_engine_options(p)
    p.add_argument(
        "--shards",
        help="Ray: folder of the Parquet shards, kept for resuming and for ray.data.read_parquet (default: OUT "
        "with .shards for .npz); the .npz is written once every shard is finished",
    )
    p.add_argument(
        "--shard-size", type=int, default=1024, help="Ray: images per shard (a multiple of --batch-size; default 1024)"
    )
    p.set_defaults(func=_cmd_embed)

    p = verbs.add_parser("index", help="build a FAISS + SQLite index directory from embeddings and the catalog")
    p.add_argument("--embeddings", required=True, help=".npz written by vp-retail embed")
    p.add_argument("--catalog", required=True, help="catalog folder (titles, categories, metadata)")
    p.add_argument("--out", required=True, help="index directory to create (must not exist)")
    p.add_argument("--factory", help="FAISS index_factory string (default Flat; IVF256,Flat, HNSW32, ...); "
                   "with --backend milvus a Milvus index type (default HNSW; IVF_FLAT,nlist=256, FLAT)")
    p.add_argument("--backend", choices=("faiss", "milvus"), default="faiss",
                   help="vector store: faiss (in process) or milvus (milvus-lite in the index folder, or --milvus-uri)")
    p.add_argument("--milvus-uri", help="Milvus server for --backend milvus (default $MILVUS_URI, else milvus-lite); "
                   "token from $MILVUS_TOKEN")
    p.add_argument("--model", help="the .onnx model the embeddings came from (recorded for serve)")
    p.add_argument("--model-version", help="model version to record (default: the one in the embeddings)")
    p.set_defaults(func=_cmd_index)

    p = verbs.add_parser("deploy", help="ONNX export (parity-checked), catalog embedding, index, model card")
    p.add_argument("--model", required=True, help="trained model folder")
    p.add_argument("--catalog", required=True, help="catalog folder to index")
    p.add_argument("--out", required=True, help="deploy folder to write (swapped in atomically; refused while served)")
    p.add_argument("--eval-metrics", help="metrics.json of vp-retail evaluate, quoted in the model card")
    p.add_argument("--params", help="params.yaml whose 'deploy' section gives the defaults")
    p.add_argument("--factory", help="FAISS index_factory string")
    p.add_argument("--backend", choices=("faiss", "milvus"), help="vector store (default: deploy.backend, else faiss)")
    p.add_argument("--milvus-uri", help="Milvus server for the milvus backend (default $MILVUS_URI, else milvus-lite)")
    p.add_argument("--milvus-index", help="Milvus index type for the milvus backend (default: deploy.milvus_index, HNSW)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--reload-url", help="then ask the server at this URL to switch to OUT (a folder beside the one it "
                   "serves), keeping its live changes (token from $VP_RETAIL_TOKEN); see vp-retail reload")
    p.add_argument("--discard-live-changes", action="store_true",
                   help="replace a deployment whose index holds products added/deleted through the API (they are lost)")
    p.set_defaults(func=_cmd_deploy)

    add_serving_verbs(verbs)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of `vp-retail`."""
    args = build_parser().parse_args(argv)
    # Runtime settings come before anything starts a thread pool: `serve` runs one thread per request
    # (its --threads).
    run_main(lambda: args.func(args), threads=getattr(args, "threads", None))


if __name__ == "__main__":
    main()
