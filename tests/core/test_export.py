"""ONNX / TorchScript export with a parity check: every backbone preset, a 3-D block model, a model
with several inputs and outputs, a model that really fails parity, and the onnxruntime runner."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from visionpipes.core.backbones import build_backbone, list_backbones
from visionpipes.core.blocks import (
    CBAM,
    DepthwiseSeparableConv,
    ResidualBlock,
    SelfAttention,
    SqueezeExcitation,
)
from visionpipes.core.errors import UserError
from visionpipes.core.export import (
    ExportParityError,
    OnnxRunner,
    compare_outputs,
    export_onnx,
    export_torchscript,
)
from visionpipes.core.layers import ConvNormAct

#: Parity bound: max abs difference relative to each output's scale (its largest |value|); for
#: outputs of scale <= 1 this bounds the absolute difference. Deep presets have features up to
#: ~90 at init, where float32 rounding alone (eager torch vs float64) is ~1e-4 absolute; see
#: the module doc of visionpipes.core.export.
PARITY = 1e-4


def _eager(model: nn.Module, x: torch.Tensor) -> list[np.ndarray]:
    with torch.inference_mode():
        return [t.numpy() for t in model(x)]


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.mark.parametrize("name", list_backbones())
def test_backbone_preset_exports_to_onnx_and_torchscript_with_parity(name, tmp_path):
    torch.manual_seed(0)
    model = build_backbone(name).eval()
    x = torch.randn(1, 3, 64, 64)

    onnx_report = export_onnx(model, x, tmp_path / f"{name}.onnx", threads=1)
    assert onnx_report.path.is_file() and onnx_report.format == "onnx"
    assert onnx_report.max_rel_diff < PARITY

    ts_report = export_torchscript(model, x, tmp_path / f"{name}.pt")
    assert ts_report.path.is_file() and ts_report.format == "torchscript"
    assert ts_report.max_rel_diff < PARITY

    # The runner's outputs are the backbone's feature maps, named and shaped as in eager mode.
    runner = OnnxRunner(onnx_report.path, threads=1)
    outs = runner(x.numpy())
    expected = _eager(model, x)
    assert runner.output_names == [f"output_{i}" for i in range(len(model.out_channels))]
    assert [o.shape for o in outs] == [e.shape for e in expected]
    assert max(float(np.abs(o - e).max()) for o, e in zip(outs, expected)) == onnx_report.max_abs_diff
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"{name}.onnx", f"{name}.pt"])


def test_dynamic_batch_and_size_on_the_attention_preset(tmp_path):
    torch.manual_seed(0)
    model = build_backbone("resnet18_mhsa").eval()
    axes = {"image": {0: "batch", 2: "height", 3: "width"}}
    report = export_onnx(model, torch.randn(1, 3, 64, 64), tmp_path / "m.onnx", input_names=["image"], dynamic_axes=axes)
    runner = OnnxRunner(report.path, threads=1)
    x = torch.randn(3, 3, 96, 64)  # another batch and another sequence length for the attention
    outs, expected = runner(x.numpy()), _eager(model, x)
    assert [o.shape for o in outs] == [e.shape for e in expected]
    assert outs[-1].shape == (3, 512, 3, 2)
    compare_outputs(expected, outs, atol=0.0, rtol=PARITY, what="dynamic-shape run")


def test_dynamo_exporter_also_passes_on_self_attention(tmp_path):
    """The torch.export-based exporter (slower, so on one small attention model, not every preset)."""
    pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    model = nn.Sequential(ConvNormAct(2, 3, 32, stride=2), SelfAttention(2, 32, num_heads=4)).eval()
    report = export_onnx(model, torch.randn(1, 3, 16, 16), tmp_path / "d.onnx", opset=18, dynamo=True, threads=1)
    assert report.max_rel_diff < PARITY
    assert report.exporter == "torch.onnx.export(dynamo=True)"


def test_3d_block_model_exports(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(
        ResidualBlock(3, 4, 8, stride=2),
        SqueezeExcitation(3, 8),
        CBAM(3, 8),
        DepthwiseSeparableConv(3, 8, 16),
    )
    x = torch.randn(1, 4, 8, 16, 16)
    onnx_report = export_onnx(model, x, tmp_path / "block3d.onnx", threads=1)
    ts_report = export_torchscript(model, x, tmp_path / "block3d.pt")
    assert onnx_report.max_rel_diff < PARITY and ts_report.max_rel_diff < PARITY
    assert OnnxRunner(onnx_report.path)(x.numpy())[0].shape == (1, 16, 4, 8, 8)


class _TwoInTwoOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(5, 3)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return self.fc(a), [self.fc(b).relu(), a.sum(dim=1)]


def test_several_inputs_and_nested_outputs(tmp_path):
    torch.manual_seed(0)
    model = _TwoInTwoOut()
    a, b = torch.randn(2, 5), torch.randn(2, 5)
    report = export_onnx(model, (a, b), tmp_path / "two.onnx", input_names=["a", "b"], output_names=["y", "z", "s"])
    assert report.max_abs_diff < 1e-5
    runner = OnnxRunner(report.path, threads=1)
    assert runner.input_names == ["a", "b"] and runner.output_names == ["y", "z", "s"]
    # A dict of float64 arrays is accepted: names matched, precision cast to the model's float32.
    by_name = runner({"b": b.double().numpy(), "a": a.double().numpy()})
    with torch.inference_mode():
        y, (z, s) = model(a, b)
    for got, want in zip(by_name, (y, z, s), strict=True):
        np.testing.assert_allclose(got, want.numpy(), atol=1e-5)
    assert export_torchscript(model, (a, b), tmp_path / "two.pt").max_abs_diff < 1e-5
    with pytest.raises(ValueError, match="missing"):
        runner({"a": a.numpy()})
    with pytest.raises(ValueError, match="takes 2 inputs"):
        runner(a.numpy())


class _NoiseInjection(nn.Module):
    """Adds fresh uniform noise at every call: the exported graph draws other numbers than eager."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.rand_like(x)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_parity_failure_raises_and_leaves_no_file(fmt, tmp_path):
    target = tmp_path / f"noisy.{fmt}"
    target.write_text("previous export")
    export = export_onnx if fmt == "onnx" else export_torchscript
    with pytest.raises(ExportParityError, match=r"max abs diff 0\.\d+ > 0\.0001 \+ 0\.0001 x scale"):
        export(_NoiseInjection(), torch.zeros(1, 3, 8, 8), target)
    assert target.read_text() == "previous export"  # the earlier file is untouched
    assert [p.name for p in tmp_path.iterdir()] == [target.name]  # and no temp file is left


