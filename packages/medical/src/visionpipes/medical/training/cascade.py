"""nnU-Net's low-resolution cascade in training: `3d_lowres` (the plan's `lowres_spacing`, patch and
batch) and `3d_cascade_fullres` (3d_lowres, then the full-resolution network fed the low-resolution
prediction as one-hot input channels).

Follows nnunetv2:
- `training/nnUNetTrainer/nnUNetTrainer.py`: `is_cascaded = configuration_manager.previous_stage_name is
  not None`; the input channels are the image's plus one per foreground label (`label_handling.
  determine_num_input_channels`); the training transforms end, for a cascade, with
  `MoveSegAsOneHotToDataTransform(all_labels=foreground_labels)`, then
  `ApplyRandomBinaryOperatorTransform(strel_size=(1, 8), p_per_label=0.5)` with probability 0.4 and
  `RemoveRandomConnectedComponentFromOneHotEncodingTransform(fill_with_other_class_p=0,
  dont_do_if_covers_more_than_x_percent=0.15, p_per_label=0.5)` with probability 0.2 (the older
  `training/data_augmentation/custom_transforms/cascade_transforms.py`: `MoveSegAsOneHotToData`,
  `ApplyRandomBinaryOperatorTransform`, `RemoveRandomConnectedComponentFromOneHotEncodingTransform`);
  validation transforms only move the one-hot in;
- `training/dataloading/nnunet_dataset.py`: `seg_from_prev_stage` is read per case from the previous
  stage's `predicted_next_stage/<configuration>` folder (its predictions, already resampled to the
  next stage's spacing) and cropped with the image and label.

What differs, on this project's budget: nnU-Net feeds the cascade the 3d_lowres predictions of its
5-fold cross-validation (every training case predicted by a model that did not see it), which costs five
low-resolution trainings. Here one 3d_lowres model is trained on the training split and predicts every
case it was trained on, plus the held-out cases. Those in-sample masks are cleaner than what the cascade
meets at prediction time; nnU-Net's mask augmentations (dilation/erosion/opening/closing, removed
components), applied here as there, are what makes the full-resolution stage robust to the difference.
The held-out cases' masks are true out-of-sample predictions, so validation Dice is honest.

The low-resolution label maps are predicted with the runtime `Predictor` (the code `vp-medical predict`
runs) on each case's own grid and written as NIfTI under `<out>/lowres/predictions/`; the training
transforms resample them with the label (nearest neighbour). The cascade checkpoint carries the
low-resolution network (`prev_net.` weights, frozen) and its description, so `evaluate`, `export` and
`predict` need nothing else.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import MapTransform, Randomizable

from visionpipes.core.config import parse_config
from visionpipes.core.errors import UserError
from visionpipes.medical.runtime.cascade import one_hot_foreground
from visionpipes.medical.runtime.networks import ModelConfig, build_model
from visionpipes.medical.training.config import SegmentationConfig
from visionpipes.medical.training.module import MSDSegmentationModule

#: nnU-Net's cascade augmentation settings (nnUNetTrainer.get_training_transforms).
BINARY_OPERATOR_PROBABILITY = 0.4
BINARY_OPERATOR_STREL = (1.0, 8.0)
REMOVE_COMPONENT_PROBABILITY = 0.2
REMOVE_COMPONENT_MAX_SHARE = 0.15
P_PER_LABEL = 0.5


def _dilate(mask: np.ndarray, radius: float) -> np.ndarray:
    from scipy.ndimage import distance_transform_edt

    if mask.all():
        return mask.copy()
    return distance_transform_edt(~mask) <= radius


def _erode(mask: np.ndarray, radius: float) -> np.ndarray:
    from scipy.ndimage import distance_transform_edt

    if not mask.any():
        return mask.copy()
    return distance_transform_edt(mask) > radius


#: Binary morphology by a ball of a radius (the voxels within `radius` of a voxel centre) through the
#: Euclidean distance transform: the same result as nnU-Net's skimage `binary_*(mask, ball(r))` for an
#: integer r (tested), and, unlike a structuring element of up to 17^3 voxels, the same cost at every
#: radius. The volume's border counts as background for dilation and foreground for erosion (skimage's
#: border values). For a non-integer r skimage's `ball` samples 2r+1 points from -r to r (an even-sized,
#: half-voxel-shifted footprint); here the ball stays centred on the voxel.
BINARY_OPERATORS = {
    "dilation": _dilate,
    "erosion": _erode,
    "closing": lambda m, r: _erode(_dilate(m, r), r),
    "opening": lambda m, r: _dilate(_erode(m, r), r),
}


def random_binary_operator(onehot: np.ndarray, rng: np.random.RandomState) -> np.ndarray:
    """nnU-Net's `ApplyRandomBinaryOperatorTransform` on `(K, *spatial)` one-hot channels, in place: in a
    random channel order, each channel with probability `P_PER_LABEL` gets a dilation, erosion, closing or
    opening by a ball of radius U(1, 8); voxels a channel gains are removed from the others."""
    operations = list(BINARY_OPERATORS.values())
    channels = list(range(onehot.shape[0]))
    rng.shuffle(channels)
    for c in channels:
        if rng.uniform() >= P_PER_LABEL:
            continue
        operation = operations[rng.randint(len(operations))]
        radius = rng.uniform(*BINARY_OPERATOR_STREL)
        work = onehot[c] > 0
        if not work.any():
            continue
        result = operation(work, radius)
        onehot[c] = result
        added = result & ~work
        for other in channels:
            if other != c:
                onehot[other][added] = 0
    return onehot


def remove_random_component(onehot: np.ndarray, rng: np.random.RandomState) -> np.ndarray:
    """nnU-Net's `RemoveRandomConnectedComponentFromOneHotEncodingTransform` (fill_with_other_class_p=0), in
    place: each channel with probability `P_PER_LABEL` loses one random connected component among those
    covering < 15 % of the crop."""
    from scipy import ndimage

    size = onehot[0].size
    for c in range(onehot.shape[0]):
        if rng.uniform() >= P_PER_LABEL:
            continue
        work = onehot[c] > 0
        if not work.any():
            continue
        components, _ = ndimage.label(work)
        sizes = np.bincount(components.ravel())[1:]
        valid = [i + 1 for i, s in enumerate(sizes) if s < size * REMOVE_COMPONENT_MAX_SHARE]
        if valid:
            onehot[c][components == valid[rng.randint(len(valid))]] = 0
    return onehot


class PrevStageOneHotd(MapTransform, Randomizable):
    """Move the previous stage's label map `prev` (`(1, *spatial)`) into the image as one channel per
    foreground label (nnU-Net's `MoveSegAsOneHotToData`); with `augment`, nnU-Net's mask augmentations
    (`random_binary_operator` with probability 0.4, then `remove_random_component` with probability 0.2)."""

    def __init__(
        self,
        foreground_labels: Sequence[int],
        *,
        augment: bool,
        prev_key: str = "prev",
        image_key: str = "image",
    ) -> None:
        super().__init__(keys=[prev_key])
        self.foreground_labels = [int(v) for v in foreground_labels]
        self.augment = augment
        self.prev_key = prev_key
        self.image_key = image_key

    def randomize(self, data: Any = None) -> None:  # draws happen in __call__ (per channel)
        pass

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        prev = d.pop(self.prev_key)
        labels = np.rint(np.asarray(torch.as_tensor(prev)[0])).astype(np.int64)
        onehot = one_hot_foreground(labels, self.foreground_labels)
        if self.augment:
            if self.R.uniform() < BINARY_OPERATOR_PROBABILITY:
                random_binary_operator(onehot, self.R)
            if self.R.uniform() < REMOVE_COMPONENT_PROBABILITY:
                remove_random_component(onehot, self.R)
        image = d[self.image_key]
        d[self.image_key] = torch.cat([image, torch.from_numpy(onehot).to(image.dtype)], dim=0)
        return d


def _stage_strides(spacing: Sequence[float], patch: Sequence[int]) -> list[Any]:
    from visionpipes.medical.planning import rules

    topology = rules.pool_and_conv_props(np.asarray(spacing, dtype=np.float64), list(patch))
    return [s[0] if len(set(s)) == 1 else list(s) for s in topology.strides[1:]]


def lowres_config(config: SegmentationConfig, plan: Mapping[str, Any] | None) -> SegmentationConfig:
    """The 3d_lowres settings: `config` at the plan's `lowres_spacing` (resampled), with the plan's
    low-resolution patch and batch where the full-resolution ones came from the plan (explicit values in
    params.yaml apply to both stages), and the strides nnU-Net's topology rule gives that patch at that
    spacing where the strides came from the plan. Channels: the plan's rule (32, 64, ...) where they came
    from the plan; explicit channels are cut or extended (doubling) to the stage count.

    Raises:
        UserError: if the plan has no enabled cascade stage.
    """
    cascade = (plan or {}).get("cascade") or {}
    if not cascade.get("enabled"):
        raise UserError("train.configuration 3d_lowres needs a plan whose cascade stage is enabled.")
    sources = (plan or {}).get("sources") or {}
    from_plan = {k for k, v in sources.items() if v == "plan"}
    data = config.data.model_dump()
    data["pixdim"] = tuple(float(s) for s in cascade["lowres_spacing"])
    if "train.data.roi_size" in from_plan:
        data["roi_size"] = tuple(int(s) for s in cascade["lowres_patch_size"])
    if "train.data.batch_size" in from_plan:
        data["batch_size"] = int(cascade["lowres_batch_size"])
    model = config.model.model_dump()
    if "train.model.strides" in from_plan:
        model["strides"] = _stage_strides(cascade["lowres_spacing"], data["roi_size"])
        channels = list(model["channels"])
        if "train.model.channels" in from_plan:
            from visionpipes.medical.planning import rules

            channels = list(rules.features_per_stage(len(model["strides"]) + 1, 3))
        n = len(model["strides"]) + 1
        while len(channels) < n:
            channels.append(channels[-1] * 2)
        model["channels"] = channels[:n]
    settings = {**config.model_dump(), "model": model, "data": data, "configuration": "3d_lowres"}
    return parse_config(SegmentationConfig, settings, source="train (3d_lowres stage of the plan's cascade)")


class CascadeFullresModule(MSDSegmentationModule):
    """The 3d_cascade_fullres network: `MSDSegmentationModule` whose input has one more channel per
    foreground label of the previous stage, carrying the frozen low-resolution network (`prev_net`, not
    trained, not in the optimiser) so that its checkpoint alone predicts the whole cascade.

    Args:
        previous_stage: `{"foreground_labels": [...], "description": the low-resolution model's
            description (`runtime.checkpoint.model_description`)}`.
        **kwargs: as for `MSDSegmentationModule`.
    """

    def __init__(self, *args: Any, previous_stage: dict, **kwargs: Any) -> None:
        self._previous_stage = previous_stage
        super().__init__(*args, **kwargs)
        description = previous_stage["description"]
        self.prev_net = build_model(
            parse_config(ModelConfig, description["model"], source="low-resolution model"),
            len(description["modality"]),
            len(description["regions"]),
        )
        self.prev_net.requires_grad_(False)

    def _input_channels(self) -> int:
        return len(self.hparams.modality) + len(self._previous_stage["foreground_labels"])

    def load_previous_stage(self, checkpoint: str | os.PathLike) -> None:
        """Copy the low-resolution network's weights from its training checkpoint."""
        from visionpipes.medical.runtime.checkpoint import network_from_checkpoint

        net, _ = network_from_checkpoint(checkpoint)
        self.prev_net.load_state_dict(net.state_dict())

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(
            self.net.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=max(1, self.hparams.max_epochs)
        )
        return {"optimizer": optimizer, "lr_scheduler": scheduler}


def predict_previous_stage(
    checkpoint: str | os.PathLike,
    cases: Sequence[Any],
    out_dir: str | os.PathLike,
    config: SegmentationConfig,
    *,
    crop_foreground: bool,
) -> dict[str, Path]:
    """Label maps of the low-resolution model for `cases` (`MSDCase`), on each case's own grid, written to
    `out_dir/<case id>.nii.gz` with the runtime `Predictor` (validation's window settings), on the device
    training used (`train.accelerator`; `auto`: cuda, then mps, then cpu)."""
    from visionpipes.medical.runtime.predictor import InferenceConfig, Predictor

    inference = InferenceConfig(
        overlap=config.sw_overlap, sw_batch_size=config.sw_batch_size, crop_foreground=crop_foreground
    )
    predictor = Predictor.from_checkpoint(checkpoint, inference, device=config.trainer.accelerator)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for case in cases:
        written[case.case_id] = predictor.predict_file(case.image, out / f"{case.case_id}.nii.gz")
    return written


def train_cascade(
    task_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: SegmentationConfig,
    *,
    resume: bool = True,
    plan: dict | None = None,
    train_stage: Callable[..., Any],
):
    """nnU-Net's 3d_lowres then 3d_cascade_fullres (each stage trained by `train_stage`, i.e.
    `training.fit.train_stage`, passed in by `fit.train` so that the two modules do not import each other): the low-resolution network in `<out>/lowres` (its
    checkpoints and `train.json`), its label maps of every training case in `<out>/lowres/predictions`,
    then the full-resolution network with them as one-hot input channels in `<out>` (checkpoints,
    `train.json`, `split.json` as for 3d_fullres).

    Returns:
        The full-resolution stage's `TrainResult`.
    """
    from visionpipes.medical.msd.dataset_json import load_task
    from visionpipes.medical.runtime.checkpoint import load_training_checkpoint, model_description

    out = Path(out_dir)
    low_cfg = lowres_config(config, plan)
    low_plan = None if plan is None else {**plan, "configuration": "3d_lowres"}
    low = train_stage(task_dir, out / "lowres", low_cfg, resume=resume, plan=low_plan)
    low_ckpt = low.fit.last_checkpoint or low.fit.best_checkpoint
    if low_ckpt is None:
        raise UserError(f"the 3d_lowres stage in {out / 'lowres'} wrote no checkpoint.")
    task = load_task(task_dir)
    normalization = load_training_checkpoint(low_ckpt)["hyper_parameters"].get("normalization") or []
    zero_background = not normalization or all(
        e.get("scheme") == "zscore" and e.get("use_nonzero_mask") for e in normalization
    )
    predictions = predict_previous_stage(
        low_ckpt, task.training, out / "lowres" / "predictions", config, crop_foreground=zero_background
    )
    description = model_description(load_training_checkpoint(low_ckpt)["hyper_parameters"])
    foreground = sorted(int(k) for k in task.labels if int(k) != 0)
    previous_stage = {
        "foreground_labels": foreground,
        "description": description,
        "predictions": predictions,
        "checkpoint": str(low_ckpt),
    }
    full_cfg = config.model_copy(update={"configuration": "3d_cascade_fullres"})
    return train_stage(task_dir, out, full_cfg, resume=resume, plan=plan, previous_stage=previous_stage)
