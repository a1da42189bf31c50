"""What sets the size of the architecture study (`StudyConfig`, its quick variant) and what one
trained model of it is (`Variant`: a section, a name, a builder and its arguments).

Part of `benchmarks/architecture_study.py`; measures only, changes no library code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from arch_study.models import BUILDERS
from visionpipes.core.nas.training import ProxyTraining

SECTIONS = ("calibration", "depth", "separable", "scaling", "attention", "context")
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "results" / "architecture_study"


@dataclass
class StudyConfig:
    """Everything that sets the size of the study.

    Attributes:
        proxy: the proxy training recipe and budget, the same for every model.
        depths: layer counts of the CIFAR-style nets (6n + 2).
        width_scale: multiplier on every channel count (the quick run shrinks the nets).
        seeds: training seeds per model (weights and batch order; the data stay the same).
        calibration_seeds: seeds of the calibration nets, whose spread gives the seed-to-seed noise
            that every comparison is held against.
        large_size: a second input size for FLOPs and latency, closer to deployment.
        latency_rounds: interleaved rounds of timing per experiment.
        latency_per_round: timed forward passes per model and round.
        latency_threads: torch CPU threads while timing.
    """

    proxy: ProxyTraining = field(default_factory=ProxyTraining)
    depths: tuple[int, ...] = (20, 56, 110)
    width_scale: float = 1.0
    seeds: int = 1
    calibration_seeds: int = 3
    large_size: int = 224
    latency_rounds: int = 6
    latency_per_round: int = 5
    latency_threads: int = 1

    @classmethod
    def quick(cls) -> StudyConfig:
        """A run of seconds: tiny data, one epoch, shallow and narrow nets. Numbers are noise;
        it checks that every experiment runs and the report is written."""
        return cls(
            proxy=ProxyTraining(per_class=8, size=32, epochs=1, batch_size=16, latency_repeats=1),
            depths=(8, 14), width_scale=0.25, calibration_seeds=2, large_size=64, latency_rounds=1,
            latency_per_round=1,
        )


@dataclass(frozen=True)
class Variant:
    """One model of one experiment: built by `BUILDERS[builder](**kwargs, classes=...)`, trained
    on `task` (`proxy`: the 8-class proxy set; `context`: the 2-class large-context set)."""

    section: str
    name: str
    builder: str
    kwargs: tuple[tuple[str, Any], ...]
    task: str = "proxy"

    @property
    def key(self) -> str:
        return f"{self.section}/{self.name}@{self.task}"

    def build(self, classes: int) -> nn.Module:
        return BUILDERS[self.builder](classes=classes, **dict(self.kwargs))


def _kw(**kwargs: Any) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in kwargs.items()))


def _ch(base: int, scale: float, multiple: int = 8) -> int:
    return max(multiple, round(base * scale / multiple) * multiple)
