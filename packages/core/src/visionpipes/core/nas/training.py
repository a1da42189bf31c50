"""Proxy training: how every candidate (search trial, baseline preset, the best spec trained
longer, a study variant) is trained and measured on the proxy task, with one recipe and budget.

The recipe (AdamW, one-cycle, label smoothing, flips) and its settings (`ProxyTraining`, the
`search.proxy` section of params.yaml) live here; it must not import Optuna.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from visionpipes.core.backbones import BackboneSpec, build_backbone
from visionpipes.core.config import ConfigModel, Field
from visionpipes.core.nas.proxy import CLASSES, ProxyConfig, make_proxy_dataset
from visionpipes.core.nas.results import CandidateResult


class ProxyTraining(ConfigModel):
    """How each candidate is trained and measured on the proxy task.

    The defaults are calibrated (benchmarks/results/architecture_study/report.md, section 0) so
    that architectures separate well above chance (0.125) and below 1: a small ResNet (one basic
    block per stage, 32-256 channels, 1.2 M parameters) reaches 0.71 (0.70-0.73 over 3 seeds), a
    small MobileNetV2-like net 0.65, and, in the core pipeline's search, ResNet-18 0.71 and
    MobileNetV2 0.51, for about 30 s of single-thread CPU time per small candidate.
    """

    per_class: int = Field(300, ge=2)
    size: int = Field(48, ge=32)
    epochs: int = Field(8, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(5e-3, gt=0)
    val_fraction: float = Field(0.25, gt=0, lt=1)
    latency_repeats: int = Field(10, ge=1)
    seed: int = 0



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
            {"state_dict": models[0].state_dict(), "spec": spec.to_dict(), "proxy": cfg.model_dump(), "classes": list(CLASSES)},
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
