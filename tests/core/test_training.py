"""The shared training glue: a real Lightning run with the DVCLive logger, checkpointing and
resume, on a small regression task."""

from __future__ import annotations

import json
import re
from pathlib import Path

import lightning
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from visionpipes.core import device
from visionpipes.core.device import resolve_precision, select_device
from visionpipes.core.errors import UserError
from visionpipes.core.training import TrainConfig, fit


class Regressor(lightning.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Linear(4, 1)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> torch.Tensor:
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss, on_epoch=True, on_step=False)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> None:
        x, y = batch
        self.log("val_mse", torch.nn.functional.mse_loss(self.net(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _loaders() -> tuple[DataLoader, DataLoader]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 4, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 0.1
    return DataLoader(TensorDataset(x[:96], y[:96]), batch_size=16), DataLoader(TensorDataset(x[96:], y[96:]), batch_size=32)


def test_fit_logs_to_dvclive_checkpoints_and_resumes(tmp_path: Path) -> None:
    train, val = _loaders()
    config = TrainConfig(max_epochs=3, monitor="val_mse", mode="min", progress=False, log_every_n_steps=1)
    first = fit(Regressor(), train, val, config=config, out_dir=tmp_path)
    assert first.resumed_from is None
    assert first.last_checkpoint is not None and first.last_checkpoint.is_file()
    assert first.best_checkpoint is not None and first.best_checkpoint.name == "best.ckpt"
    assert first.metrics["val_mse"] < 1.0  # it learned: the initial MSE is ~13
    metrics = json.loads((tmp_path / "dvclive" / "metrics.json").read_text())
    assert metrics["step"] >= 0 and "mse" in metrics["val"]  # DVCLive nests "val_mse" as val/mse
    plot = tmp_path / "dvclive" / "plots" / "metrics" / "val" / "mse.tsv"
    assert len(plot.read_text().splitlines()) == 1 + 3  # header + one row per epoch
    assert not (tmp_path / "dvc.yaml").exists()

    resumed = fit(Regressor(), train, val, config=TrainConfig(**{**config.to_dict(), "max_epochs": 5}), out_dir=tmp_path)
    assert resumed.resumed_from == first.last_checkpoint
    assert resumed.epochs == 5
    assert len(plot.read_text().splitlines()) == 1 + 5  # the logs were continued, not restarted
    assert resumed.metrics["val_mse"] <= first.metrics["val_mse"] + 1e-6


def test_train_config_from_params_refuses_unknown_keys() -> None:
    assert TrainConfig.from_params({"max_epochs": 2, "seed": 3}, source="t").max_epochs == 2
    with pytest.raises(UserError, match=re.escape("params.yaml:train: unknown key 'epochs'; did you mean 'max_epochs'")):
        TrainConfig.from_params({"epochs": 2}, source="params.yaml:train")
    with pytest.raises(UserError, match="key 'logger' = 'wandb': input should be 'dvclive', 'csv' or 'none'"):
        TrainConfig.from_params({"logger": "wandb"}, source="t")
    with pytest.raises(UserError, match="key 'mode'"):
        TrainConfig.from_params({"mode": "maximum"}, source="t")


def test_fit_with_csv_logger_needs_no_dvc(tmp_path: Path) -> None:
    train, val = _loaders()
    result = fit(Regressor(), train, val, config=TrainConfig(max_epochs=1, progress=False, logger="csv"), out_dir=tmp_path)
    assert result.last_checkpoint is not None
    assert "val_mse" in (tmp_path / "csv" / "version_0" / "metrics.csv").read_text().splitlines()[0]
    assert not (tmp_path / "dvclive").exists()


def test_select_device() -> None:
    assert select_device("cpu").type == "cpu"
    assert select_device("auto").type in {"cpu", "cuda", "mps"}
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA GPU"):
            select_device("cuda")
    with pytest.raises(UserError, match="unknown device"):
        select_device("tpu")


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_is_bf16_only_where_the_hardware_has_it(native: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: native)
    assert resolve_precision("auto", "cpu") == ("bf16-mixed" if native else "32-true")
    assert resolve_precision("auto", "mps") == "32-true"
    assert resolve_precision("16-mixed", "cpu") == "16-mixed"  # an explicit choice is kept


def test_warmup_cosine_factor_warms_up_then_anneals_by_steps_or_time() -> None:
    import math
    import time

    from visionpipes.core.training import warmup_cosine_factor

    assert [warmup_cosine_factor(s, warmup=4, total_steps=24) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert warmup_cosine_factor(4, warmup=4, total_steps=24) == pytest.approx(1.0)
    assert warmup_cosine_factor(14, warmup=4, total_steps=24) == pytest.approx(0.02 + 0.98 * 0.5)
    assert warmup_cosine_factor(24, warmup=4, total_steps=24) == pytest.approx(0.02)
    assert warmup_cosine_factor(99, warmup=4, total_steps=24) == pytest.approx(0.02)  # stays at the floor
    # a spent wall-clock budget ends the cosine whatever the step
    spent = time.monotonic() - 10.0
    assert warmup_cosine_factor(5, warmup=4, total_steps=1000, start=spent, budget_s=10.0) == pytest.approx(0.02)
    half = time.monotonic() - 5.0
    value = warmup_cosine_factor(5, warmup=4, total_steps=1000, start=half, budget_s=10.0)
    assert value == pytest.approx(0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * 0.5)), abs=0.01)


def test_adamw_warmup_cosine_steps_the_learning_rate_of_each_group() -> None:
    from visionpipes.core.training import adamw_warmup_cosine, warmup_cosine_factor

    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    groups = [{"params": a.parameters(), "lr": 0.01}, {"params": b.parameters()}]
    out = adamw_warmup_cosine(groups, lr=0.1, weight_decay=0.05, warmup_steps=2, total_steps=10)
    optimizer, scheduler = out["optimizer"], out["lr_scheduler"]["scheduler"]
    assert isinstance(optimizer, torch.optim.AdamW) and out["lr_scheduler"]["interval"] == "step"
    assert optimizer.param_groups[1]["weight_decay"] == 0.05
    for step in range(12):
        factor = warmup_cosine_factor(step, warmup=2, total_steps=10)
        assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.01 * factor, 0.1 * factor])
        optimizer.step()
        scheduler.step()
