"""The device of both driving models follows `core.device.select_device` (issue #11 item 7:
`predict --device auto` used to run the lane model on the CPU where CUDA exists). These tests check
the choice, not the hardware: CUDA's presence is monkeypatched and nothing is moved to a GPU."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from visionpipes.core.errors import UserError
from visionpipes.driving import cli
from visionpipes.driving.devices import model_device, ultralytics_device
from visionpipes.driving.lanes import runtime as lanes_runtime
from visionpipes.driving.lanes.model import LaneModelConfig, build_lane_model, save_lane_model


@pytest.mark.parametrize(("cuda", "expected"), [(True, "cuda"), (False, "cpu")])
def test_auto_picks_cuda_when_present(monkeypatch: pytest.MonkeyPatch, cuda: bool, expected: str) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert model_device("auto").type == expected
    assert ultralytics_device(model_device("auto")) == ("0" if cuda else "cpu")


def test_cuda_index_and_unavailable_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert model_device("1") == torch.device("cuda:1") and ultralytics_device(model_device("1")) == "1"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="no CUDA GPU"):
        model_device("0")


@pytest.mark.parametrize(("cuda", "expected"), [(True, "cuda"), (False, "cpu")])
def test_predict_auto_runs_the_lane_model_on_the_chosen_device(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, cuda: bool, expected: str
) -> None:
    from PIL import Image

    save_lane_model(tmp_path / "lane_model.pt", build_lane_model(LaneModelConfig(width=64, height=64)))
    Image.fromarray(np.zeros((72, 128, 3), np.uint8)).save(tmp_path / "a.jpg")
    chosen: list[Any] = []

    def record(model: Any, images: Any, out_dir: Path, **kwargs: Any) -> list[Path]:
        chosen.append(kwargs["device"])  # what predict would run the lane model on; nothing moves
        return []

    monkeypatch.setattr(lanes_runtime, "predict_lane_masks", record)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    argv = ["predict", str(tmp_path / "a.jpg"), "--lanes", str(tmp_path / "lane_model.pt"), "--out", str(tmp_path / "o")]
    assert cli.run([*argv, "--device", "auto"]) == 0
    assert len(chosen) == 1 and torch.device(chosen[0]).type == expected
