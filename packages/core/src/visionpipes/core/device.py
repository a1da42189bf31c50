"""Device and precision choice for training and inference: one rule, used by every domain.

`auto` means CUDA, then Apple MPS, then CPU. Nothing here imports Lightning or any training code,
so predictors, streams and servers use it too.
"""

from __future__ import annotations

import torch

from visionpipes.core.errors import UserError

__all__ = ["cpu_has_native_bf16", "resolve_precision", "select_device"]


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def select_device(preference: str | torch.device | None = "auto") -> torch.device:
    """The device to run on: `auto` (or None) picks cuda, then mps, then cpu.

    Args:
        preference: `auto`, `cpu`, `cuda`, `cuda:N`, `gpu`, `mps`, or a `torch.device`.

    Raises:
        UserError: if an explicitly requested device is not available, or the name is unknown.

    Example:
        >>> select_device("cpu")
        device(type='cpu')
    """
    if isinstance(preference, torch.device):
        preference = str(preference)
    pref = (preference or "auto").lower()
    if pref == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if pref.startswith(("cuda", "gpu")):
        if not torch.cuda.is_available():
            raise UserError(f"device '{preference}' was requested but no CUDA GPU is available.")
        return torch.device(pref.replace("gpu", "cuda"))
    if pref == "mps":
        if not _mps_available():
            raise UserError("device 'mps' was requested but Apple MPS is not available.")
        return torch.device("mps")
    if pref == "cpu":
        return torch.device("cpu")
    raise UserError(f"unknown device '{preference}'; use auto, cpu, cuda, cuda:N or mps.")


def cpu_has_native_bf16() -> bool:
    """Whether this x86 CPU computes bf16 natively (AVX512-BF16 or AMX-BF16 in /proc/cpuinfo; False
    where that file does not exist). oneDNN then runs bf16 convolutions and matmuls about 1.7x as
    fast as fp32 (measured on the lane and retail models); without it bf16 is emulated and slower."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return bool(set(line.split(":", 1)[1].split()) & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def resolve_precision(precision: str, accelerator: str) -> str:
    """Lightning's precision for `precision`. `auto` becomes `bf16-mixed` on a CUDA GPU with bf16
    (`16-mixed` on an older one) or on a CPU with native bf16 (`cpu_has_native_bf16`), and `32-true`
    elsewhere (MPS included); `accelerator` `auto` means a CUDA GPU when there is one."""
    if precision != "auto":
        return precision
    if accelerator == "auto":
        accelerator = select_device("auto").type  # cuda, then mps, then cpu
    if accelerator in ("gpu", "cuda"):
        return "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "16-mixed"
    if accelerator == "cpu":
        return "bf16-mixed" if cpu_has_native_bf16() else "32-true"
    return "32-true"
