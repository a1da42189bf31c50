"""What a search writes: `search.json` (every trial and baseline), `best_spec.yaml` (a spec that
`build_backbone` and the domains' params accept), the Pareto plot, and the lines printed at the end.

Files only; it runs nothing and never imports Optuna.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from visionpipes.core.io import atomic_path, write_json
from visionpipes.core.nas.results import SearchOutcome

if TYPE_CHECKING:  # the study module imports Optuna; writing the outputs does not need it
    from visionpipes.core.nas.study import SearchConfig


def plot_pareto(outcome: SearchOutcome, cost: str, path: Path) -> None:
    """Accuracy vs cost: every trial, the Pareto front, and the baseline presets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    label = "MFLOPs" if cost == "flops" else "CPU latency (ms, batch 1)"
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ax.scatter([r.cost(cost) for r in outcome.trials], [r.accuracy for r in outcome.trials], c="#bbbbbb",
               label="trials")
    front = outcome.front
    ax.plot([r.cost(cost) for r in front], [r.accuracy for r in front], "o-", c="#d62728", label="Pareto front")
    for b in outcome.baselines:
        ax.scatter([b.cost(cost)], [b.accuracy], marker="s", c="#1f77b4")
        ax.annotate(b.name, (b.cost(cost), b.accuracy), textcoords="offset points", xytext=(4, -10), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel(label)
    ax.set_ylabel("proxy validation accuracy")
    ax.set_title("Architecture search: accuracy vs cost")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outcome(outcome: SearchOutcome, config: SearchConfig, out_dir: Path) -> None:
    """Write `search.json` (all results), `best_spec.yaml` and `pareto.png` into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "search.json", {
        "cost": config.cost,
        "param_budget": config.param_budget,
        "proxy": config.proxy.model_dump(),
        "trials": [asdict(r) for r in outcome.trials],
        "pruned": outcome.pruned,
        "baselines": [asdict(r) for r in outcome.baselines],
        "front": [r.name for r in outcome.front],
        "best": outcome.best.name,
        "dominated_baselines": outcome.dominated_baselines,
    })
    with atomic_path(out_dir / "best_spec.yaml") as tmp:
        tmp.write_text(yaml.safe_dump(outcome.best.spec, sort_keys=False))
    with atomic_path(out_dir / "pareto.png") as tmp:
        plot_pareto(outcome, config.cost, tmp.with_suffix(".png"))
        tmp.with_suffix(".png").replace(tmp)


def summary_lines(outcome: SearchOutcome, cost: str) -> list[str]:
    """Human-readable lines: the front, the baselines, and which baselines are dominated."""
    unit = "MFLOPs" if cost == "flops" else "ms"
    lines = ["Pareto front (accuracy, cost):"]
    lines += [f"  {r.name:<14} acc {r.accuracy:.3f}  {r.cost(cost):9.2f} {unit}  {r.params / 1e6:.2f} M" for r in outcome.front]
    lines.append("baselines:")
    lines += [f"  {b.name:<14} acc {b.accuracy:.3f}  {b.cost(cost):9.2f} {unit}  {b.params / 1e6:.2f} M" for b in outcome.baselines]
    if outcome.dominated_baselines:
        for name, bs in outcome.dominated_baselines.items():
            lines.append(f"{name} dominates {', '.join(bs)}")
    else:
        lines.append("no front member dominates a baseline")
    return lines
