"""The architecture study: what each idea of the core block library buys, measured with our own
runs on the proxy task of the architecture search (`visionpipes.core.proxy`), every model trained
with the same recipe and budget (`visionpipes.core.search.train_classifier`).

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
Measures only; it changes no library code.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch
from torch import nn

from visionpipes.core.backbones import BackboneSpec, StageSpec
from visionpipes.core.blocks import ASPP, ConvNormAct, DepthwiseSeparableConv, ResidualBlock
from visionpipes.core.io import atomic_path, write_json
from visionpipes.core.profile import count_flops, count_parameters
from visionpipes.core.proxy import CLASSES, CONTEXT_CLASSES, ProxyConfig, make_context_dataset
from visionpipes.core.search import Classifier, ProxyTraining, compare_latency, proxy_split, train_classifier

SECTIONS = ("calibration", "depth", "separable", "scaling", "attention", "context")
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "architecture_study"


# ----------------------------------------------------------------------------------------------
# configuration


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


# ----------------------------------------------------------------------------------------------
# models


class PooledClassifier(nn.Module):
    """Features -> global average pooling -> linear classifier."""

    def __init__(self, features: nn.Module, channels: int, classes: int) -> None:
        super().__init__()
        self.features = features
        self.head = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3)))


def cifar_net(depth: int, skip: bool, widths: Sequence[int], classes: int) -> nn.Module:
    """The CIFAR ResNet of He et al. (2016, section 4.2): a 3x3 conv, then 3 stages of n basic
    blocks (widths x1, x2, x4, stride 2 between stages), pooling and a linear layer: 6n + 2
    layers. `skip=False` is the paper's plain net (same layers, no shortcuts). Our stem adds a
    stride-2 conv and a 2x2 max-pool so that the proxy images (48 px) cost what 12 px would.

    Raises:
        ValueError: if `depth` is not 6n + 2.
    """
    if (depth - 2) % 6 or depth < 8:
        raise ValueError(f"a CIFAR-style net has 6n + 2 layers (8, 14, 20, ...), got {depth}.")
    n = (depth - 2) // 6
    layers: list[nn.Module] = [ConvNormAct(2, 3, widths[0], 3, 2), nn.MaxPool2d(2)]
    ch = widths[0]
    for i, width in enumerate(widths):
        for j in range(n):
            layers.append(ResidualBlock(2, ch, width, stride=2 if i > 0 and j == 0 else 1, skip=skip))
            ch = width
    return PooledClassifier(nn.Sequential(*layers), ch, classes)


def conv_stack(separable: bool, stem: int, table: Sequence[tuple[int, int]], classes: int) -> nn.Module:
    """A MobileNetV1-style stack without shortcuts: a 3x3/2 conv stem, then one layer per
    `(width, stride)`: a standard 3x3 conv-BN-ReLU, or (`separable`) a depthwise 3x3 + pointwise
    1x1 conv, each with BN-ReLU, as in Howard et al. (2017), Figure 3."""
    layers: list[nn.Module] = [ConvNormAct(2, 3, stem, 3, 2)]
    ch = stem
    for width, stride in table:
        if separable:
            layers.append(DepthwiseSeparableConv(2, ch, width, 3, stride))
        else:
            layers.append(ConvNormAct(2, ch, width, 3, stride))
        ch = width
    return PooledClassifier(nn.Sequential(*layers), ch, classes)


def spec_net(spec: tuple[tuple[str, Any], ...], classes: int) -> nn.Module:
    """The search's classifier (`Classifier`) on a backbone spec given as sorted items."""
    data = dict(spec)
    data["stages"] = [dict(s) for s in data["stages"]]
    return Classifier(BackboneSpec.from_dict(data), classes)


