"""The multi-task network's ONNX export: one graph, three named outputs, checked against the eager
model by `core.export.export_onnx`. Deploy-time code; it never trains and never writes a deploy
folder (the coordinator's deploy step places the file and the model card).
"""

from __future__ import annotations

import copy
import json
import os
from typing import Any

from visionpipes.core.errors import UserError
from visionpipes.driving.bdd100k.categories import (
    DET_CATEGORIES,
    DRIVABLE_CATEGORIES,
    LANE_CATEGORIES,
    LANE_DIRECTIONS,
    LANE_STYLES,
)

#: The graph's input and output names.
INPUT_NAME = "images"
OUTPUT_NAMES: tuple[str, str, str] = ("predictions", "lanes", "drivable")


def export_multitask_onnx(
    model: Any,
    path: str | os.PathLike,
    *,
    width: int | None = None,
    height: int | None = None,
    atol: float = 1e-4,
    rtol: float = 1e-4,
    native_resolution: bool = True,
) -> Any:
    """Export a `MultiTaskNet` to one ONNX graph with the core parity check (batch axis dynamic).

    The graph takes `images` (N, 3, height, width) RGB in [0, 1] and returns:
        - `predictions` (N, 4 + 10, anchors): box centre x, y, width, height in input pixels, then
          class scores — the exported YOLO detector's layout (`export_detector_onnx`), so the same
          decoding (class-wise NMS) applies;
        - `lanes` (N, 13, height / s, width / s): lane logits (9 category, 2 style, 2 direction)
          at the lane head's stride s (`lane_stride`, 2 by default);
        - `drivable` (N, 3, height / 4, width / 4): drivable logits (direct, alternative, background).
    With `native_resolution` False both are resized bilinearly to height x width inside the graph
    (the first layout): the decoders read either (`multitask.decode.unletterbox`), but the resize
    to the input, which every decoder then resizes again to the frame, was ~7 % of the graph's
    kernel time (4 frames, 384x224, onnxruntime on 2 threads) and four to sixteen times the data.
    The model's metadata records the task, the input size (frames are letterboxed into it, grey 114,
    as the exported detector's: `multitask.decode.network_input`), the class names of each output,
    the model config and `lane_decoding` (the lane-level decoding keywords of
    `lanes.decode.lane_mask_from_logits`, `MultiTaskModelConfig.decoding()`; added after the first
    version: the keys of that version are unchanged, readers default it when absent).

    Args:
        model: the `MultiTaskNet` (copied; the original is not changed).
        path: the `.onnx` file (its folder must exist).
        width: input width (default the model config's), a multiple of 32.
        height: input height (default the model config's), a multiple of 32.
        atol: absolute tolerance of the parity check.
        rtol: tolerance relative to each output's scale.

    Returns:
        The core `ExportReport`.

    Raises:
        UserError: if the size is not a multiple of 32 or the folder is missing.
        ExportParityError: if onnxruntime disagrees with the eager model (no file is written).
    """
    import torch

    from visionpipes.core.export import export_onnx

    width = width or model.config.width
    height = height or model.config.height
    if width % 32 or height % 32 or width < 32 or height < 32:
        raise UserError(f"multi-task export size must be multiples of 32, got {width}x{height}.")
    net = copy.deepcopy(model).float().cpu().eval()
    net.detect.dynamic = False
    net.detect.export = True
    net.detect.format = "onnx"
    net.native_outputs = native_resolution
    metadata = {
        "task": "multitask",
        "input": json.dumps({"name": INPUT_NAME, "width": width, "height": height, "range": "RGB [0, 1]"}),
        "detection_classes": json.dumps(list(DET_CATEGORIES)),
        "lane_channels": json.dumps(
            {
                "category": [*LANE_CATEGORIES, "background"],
                "style": list(LANE_STYLES),
                "direction": list(LANE_DIRECTIONS),
            }
        ),
        "drivable_classes": json.dumps(list(DRIVABLE_CATEGORIES)),
        "config": json.dumps(model.config.to_dict()),
        "lane_decoding": json.dumps(model.config.decoding()),
        "output_strides": json.dumps(net.output_strides if native_resolution else {"lanes": 1, "drivable": 1}),
    }
    return export_onnx(
        net,
        torch.rand(1, 3, height, width),
        path,
        input_names=[INPUT_NAME],
        output_names=list(OUTPUT_NAMES),
        dynamic_axes={name: {0: "batch"} for name in (INPUT_NAME, *OUTPUT_NAMES)},
        atol=atol,
        rtol=rtol,
        metadata=metadata,
    )
