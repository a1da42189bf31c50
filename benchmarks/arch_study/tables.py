"""Summaries of the trained variants (means and seed spread over seeds), and the small plot and
Markdown table helpers the report sections share.

Part of `benchmarks/architecture_study.py`; measures only, changes no library code.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from arch_study.config import Variant
from visionpipes.core.io import atomic_path


def summarise(variants: Sequence[Variant], trained: dict[str, list[dict[str, Any]]],
              measured: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """One row per variant: means over seeds of the final numbers, curves of seed 0."""
    rows = {}
    for v in variants:
        runs = trained[v.key]
        acc = [r["val_accuracy"][-1] for r in runs]
        loss = [r["train_loss"][-1] for r in runs]
        rows[v.key] = {
            "section": v.section, "name": v.name, "task": v.task,
            "val_accuracy": statistics.mean(acc), "val_accuracy_runs": acc,
            "train_loss": statistics.mean(loss), "train_loss_runs": loss,
            "train_accuracy": statistics.mean(r["train_accuracy"][-1] for r in runs),
            "curve_val_accuracy": runs[0]["val_accuracy"], "curve_train_loss": runs[0]["train_loss"],
            "train_seconds": statistics.mean(r["seconds"] for r in runs),
            "train_cpu_seconds": statistics.mean(r["cpu_seconds"] for r in runs),
            "n_val": runs[0]["n_val"],
            **measured[v.key],
        }
    pooled = pooled_seed_sd(rows)
    for row in rows.values():
        row["pooled_seed_sd"] = pooled
    return rows


def noise_pp(row: dict[str, Any]) -> float:
    """Two standard errors (percentage points) of the difference of two mean accuracies near this
    one: from the binomial variance of the validation set, or, when there are several seeds, from
    the seed-to-seed standard deviation pooled over the study, whichever is larger."""
    p, n = row["val_accuracy"], row["n_val"]
    binomial = 200 * math.sqrt(2 * max(p * (1 - p), 0.01) / n)
    pooled = row.get("pooled_seed_sd")
    if pooled is None:
        return binomial
    return max(binomial, 200 * pooled * math.sqrt(2 / len(row["val_accuracy_runs"])))


def pooled_seed_sd(rows: dict[str, dict[str, Any]]) -> float | None:
    """Seed-to-seed standard deviation of the final accuracy on the proxy task, pooled over every
    model trained with several seeds (None if none was)."""
    variances = [statistics.variance(r["val_accuracy_runs"]) for r in rows.values()
                 if len(r["val_accuracy_runs"]) > 1 and r["task"] == "proxy"]
    return math.sqrt(statistics.mean(variances)) if variances else None


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    _plt().close(fig)


def _pp(x: float) -> str:
    return f"{100 * x:.1f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def _section_rows(rows: dict[str, dict[str, Any]], section: str, task: str | None = None) -> list[dict[str, Any]]:
    return [r for r in rows.values() if r["section"] == section and (task is None or r["task"] == task)]


def _acc_cell(r: dict[str, Any]) -> str:
    runs = r["val_accuracy_runs"]
    if len(runs) > 1:
        return f"{_pp(r['val_accuracy'])} ({_pp(min(runs))}-{_pp(max(runs))})"
    return _pp(r["val_accuracy"])
