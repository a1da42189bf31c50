"""`vp-core`: the core package's command line — list and profile backbones, and run the demo
(every domain pipeline on its built-in sample data, then one table of their metrics).

It only wires arguments to library functions; no model or pipeline logic lives here.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from visionpipes.core.cli_common import params_section, run_main
from visionpipes.core.errors import UserError


def _project_root() -> Path:
    from visionpipes.core.settings import find_project_root

    root = find_project_root() or find_project_root(Path(__file__).parent)
    if root is None:
        raise UserError("not inside the visionpipes repository (no folder with .dvc/ and packages/ above here).")
    return root


def domain_pipelines(root: Path) -> list[str]:
    """Names of the domains that have a `pipelines/<domain>/dvc.yaml`."""
    return sorted(p.parent.name for p in (root / "pipelines").glob("*/dvc.yaml"))


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
    root = _project_root()
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
    from visionpipes.core.summary import domain_metrics, format_summary

    print("== metrics of every pipeline", flush=True)
    print(format_summary({d: domain_metrics(root / "pipelines" / d) for d in domains}))
    return 0


def _cmd_summary(args: argparse.Namespace) -> None:
    from visionpipes.core.summary import format_summary, write_summary

    pipeline = Path(args.pipeline)
    metrics = write_summary(pipeline.name, pipeline, Path(args.out))
    print(format_summary({pipeline.name: metrics}))


def _cmd_search(args: argparse.Namespace) -> None:
    from dataclasses import fields

    from visionpipes.core.io import check_known_keys
    from visionpipes.core.search import ProxyTraining, SearchConfig, run_search, summary_lines, write_outcome

    settings = params_section(args.params, "search", required=True)
    proxy = settings.pop("proxy", None) or {}
    if not isinstance(proxy, dict):
        raise UserError(f"{args.params}: search.proxy must be a mapping.")
    known = {f.name for f in fields(SearchConfig)} - {"proxy", "space"}
    known |= {f"proxy.{f.name}" for f in fields(ProxyTraining)}
    flat = {**settings, **{f"proxy.{k}": v for k, v in proxy.items()}}
    check_known_keys(flat, known, source=str(args.params), what="search keys", hint="")
    for key in ("trials", "cost", "seed", "storage", "study_name"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    if args.budget is not None:
        settings["param_budget"] = args.budget
    if args.baselines is not None:
        settings["baselines"] = tuple(b for b in args.baselines.split(",") if b)
    for key in ("epochs", "per_class", "size"):
        if getattr(args, key) is not None:
            proxy[key] = getattr(args, key)
    if "baselines" in settings:
        from visionpipes.core.backbones import list_backbones

        bad = [b for b in settings["baselines"] if b not in list_backbones()]
        if bad:
            raise UserError(f"unknown baseline backbone {bad[0]!r}; presets: {', '.join(list_backbones())}.")
        settings["baselines"] = tuple(settings["baselines"])
    config = SearchConfig(**settings, proxy=ProxyTraining(**proxy))
    outcome = run_search(config)
    write_outcome(outcome, config, Path(args.out))
    print("\n".join(summary_lines(outcome, config.cost)))
    print(f"wrote {args.out}/search.json, best_spec.yaml, pareto.png")


def _proxy_settings(params: str | None, section: str) -> dict:
    """`search.proxy` of a params file, updated by the keys of `section` (e.g. `train.epochs`)."""
    from dataclasses import fields

    from visionpipes.core.io import check_known_keys, load_params
    from visionpipes.core.search import ProxyTraining

    if not params:
        return {}
    data = load_params(params)
    search = data.get("search") or {}
    proxy = dict(search.get("proxy") or {}) if isinstance(search, dict) else {}
    extra = data.get(section) or {}
    if not isinstance(extra, dict):
        raise UserError(f"{params}: section '{section}' must be a mapping.")
    proxy.update(extra)
    check_known_keys(proxy, {f.name for f in fields(ProxyTraining)}, source=params, what="proxy training keys",
                     hint=f"in search.proxy or {section}")
    return proxy


def _cmd_train_proxy(args: argparse.Namespace) -> None:
    from visionpipes.core.search import ProxyTraining, load_spec_file, train_spec

    spec = load_spec_file(args.spec)
    proxy = _proxy_settings(args.params, "train")
    for key in ("epochs", "seed"):
        if getattr(args, key) is not None:
            proxy[key] = getattr(args, key)
    try:
        cfg = ProxyTraining(**proxy)
    except TypeError as err:
        raise UserError(f"{args.params}: invalid proxy training settings: {err}") from None
    if cfg.epochs < 1 or cfg.per_class < 2 or cfg.size < 32:
        raise UserError(f"proxy training needs epochs >= 1, per_class >= 2 and size >= 32, got {cfg.epochs}, "
                        f"{cfg.per_class}, {cfg.size}.")
    result = train_spec(spec, cfg, Path(args.out), log=lambda m: print(m, flush=True))
    print(f"{spec.name}: accuracy {result.accuracy:.3f} after {cfg.epochs} epochs, {result.mflops:.1f} MFLOPs, "
          f"{result.latency_ms:.2f} ms, {result.params / 1e6:.2f} M params; wrote {args.out}/model.pt, metrics.json, dvclive/")


def _cmd_evaluate_search(args: argparse.Namespace) -> None:
    from visionpipes.core.io import check_known_keys
    from visionpipes.core.search import evaluate_search

    settings = params_section(args.params, "eval", required=True)
    check_known_keys(settings, {"rounds", "per_round", "threads"}, source=str(args.params), what="eval keys", hint="")
    for key in ("rounds", "per_round", "threads"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    if any(not isinstance(v, int) or v < 1 for v in settings.values()):
        raise UserError(f"eval rounds, per_round and threads must be integers >= 1, got {settings}.")
    metrics = evaluate_search(Path(args.search), Path(args.trained), Path(args.out), **settings,
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

    p = sub.add_parser("demo", help="run every domain pipeline on the sample data and print their metrics")
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
