"""Static int8 quantisation of the exported detector (onnxruntime QDQ, per-channel weights, the
head's output layers and decoding kept in float), calibrated on images letterboxed as the runtime does.

Deploy-time code: never trains.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from visionpipes.core.errors import UserError
from visionpipes.core.image import read_image
from visionpipes.driving.detection.runtime import detector_input


def quantize_detector_int8(
    onnx_path: str | os.PathLike,
    out_path: str | os.PathLike,
    calibration_images: Sequence[str | os.PathLike],
) -> Path:
    """Static int8 quantisation (onnxruntime, QDQ, per-channel weights) of an exported detector,
    calibrated on `calibration_images` letterboxed as `OnnxDetector` does.

    The backbone, neck and the head's hidden convolutions run in int8 (VNNI/AMX on x86); the head's
    output convolutions and its decoding (DFL, box assembly, class sigmoid) stay in float, because
    quantising them moves boxes by pixels and scores by tenths. Measure the AP of the result
    (`predict_detections_onnx`): `vp-driving deploy` does, and reports it beside the fp32 export's.

    Raises:
        UserError: if no calibration image is given or one is unreadable.
    """
    import re

    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from visionpipes.core.io import atomic_path

    if not calibration_images:
        raise UserError("int8 quantisation needs calibration images.")
    shape = onnx.load(str(onnx_path)).graph.input[0].type.tensor_type.shape.dim
    size = (int(shape[3].dim_value), int(shape[2].dim_value))

    def prepare(path: str | os.PathLike) -> np.ndarray:
        return detector_input([read_image(path, order="BGR", name=f"calibration image {path}")], size)[0]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._items = iter(calibration_images)

        def get_next(self) -> dict[str, np.ndarray] | None:
            path = next(self._items, None)
            return None if path is None else {"images": prepare(path)}

    out = Path(out_path)
    with tempfile.TemporaryDirectory(prefix="quant-") as work, atomic_path(out) as tmp:
        pre = Path(work) / "pre.onnx"
        quant_pre_process(str(onnx_path), str(pre), skip_symbolic_shape=True)
        graph = onnx.load(str(pre)).graph
        head = sorted({n.name.split("/")[1] for n in graph.node if "/dfl/" in n.name})  # the Detect module
        keep_float = [
            n.name
            for n in graph.node
            if any(n.name.startswith(f"/{h}/") for h in head) and not re.search(r"/cv[23]\.\d+/cv[23]\.\d+\.[01]/", n.name)
        ]
        quantize_static(
            str(pre),
            str(tmp),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=keep_float,
        )
    return out