def test_export_puts_model_in_eval_and_restores_its_mode(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5))
    model.train()
    report = export_torchscript(model, torch.randn(2, 3, 8, 8), tmp_path / "m.pt")
    assert report.max_abs_diff == 0.0  # dropout off and BN on running stats, else eager != traced
    assert model.training and all(m.training for m in model.modules())


def test_bad_paths_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        export_onnx(nn.Identity(), torch.zeros(1, 3), tmp_path / "missing" / "m.onnx")
    with pytest.raises(UserError, match="does not exist"):
        OnnxRunner(tmp_path / "nothing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a protobuf")
    with pytest.raises(UserError, match=r"junk\.onnx cannot be loaded"):
        OnnxRunner(junk)


def test_tolerance_is_absolute_plus_relative_to_each_outputs_scale():
    ref = [np.array([100.0, -50.0]), np.array([0.5, 0.0])]
    near = [np.array([100.001, -50.0]), np.array([0.5, 0.00005])]
    assert compare_outputs(ref, near, atol=1e-4, rtol=1e-4, what="m") == pytest.approx((1e-3, 1e-4))
    with pytest.raises(ExportParityError, match=r"output 0: max abs diff 0\.001 "):
        compare_outputs(ref, near, atol=1e-4, rtol=0.0, what="m")
    with pytest.raises(ExportParityError, match="shape"):
        compare_outputs(ref, [ref[0], ref[1][:1]], atol=1.0, rtol=0.0, what="m")
