"""Prediction with nnU-Net's low-resolution cascade (`train.configuration: 3d_cascade_fullres`): the
3d_lowres network predicts the scan at the plan's `lowres_spacing`, its label map is brought back to the
scan's grid, one-hot encoded over the task's foreground labels and appended to the image channels of the
full-resolution network.

Follows nnunetv2: `inference/predict_from_raw_data.py` (`prev_stage_predictions`: the previous stage's
segmentations are read per case and the preprocessor appends `convert_labelmap_to_one_hot(seg,
label_manager.foreground_labels)` to the image, after resampling it to the current stage's spacing) and
`utilities/label_handling/label_handling.py` (`determine_num_input_channels`: image channels + the number
of foreground labels, background excluded).

Runtime: it never imports training code, Lightning, DVCLive or Optuna.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from visionpipes.core.errors import UserError
from visionpipes.medical.runtime.predictor import InferenceConfig, Predictor

#: The configuration names of `train.configuration` (nnU-Net's).
CONFIGURATIONS: tuple[str, ...] = ("auto", "3d_fullres", "3d_lowres", "3d_cascade_fullres")
#: File-name prefix of the low-resolution network beside the full-resolution one in a deploy folder.
LOWRES_PREFIX = "lowres_"


def one_hot_foreground(labels: np.ndarray, foreground_labels: Sequence[int]) -> np.ndarray:
    """One channel per foreground label (`(K, *spatial)` float32, 1 where `labels == label`), as nnunetv2's
    `convert_labelmap_to_one_hot(seg, label_manager.foreground_labels)` for the cascade's extra input.

    Example:
        >>> one_hot_foreground(np.array([[[0, 1, 2]]]), [1, 2])[:, 0, 0].tolist()
        [[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    """
    labels = np.asarray(labels)
    out = np.zeros((len(foreground_labels), *labels.shape), dtype=np.float32)
    for i, value in enumerate(foreground_labels):
        out[i][labels == int(value)] = 1.0
    return out


def cascade_input_channels(description: Mapping[str, Any]) -> int:
    """Input channels of a model description's network: its modalities, plus one per foreground label of
    the previous stage for a cascade's full-resolution network."""
    prev = description.get("previous_stage")
    return len(description["modality"]) + (len(prev["foreground_labels"]) if prev else 0)


def lowres_file(path: str | os.PathLike) -> Path:
    """The low-resolution network's file beside a deployed cascade's full-resolution `model.onnx` / `model.pt`."""
    path = Path(path)
    return path.parent / f"{LOWRES_PREFIX}{path.name}"


class CascadePredictor(Predictor):
    """nnU-Net's 3d_cascade_fullres at prediction: `lowres` (a `Predictor` at the low-resolution spacing)
    labels the scan, the labels go back to the scan's grid (its inverse resampling, then thresholds), their
    one-hot over `foreground_labels` follows the image through the full-resolution preprocessing (nearest
    neighbour) and is appended to the normalised image channels before the sliding windows.

    Args:
        net: the full-resolution network (`len(modality) + len(foreground_labels)` input channels).
        lowres: the previous stage's predictor.
        foreground_labels: the task's labels other than background, in the one-hot channel order.
        **kwargs: as for `Predictor`.
    """

    def __init__(
        self, net: torch.nn.Module, *, lowres: Predictor, foreground_labels: Sequence[int], **kwargs: Any
    ) -> None:
        super().__init__(net, **kwargs)
        self.lowres = lowres
        self.foreground_labels = [int(v) for v in foreground_labels]

    @classmethod
    def from_parts(
        cls,
        net: torch.nn.Module,
        description: Mapping[str, Any],
        lowres_net: torch.nn.Module,
        config: InferenceConfig | None = None,
        device: str = "cpu",
    ) -> CascadePredictor:
        """A cascade predictor from the full-resolution network and description (with `previous_stage`)
        and the low-resolution network."""
        prev = description["previous_stage"]
        lowres = Predictor.from_description(lowres_net, prev["description"], config, device)
        base = Predictor.from_description(net, description, config, device)
        return cls(
            base.net,
            lowres=lowres,
            foreground_labels=prev["foreground_labels"],
            regions=base.regions,
            modality=base.modality,
            roi_size=base.roi_size,
            pixdim=base.pixdim,
            config=base.config,
            device=base.device,
            labels=base.labels,
            normalization=base.normalization,
        )

    def _spatial_nearest(self):
        from monai.transforms import Compose, Orientation, Spacing

        from visionpipes.medical.runtime.predictor import AXCODES, AXIS_LABELS

        steps = [Orientation(axcodes=AXCODES, labels=AXIS_LABELS)]
        if self.pixdim is not None:
            steps.append(Spacing(pixdim=self.pixdim, mode="nearest"))
        return Compose(steps)

    def previous_stage_labels(self, image: np.ndarray, affine: np.ndarray) -> np.ndarray:
        """The low-resolution stage's label map of `image` on its own (input) grid."""
        return self.lowres.predict_array(image, affine)

    def predict_array(self, image: np.ndarray, affine: np.ndarray) -> np.ndarray:
        """Label map (input grid) of an image `(C, X, Y, Z)`: the low-resolution stage, then the
        full-resolution network on the image plus the one-hot of the low-resolution labels.

        Raises:
            UserError: if the channel count differs from the model's.
        """
        from monai.data import MetaTensor

        from visionpipes.medical.msd.regions import regions_to_labels

        if image.shape[0] != self.num_channels:
            raise UserError(
                f"the scan has {image.shape[0]} channels, but the model expects {self.num_channels}."
            )
        low = self.previous_stage_labels(image, affine)
        onehot = one_hot_foreground(low, self.foreground_labels)
        aff = torch.as_tensor(affine)
        spatial = self._spatial()
        volume = spatial(MetaTensor(torch.from_numpy(np.ascontiguousarray(image)), affine=aff))
        prev = self._spatial_nearest()(MetaTensor(torch.from_numpy(onehot), affine=aff))
        normalised = torch.as_tensor(self.normalise(volume)).as_subclass(torch.Tensor).float()
        x = torch.cat([normalised, prev.as_tensor().float()], dim=0)
        probs = self.region_probabilities(x)
        probs = MetaTensor(probs, meta=volume.meta, applied_operations=volume.applied_operations)
        probs = spatial.inverse(probs)
        return regions_to_labels(probs.as_tensor().numpy(), self.regions, threshold=self.config.threshold)


def load_lowres_network(path: str | os.PathLike) -> torch.nn.Module:
    """The low-resolution network of a cascade model at `path`: the `prev_net.` weights of a training
    checkpoint, or the `lowres_model.*` file beside a deployed model (its folder's runtime file).

    Raises:
        UserError: if the low-resolution network is missing or unreadable.
    """
    from visionpipes.medical.runtime.checkpoint import lowres_network_from_checkpoint
    from visionpipes.medical.runtime.deployed import NotDeployedError, deployed_model_file, load_deployed

    path = Path(path)
    if path.suffix == ".ckpt":
        return lowres_network_from_checkpoint(path)[0]
    if path.is_file() and path.suffix != ".onnx":
        try:
            load_deployed(path)
        except NotDeployedError:  # a training checkpoint under another name (as `Predictor.load` accepts)
            return lowres_network_from_checkpoint(path)[0]
    main = deployed_model_file(path) if path.is_dir() else path
    low = lowres_file(main)
    if not low.is_file():
        raise UserError(
            f"{main} is a 3d_cascade_fullres model, but its low-resolution network {low} is missing "
            "(a cascade deploy folder holds both; copy the whole folder)."
        )
    net, _, _ = load_deployed(low)
    return net
