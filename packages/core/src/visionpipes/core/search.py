"""Architecture search over the block library: an Optuna multi-objective search (proxy-task
accuracy vs FLOPs or measured CPU latency, under a parameter budget) whose results are backbone
specs that `build_backbone` accepts and the domain pipelines can select.

The search space, the proxy training and the Pareto bookkeeping live here; the CLI and DVC stages
only call them. Trials are reproducible by seed, resumable from Optuna's SQLite storage, and
pruned early (over the parameter budget, or below the median of earlier trials after an epoch).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from visionpipes.core.backbones import BackboneSpec, StageSpec, build_backbone, get_spec
from visionpipes.core.errors import UserError
from visionpipes.core.proxy import CLASSES, ProxyConfig, make_proxy_dataset

COSTS = ("flops", "latency")


@dataclass(frozen=True)
class SearchSpace:
    """Choices per stage. Widths are per stage (index = stage); self-attention is offered only
    from `attention_from_stage` on, where the feature map is small enough for it to be cheap."""

    block_types: tuple[str, ...] = ("basic", "bottleneck", "inverted_residual", "depthwise_separable")
    depths: tuple[int, ...] = (1, 2, 3)
    widths: tuple[tuple[int, ...], ...] = ((16, 32, 48), (32, 48, 64), (48, 64, 96, 128), (64, 96, 128, 192))
    kernel_sizes: tuple[int, ...] = (3, 5)
    dilations: tuple[int, ...] = (1, 2)
    attentions: tuple[str, ...] = ("none", "se", "cbam", "self_attention")
    cardinalities: tuple[int, ...] = (1, 4, 8)
    stem_widths: tuple[int, ...] = (16, 24, 32)
    attention_from_stage: int = 2


@dataclass
class ProxyTraining:
    """How each candidate is trained and measured on the proxy task."""

    per_class: int = 120
    size: int = 64
    epochs: int = 3
    batch_size: int = 64
    lr: float = 3e-3
    val_fraction: float = 0.25
    latency_repeats: int = 10
    seed: int = 0


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

    def cost(self, kind: str) -> float:
        return self.mflops if kind == "flops" else self.latency_ms


def suggest_spec(trial: Any, space: SearchSpace = SearchSpace()) -> BackboneSpec:
    """Sample a 4-stage backbone spec (strides 4, 8, 16, 32 after a ResNet stem) from `trial`."""
    stages = []
    for i, widths in enumerate(space.widths):
        block = trial.suggest_categorical(f"s{i}_block", list(space.block_types))
        attn_choices = [a for a in space.attentions if a != "self_attention" or i >= space.attention_from_stage]
        attn = trial.suggest_categorical(f"s{i}_attn", attn_choices)
        kw: dict[str, Any] = {
            "block": block,
            "depth": trial.suggest_categorical(f"s{i}_depth", list(space.depths)),
            "width": trial.suggest_categorical(f"s{i}_width", list(widths)),
            "stride": 1 if i == 0 else 2,
            "kernel_size": trial.suggest_categorical(f"s{i}_kernel", list(space.kernel_sizes)),
            "dilation": trial.suggest_categorical(f"s{i}_dilation", list(space.dilations)),
            "attn": None if attn == "none" else attn,
        }
        if block == "bottleneck":
            cardinality = trial.suggest_categorical(f"s{i}_cardinality", list(space.cardinalities))
            # base width 128/c: c groups of 128/c channels per 64 planes, i.e. ResNeXt's doubling
            kw.update(cardinality=cardinality, base_width=128 // cardinality if cardinality > 1 else 64)
        if block == "inverted_residual":
            kw["expand_ratio"] = trial.suggest_categorical(f"s{i}_expand", [3, 6])
        stages.append(StageSpec(**kw))
    stem = trial.suggest_categorical("stem_width", list(space.stem_widths))
    return BackboneSpec(name=f"nas_{trial.number}", stages=stages, stem="resnet", stem_width=stem)


class Classifier(nn.Module):
    """A backbone + global pooling + linear head, for the proxy task."""

    def __init__(self, spec: BackboneSpec, classes: int) -> None:
        super().__init__()
        self.backbone = build_backbone(spec)
        self.head = nn.Linear(self.backbone.out_channels[-1], classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.backbone(x)[-1]
        return self.head(feat.flatten(2).mean(-1))


def proxy_split(cfg: ProxyTraining) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """The proxy set, split into train and validation (deterministic by `cfg.seed`)."""
    x, y = make_proxy_dataset(ProxyConfig(per_class=cfg.per_class, size=cfg.size, seed=cfg.seed))
    n_val = max(len(CLASSES), int(len(x) * cfg.val_fraction))
    return (x[n_val:], y[n_val:]), (x[:n_val], y[:n_val])


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int) -> float:
    model.eval()
    correct = 0
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            correct += int((model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum())
    return correct / len(x)


def train_and_measure(
    spec: BackboneSpec,
    cfg: ProxyTraining,
    data: tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    *,
    epoch_callback: Any = None,
) -> CandidateResult:
    """Train `spec` on the proxy task and measure accuracy, FLOPs, latency and parameters.

    Args:
        spec: the backbone.
        cfg: proxy training settings.
        data: `proxy_split(cfg)`.
        epoch_callback: called as `f(epoch, accuracy)` after each epoch; may raise to stop.
    """
    from visionpipes.core.profile import count_flops, count_parameters, measure_latency

    torch.manual_seed(cfg.seed)
    (x_train, y_train), (x_val, y_val) = data
    model = Classifier(spec, len(CLASSES))
    example = torch.zeros(1, 3, cfg.size, cfg.size)
    mflops = count_flops(model, example) / 1e6
    params = count_parameters(model)
    start = time.perf_counter()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    steps = cfg.epochs * math.ceil(len(x_train) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps, pct_start=0.2)
    gen = torch.Generator().manual_seed(cfg.seed)
    history = []
    for epoch in range(cfg.epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=gen)
        for i in range(0, len(order), cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            xb = x_train[idx]
            flip = torch.rand(len(idx), generator=gen) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
            loss = nn.functional.cross_entropy(model(xb), y_train[idx], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        acc = _accuracy(model, x_val, y_val, 256)
        history.append(acc)
        if epoch_callback is not None:
            epoch_callback(epoch, acc)
    seconds = time.perf_counter() - start
    latency = measure_latency(model, example, warmup=2, repeats=cfg.latency_repeats).median_ms
    return CandidateResult(
        name=spec.name, accuracy=history[-1], mflops=mflops, latency_ms=latency, params=params,
        seconds=seconds, spec=spec.to_dict(), epoch_accuracy=history,
    )


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
class SearchConfig:
    """A whole search: trials, objectives, budget, storage."""

    trials: int = 12
    cost: str = "flops"
    param_budget: int = 2_000_000
    seed: int = 0
    storage: str | None = None
    study_name: str = "visionpipes-nas"
    prune_after_startup: int = 4
    baselines: tuple[str, ...] = ("resnet18", "mobilenet_v2")
    proxy: ProxyTraining = field(default_factory=ProxyTraining)
    space: SearchSpace = field(default_factory=SearchSpace)

    def __post_init__(self) -> None:
        if self.cost not in COSTS:
            raise UserError(f"search cost must be one of {', '.join(COSTS)}, got {self.cost!r}.")
        if self.trials < 1:
            raise UserError(f"search trials must be >= 1, got {self.trials}.")
        if isinstance(self.proxy, dict):
            self.proxy = ProxyTraining(**self.proxy)


@dataclass
class SearchOutcome:
    """What a search found."""

    trials: list[CandidateResult]
    baselines: list[CandidateResult]
    front: list[CandidateResult]
    best: CandidateResult
    dominated_baselines: dict[str, list[str]]
    pruned: int


def _result_from_trial(trial: Any) -> CandidateResult:
    return CandidateResult(**trial.user_attrs["result"])


def _median_rule(study: Any, trial: Any, epoch: int, acc: float, startup: int) -> None:
    """Prune a trial whose accuracy after `epoch` is below the median of finished trials then."""
    import optuna

    trial.set_user_attr(f"acc_epoch{epoch}", acc)
    done = [
        t.user_attrs.get(f"acc_epoch{epoch}")
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    ]
    done = sorted(a for a in done if a is not None)
    if len(done) >= startup and acc < done[len(done) // 2]:
        raise optuna.TrialPruned(f"accuracy {acc:.3f} after epoch {epoch + 1} is below the median {done[len(done) // 2]:.3f}")


def run_search(config: SearchConfig, *, log: Any = print) -> SearchOutcome:
    """Run (or resume) the search and evaluate the baseline presets on the same proxy task.

    `config.trials` is the total: a resumed study runs only the missing trials.

    Raises:
        UserError: if no trial finished within the parameter budget.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    data = proxy_split(config.proxy)
    sampler = optuna.samplers.NSGAIISampler(seed=config.seed, population_size=max(4, min(20, config.trials // 2)))
    study = optuna.create_study(
        directions=["maximize", "minimize"], sampler=sampler, storage=config.storage,
        study_name=config.study_name, load_if_exists=True,
    )
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    already = len(study.get_trials(deepcopy=False, states=finished))
    remaining = max(0, config.trials - already)
    if already:
        log(f"resuming study '{config.study_name}': {already} trials done, {remaining} to go")

    def objective(trial: Any) -> tuple[float, float]:
        from visionpipes.core.profile import count_parameters

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
    import yaml

    from visionpipes.core.io import atomic_path, write_json

    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "search.json", {
        "cost": config.cost,
        "param_budget": config.param_budget,
        "proxy": asdict(config.proxy),
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


def load_spec_file(path: str | Path) -> BackboneSpec:
    """Read a spec written by the search (`best_spec.yaml`, or JSON).

    Raises:
        UserError: if the file is missing or not a valid spec.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UserError(f"backbone spec file {path} does not exist.")
    try:
        data = yaml.safe_load(path.read_text()) if path.suffix in (".yaml", ".yml") else json.loads(path.read_text())
        return BackboneSpec.from_dict(data)
    except (ValueError, TypeError, yaml.YAMLError) as err:
        raise UserError(f"backbone spec file {path} is not a valid spec: {err}") from None
