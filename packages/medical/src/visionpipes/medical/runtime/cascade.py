"""Prediction with nnU-Net's low-resolution cascade (`train.configuration: 3d_cascade_fullres`): the
3d_lowres network predicts the scan at the plan's `lowres_spacing`, its label map is brought back to the
scan's grid, one-hot encoded over the task's foreground labels and appended to the image channels of the
full-resolution network.

Follows nnunetv2: `inference/predict_from_raw_data.py` (`prev_stage_predictions`: the previous stage's
segmentations are read per case and the preprocessor appends `convert_labelmap_to_one_hot(seg,
label_manager.foreground_labels)` to the image, after resampling it to the current stage's spacing) and
`utilities/label_handling/label_handling.py` (`determine_num_input_channels`: image channels + the number
of foreground labels, background excluded).

The cascade's prediction itself is `Predictor`'s (`previous_stage`, `foreground_labels`; `Predictor.load`
builds both stages from a cascade checkpoint or deploy folder); this module holds the files and the one-hot.
Runtime: it never imports training code, Lightning, DVCLive or Optuna.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from visionpipes.core.errors import UserError

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


def lowres_file(path: str | os.PathLike) -> Path:
    """The low-resolution network's file beside a deployed cascade's full-resolution `model.onnx` / `model.pt`."""
    path = Path(path)
    return path.parent / f"{LOWRES_PREFIX}{path.name}"


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
