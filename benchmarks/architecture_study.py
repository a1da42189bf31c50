"""The architecture study: what each idea of the core block library buys, measured with our own
runs on the proxy task of the architecture search (`visionpipes.core.nas.proxy`), every model trained
with the same recipe and budget (`visionpipes.core.nas.training.train_classifier`).

The calibration of the proxy task (what reference nets reach in its budget, and what a trial
costs), then five experiments, each a table, a plot and a comparison with the published claim:
  depth       plain vs residual CIFAR-style nets of 20 / 56 / 110 layers (He et al., 2016)
  separable   standard vs depthwise separable convolutions (Howard et al., 2017)
  scaling     deeper vs wider vs more cardinality at equal parameters (Xie et al., 2017)
  attention   SE / CBAM / self-attention vs none (Hu et al., 2018; Woo et al., 2018; Srinivas et al., 2021)
  context     plain vs dilated convs vs ASPP on a task that needs large context (Chen et al., 2017)

Usage:
    python benchmarks/architecture_study.py [--quick] [--sections depth,separable,...] [--seeds N]
        [--jobs N] [--threads N] [--out benchmarks/results/architecture_study]

Writes report.md, results.json and one PNG per experiment into --out. Training runs may go to
`--jobs` worker processes; every latency is measured afterwards in this process alone, with the
models of one experiment interleaved so that load from other processes falls on all alike.
Measures only; it changes no library code. This file is the command line and the run; its parts
live in `benchmarks/arch_study/` (config, models, variants, runner, tables, sections, report).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from arch_study.config import DEFAULT_OUT, SECTIONS, StudyConfig
from arch_study.report import write_report
from arch_study.runner import measure_section, run_trainings
from arch_study.tables import summarise
from arch_study.variants import make_variants

from visionpipes.core.errors import UserError
from visionpipes.core.hardware import cpu_model_name
from visionpipes.core.nas.training import ProxyTraining


def run_study(config: StudyConfig, sections: Sequence[str], out: Path, *, jobs: int = 1, threads: int | None = None,
              quick: bool = False, command: str = "", log: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
    """Train, measure, plot and report the chosen experiments; return the rows."""
    start = time.perf_counter()
    threads = threads or torch.get_num_threads()
    variants = make_variants(config, sections)
    log(f"{len(variants)} models x {config.seeds} seed(s), {jobs} process(es) x {threads} thread(s)")
    trained = run_trainings(variants, config, jobs, threads, log=log)
    measured: dict[str, dict[str, Any]] = {}
    for section in sections:
        log(f"measuring {section} ...")
        measured.update(measure_section([v for v in variants if v.section == section], config))
    rows = summarise(variants, trained, measured)
    meta = {
        "command": command, "date": dt.datetime.now().isoformat(timespec="seconds"), "quick": quick,
        "cpu": cpu_model_name(), "cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
        "jobs": jobs, "threads": threads, "sections": list(sections),
        "train_cpu_seconds": sum(r["cpu_seconds"] for runs in trained.values() for r in runs),
        "wall_seconds": time.perf_counter() - start,
    }
    write_report(rows, config, sections, out, meta)
    return rows


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny data and nets: checks the machinery in seconds")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument("--seeds", type=int, help="training seeds per model (default 1)")
    parser.add_argument("--epochs", type=int, help="override the proxy epochs")
    parser.add_argument("--per-class", dest="per_class", type=int, help="override the proxy images per class")
    parser.add_argument("--depths", help="comma-separated layer counts of the depth experiment (6n+2)")
    parser.add_argument("--jobs", type=int, default=1, help="training processes (default 1)")
    parser.add_argument("--threads", type=int, help="torch threads per training process (default: all cores)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="output folder (default %(default)s)")
    parser.add_argument("--rerender", action="store_true",
                        help="re-write report.md and the plots from --out/results.json, without training or timing")
    return parser


def rerender(out: Path) -> None:
    """Re-write the report and plots of an earlier run from its results.json (no measuring).

    Raises:
        ValueError: if results.json is missing or not from this script.
    """
    path = out / "results.json"
    if not path.is_file():
        raise ValueError(f"{path} does not exist; run the study first.")
    try:
        data = json.loads(path.read_text())
        cfg = dict(data["config"])
        cfg["proxy"] = ProxyTraining.from_params(cfg["proxy"], source=f"{path}: config.proxy")
        cfg["depths"] = tuple(cfg["depths"])
        config = StudyConfig(**cfg)
        meta, rows = data["meta"], data["rows"]
    except (json.JSONDecodeError, KeyError, TypeError, UserError) as err:
        raise ValueError(f"{path} is not a results file of this study: {err}") from None
    meta["rerendered"] = dt.datetime.now().isoformat(timespec="seconds")
    write_report(rows, config, meta["sections"], out, meta)


def main(argv: list[str] | None = None) -> int:
    from visionpipes.core.settings import apply_runtime_settings

    args = build_parser().parse_args(argv)
    apply_runtime_settings(args.threads)
    if args.rerender:
        try:
            rerender(Path(args.out))
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(f"wrote {Path(args.out) / 'report.md'}")
        return 0
    sections = [s for s in args.sections.split(",") if s]
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown or not sections:
        print(f"error: unknown section {unknown[0] if unknown else '(none)'!r}; use {', '.join(SECTIONS)}.", file=sys.stderr)
        return 2
    config = StudyConfig.quick() if args.quick else StudyConfig()
    if args.seeds is not None:
        config.seeds = args.seeds
    if args.epochs is not None:
        config.proxy = config.proxy.model_copy(update={"epochs": args.epochs})
    if args.per_class is not None:
        config.proxy = config.proxy.model_copy(update={"per_class": args.per_class})
    if args.depths:
        try:
            config.depths = tuple(int(d) for d in args.depths.split(","))
        except ValueError:
            print(f"error: --depths must be comma-separated integers, got {args.depths!r}.", file=sys.stderr)
            return 2
        bad = [d for d in config.depths if (d - 2) % 6 or d < 8]
        if bad:
            print(f"error: --depths must be 6n + 2 with n >= 1 (8, 14, 20, ...), got {bad[0]}.", file=sys.stderr)
            return 2
    if min(config.seeds, args.jobs, args.threads or 1) < 1:
        print("error: --seeds, --jobs and --threads must be >= 1.", file=sys.stderr)
        return 2
    command = "python benchmarks/architecture_study.py" + ("".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:])))
    run_study(config, sections, Path(args.out), jobs=args.jobs, threads=args.threads, quick=args.quick,
              command=command, log=lambda m: print(m, flush=True))
    print(f"wrote {Path(args.out) / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
