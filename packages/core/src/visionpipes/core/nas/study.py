"""The Optuna driver of the architecture search: a multi-objective NSGA-II study (proxy accuracy
vs FLOPs or latency, under a parameter budget), resumable from SQLite storage, pruned early, and
the baseline presets trained on the same budget.

The only module of visionpipes that imports Optuna (the `visionpipes-core[nas]` extra).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import optuna
from pydantic import field_validator

from visionpipes.core.backbones import get_spec, list_backbones
from visionpipes.core.config import ConfigModel, Field, closest
from visionpipes.core.errors import UserError
from visionpipes.core.nas.proxy import CLASSES
from visionpipes.core.nas.results import CandidateResult, SearchOutcome, dominates, pareto_front
from visionpipes.core.nas.space import SearchSpace, suggest_spec
from visionpipes.core.nas.training import Classifier, ProxyTraining, proxy_split, train_and_measure
from visionpipes.core.profile import count_parameters


class SearchConfig(ConfigModel):
    """A whole search: trials, objectives, budget, storage (the `search` section of params.yaml)."""

    trials: int = Field(12, ge=1)
    cost: Literal["flops", "latency"] = "flops"
    param_budget: int = Field(2_000_000, ge=1)
    seed: int = 0
    storage: str | None = None
    study_name: str = "visionpipes-nas"
    prune_after_startup: int = Field(4, ge=0)
    baselines: tuple[str, ...] = ("resnet18", "mobilenet_v2")
    proxy: ProxyTraining = Field(default_factory=ProxyTraining)
    space: SearchSpace = Field(default_factory=SearchSpace)

    @field_validator("baselines")
    @classmethod
    def _known_presets(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        presets = list_backbones()
        for name in names:
            if name not in presets:
                guess = closest(name, presets)
                hint = f"did you mean '{guess}'?" if guess else f"presets: {', '.join(presets)}"
                raise ValueError(f"unknown baseline backbone {name!r}; {hint}")
        return names


def _result_from_trial(trial: Any) -> CandidateResult:
    return CandidateResult(**trial.user_attrs["result"])


def _median_rule(study: Any, trial: Any, epoch: int, acc: float, startup: int) -> None:
    """Prune a trial whose accuracy after `epoch` is below the median of finished trials then."""
    trial.set_user_attr(f"acc_epoch{epoch}", acc)
    done = [
        t.user_attrs.get(f"acc_epoch{epoch}")
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    ]
    done = sorted(a for a in done if a is not None)
    if len(done) >= startup and acc < done[len(done) // 2]:
        raise optuna.TrialPruned(f"accuracy {acc:.3f} after epoch {epoch + 1} is below the median {done[len(done) // 2]:.3f}")


def _prepare_storage(storage: str | None) -> None:
    """Create the folder of a relative or absolute `sqlite:///` file, which SQLite will not do."""
    prefix = "sqlite:///"
    if storage and storage.startswith(prefix) and storage[len(prefix):] not in ("", ":memory:"):
        Path(storage[len(prefix):]).parent.mkdir(parents=True, exist_ok=True)


def _fingerprint(config: SearchConfig) -> dict[str, Any]:
    """What must not change between the runs of one stored study (the trial count may)."""
    data = {
        "cost": config.cost, "param_budget": config.param_budget, "seed": config.seed,
        "proxy": config.proxy.model_dump(), "space": config.space.model_dump(),
    }
    return json.loads(json.dumps(data))


def _check_fingerprint(study: Any, config: SearchConfig) -> None:
    """Record the settings in a new study; refuse to resume a study run with other settings."""
    stored = study.user_attrs.get("settings")
    current = _fingerprint(config)
    if stored is None:
        study.set_user_attr("settings", current)
        return
    changed = sorted(k for k in current if stored.get(k) != current[k])
    if changed:
        raise UserError(
            f"study '{config.study_name}' in {config.storage} was run with other {', '.join(changed)} settings; "
            "use another --study-name or delete the storage to start afresh."
        )


def run_search(config: SearchConfig, *, log: Any = print) -> SearchOutcome:
    """Run (or resume) the search and evaluate the baseline presets on the same proxy task.

    `config.trials` is the total: a resumed study runs only the missing trials.

    Raises:
        UserError: if no trial finished within the parameter budget, or if the stored study was
            run with other proxy, space, cost, budget or seed settings.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    _prepare_storage(config.storage)
    data = proxy_split(config.proxy)
    sampler = optuna.samplers.NSGAIISampler(seed=config.seed, population_size=max(4, min(20, config.trials // 2)))
    study = optuna.create_study(
        directions=["maximize", "minimize"], sampler=sampler, storage=config.storage,
        study_name=config.study_name, load_if_exists=True,
    )
    _check_fingerprint(study, config)
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    already = len(study.get_trials(deepcopy=False, states=finished))
    remaining = max(0, config.trials - already)
    if already:
        log(f"resuming study '{config.study_name}': {already} trials done, {remaining} to go")

    def objective(trial: Any) -> tuple[float, float]:
        spec = suggest_spec(trial, config.space)
        params = count_parameters(Classifier(spec, len(CLASSES)))
        trial.set_user_attr("params", params)
        if params > config.param_budget:
            raise optuna.TrialPruned(f"{params} parameters over the budget of {config.param_budget}")
        result = train_and_measure(
            spec, config.proxy, data,
            epoch_callback=lambda e, a: _median_rule(study, trial, e, a, config.prune_after_startup),
        )
        trial.set_user_attr("result", asdict(result))
        log(f"trial {trial.number}: acc {result.accuracy:.3f}, {result.mflops:.1f} MFLOPs, "
            f"{result.latency_ms:.2f} ms, {result.params / 1e6:.2f} M params, {result.seconds:.0f} s")
        return result.accuracy, result.cost(config.cost)

    if remaining:
        study.optimize(objective, n_trials=remaining, catch=())
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    pruned = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.PRUNED,)))
    results = [_result_from_trial(t) for t in complete]
    if not results:
        raise UserError(f"no trial finished within the parameter budget of {config.param_budget}; raise it.")
    baselines = []
    for name in config.baselines:
        log(f"baseline {name} on the same proxy task ...")
        baselines.append(train_and_measure(get_spec(name), config.proxy, data))
    front = pareto_front(results, config.cost)
    best = max(front, key=lambda r: (r.accuracy, -r.cost(config.cost)))
    dominated = {
        r.name: [b.name for b in baselines if dominates(r, b, config.cost)] for r in front
    }
    return SearchOutcome(results, baselines, front, best, {k: v for k, v in dominated.items() if v}, pruned)
