"""`vp-core`: the core package's command line — list and profile backbones, run the demo (every
domain pipeline on its built-in sample data, then one table of their headline metrics), and the
architecture search's verbs (`search`, `train-proxy`, `evaluate-search`, from `core.nas`).

It only wires arguments to library functions; no model or pipeline logic lives here. The search
is imported only by its verbs, so the rest works without the `nas` extra (Optuna).
"""

from __future__ import annotations

import argparse
import importlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from visionpipes.core.cli_common import params_section, run_main
from visionpipes.core.errors import UserError


def _print_backbone_table(names: list[str] | None, size: int, batch: int, repeats: int) -> None:
    from visionpipes.core.profile import backbone_table, format_table

    print(f"backbone presets: params, GFLOPs and CPU latency at batch {batch}, {size}x{size}", flush=True)
    print(format_table(backbone_table(names, batch=batch, size=size, repeats=repeats)))


def _cmd_backbones(args: argparse.Namespace) -> None:
    from visionpipes.core.backbones import get_spec, list_backbones

    names = args.names or list_backbones()
    unknown = [n for n in names if n not in list_backbones()]
    if unknown:
        raise UserError(f"unknown backbone {unknown[0]!r}; presets: {', '.join(list_backbones())}.")
    if args.spec:
        print(json.dumps({n: get_spec(n).to_dict() for n in names}, indent=2))
    elif args.profile:
        _print_backbone_table(names, args.size, args.batch, args.repeats)
    else:
        print("\n".join(names))


def _dvc() -> str:
    exe = Path(sys.executable).with_name("dvc")
    found = str(exe) if exe.exists() else shutil.which("dvc")
    if not found:
        raise UserError("dvc is not installed in this environment; run `make demo` from the repository root.")
    return found


def _cmd_demo(args: argparse.Namespace) -> int:
    from visionpipes.core.workspace import domain_pipelines, headline_table, project_root

    root = project_root()
    domains = domain_pipelines(root)
    if not domains:
        print("no domain pipeline exists yet (pipelines/<domain>/dvc.yaml); profiling the core backbones instead.")
        _print_backbone_table(None, args.size, args.batch, args.repeats)
        return 0
    dvc = _dvc()
    for domain in domains:
        print(f"== dvc repro pipelines/{domain}", flush=True)
        code = subprocess.call([dvc, "repro", f"pipelines/{domain}"], cwd=root)
        if code != 0:
            print(f"error: the {domain} pipeline failed (dvc exit code {code}).", file=sys.stderr)
            return code
    print("== headline metrics of every pipeline", flush=True)
    print(headline_table({d: root / "pipelines" / d for d in domains}))
    return 0


def _cmd_summary(args: argparse.Namespace) -> None:
    from visionpipes.core.workspace import (
        FULL_SET_HINT,
        format_summary,
        headline_keys,
        select_headline,
        write_summary,
    )

    pipeline = Path(args.pipeline)
    metrics = write_summary(pipeline.name, pipeline, Path(args.out))
    rows = {pipeline.name: select_headline(metrics, headline_keys(pipeline))}
    print(format_summary(rows, footer=FULL_SET_HINT))


def _nas(module: str) -> ModuleType:
    """Import `visionpipes.core.nas.<module>`; one sentence when the `nas` extra is missing."""
    try:
        return importlib.import_module(f"visionpipes.core.nas.{module}")
    except ModuleNotFoundError as err:
        if err.name == "optuna":
            raise UserError(
                "the architecture search needs Optuna, which is not installed; "
                "install visionpipes-core[nas] (e.g. pip install -e 'packages/core[nas]')."
            ) from None
        raise


