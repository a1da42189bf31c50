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
    """How each candidate is trained and measured on the proxy task.

    The defaults are calibrated (benchmarks/results/architecture_study/report.md, section 0) so
    that architectures separate well above chance (0.125) and below 1: a small ResNet (one basic
    block per stage, 32-256 channels, 1.2 M parameters) reaches 0.71 (0.70-0.73 over 3 seeds), a
    small MobileNetV2-like net 0.65, and, in the core pipeline's search, ResNet-18 0.71 and
    MobileNetV2 0.51, for about 30 s of single-thread CPU time per small candidate.
    """

    per_class: int = 300
    size: int = 48
    epochs: int = 8
    batch_size: int = 32
    lr: float = 5e-3
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
    epoch_loss: list[float] = field(default_factory=list)

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


@dataclass
class TrainingHistory:
    """Per-epoch curves of one proxy training run."""

    val_accuracy: list[float]
    train_loss: list[float]
    train_accuracy: list[float]
    seconds: float


def train_classifier(
    model: nn.Module,
    cfg: ProxyTraining,
    data: tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    *,
    epoch_callback: Any = None,
) -> TrainingHistory:
    """Train any classifier on the proxy data with the proxy recipe (AdamW, one-cycle schedule,
    label smoothing 0.05, random horizontal flips), deterministic by `cfg.seed`.

    Call `torch.manual_seed(cfg.seed)` before building `model` for reproducible weights.

    Args:
        model: maps `(N, 3, size, size)` images to class logits.
        cfg: proxy training settings (epochs, batch size, learning rate, seed).
        data: `((x_train, y_train), (x_val, y_val))`, e.g. `proxy_split(cfg)`.
        epoch_callback: called as `f(epoch, val_accuracy)` after each epoch; may raise to stop.

    Returns:
        Validation accuracy, mean training loss and running training accuracy per epoch, and
        the training time in seconds.
    """
    (x_train, y_train), (x_val, y_val) = data
    start = time.perf_counter()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    steps = cfg.epochs * math.ceil(len(x_train) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps, pct_start=0.2)
    gen = torch.Generator().manual_seed(cfg.seed)
    history = TrainingHistory([], [], [], 0.0)
    for epoch in range(cfg.epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=gen)
        loss_sum, correct = 0.0, 0
        for i in range(0, len(order), cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            xb = x_train[idx]
            flip = torch.rand(len(idx), generator=gen) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
            logits = model(xb)
            loss = nn.functional.cross_entropy(logits, y_train[idx], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += float(loss.detach()) * len(idx)
            correct += int((logits.detach().argmax(1) == y_train[idx]).sum())
        acc = _accuracy(model, x_val, y_val, 256)
        history.val_accuracy.append(acc)
        history.train_loss.append(loss_sum / len(x_train))
        history.train_accuracy.append(correct / len(x_train))
        if epoch_callback is not None:
            epoch_callback(epoch, acc)
    history.seconds = time.perf_counter() - start
    return history


def train_and_measure(
    spec: BackboneSpec,
    cfg: ProxyTraining,
    data: tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    *,
    epoch_callback: Any = None,
    model_out: list[nn.Module] | None = None,
) -> CandidateResult:
    """Train `spec` on the proxy task and measure accuracy, FLOPs, latency and parameters.

    Args:
        spec: the backbone.
        cfg: proxy training settings.
        data: `proxy_split(cfg)`.
        epoch_callback: called as `f(epoch, accuracy)` after each epoch; may raise to stop.
        model_out: if given, the trained model is appended to it (to save a checkpoint).
    """
    from visionpipes.core.profile import count_flops, count_parameters, measure_latency

    torch.manual_seed(cfg.seed)
    model = Classifier(spec, len(CLASSES))
    example = torch.zeros(1, 3, cfg.size, cfg.size)
    mflops = count_flops(model, example) / 1e6
    params = count_parameters(model)
    history = train_classifier(model, cfg, data, epoch_callback=epoch_callback)
    latency = measure_latency(model, example, warmup=2, repeats=cfg.latency_repeats).median_ms
    if model_out is not None:
        model_out.append(model)
    return CandidateResult(
        name=spec.name, accuracy=history.val_accuracy[-1], mflops=mflops, latency_ms=latency, params=params,
        seconds=history.seconds, spec=spec.to_dict(), epoch_accuracy=history.val_accuracy,
        epoch_loss=history.train_loss,
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


def _prepare_storage(storage: str | None) -> None:
    """Create the folder of a relative or absolute `sqlite:///` file, which SQLite will not do."""
    prefix = "sqlite:///"
    if storage and storage.startswith(prefix) and storage[len(prefix):] not in ("", ":memory:"):
        Path(storage[len(prefix):]).parent.mkdir(parents=True, exist_ok=True)


def _fingerprint(config: SearchConfig) -> dict[str, Any]:
    """What must not change between the runs of one stored study (the trial count may)."""
    data = {
        "cost": config.cost, "param_budget": config.param_budget, "seed": config.seed,
        "proxy": asdict(config.proxy), "space": asdict(config.space),
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
    import optuna

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
    from visionpipes.core.backbones import load_spec_file as _load

    try:
        return _load(path)
    except ValueError as err:
        raise UserError(str(err)) from None


def compare_latency(
    models: dict[str, nn.Module], example: torch.Tensor, *, rounds: int = 6, per_round: int = 5, threads: int = 1
) -> dict[str, float]:
    """Median batch latency (ms) of several models measured side by side: `rounds` rounds over
    all models (order reversed every other round), `per_round` timed runs each, after two warm-up
    runs per model, in eval and inference mode on `threads` CPU threads. Interleaving makes load
    from other processes fall on every model alike, so the ratios are fair on a shared machine.

    Raises:
        ValueError: if `rounds`, `per_round` or `threads` is below 1.
    """
    import statistics

    from visionpipes.core.profile import eval_mode, time_forward

    if min(rounds, per_round, threads) < 1:
        raise ValueError(f"rounds, per_round and threads must be >= 1, got {rounds}, {per_round}, {threads}.")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    samples: dict[str, list[float]] = {name: [] for name in models}
    try:
        with torch.inference_mode():
            for model in models.values():
                with eval_mode(model):
                    time_forward(model, (example,), 2)
            names = list(models)
            for r in range(rounds):
                for name in names if r % 2 == 0 else names[::-1]:
                    with eval_mode(models[name]):
                        samples[name] += time_forward(models[name], (example,), per_round)
    finally:
        torch.set_num_threads(previous)
    return {name: float(statistics.median(s)) for name, s in samples.items()}


def train_spec(spec: BackboneSpec, cfg: ProxyTraining, out_dir: Path, *, log: Any = print) -> CandidateResult:
    """Train `spec` on the proxy task (e.g. the search's best spec, for more epochs) and write,
    atomically as one folder, `model.pt` (state dict, spec, proxy settings), `metrics.json` and
    DVCLive curves (`dvclive/plots/metrics/{val_accuracy,train_loss}.tsv`, one point per epoch).

    Raises:
        UserError: if the folder that would hold `out_dir` does not exist.
    """
    from dvclive import Live

    from visionpipes.core.io import atomic_path, write_json

    data = proxy_split(cfg)
    log(f"training {spec.name} on the proxy task: {cfg.epochs} epochs, {len(data[0][1])} images ...")
    models: list[nn.Module] = []
    result = train_and_measure(
        spec, cfg, data, model_out=models,
        epoch_callback=lambda e, a: log(f"  epoch {e + 1}/{cfg.epochs}: val accuracy {a:.3f}"),
    )
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir, is_dir=True) as tmp:
        torch.save(
            {"state_dict": models[0].state_dict(), "spec": spec.to_dict(), "proxy": asdict(cfg), "classes": list(CLASSES)},
            tmp / "model.pt",
        )
        write_json(tmp / "metrics.json", {
            "name": spec.name, "accuracy": result.accuracy, "epochs": cfg.epochs, "mflops": result.mflops,
            "latency_ms": result.latency_ms, "params": result.params, "seconds": result.seconds,
            "epoch_accuracy": result.epoch_accuracy, "epoch_loss": result.epoch_loss,
        })
        live = Live(str(tmp / "dvclive"), dvcyaml=False, save_dvc_exp=False, report=None)
        for acc, loss in zip(result.epoch_accuracy, result.epoch_loss):
            live.log_metric("val_accuracy", acc)
            live.log_metric("train_loss", loss)
            live.next_step()
        live.end()
    return result


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
    from visionpipes.core.io import atomic_path, write_json

    search = _read_json(Path(search_dir) / "search.json", "search results")
    trained = _read_json(Path(trained_dir) / "metrics.json", "training metrics")
    if not isinstance(trained.get("accuracy"), (int, float)):
        raise UserError(f"training metrics {Path(trained_dir) / 'metrics.json'} have no numeric 'accuracy'.")
    try:
        proxy = ProxyTraining(**search["proxy"])
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
        models[r.name] = Classifier(BackboneSpec.from_dict(r.spec), len(CLASSES))
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
