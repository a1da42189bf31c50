"""Lane prediction: frames to network input, the eager model's masks at image size (on the device
`core.device.select_device` picks), the ONNX export whose metadata carries the decoding settings,
and `OnnxLaneModel`, its onnxruntime twin used by streams.

Runtime: never imports training code (lanes.train, Lightning, DVCLive, Optuna).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from visionpipes.core.errors import UserError
from visionpipes.core.image import read_image
from visionpipes.driving.bdd100k.masks import mask_name, write_mask
from visionpipes.driving.lanes.decode import lane_mask_from_logits, roi_top_rows
from visionpipes.driving.lanes.model import LaneModelConfig, LaneNet


def to_network_input(images_bgr: Sequence[np.ndarray], size: tuple[int, int], roi_top: float = 0.0) -> np.ndarray:
    """BGR uint8 frames -> (N, 3, H, W) float32 RGB in [0, 1] at the network's `size` (width, height),
    from the rows below `roi_top` of each frame."""
    import cv2

    batch = [
        cv2.resize(img[roi_top_rows(img.shape[0], roi_top) :], size, interpolation=cv2.INTER_AREA)[:, :, ::-1].transpose(
            2, 0, 1
        )
        for img in images_bgr
    ]
    return np.ascontiguousarray(np.stack(batch), dtype=np.float32) / 255.0


# --------------------------------------------------------------------------------------------------
# Prediction and export
# --------------------------------------------------------------------------------------------------


@torch.inference_mode()
def predict_lane_logits(
    model: LaneNet, images_bgr: Sequence[np.ndarray], device: str | torch.device = "cpu"
) -> np.ndarray:
    """The network's logits (N, 13, H, W) at its own input size for BGR frames."""
    size = (model.config.width, model.config.height)
    x = torch.from_numpy(to_network_input(images_bgr, size, model.config.roi_top)).to(device)
    return model.to(device).eval()(x).float().cpu().numpy()


def predict_lane_masks(
    model: LaneNet,
    images: Iterable[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
) -> list[Path]:
    """Predict the lane mask of each image and write it as `<out_dir>/<stem>.png` at the image's size.

    Raises:
        UserError: if an image is missing or unreadable.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [Path(p) for p in images]
    written = []
    for i in range(0, len(paths), batch_size):
        chunk = paths[i : i + batch_size]
        frames = [read_image(p, order="BGR") for p in chunk]
        logits = predict_lane_logits(model, frames, device)
        for path, frame, lg in zip(chunk, frames, logits):
            target = out / mask_name(path.name)
            size = (frame.shape[1], frame.shape[0])
            write_mask(target, lane_mask_from_logits(lg, size, **model.config.decoding()))
            written.append(target)
    return written


def export_lane_onnx(model: LaneNet, path: str | os.PathLike, *, atol: float = 1e-4, rtol: float = 1e-4) -> Any:
    """Export a lane model to ONNX with the core parity check (batch axis dynamic).

    The graph takes `images` (N, 3, H, W) RGB in [0, 1] at the model's size and returns `logits`
    (N, 13, H, W); `lane_mask_from_logits` decodes them. The model's `roi_top` and lane-level
    decoding settings (`LaneModelConfig.decoding`) are stored in the file's metadata, so
    `OnnxLaneModel` crops frames as the model was trained and decodes as the eager model does.

    Raises:
        ExportParityError: if onnxruntime disagrees with the eager model (no file is written).
    """
    from visionpipes.core.export import export_onnx

    example = torch.rand(1, 3, model.config.height, model.config.width)
    return export_onnx(
        model.cpu().eval(),
        example,
        path,
        input_names=["images"],
        output_names=["logits"],
        dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
        atol=atol,
        rtol=rtol,
        metadata={key: repr(float(value)) for key, value in model.config.decoding().items()},
    )


class OnnxLaneModel:
    """The exported lane model under onnxruntime: BGR frames in, official lane masks out.

    Raises:
        UserError: if the file is missing or not loadable.
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        from visionpipes.core.export import OnnxRunner

        self.runner = OnnxRunner(path, threads=threads)
        shape = self.runner.session.get_inputs()[0].shape
        self.size = (int(shape[3]), int(shape[2]))
        self.decoding = {key: self._metadata_number(path, key) for key in LaneModelConfig().decoding()}
        self.decoding["vote"] = bool(self.decoding["vote"])
        self.roi_top = self.decoding["roi_top"]

    def _metadata_number(self, path: str | os.PathLike, key: str) -> float:
        try:
            return float(self.runner.metadata.get(key, 0.0))
        except ValueError:
            raise UserError(f"lane model {path}: metadata {key} is not a number.") from None

    def logits(self, frames_bgr: Sequence[np.ndarray]) -> np.ndarray:
        """(N, 13, H, W) logits at the network size."""
        (out,) = self.runner(to_network_input(frames_bgr, self.size, self.roi_top))
        return out

    def __call__(self, frames_bgr: Sequence[np.ndarray]) -> list[np.ndarray]:
        """One lane mask per frame, at the frame's size."""
        frames = list(frames_bgr)
        if not frames:
            return []
        return [
            lane_mask_from_logits(lg, (f.shape[1], f.shape[0]), **self.decoding)
            for lg, f in zip(self.logits(frames), frames)
        ]
