"""The detector's ONNX export (fused, rectangular input, batch axis dynamic) with the core parity
check; deploy-time code that runs the eager model once, never training.
"""

from __future__ import annotations

import os
from typing import Any

from visionpipes.core.errors import UserError

# ONNX export and the onnxruntime detector
# --------------------------------------------------------------------------------------------------


def rect_input_height(imgsz: int, aspect: float | None) -> int:
    """The network height for frames of `aspect` (height / width) letterboxed `imgsz` wide: the
    scaled height rounded up to a multiple of 32 (`imgsz` itself when `aspect` is None)."""
    if aspect is None:
        return imgsz
    return max(32, min(imgsz, -(-round(imgsz * aspect) // 32) * 32))


def export_detector_onnx(
    model: Any,
    path: str | os.PathLike,
    *,
    imgsz: int = 320,
    height: int | None = None,
    atol: float = 1e-4,
    rtol: float = 1e-4,
) -> Any:
    """Export a YOLO detector to ONNX with the core parity check (fused, batch axis dynamic).

    The graph takes `images` (N, 3, height, imgsz) RGB in [0, 1] and returns `predictions`
    (N, 4 + classes, anchors): box centre x, y, width, height in input pixels, then class scores.
    A `height` below `imgsz` fits frames wider than tall (ultralytics' rectangular inference: a
    1280x720 frame at imgsz 320 needs 320x192, not 320x320), which saves the padded rows' compute.

    Returns:
        The core `ExportReport` (path, max abs difference, ...).

    Raises:
        ExportParityError: if onnxruntime disagrees with the eager model (no file is written).
    """
    import copy

    import torch
    from ultralytics.nn.modules.head import Detect

    from visionpipes.core.export import export_onnx

    net = copy.deepcopy(model.model).float().cpu().eval()
    net = net.fuse() if hasattr(net, "fuse") else net
    for module in net.modules():
        if isinstance(module, Detect):
            module.dynamic = False
            module.export = True
            module.format = "onnx"
    if height is not None and (height < 32 or height % 32):
        raise UserError(f"detector export height must be a multiple of 32, got {height}.")
    example = torch.rand(1, 3, height or imgsz, imgsz)
    return export_onnx(
        net,
        example,
        path,
        input_names=["images"],
        output_names=["predictions"],
        dynamic_axes={"images": {0: "batch"}, "predictions": {0: "batch"}},
        atol=atol,
        rtol=rtol,
    )
