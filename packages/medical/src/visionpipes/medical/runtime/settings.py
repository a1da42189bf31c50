"""How a `Predictor` runs and blends its windows (`InferenceConfig`: `params.yaml`'s `inference:`, a deployed
model's record, the command-line flags). Settings only: no torch, no MONAI.
"""

from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from visionpipes.core.config import ConfigModel, Field

__all__ = ["ONNX_MIN_WINDOW_VOXELS", "InferenceConfig"]

#: `window_runtime: auto` runs windows of at least this many voxels (64^3) through onnxruntime on CPU: there a
#: window costs seconds and the one-off export (about two window passes) pays for itself; small windows
#: (the built-in samples' 32^3) stay in PyTorch.
ONNX_MIN_WINDOW_VOXELS = 64**3


class InferenceConfig(ConfigModel):
    """How windows are run and blended (`params.yaml`'s `inference:`, a deployed model's record, flags).

    Attributes:
        overlap: fraction of overlap between neighbouring windows.
        sw_batch_size: windows per forward pass.
        blend: `gaussian` (weights fall off toward window edges) or `constant`.
        tta_flips: also predict the volume flipped along each axis and average the probabilities.
        threshold: probability above which a voxel belongs to a region.
        crop_foreground: run the windows over a box only (plus `crop_margin`), as nnU-Net crops every case
            to its non-zero region; outside it every region is absent (`runtime.crop`). MRI (non-zero
            z-score): the box of the non-zero voxels (skull-stripped BraTS is zero outside the brain). CT (a
            channel with the `ct` normalisation): the body's box, the voxels above `body_threshold_hu` in the
            raw Hounsfield units before normalisation (a CT has no zero background). Measured
            (`benchmarks/medical_real_geometry.py`, random-weight plan networks, 2 shared cores): the MNI152
            brain in BraTS's 240x240x155 grid runs 12 of the 27 windows (full volume 52 s against 133 s for
            MONAI's plain full-grid call, 2.55x, and 2.54x in a second run; 1.13-1.17x with the crop off), an
            adult abdomen (33 x 25 cm) in a 512x512x200 CT 105 of 252 (2.79x and 3.08x extrapolated from a
            full-plane slab; 1.14-1.26x crop off); `benchmarks/results/medical_real_geometry*.md`.
        crop_margin: voxels kept around the box.
        body_threshold_hu: CT only (with `crop_foreground`): Hounsfield units above which a voxel is body
            (air ~-1000, lung ~-850 and inside the chest wall's box, fat ~-100).
        window_runtime: what runs the network on each window batch: `torch` (eager PyTorch), `onnxruntime`
            (the same network exported to ONNX with accurate instance norms, `fast_windows`; equal
            outputs within 1e-4, 1.2-1.6x faster per window on CPU at large patches) or `auto`
            (onnxruntime on CPU for windows of at least `ONNX_MIN_WINDOW_VOXELS`, torch otherwise, and
            torch whenever the export fails or differs). Measured (`benchmarks/medical_real_geometry.py`,
            4 windows per forward, 2 shared cores): the CT plan's 160x160x56 x 8..80 windows 1.75 s each in
            onnxruntime against 2.09 s in PyTorch (MONAI plain 2.7 s), plus a one-off export of ~10 s; the
            MRI plan's 128x128x96 x 16..160 full volume 118.1 s through onnxruntime (100.3 s network + 16.3 s
            export, peak RSS 5.0 GB) against 103.5 s in PyTorch and 120.8 s for MONAI plain in the same run.
            Mixed, so the default stays `torch`; `onnxruntime`/`auto` are opt-in.
        precision: `fp32`, `bf16` (the window network under `torch.autocast(..., dtype=torch.bfloat16)`,
            `runtime.precision`; logits, blending and probabilities stay float32) or `auto` (bf16 on a CUDA GPU
            that supports it or a CPU with native bf16, `cpu_has_native_bf16`; fp32 elsewhere). PyTorch
            windows only (eager or the deployed TorchScript `model.pt`): `bf16` with `window_runtime:
            onnxruntime` or a deployed `model.onnx` is refused, `auto` stays fp32 there, and `window_runtime:
            auto` keeps bf16 windows in PyTorch. Default fp32 (outputs unchanged). Measured (same script,
            crop off, MONAI's windows, 2 shared cores, AMX): MRI 64 s vs MONAI plain fp32 125 s (1.95x), CT slab
            45 s vs 90 s (1.99x); the trained Task01 model's probabilities move by <= 0.016 (Dice >= 0.998).
    """

    overlap: float = Field(0.5, ge=0.0, lt=1.0)
    sw_batch_size: int = Field(4, ge=1)
    blend: Literal["gaussian", "constant"] = "gaussian"
    tta_flips: bool = False
    threshold: float = Field(0.5, gt=0.0, lt=1.0)
    crop_foreground: bool = False
    crop_margin: int = Field(4, ge=0)
    body_threshold_hu: float = -500.0
    window_runtime: Literal["auto", "torch", "onnxruntime"] = "torch"
    precision: Literal["auto", "fp32", "bf16"] = "fp32"

    @model_validator(mode="after")
    def _bf16_needs_torch(self) -> InferenceConfig:
        if self.precision == "bf16" and self.window_runtime == "onnxruntime":
            raise ValueError(
                "precision bf16 runs the windows in PyTorch; window_runtime onnxruntime is fp32 only "
                "(set window_runtime: torch, or precision: fp32)"
            )
        return self