def context_net(head: str, width: int, classes: int) -> nn.Module:
    """A small trunk at output stride 4 (a 3x3/2 conv, a residual block with stride 2), then a
    head that keeps the resolution: `plain` (two 3x3 convs), `dilated` (the same two convs with
    dilation 2 and 4: same parameters, larger field of view) or `aspp` (ASPP with rates 2, 4, 6 and
    image pooling, half the width so the parameters stay comparable); pooling and a linear layer.

    Raises:
        ValueError: for an unknown head.
    """
    trunk = [ConvNormAct(2, 3, width // 2, 3, 2), ResidualBlock(2, width // 2, width, stride=2)]
    if head == "plain":
        layers, out = [ConvNormAct(2, width, width, 3, 1, 1), ConvNormAct(2, width, width, 3, 1, 1)], width
    elif head == "dilated":
        layers, out = [ConvNormAct(2, width, width, 3, 1, 2), ConvNormAct(2, width, width, 3, 1, 4)], width
    elif head == "aspp":
        layers, out = [ASPP(2, width, width // 2, rates=(2, 4, 6))], width // 2
    else:
        raise ValueError(f"unknown context head {head!r}; use plain, dilated or aspp.")
    return PooledClassifier(nn.Sequential(*trunk, *layers), out, classes)


BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "cifar_net": cifar_net,
    "conv_stack": conv_stack,
    "spec_net": spec_net,
    "context_net": context_net,
}


def _spec_items(spec: BackboneSpec) -> tuple[tuple[str, Any], ...]:
    data = spec.to_dict()
    data["stages"] = tuple(tuple(sorted(s.items())) for s in data["stages"])
    return tuple(sorted(data.items(), key=lambda kv: kv[0]))


def _bottleneck_spec(name: str, depth: int, widths: Sequence[int], cardinality: int, base_width: int,
                     stem: int) -> BackboneSpec:
    stages = [
        StageSpec("bottleneck", depth, w, stride=1 if i == 0 else 2, cardinality=cardinality, base_width=base_width)
        for i, w in enumerate(widths)
    ]
    return BackboneSpec(name=name, stages=stages, stem_width=stem)


def _spec_params(spec: BackboneSpec) -> int:
    return count_parameters(Classifier(spec, len(CLASSES)))


def scaling_specs(scale: float) -> list[BackboneSpec]:
    """Bottleneck nets for depth vs width vs cardinality (ResNeXt, Table 4): a baseline of one
    block per stage (1x64d), and three ways to about double its parameters: two blocks per stage
    (deeper), wider stages (wider, 1xNd), or cardinality 8 with the group width that matches the
    deeper net's parameters (8xNd)."""
    widths = [_ch(w, scale, 32) for w in (64, 128, 256, 512)]
    stem = _ch(32, scale)
    base = _bottleneck_spec("baseline 1x64d", 1, widths, 1, 64, stem)
    deeper = _bottleneck_spec("deeper (2 blocks/stage)", 2, widths, 1, 64, stem)
    target = _spec_params(deeper)

    def wider_spec(f: float) -> BackboneSpec:
        return _bottleneck_spec("wider", 1, [_ch(w * f, 1.0, 32) for w in widths], 1, 64, stem)

    f = min((x / 100 for x in range(100, 301, 2)), key=lambda x: abs(_spec_params(wider_spec(x)) - target))
    wider = wider_spec(f)
    wider.name = f"wider (x{f:.2f} channels)"
    card = 8
    first = math.ceil(64 / (widths[0] // 4))  # at least one channel per group
    bw = min(range(first, 257, 4), key=lambda b: abs(_spec_params(_bottleneck_spec("c", 1, widths, card, b, stem)) - target))
    group_width = int(widths[0] // 4 * bw / 64)  # channels per group in the first stage
    cardinal = _bottleneck_spec(f"cardinality ({card} groups x {group_width} ch)", 1, widths, card, bw, stem)
    return [base, deeper, wider, cardinal]


def attention_specs(scale: float) -> list[BackboneSpec]:
    """The small ResNet of the proxy calibration (one basic block per stage, 32-256 channels)
    with no attention, SE or CBAM in every block, or self-attention in the stride-16 and -32
    stages (as BoTNet puts it in the last stage only where the map is small)."""
    widths = [_ch(w, scale) for w in (32, 64, 128, 256)]
    stem = _ch(32, scale)
    specs = []
    for attn in ("none", "se", "cbam", "self_attention"):
        stages = []
        for i, w in enumerate(widths):
            a = None if attn == "none" or (attn == "self_attention" and i < 2) else attn
            stages.append(StageSpec("basic", 1, w, stride=1 if i == 0 else 2, attn=a, num_heads=4))
        specs.append(BackboneSpec(name=attn, stages=stages, stem_width=stem))
    return specs


def calibration_specs(scale: float) -> list[BackboneSpec]:
    """Reference nets for the proxy budget: the small ResNet (one basic block per stage, 32-256
    channels) and a small MobileNetV2-like net. (The presets the search compares with are trained
    on the same budget by `vp-core search` itself.)"""
    small_res = attention_specs(scale)[0]
    small_res.name = "small ResNet (4 basic blocks)"
    table = [(1, 24), (2, 32), (2, 64), (1, 128)]  # depth, width
    small_ir = BackboneSpec(
        name="small MobileNetV2-like (6 inverted residuals)", stem_width=_ch(24, scale),
        stages=[StageSpec("inverted_residual", d, _ch(w, scale), stride=1 if i == 0 else 2, expand_ratio=4)
                for i, (d, w) in enumerate(table)],
    )
    return [small_res, small_ir]


def make_variants(config: StudyConfig, sections: Sequence[str]) -> list[Variant]:
    """The models of the chosen experiments."""
    s = config.width_scale
    out: list[Variant] = []
    if "calibration" in sections:
        for spec in calibration_specs(s):
            out.append(Variant("calibration", spec.name, "spec_net", _kw(spec=_spec_items(spec))))
    if "depth" in sections:
        widths = [_ch(w, s) for w in (16, 32, 64)]
        for skip in (False, True):
            for depth in config.depths:
                name = f"{'residual' if skip else 'plain'}-{depth}"
                out.append(Variant("depth", name, "cifar_net", _kw(depth=depth, skip=skip, widths=widths)))
    if "separable" in sections:
        table = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1)]
        table = [(_ch(w / 2, s), st) for w, st in table]  # MobileNetV1 at width multiplier 0.5
        stem = _ch(16, s)
        for separable in (False, True):
            name = "depthwise separable" if separable else "standard 3x3"
            out.append(Variant("separable", name, "conv_stack", _kw(separable=separable, stem=stem, table=table)))
    if "scaling" in sections:
        for spec in scaling_specs(s):
            out.append(Variant("scaling", spec.name, "spec_net", _kw(spec=_spec_items(spec))))
    if "attention" in sections:
        for spec in attention_specs(s):
            out.append(Variant("attention", spec.name, "spec_net", _kw(spec=_spec_items(spec))))
    if "context" in sections:
        width = _ch(64, s)
        for task in ("context", "proxy"):
            for head in ("plain", "dilated", "aspp"):
                out.append(Variant("context", head, "context_net", _kw(head=head, width=width), task=task))
    return out


# ----------------------------------------------------------------------------------------------
# training (possibly in worker processes) and measuring


def _dataset(task: str, cfg: ProxyTraining) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    return _cached_dataset(task, cfg.per_class, cfg.size, cfg.seed, cfg.val_fraction)


@functools.lru_cache(maxsize=4)
def _cached_dataset(task: str, per_class: int, size: int, seed: int, val_fraction: float) -> tuple[
    tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]
]:
    if task == "proxy":
        return proxy_split(ProxyTraining(per_class=per_class, size=size, seed=seed, val_fraction=val_fraction))
    # the same number of images as the 8-class proxy set, in 2 classes
    x, y = make_context_dataset(ProxyConfig(per_class=per_class * len(CLASSES) // len(CONTEXT_CLASSES), size=size, seed=seed))
    n_val = max(len(CONTEXT_CLASSES), int(len(x) * val_fraction))
    return (x[n_val:], y[n_val:]), (x[:n_val], y[:n_val])


def _classes(task: str) -> int:
    return len(CLASSES) if task == "proxy" else len(CONTEXT_CLASSES)


def train_variant(job: tuple[Variant, int, ProxyTraining, int]) -> dict[str, Any]:
    """Train one variant with one seed; return its curves and timings (picklable)."""
    variant, seed, cfg, threads = job
    torch.set_num_threads(threads)
    data = _dataset(variant.task, cfg)
    run_cfg = replace(cfg, seed=seed)
    torch.manual_seed(seed)
    model = variant.build(_classes(variant.task))
    cpu0 = time.process_time()
    history = train_classifier(model, run_cfg, data)
    return {
        "key": variant.key, "seed": seed, "val_accuracy": history.val_accuracy, "train_loss": history.train_loss,
        "train_accuracy": history.train_accuracy, "seconds": history.seconds,
        "cpu_seconds": time.process_time() - cpu0, "threads": threads, "n_val": len(data[1][1]),
    }


def receptive_field(model: nn.Module, size: int) -> int:
    """Side (px) of the input region that the centre unit of the last feature map depends on:
    the support of its gradient, summed over a few random inputs."""
    features = model.features if hasattr(model, "features") else model
    model = model.eval()
    x = torch.randn(4, 3, size, size, requires_grad=True)
    out = features(x)
    h, w = out.shape[-2:]
    out[:, :, h // 2, w // 2].abs().sum().backward()
    support = (x.grad.abs().sum((0, 1)) > 0).nonzero()
    if len(support) == 0:
        return 0
    return int(max(support[:, 0].max() - support[:, 0].min(), support[:, 1].max() - support[:, 1].min()) + 1)


def measure_section(variants: Sequence[Variant], config: StudyConfig) -> dict[str, dict[str, Any]]:
    """Parameters, FLOPs and interleaved latency at the proxy size and `large_size`, per model
    (fresh weights: latency and FLOPs do not depend on them)."""
    out: dict[str, dict[str, Any]] = {}
    models: dict[str, nn.Module] = {}
    for v in variants:
        torch.manual_seed(0)
        model = v.build(_classes(v.task)).eval()
        small = torch.zeros(1, 3, config.proxy.size, config.proxy.size)
        large = torch.zeros(1, 3, config.large_size, config.large_size)
        out[v.key] = {
            "params": count_parameters(model),
            "mflops": count_flops(model, small) / 1e6,
            "mflops_large": count_flops(model, large) / 1e6,
        }
        if v.section == "context":
            out[v.key]["receptive_field"] = receptive_field(v.build(_classes(v.task)), config.proxy.size)
        models[v.key] = model
    for size, label in ((config.proxy.size, "latency_ms"), (config.large_size, "latency_large_ms")):
        medians = compare_latency(models, torch.zeros(1, 3, size, size), rounds=config.latency_rounds,
                                  per_round=config.latency_per_round, threads=config.latency_threads)
        for key, ms in medians.items():
            out[key][label] = ms
    return out


def run_trainings(variants: Sequence[Variant], config: StudyConfig, jobs: int, threads: int,
                  log: Callable[[str], None] = print) -> dict[str, list[dict[str, Any]]]:
    """Train every variant with every seed, in `jobs` processes of `threads` torch threads."""
    work = [
        (v, seed, config.proxy, threads)
        for v in variants
        for seed in range(config.calibration_seeds if v.section == "calibration" else config.seeds)
    ]
    order = list(range(len(work)))
    if jobs > 1:  # the costliest first, so that the pool does not end waiting on one long job
        cost = {v.key: _flops_at_32px(v) for v in variants}
        order.sort(key=lambda i: -cost[work[i][0].key])
    results: dict[str, list[dict[str, Any]]] = {v.key: [] for v in variants}
    done = 0

    def record(res: dict[str, Any]) -> None:
        nonlocal done
        done += 1
        results[res["key"]].append(res)
        log(f"[{done}/{len(work)}] {res['key']} seed {res['seed']}: val acc {res['val_accuracy'][-1]:.3f}, "
            f"train loss {res['train_loss'][-1]:.3f}, {res['seconds']:.0f} s")

    if jobs <= 1:
        for i in order:
            record(train_variant(work[i]))
    else:
        with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
            for res in pool.map(train_variant, [work[i] for i in order]):
                record(res)
    for runs in results.values():
        runs.sort(key=lambda r: r["seed"])
    return results


def _flops_at_32px(v: Variant) -> float:
    """A rough cost to order jobs by: FLOPs at a small input."""
    torch.manual_seed(0)
    return count_flops(v.build(_classes(v.task)), torch.zeros(1, 3, 32, 32))


# ----------------------------------------------------------------------------------------------
# summaries, plots, report


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


def report_depth(rows: dict[str, dict[str, Any]], out: Path, cfg: StudyConfig) -> list[str]:
    sec = _section_rows(rows, "depth")
    plain = sorted((r for r in sec if r["name"].startswith("plain")), key=lambda r: int(r["name"].split("-")[1]))
    res = sorted((r for r in sec if r["name"].startswith("residual")), key=lambda r: int(r["name"].split("-")[1]))
    depths = [int(r["name"].split("-")[1]) for r in plain]
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    colours = plt.cm.viridis([i / max(1, len(depths) - 1) * 0.85 for i in range(len(depths))])
    for c, p, r, d in zip(colours, plain, res, depths):
        epochs = range(1, len(p["curve_train_loss"]) + 1)
        ax1.plot(epochs, p["curve_train_loss"], ".--", color=c, label=f"plain-{d}")
        ax1.plot(epochs, r["curve_train_loss"], ".-", color=c, label=f"residual-{d}")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("training loss (label smoothing 0.05)")
    ax1.set_title("Training loss: plain (dashed) vs residual (solid)")
    ax1.legend(fontsize=7)
    ax2.plot(depths, [r["val_accuracy"] for r in plain], "o--", label="plain")
    ax2.plot(depths, [r["val_accuracy"] for r in res], "o-", label="residual")
    ax2.set_xlabel("layers")
    ax2.set_ylabel("validation accuracy")
    ax2.set_xticks(depths)
    ax2.set_title("Final accuracy vs depth")
    ax2.legend()
    fig.tight_layout()
    _save(fig, out / "depth.png")

    table = _table(
        ["net", "layers", "params (k)", "MFLOPs", "train loss", "train acc %", "val acc %", "latency ms (48 px)"],
        [[r["name"].split("-")[0], r["name"].split("-")[1], f"{r['params'] / 1e3:.0f}", f"{r['mflops']:.1f}",
          f"{r['train_loss']:.3f}", _pp(r["train_accuracy"]), _acc_cell(r), f"{r['latency_ms']:.2f}"]
         for r in plain + res],
    )
    lo, hi = depths[0], depths[-1]
    p_lo, p_hi, r_lo, r_hi = plain[0], plain[-1], res[0], res[-1]
    plain_degrades = p_hi["train_loss"] > p_lo["train_loss"] + 0.02
    res_ok = r_hi["train_loss"] <= r_lo["train_loss"] + 0.02
    gap = [r["val_accuracy"] - p["val_accuracy"] for p, r in zip(plain, res)]
    if plain_degrades and res_ok:
        verdict = "**Agrees.**"
    elif plain_degrades or res_ok:
        verdict = "**Partly agrees.**"
    else:
        verdict = "**Disagrees.**"
    text = [
        "## 1. Depth without and with skip connections",
        "",
        "Published (He et al., 2016, *Deep Residual Learning*, Fig. 1 and 6, CIFAR-10): plain nets of 20, 32, 44, 56",
        "layers get *higher training error* the deeper they are (degradation, not overfitting); the same nets with",
        "identity shortcuts do not degrade and improve with depth (test error 8.75 % at 20 layers, 6.97 % at 56,",
        "6.43 % at 110).",
        "",
        f"Ours: CIFAR-style nets ({'/'.join(str(d) for d in depths)} layers, 3 stages of basic blocks built from",
        "`ResidualBlock(skip=False|True)`, identical otherwise), each trained with the proxy recipe for",
        f"{cfg.proxy.epochs} epochs. Training loss is the mean over the last epoch.",
        "",
        *table,
        "",
        "![depth](depth.png)",
        "",
        f"{verdict} Plain: training loss {p_lo['train_loss']:.3f} at {lo} layers vs {p_hi['train_loss']:.3f} at {hi}"
        f" ({'higher: the deeper plain net trains worse' if plain_degrades else 'not higher'}), validation accuracy"
        f" {_pp(p_lo['val_accuracy'])} % vs {_pp(p_hi['val_accuracy'])} %. Residual: {r_lo['train_loss']:.3f} vs"
        f" {r_hi['train_loss']:.3f} ({'no degradation' if res_ok else 'it degrades too'}), accuracy"
        f" {_pp(r_lo['val_accuracy'])} % vs {_pp(r_hi['val_accuracy'])} %. The shortcut's gain in validation"
        f" accuracy grows with depth: {', '.join(f'{d}: {100 * g:+.1f} pp' for d, g in zip(depths, gap))}.",
        "",
    ]
    return text


def report_separable(rows: dict[str, dict[str, Any]], out: Path, cfg: StudyConfig) -> list[str]:
    std, sep = sorted(_section_rows(rows, "separable"), key=lambda r: r["name"] != "standard 3x3")
    metrics = [("params", "parameters"), ("mflops", f"MFLOPs ({cfg.proxy.size} px)"),
               ("latency_ms", f"latency ({cfg.proxy.size} px)"), ("latency_large_ms", f"latency ({cfg.large_size} px)")]
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw={"width_ratios": [3, 1]})
    ratios = [std[k] / sep[k] for k, _ in metrics]
    ax1.bar(range(len(metrics)), ratios, color="#1f77b4")
    for i, r in enumerate(ratios):
        ax1.annotate(f"{r:.1f}x", (i, r), ha="center", va="bottom")
    ax1.set_xticks(range(len(metrics)), [m for _, m in metrics], fontsize=8)
    ax1.set_ylabel("standard / depthwise separable")
    ax1.set_title("How much cheaper the separable net is")
    ax2.bar([0, 1], [std["val_accuracy"], sep["val_accuracy"]], color=["#7f7f7f", "#2ca02c"])
    ax2.set_xticks([0, 1], ["standard", "separable"])
    ax2.set_ylabel("validation accuracy")
    ax2.set_ylim(0, 1)
    fig.tight_layout()
    _save(fig, out / "separable.png")

    table = _table(
        ["convolutions", "params (k)", f"MFLOPs {cfg.proxy.size} px", f"MFLOPs {cfg.large_size} px",
         f"latency ms {cfg.proxy.size} px", f"latency ms {cfg.large_size} px", "val acc %"],
        [[r["name"], f"{r['params'] / 1e3:.0f}", f"{r['mflops']:.1f}", f"{r['mflops_large']:.0f}",
          f"{r['latency_ms']:.2f}", f"{r['latency_large_ms']:.2f}", _acc_cell(r)] for r in (std, sep)],
    )
    d_acc = sep["val_accuracy"] - std["val_accuracy"]
    noise = noise_pp(std)
    cheaper = ratios[0] > 4 and ratios[1] > 4
    lat_less = ratios[3] < ratios[1]
    if cheaper and d_acc * 100 >= -max(3.0, noise):
        verdict = "**Agrees**" if lat_less else "**Agrees on params/FLOPs/accuracy**"
    elif cheaper:
        verdict = "**Partly agrees** (much cheaper, but loses more accuracy than published)"
    else:
        verdict = "**Disagrees**"
    return [
        "## 2. Standard vs depthwise separable convolutions",
        "",
        "Published (Howard et al., 2017, *MobileNets*, Table 4, ImageNet): the same 28-layer net with depthwise",
        "separable instead of standard convolutions has 4.2 M vs 29.3 M parameters (7x fewer) and 569 M vs 4866 M",
        "mult-adds (8.6x fewer) for 70.6 % vs 71.7 % top-1 (-1.1 points). Later work (Ma et al., 2018, *ShuffleNet V2*)",
        "showed that FLOPs overstate the speed-up: depthwise convolutions are memory-bound, so latency falls less.",
        "",
        "Ours: a MobileNetV1-style stack (width 0.5, a 3x3/2 stem and 7 layers, no shortcuts) with `ConvNormAct`",
        f"3x3 or `DepthwiseSeparableConv`; batch-1 CPU latency, {cfg.latency_threads} thread, median of interleaved runs.",
        "",
        *table,
        "",
        "![separable](separable.png)",
        "",
        f"{verdict}: {ratios[0]:.1f}x fewer parameters and {ratios[1]:.1f}x fewer FLOPs for {100 * d_acc:+.1f} points"
        f" of accuracy (noise: about ±{noise:.1f} points). The latency falls only {ratios[2]:.1f}x at"
        f" {cfg.proxy.size} px and {ratios[3]:.1f}x at {cfg.large_size} px: "
        + ("less than the FLOPs, as ShuffleNet V2 observed." if lat_less
           else "as much as the FLOPs or more, unlike ShuffleNet V2's observation."),
        "",
    ]


def report_scaling(rows: dict[str, dict[str, Any]], out: Path, cfg: StudyConfig) -> list[str]:
    sec = _section_rows(rows, "scaling")
    base, others = sec[0], sec[1:]
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for r, c in zip(sec, ["#7f7f7f", "#1f77b4", "#ff7f0e", "#2ca02c"]):
        ax1.scatter([r["params"] / 1e6], [r["val_accuracy"]], color=c, s=50)
        ax1.annotate(r["name"].split(" (")[0], (r["params"] / 1e6, r["val_accuracy"]), textcoords="offset points",
                     xytext=(5, 3), fontsize=8)
        ax2.plot(range(1, len(r["curve_val_accuracy"]) + 1), r["curve_val_accuracy"], color=c, label=r["name"])
    ax1.set_xlabel("parameters (M)")
    ax1.set_ylabel("validation accuracy")
    ax1.set_title("Depth vs width vs cardinality")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("validation accuracy")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, out / "scaling.png")

    table = _table(
        ["net", "params (M)", "MFLOPs", "latency ms", "train loss", "val acc %"],
        [[r["name"], f"{r['params'] / 1e6:.2f}", f"{r['mflops']:.1f}", f"{r['latency_ms']:.2f}", f"{r['train_loss']:.3f}",
          _acc_cell(r)] for r in sec],
    )
    ranked = sorted(others, key=lambda r: -r["val_accuracy"])
    noise = noise_pp(ranked[0])

    def short(r: dict[str, Any]) -> str:
        return r["name"].split(" (")[0]

    margin = 100 * (ranked[0]["val_accuracy"] - ranked[1]["val_accuracy"])
    card = next(r for r in others if r["name"].startswith("cardinality"))
    beaten = [short(r) for r in others if 100 * (card["val_accuracy"] - r["val_accuracy"]) > noise]
    if ranked[0] is card and margin > noise:
        verdict = "**Agrees**: more cardinality is the best use of the extra parameters, beyond noise"
    elif ranked[0] is card:
        verdict = (f"**Consistent, but only partly resolved**: cardinality ranks first, {margin:.1f} points ahead of"
                   f" {short(ranked[1])} (within noise)"
                   + (f"; it beats {' and '.join(beaten)} beyond noise" if beaten else ""))
    elif 100 * (ranked[0]["val_accuracy"] - card["val_accuracy"]) > noise:
        verdict = f"**Disagrees**: {short(ranked[0])} beats cardinality beyond noise"
    else:
        verdict = f"**Not resolved**: {short(ranked[0])} ranks first, but cardinality is within noise of it"
    pmin, pmax = min(r["params"] for r in others), max(r["params"] for r in others)
    ranking = ", ".join(f"{short(r)} {_pp(r['val_accuracy'])} %" for r in ranked)
    return [
        "## 3. Depth vs width vs cardinality at equal parameters",
        "",
        "Published (Xie et al., 2017, *ResNeXt*, Table 4, ImageNet): at about twice the complexity of ResNet-101",
        "(22.0 % top-1 error), going deeper (ResNet-200: 21.7 %) or wider (21.3 %) helps less than increasing the",
        "cardinality (2x64d: 20.7 %, 64x4d: 20.4 %).",
        "",
        "Ours: a bottleneck net with one block per stage (baseline), and three ways to about double its",
        f"parameters ({pmin / 1e6:.2f}-{pmax / 1e6:.2f} M): two blocks per stage, wider stages, or a grouped 3x3",
        "conv of 8 groups whose width is matched to the same parameter count.",
        "",
        *table,
        "",
        "![scaling](scaling.png)",
        "",
        f"{verdict} (ranking: {ranking};"
        f" baseline {_pp(base['val_accuracy'])} %; noise about ±{noise:.1f} points).",
        "",
    ]


def report_attention(rows: dict[str, dict[str, Any]], out: Path, cfg: StudyConfig) -> list[str]:
    sec = _section_rows(rows, "attention")
    none = next(r for r in sec if r["name"] == "none")
    others = [r for r in sec if r is not none]
    noise = noise_pp(none)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for r, colour in zip(others, ["#1f77b4", "#2ca02c", "#d62728"]):
        gain = 100 * (r["val_accuracy"] - none["val_accuracy"])
        costs = [100 * (r[k] / none[k] - 1) for k in ("latency_ms", "latency_large_ms")]
        ax.plot(costs, [gain, gain], "-", color=colour, lw=1, zorder=2)
        ax.scatter(costs[:1], [gain], marker="o", color=colour, zorder=3, label=f"{r['name']}, {cfg.proxy.size} px")
        ax.scatter(costs[1:], [gain], marker="s", color=colour, zorder=3, label=f"{r['name']}, {cfg.large_size} px")
    ax.axhspan(-noise, noise, color="#dddddd", alpha=0.6, zorder=0, label="noise")
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xlabel("latency cost vs no attention (%)")
    ax.set_ylabel("accuracy gain vs no attention (points)")
    ax.set_title("Attention: accuracy gain vs latency cost")
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, out / "attention.png")

    table = _table(
        ["attention", "params (k)", "MFLOPs", "val acc %", "gain (pp)", f"latency ms {cfg.proxy.size} px",
         f"cost {cfg.proxy.size} px", f"latency ms {cfg.large_size} px", f"cost {cfg.large_size} px"],
        [[r["name"], f"{r['params'] / 1e3:.0f}", f"{r['mflops']:.1f}", _acc_cell(r),
          f"{100 * (r['val_accuracy'] - none['val_accuracy']):+.1f}", f"{r['latency_ms']:.2f}",
          f"{100 * (r['latency_ms'] / none['latency_ms'] - 1):+.0f} %", f"{r['latency_large_ms']:.2f}",
          f"{100 * (r['latency_large_ms'] / none['latency_large_ms'] - 1):+.0f} %"] for r in sec],
    )
    lines, words = [], {}
    for r in others:
        gain = 100 * (r["val_accuracy"] - none["val_accuracy"])
        if gain > noise:
            words[r["name"]] = "agrees (a gain beyond noise)"
        elif gain < -noise:
            words[r["name"]] = "disagrees (a loss beyond noise)"
        else:
            words[r["name"]] = f"not resolved ({'a gain' if gain > 0 else 'no gain'} within noise)"
        lines.append(f"- {r['name']}: {gain:+.1f} points, {words[r['name']]}, for"
                     f" {100 * (r['latency_ms'] / none['latency_ms'] - 1):+.0f} % latency at {cfg.proxy.size} px and"
                     f" {100 * (r['latency_large_ms'] / none['latency_large_ms'] - 1):+.0f} % at {cfg.large_size} px,"
                     f" {100 * (r['mflops'] / none['mflops'] - 1):+.1f} % FLOPs and"
                     f" {100 * (r['params'] / none['params'] - 1):+.1f} % parameters.")
    verdict = "**Verdicts** (noise about ±" + f"{noise:.1f} points): " + "; ".join(
        f"{name} {word}" for name, word in words.items()) + "."
    return [
        "## 4. Attention: SE, CBAM, self-attention vs none",
        "",
        "Published: SE blocks take ResNet-50 from 24.80 % to 23.29 % top-1 error on ImageNet for 3.87 vs 3.86",
        "GFLOPs (Hu et al., 2018, *Squeeze-and-Excitation Networks*, Table 2); CBAM takes it from 24.56 % to 22.66 %",
        "(SE: 23.14 %) (Woo et al., 2018, *CBAM*); replacing the last stage's 3x3 convs by multi-head self-attention",
        "improves ResNet-50 on COCO and ImageNet (Srinivas et al., 2021, *BoTNet*). All claim a small cost; FLOP",
        "counts miss the element-wise and pooling work these blocks add.",
        "",
        "Ours: the proxy calibration's small ResNet (one basic block per stage, 32-256 channels) with SE or CBAM in",
        "every block, or self-attention in the stride-16 and stride-32 blocks.",
        "",
        *table,
        "",
        "![attention](attention.png)",
        "",
        verdict,
        "",
        *lines,
        "",
    ]


def report_context(rows: dict[str, dict[str, Any]], out: Path, cfg: StudyConfig) -> list[str]:
    ctx = {r["name"]: r for r in _section_rows(rows, "context", "context")}
    ctrl = {r["name"]: r for r in _section_rows(rows, "context", "proxy")}
    heads = ["plain", "dilated", "aspp"]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    xs = range(len(heads))
    ax.bar([x - 0.2 for x in xs], [ctx[h]["val_accuracy"] for h in heads], 0.4,
           label=f"large-context task ({len(CONTEXT_CLASSES)} classes, chance 0.5)")
    if ctrl:
        ax.bar([x + 0.2 for x in xs], [ctrl[h]["val_accuracy"] for h in heads], 0.4,
               label=f"proxy task ({len(CLASSES)} classes, chance 0.125)")
    ax.set_xticks(list(xs), [f"{h}\nRF {ctx[h]['receptive_field']} px" for h in heads])
    ax.set_ylabel("validation accuracy")
    ax.set_ylim(0, 1.05)
    ax.set_title("Context heads at output stride 4")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    _save(fig, out / "context.png")

    table = _table(
        ["head", "params (k)", "MFLOPs", "receptive field (px)", "latency ms", "context task acc %",
         "proxy task acc %"],
        [[h, f"{ctx[h]['params'] / 1e3:.0f}", f"{ctx[h]['mflops']:.1f}", str(ctx[h]["receptive_field"]),
          f"{ctx[h]['latency_ms']:.2f}", _acc_cell(ctx[h]), _acc_cell(ctrl[h]) if h in ctrl else "-"] for h in heads],
    )
    noise = noise_pp(ctx["plain"])
    gains = {h: 100 * (ctx[h]["val_accuracy"] - ctx["plain"]["val_accuracy"]) for h in ("dilated", "aspp")}
    if all(g > noise for g in gains.values()):
        verdict = "**Agrees**"
    elif any(g > noise for g in gains.values()):
        verdict = "**Partly agrees**"
    else:
        verdict = "**Not resolved / disagrees**"
    lo, hi = (int(cfg.proxy.size * d) for d in (0.5, 0.7))
    control = ", ".join(f"{h} {_pp(ctrl[h]['val_accuracy'])} %" for h in heads) if ctrl else ""
    return [
        "## 5. ASPP and dilation vs plain convolutions on a task that needs context",
        "",
        "Published (Chen et al., 2017/2018, *DeepLab* v2 and v3): atrous (dilated) convolution enlarges the field of",
        "view without adding parameters or losing resolution, and atrous spatial pyramid pooling (parallel rates",
        "plus image pooling) captures context at several scales; both raise segmentation mIoU on PASCAL VOC over",
        "heads without them.",
        "",
        f"Ours: a 2-class task where two identical discs {lo}-{hi} px apart in a {cfg.proxy.size} px image are",
        "labelled by the orientation of the pair (`make_context_dataset`): a unit that sees one disc cannot tell.",
        "One trunk at output stride 4, then a plain head (two 3x3 convs), the same head dilated (rates 2, 4: same",
        "parameters) or ASPP (rates 2, 4, 6 + image pooling, half width). Receptive field: support of the gradient of",
        "the centre unit. The same three nets on the 8-class proxy task are the control.",
        "",
        *table,
        "",
        "![context](context.png)",
        "",
        f"{verdict}: on the large-context task dilation gives {gains['dilated']:+.1f} points and ASPP"
        f" {gains['aspp']:+.1f} points over the plain head (noise about ±{noise:.1f} points)"
        + (f"; on the proxy task (control) the three heads reach {control}." if ctrl else "."),
        "",
    ]


def report_calibration(rows: dict[str, dict[str, Any]], out: Path, cfg: StudyConfig) -> list[str]:
    sec = _section_rows(rows, "calibration")
    small = sec[0]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for r in sec:
        ax.plot(range(1, len(r["curve_val_accuracy"]) + 1), r["curve_val_accuracy"], "o-", ms=3, label=r["name"])
    ax.axhline(1 / len(CLASSES), color="k", lw=0.6, ls=":", label="chance")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    ax.set_ylim(0, 1)
    ax.set_title("The proxy budget: reference nets")
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, out / "calibration.png")
    table = _table(
        ["model", "params (M)", "MFLOPs", "val acc %", "train loss", "wall s / run", "CPU s / run"],
        [[r["name"], f"{r['params'] / 1e6:.2f}", f"{r['mflops']:.1f}", _acc_cell(r), f"{r['train_loss']:.3f}",
          f"{r['train_seconds']:.0f}", f"{r['train_cpu_seconds']:.0f}"] for r in sec],
    )
    inside = 0.7 <= small["val_accuracy"] <= 0.9
    return [
        "## 0. The proxy task and its budget",
        "",
        f"The budget every model of this study (and every trial of `vp-core search`) gets. Chance is"
        f" {100 / len(CLASSES):.1f} %. Wall seconds are per training run on the threads given above (with"
        " other runs beside it when there are several processes); CPU seconds add up all threads.",
        "",
        *table,
        "",
        "![calibration](calibration.png)",
        "",
        f"The small ResNet reaches {_pp(small['val_accuracy'])} % "
        + ("(inside the 70-90 % the calibration aimed at: far above chance, far from 100 %)" if inside
           else "(outside the 70-90 % the calibration aimed at)")
        + f" in {small['train_seconds']:.0f} s wall and {small['train_cpu_seconds']:.0f} CPU-s per run.",
        "",
    ]


REPORTERS = {
    "calibration": report_calibration,
    "depth": report_depth,
    "separable": report_separable,
    "scaling": report_scaling,
    "attention": report_attention,
    "context": report_context,
}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_report(rows: dict[str, dict[str, Any]], config: StudyConfig, sections: Sequence[str], out: Path,
                 meta: dict[str, Any]) -> None:
    """Write report.md and results.json and the plots into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    p = config.proxy
    head = [
        "# Architecture study",
        "",
        f"Generated by `{meta['command']}` on {meta['date']} ({'QUICK run: numbers are noise' if meta['quick'] else 'full run'})"
        + (f"; text and plots re-rendered from its results.json on {meta['rerendered']}." if meta.get("rerendered") else "."),
        "",
        f"Machine: {meta['cpu']}, {meta['cpus']} logical CPUs (wall times depend on what else runs there; CPU"
        f" seconds and latencies interleaved across the models of one experiment are the fair comparison);"
        f" torch {torch.__version__};"
        f" training on {meta['jobs']} process(es) x {meta['threads']} thread(s); latency at batch 1 on"
        f" {config.latency_threads} thread, median of {config.latency_rounds} x {config.latency_per_round} interleaved runs.",
        "",
        f"Budget, the same for every model: the proxy task of the architecture search"
        f" ({len(CLASSES)} classes, {p.per_class} images per class, {p.size} px, {int(100 * p.val_fraction)} % held out),"
        f" {p.epochs} epochs of AdamW (one-cycle, peak lr {p.lr}), batch {p.batch_size}, label smoothing 0.05,"
        f" horizontal flips; {config.seeds} seed(s) per model ({config.calibration_seeds} for the calibration nets). Accuracy is on the held-out images"
        f" (val acc; with several seeds: mean (min-max)). \"Noise\" is two standard errors of the difference of two"
        " accuracies, from the size of the validation set or from the seed-to-seed spread of the nets trained"
        " with several seeds (whichever is larger); differences inside it are not claims."
        + (f" Seed-to-seed standard deviation of the final accuracy, pooled over those nets:"
           f" {100 * pooled:.1f} points." if (pooled := next(iter(rows.values()))["pooled_seed_sd"]) is not None else ""),
        "",
        f"Total: {meta['train_cpu_seconds'] / 60:.1f} CPU-minutes of training, {meta['wall_seconds'] / 60:.1f} minutes wall.",
        "",
    ]
    body: list[str] = []
    for section in SECTIONS:
        if section in sections:
            body += REPORTERS[section](rows, out, config)
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text("\n".join(head + body) + "\n")
    write_json(out / "results.json", {"meta": meta, "config": asdict(config), "rows": rows})


# ----------------------------------------------------------------------------------------------
# command line


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
        "cpu": _cpu_name(), "cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
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
        cfg["proxy"] = ProxyTraining(**cfg["proxy"])
        cfg["depths"] = tuple(cfg["depths"])
        config = StudyConfig(**cfg)
        meta, rows = data["meta"], data["rows"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
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
        config.proxy = replace(config.proxy, epochs=args.epochs)
    if args.per_class is not None:
        config.proxy = replace(config.proxy, per_class=args.per_class)
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
