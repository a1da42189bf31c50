"""Training the variants (in worker processes when asked) on the proxy task with the search's
recipe, then timing each section's models side by side in this process alone.

Part of `benchmarks/architecture_study.py`; measures only, changes no library code.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any

import torch
from torch import nn

from arch_study.config import StudyConfig, Variant
from visionpipes.core.nas.proxy import CLASSES, CONTEXT_CLASSES, ProxyConfig, make_context_dataset
from visionpipes.core.nas.training import ProxyTraining, proxy_split, train_classifier
from visionpipes.core.profile import compare_latency, count_flops, count_parameters


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
    run_cfg = cfg.model_copy(update={"seed": seed})
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
