"""`InferenceConfig.precision`: bf16 windows run under autocast (a conv sees bf16 activations) and give float32
probabilities close to fp32; fp32 (the default) is MONAI's sliding window byte for byte; bad values are refused."""

from __future__ import annotations

import pytest
import torch
from monai.inferers import sliding_window_inference
from monai.networks.nets import DynUNet

from visionpipes.core.config import parse_config
from visionpipes.core.device import cpu_has_native_bf16
from visionpipes.core.errors import UserError
from visionpipes.medical.msd.regions import Region
from visionpipes.medical.runtime.precision import window_precision
from visionpipes.medical.runtime.predictor import InferenceConfig, Predictor

ROI = (24, 24, 16)


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    strides = [[1, 1, 1], [2, 2, 2], [2, 2, 1]]
    return DynUNet(3, 2, 2, kernel_size=[[3, 3, 3]] * 3, strides=strides, upsample_kernel_size=strides[1:],
                   filters=[8, 16, 24], norm_name="instance", res_block=False).eval()  # fmt: skip


def _image() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(2, 40, 36, 24)


def _run(precision: str | None) -> tuple[torch.Tensor, set[torch.dtype]]:
    """Probabilities of `_image`, and the dtypes the first convolution's outputs had."""
    config = (
        InferenceConfig(sw_batch_size=2)
        if precision is None
        else InferenceConfig(sw_batch_size=2, precision=precision)
    )
    net = _net()
    seen: set[torch.dtype] = set()
    conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv3d))
    conv.register_forward_hook(lambda _m, _i, out: seen.add(out.dtype))
    predictor = Predictor(net, regions=[Region("a", frozenset({1})), Region("b", frozenset({2}))],
                          modality=["c0", "c1"], roi_size=ROI, config=config)  # fmt: skip
    return predictor.region_probabilities(_image()), seen


def test_bf16_windows_run_in_bf16_and_stay_close_to_fp32() -> None:
    fp32, seen32 = _run("fp32")
    bf16, seen16 = _run("bf16")
    assert seen32 == {torch.float32}
    assert seen16 == {torch.bfloat16}  # the autocast ran
    assert bf16.dtype == torch.float32 and bf16.shape == fp32.shape
    diff = (bf16 - fp32).abs().max().item()
    assert 0 < diff < 0.05  # bf16 changed the numbers, by little


def test_fp32_default_is_monais_sliding_window_byte_for_byte() -> None:
    default, _ = _run(None)
    with torch.inference_mode():
        expected = torch.sigmoid(
            sliding_window_inference(
                _image()[None], roi_size=ROI, sw_batch_size=2, predictor=_net(), overlap=0.5, mode="gaussian"
            )
        )[0]
    assert torch.equal(default, expected)


def test_auto_follows_the_hardware() -> None:
    assert window_precision("auto", torch.device("cpu")) == ("bf16" if cpu_has_native_bf16() else "fp32")
    assert window_precision("auto", torch.device("mps")) == "fp32"
    assert window_precision("bf16", torch.device("cpu")) == "bf16"


@pytest.mark.parametrize(
    "settings", [{"precision": "fp16"}, {"precision": "bf16", "window_runtime": "onnxruntime"}]
)
def test_bad_precision_names_the_field(settings: dict) -> None:
    with pytest.raises(UserError, match="precision"):
        parse_config(InferenceConfig, settings, source="params.yaml:inference")


def test_predict_flag_reaches_the_inference_settings() -> None:
    from visionpipes.medical.cli import build_parser
    from visionpipes.medical.runtime.command import inference_overrides

    args = build_parser().parse_args(
        ["predict", "--model", "m.ckpt", "--input", "a", "--output", "b", "--precision", "bf16"]
    )
    assert inference_overrides(args)["precision"] == "bf16"
    args = build_parser().parse_args(["predict", "--model", "m.ckpt", "--input", "a", "--output", "b"])
    assert "precision" not in inference_overrides(args)
