"""The evaluation stage of the search: the Pareto front and the best spec against the baseline
presets — accuracy at the same proxy budget, FLOPs, parameters, and CPU latency re-measured side
by side — written as `metrics.json` and `pareto.png`.

Reads what `search` and `train-proxy` wrote; it never imports Optuna.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from visionpipes.core.backbones import BackboneSpec
from visionpipes.core.config import ConfigModel, Field
from visionpipes.core.errors import UserError
from visionpipes.core.io import atomic_path, write_json
from visionpipes.core.nas.proxy import CLASSES
from visionpipes.core.nas.results import COSTS, CandidateResult, dominates
from visionpipes.core.nas.training import Classifier, ProxyTraining
from visionpipes.core.profile import compare_latency


class EvalConfig(ConfigModel):
    """How latency is timed in the evaluation (the `eval` section of params.yaml)."""

    rounds: int = Field(6, ge=1)
    per_round: int = Field(5, ge=1)
    threads: int = Field(1, ge=1)


@dataclass
class EvalRow:
    """One model of the evaluation: accuracy at the search budget, cost, and latency measured
    side by side with the others."""

    name: str
    accuracy: float
    mflops: float
    latency_ms: float
    params: int

    def as_result(self) -> CandidateResult:
        return CandidateResult(self.name, self.accuracy, self.mflops, self.latency_ms, self.params, 0.0, spec={})


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist; run the stage that writes it first.")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{what} {path} is not valid JSON: {err}") from None


def evaluate_search(
    search_dir: Path, trained_dir: Path, out_dir: Path, *, rounds: int = 6, per_round: int = 5, threads: int = 1,
    log: Any = print,
) -> dict[str, Any]:
    """Compare the search's Pareto front and best spec with the baseline presets: accuracy at the
    same proxy budget (from `search.json`), FLOPs, parameters, and CPU latency re-measured here
    side by side (`compare_latency`); plus the best spec's accuracy after longer training
    (`trained_dir/metrics.json`). Writes `metrics.json` and `pareto.png` into `out_dir`.

    Returns:
        The metrics written.

    Raises:
        UserError: if an input file is missing or malformed.
    """
    search = _read_json(Path(search_dir) / "search.json", "search results")
    trained = _read_json(Path(trained_dir) / "metrics.json", "training metrics")
    if not isinstance(trained.get("accuracy"), (int, float)):
        raise UserError(f"training metrics {Path(trained_dir) / 'metrics.json'} have no numeric 'accuracy'.")
    try:
        proxy = ProxyTraining.from_params(search["proxy"], source=f"search results {Path(search_dir) / 'search.json'}: proxy")
        trials = [CandidateResult(**t) for t in search["trials"]]
        baselines = [CandidateResult(**b) for b in search["baselines"]]
        front_names = list(search["front"])
        best_name = search["best"]
    except (KeyError, TypeError) as err:
        raise UserError(f"search results {Path(search_dir) / 'search.json'} lack a field: {err}") from None
    by_name = {t.name: t for t in trials}
    missing = [n for n in [*front_names, best_name] if n not in by_name]
    if missing:
        raise UserError(f"search results {Path(search_dir) / 'search.json'} name unknown trial {missing[0]!r}.")
    if not baselines:
        log("no baseline in the search results: nothing to compare the front with")
    front = [by_name[n] for n in front_names]
    example = torch.zeros(1, 3, proxy.size, proxy.size)
    models: dict[str, nn.Module] = {}
    for r in [*front, *baselines]:
        torch.manual_seed(0)
        models[r.name] = Classifier(BackboneSpec.from_params(r.spec, source=f"spec of {r.name}"), len(CLASSES))
    log(f"timing {len(models)} models side by side at batch 1, {proxy.size} px, {threads} thread(s) ...")
    latency = compare_latency(models, example, rounds=rounds, per_round=per_round, threads=threads)
    rows = {r.name: EvalRow(r.name, r.accuracy, r.mflops, latency[r.name], r.params) for r in [*front, *baselines]}
    dominated = {
        cost: {f: [b.name for b in baselines if dominates(rows[f].as_result(), rows[b.name].as_result(), cost)]
               for f in front_names}
        for cost in COSTS
    }
    best = rows[best_name]
    metrics: dict[str, Any] = {
        "budget": {"per_class": proxy.per_class, "size": proxy.size, "epochs": proxy.epochs},
        "best": {
            "name": best.name, "accuracy": best.accuracy, "accuracy_trained": trained.get("accuracy"),
            "epochs_trained": trained.get("epochs"), "mflops": best.mflops, "latency_ms": best.latency_ms,
            "params": best.params,
            "dominates_flops": ",".join(dominated["flops"][best_name]),
            "dominates_latency": ",".join(dominated["latency"][best_name]),
        },
        "baselines": {
            b.name: {"accuracy": b.accuracy, "mflops": b.mflops, "latency_ms": rows[b.name].latency_ms,
                     "params": b.params}
            for b in baselines
        },
        "front": {
            f: {"accuracy": rows[f].accuracy, "mflops": rows[f].mflops, "latency_ms": rows[f].latency_ms,
                "params": rows[f].params, "dominates_flops": ",".join(dominated["flops"][f]),
                "dominates_latency": ",".join(dominated["latency"][f])}
            for f in front_names
        },
        "best_baseline": _best_baseline(baselines, rows),
        "baselines_dominated_flops": sum(any(b.name in d for d in dominated["flops"].values()) for b in baselines),
        "baselines_dominated_latency": sum(any(b.name in d for d in dominated["latency"].values()) for b in baselines),
        "latency": {"batch": 1, "size": proxy.size, "threads": threads, "runs": rounds * per_round},
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "pareto.png") as tmp:
        _plot_evaluation(trials, front, baselines, rows, trained, tmp)
    write_json(out_dir / "metrics.json", metrics)
    return metrics


def _best_baseline(baselines: list[CandidateResult], rows: dict[str, EvalRow]) -> dict[str, Any]:
    """The most accurate baseline preset (ties: the cheaper in FLOPs), for the headline table."""
    if not baselines:
        return {}
    b = rows[max(baselines, key=lambda r: (r.accuracy, -r.mflops)).name]
    return {"name": b.name, "accuracy": b.accuracy, "mflops": b.mflops, "latency_ms": b.latency_ms, "params": b.params}


def _plot_evaluation(
    trials: list[CandidateResult], front: list[CandidateResult], baselines: list[CandidateResult],
    rows: dict[str, EvalRow], trained: dict[str, Any], path: Path,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, cost, label in ((axes[0], "flops", "MFLOPs (batch 1)"),
                            (axes[1], "latency", "CPU latency, ms (batch 1, measured side by side)")):
        def x(r: CandidateResult | EvalRow, cost: str = cost) -> float:
            return r.mflops if cost == "flops" else r.latency_ms

        if cost == "flops":
            ax.scatter([x(t) for t in trials], [t.accuracy for t in trials], c="#bbbbbb", label="trials")
        pts = sorted((rows[f.name] for f in front), key=x)
        ax.plot([x(r) for r in pts], [r.accuracy for r in pts], "o-", c="#d62728", label="Pareto front (search)")
        for b in baselines:
            r = rows[b.name]
            ax.scatter([x(r)], [r.accuracy], marker="s", c="#1f77b4")
            ax.annotate(b.name, (x(r), r.accuracy), textcoords="offset points", xytext=(4, -10), fontsize=8)
        best = next((rows[f.name] for f in front if f.name == trained.get("name")), None)
        if best is not None and trained.get("accuracy") is not None:
            ax.scatter([x(best)], [trained["accuracy"]], marker="*", s=160, c="#ff7f0e",
                       label=f"{best.name} trained {trained.get('epochs')} epochs")
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(label)
        ax.set_ylabel("proxy validation accuracy")
        ax.legend(loc="best", fontsize=7)
    fig.suptitle("Architecture search vs presets on the proxy task (same training budget)")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=110)
    plt.close(fig)
