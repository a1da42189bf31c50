"""What the search measures of one architecture (`CandidateResult`) and the Pareto bookkeeping
over accuracy and cost (FLOPs or measured latency).

Plain data and comparisons only: no training, no Optuna.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

COSTS = ("flops", "latency")


@dataclass
class CandidateResult:
    """One evaluated architecture."""

    name: str
    accuracy: float
    mflops: float
    latency_ms: float
    params: int
    seconds: float
    spec: dict[str, Any] = field(repr=False)
    epoch_accuracy: list[float] = field(default_factory=list)
    epoch_loss: list[float] = field(default_factory=list)

    def cost(self, kind: str) -> float:
        return self.mflops if kind == "flops" else self.latency_ms



def dominates(a: CandidateResult, b: CandidateResult, cost: str) -> bool:
    """`a` is at least as accurate and as cheap as `b`, and strictly better in one."""
    return (a.accuracy >= b.accuracy and a.cost(cost) <= b.cost(cost)) and (
        a.accuracy > b.accuracy or a.cost(cost) < b.cost(cost)
    )


def pareto_front(results: Sequence[CandidateResult], cost: str) -> list[CandidateResult]:
    """The results no other result dominates, cheapest first."""
    front = [r for r in results if not any(dominates(o, r, cost) for o in results if o is not r)]
    return sorted(front, key=lambda r: r.cost(cost))


@dataclass
class SearchOutcome:
    """What a search found."""

    trials: list[CandidateResult]
    baselines: list[CandidateResult]
    front: list[CandidateResult]
    best: CandidateResult
    dominated_baselines: dict[str, list[str]]
    pruned: int
