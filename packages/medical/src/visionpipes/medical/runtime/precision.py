"""bf16 sliding windows (`InferenceConfig.precision`): the window network runs under
`torch.autocast(device_type, dtype=torch.bfloat16)` and hands back float32 logits, so that MONAI's Gaussian
blending, the sigmoid and the thresholds stay float32. nnU-Net predicts under `torch.autocast` (fp16) on CUDA;
this is the same idea on a CPU with native bf16 (AVX512-BF16/AMX, `cpu_has_native_bf16`), where oneDNN runs
bf16 convolutions about 1.8x as fast as fp32. onnxruntime windows and a deployed `model.onnx` stay fp32.

Autocast rather than casting the whole network to bf16: measured at the CPU plans' real patches (one
window, one process, alternating, 2 threads, load ~6): CT 160x160x56 (8..80) fp32 2.14 s, autocast 1.04 s
(2.05x), cast 1.08 s (1.98x); MRI 128x128x96 (16..160) fp32 3.85 s, autocast 2.55 s (1.51x), cast 2.21 s
(1.74x); same max probability difference (0.063-0.067). Neither is clearly faster, and autocast leaves
the weights, the input and the blending in float32 and needs no copy of the network.
"""

from __future__ import annotations

import torch

from visionpipes.core.device import cpu_has_native_bf16
from visionpipes.core.errors import UserError

__all__ = ["AutocastWindows", "window_precision", "with_precision"]


def window_precision(precision: str, device: torch.device) -> str:
    """`fp32` or `bf16` for `InferenceConfig.precision` on `device`: `auto` is bf16 on a CUDA GPU that
    supports it or a CPU with native bf16 (`cpu_has_native_bf16`), fp32 elsewhere (MPS included)."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        return "bf16" if cpu_has_native_bf16() else "fp32"
    return "fp32"


class AutocastWindows(torch.nn.Module):
    """`inner` run under bf16 autocast on `device_type`; its output cast back to float32."""

    def __init__(self, inner: torch.nn.Module, device_type: str) -> None:
        super().__init__()
        self.inner = inner
        self.device_type = device_type

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            out = self.inner(x)
        return out.float()


def with_precision(net: torch.nn.Module, precision: str, device: torch.device) -> torch.nn.Module:
    """`net` under bf16 autocast (`AutocastWindows`) when `precision` resolves to bf16 on `device`, else
    `net`. An onnxruntime network stays fp32: `auto` leaves it, `bf16` raises `UserError`."""
    from visionpipes.medical.runtime.deployed import OnnxNetwork

    if isinstance(net, OnnxNetwork):
        if precision == "bf16":
            raise UserError(
                "inference.precision bf16 needs PyTorch windows; this model runs in onnxruntime (fp32): "
                "predict from the checkpoint or TorchScript model.pt, or set precision: fp32."
            )
        return net
    if window_precision(precision, device) == "bf16":
        return AutocastWindows(net, device.type).eval()
    return net
