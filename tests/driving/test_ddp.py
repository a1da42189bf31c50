"""`det.device` as a list of CUDA GPUs for ultralytics' own DDP: the spellings params.yaml may use,
what reaches `YOLO.train`, and the clear refusal on a machine without those GPUs."""

from __future__ import annotations

import pytest
import torch
import yaml

from visionpipes.core.errors import UserError
from visionpipes.driving.detection.train import DetectorConfig


@pytest.mark.parametrize("text", ["device: 0,1,2,3", "device: '0, 1, 2, 3'", "device: [0, 1, 2, 3]"])
def test_a_gpu_list_from_params_yaml(text: str) -> None:
    config = DetectorConfig.from_params(yaml.safe_load(text), source="params.yaml:det")
    assert config.device == "0,1,2,3" and config.cuda_indices() == [0, 1, 2, 3]


@pytest.mark.parametrize("device", ["auto", "cpu", "mps", "0", "cuda", "cuda:1", "1,3"])
def test_single_device_spellings_still_parse(device: str) -> None:
    assert DetectorConfig(device=device).device == device


@pytest.mark.parametrize("device", ["0,0", "gpu0", "0;1", "cuda:0,1", "[0,1]x"])
def test_a_malformed_device_is_a_config_error(device: str) -> None:
    with pytest.raises(UserError, match="device"):
        DetectorConfig.from_params({"device": device}, source="params.yaml:det")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_a_gpu_list_on_a_cpu_only_machine_is_a_clear_error() -> None:
    config = DetectorConfig(device="0,1,2,3")
    with pytest.raises(UserError, match=r"asks for CUDA GPU\(s\) \[0, 1, 2, 3\], but this machine has none"):
        config.train_args()
    assert DetectorConfig(device="cpu").train_args()["device"] == "cpu"  # CPU training is untouched


def test_a_gpu_list_reaches_ultralytics_where_the_gpus_exist(monkeypatch: pytest.MonkeyPatch) -> None:
    # The only fake here: this machine's GPU count (the test must run without GPUs).
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert DetectorConfig(device=[0, 1, 2, 3], batch=64).train_args()["device"] == "0,1,2,3"
    assert DetectorConfig(device="cuda:1").train_args()["device"] == "1"
    with pytest.raises(UserError, match=r"GPU\(s\) \[4\], but this machine has 4 \(0..3\)"):
        DetectorConfig(device="0,4").train_args()