def _cmd_search(args: argparse.Namespace) -> None:
    study = _nas("study")
    outputs = _nas("outputs")
    settings = params_section(args.params, "search", required=True)
    proxy = settings.get("proxy") or {}
    if not isinstance(proxy, dict):
        raise UserError(f"{args.params}: search.proxy must be a mapping.")
    settings["proxy"] = dict(proxy)
    for key in ("trials", "cost", "seed", "storage", "study_name"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    if args.budget is not None:
        settings["param_budget"] = args.budget
    if args.baselines is not None:
        settings["baselines"] = [b for b in args.baselines.split(",") if b]
    for key in ("epochs", "per_class", "size"):
        if getattr(args, key) is not None:
            settings["proxy"][key] = getattr(args, key)
    source = f"{args.params}:search" if args.params else "search options"
    config = study.SearchConfig.from_params(settings, source=source)
    outcome = study.run_search(config)
    outputs.write_outcome(outcome, config, Path(args.out))
    print("\n".join(outputs.summary_lines(outcome, config.cost)))
    print(f"wrote {args.out}/search.json, best_spec.yaml, pareto.png")


def _proxy_settings(params: str | None, section: str) -> dict:
    """`search.proxy` of a params file, updated by the keys of `section` (e.g. `train.epochs`)."""
    from visionpipes.core.io import load_params

    if not params:
        return {}
    data = load_params(params)
    search = data.get("search") or {}
    proxy = dict(search.get("proxy") or {}) if isinstance(search, dict) else {}
    extra = data.get(section) or {}
    if not isinstance(extra, dict):
        raise UserError(f"{params}: section '{section}' must be a mapping.")
    proxy.update(extra)
    return proxy


def _cmd_train_proxy(args: argparse.Namespace) -> None:
    from visionpipes.core.backbones import load_spec_file

    training = _nas("training")
    spec = load_spec_file(args.spec)
    proxy = _proxy_settings(args.params, "train")
    for key in ("epochs", "seed"):
        if getattr(args, key) is not None:
            proxy[key] = getattr(args, key)
    source = f"{args.params}:search.proxy+train" if args.params else "proxy training options"
    cfg = training.ProxyTraining.from_params(proxy, source=source)
    result = training.train_spec(spec, cfg, Path(args.out), log=lambda m: print(m, flush=True))
    print(f"{spec.name}: accuracy {result.accuracy:.3f} after {cfg.epochs} epochs, {result.mflops:.1f} MFLOPs, "
          f"{result.latency_ms:.2f} ms, {result.params / 1e6:.2f} M params; wrote {args.out}/model.pt, metrics.json, dvclive/")


def _cmd_evaluate_search(args: argparse.Namespace) -> None:
    evaluate = _nas("evaluate")
    settings = params_section(args.params, "eval", required=True)
    for key in ("rounds", "per_round", "threads"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    source = f"{args.params}:eval" if args.params else "eval options"
    config = evaluate.EvalConfig.from_params(settings, source=source)
    metrics = evaluate.evaluate_search(Path(args.search), Path(args.trained), Path(args.out), **config.model_dump(),
                                       log=lambda m: print(m, flush=True))
    best = metrics["best"]
    print(f"best {best['name']}: accuracy {best['accuracy']:.3f} (trained longer: {best['accuracy_trained']:.3f}), "
          f"{best['mflops']:.1f} MFLOPs, {best['latency_ms']:.2f} ms, {best['params'] / 1e6:.2f} M params")
    for name, b in metrics["baselines"].items():
        print(f"baseline {name}: accuracy {b['accuracy']:.3f}, {b['mflops']:.1f} MFLOPs, {b['latency_ms']:.2f} ms, "
              f"{b['params'] / 1e6:.2f} M params")
    for name, f in metrics["front"].items():
        for cost in ("flops", "latency"):
            if f[f"dominates_{cost}"]:
                print(f"{name} dominates {f[f'dominates_{cost}']} on accuracy and {cost}")
    print(f"wrote {args.out}/metrics.json, pareto.png")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vp-core", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("backbones", help="list backbone presets, their specs, or a params/FLOPs/latency table")
    p.add_argument("names", nargs="*", help="presets (default: all)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--profile", action="store_true", help="print params, GFLOPs and CPU latency")
    group.add_argument("--spec", action="store_true", help="print each spec as JSON (usable in params.yaml)")
    p.set_defaults(func=_cmd_backbones)

    p = sub.add_parser("demo", help="run every domain pipeline on the sample data and print their headline metrics")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("summary", help="collect a pipeline's declared metrics into one summary file")
    p.add_argument("pipeline", help="pipeline folder, e.g. pipelines/medical")
    p.add_argument("--out", required=True, help="summary JSON to write")
    p.set_defaults(func=_cmd_summary)

    p = sub.add_parser("search", help="architecture search over the block library on the proxy task (Optuna)")
    p.add_argument("--out", required=True, help="folder for search.json, best_spec.yaml, pareto.png")
    p.add_argument("--params", help="params.yaml with a `search` section (flags override it)")
    p.add_argument("--trials", type=int, help="total trials (a resumed study runs only the missing ones)")
    p.add_argument("--cost", choices=["flops", "latency"], help="second objective (default flops: reproducible)")
    p.add_argument("--budget", type=int, help="parameter budget; larger candidates are pruned unseen")
    p.add_argument("--seed", type=int, help="sampler and training seed")
    p.add_argument("--storage", help="Optuna storage URL, e.g. sqlite:///search.db (resumable)")
    p.add_argument("--study-name", dest="study_name", help="study name inside the storage")
    p.add_argument("--baselines", help="comma-separated presets trained on the same proxy task")
    p.add_argument("--epochs", type=int, help="proxy training epochs per trial")
    p.add_argument("--per-class", dest="per_class", type=int, help="proxy images per class")
    p.add_argument("--size", type=int, help="proxy image size")
    p.set_defaults(func=_cmd_search)

    p = sub.add_parser("train-proxy", help="train a backbone spec on the proxy task (e.g. the search's best, longer)")
    p.add_argument("--spec", required=True, help="backbone spec file (best_spec.yaml, or JSON)")
    p.add_argument("--out", required=True, help="folder for model.pt, metrics.json and dvclive/")
    p.add_argument("--params", help="params.yaml: search.proxy, updated by the `train` section (flags override)")
    p.add_argument("--epochs", type=int, help="training epochs")
    p.add_argument("--seed", type=int, help="data and training seed")
    p.set_defaults(func=_cmd_train_proxy)

    p = sub.add_parser("evaluate-search", help="compare the search's front and best spec with the baseline presets")
    p.add_argument("--search", required=True, help="folder written by `vp-core search` (search.json)")
    p.add_argument("--trained", required=True, help="folder written by `vp-core train-proxy` (metrics.json)")
    p.add_argument("--out", required=True, help="folder for metrics.json and pareto.png")
    p.add_argument("--params", help="params.yaml with an `eval` section (rounds, per_round, threads)")
    p.add_argument("--rounds", type=int, help="interleaved timing rounds (default 6)")
    p.add_argument("--per-round", dest="per_round", type=int, help="timed runs per model and round (default 5)")
    p.add_argument("--threads", type=int, help="CPU threads while timing (default 1)")
    p.set_defaults(func=_cmd_evaluate_search)

    for p in (sub.choices["backbones"], sub.choices["demo"]):
        p.add_argument("--size", type=int, default=224, help="input size for profiling (default 224)")
        p.add_argument("--batch", type=int, default=1, help="batch size for profiling (default 1)")
        p.add_argument("--repeats", type=int, default=5, help="timed runs per preset (default 5)")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of `vp-core`."""
    args = build_parser().parse_args(argv)
    run_main(lambda: args.func(args))
