"""The multi-task network's typed config (size, widths, ASPP rates, loss weights) and its output
layout: detection classes, the lane channel groups and the drivable classes of BDD100K.

Pure pydantic and constants: no torch, no ultralytics, so `params.yaml` checks stay fast.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import field_validator, model_validator

from visionpipes.core.config import ConfigModel, Field, parse_config
from visionpipes.core.errors import UserError
from visionpipes.driving.bdd100k.categories import DET_CATEGORIES, DRIVABLE_CATEGORIES, LANE_CATEGORIES

#: Detection classes: index i is the official BDD100K id i + 1 (`DET_CATEGORIES`).
DETECTION_CLASSES: int = len(DET_CATEGORIES)
#: Lane logits, as the dedicated lane model's (`lanes.decode`): 8 lane types then background,
#: 2 styles (solid, dashed), 2 directions (parallel, vertical).
LANE_CATEGORY_CHANNELS: int = len(LANE_CATEGORIES) + 1
LANE_STYLE_CHANNELS: int = 2
LANE_DIRECTION_CHANNELS: int = 2
LANE_CHANNELS: int = LANE_CATEGORY_CHANNELS + LANE_STYLE_CHANNELS + LANE_DIRECTION_CHANNELS
#: The lane category index of "no lane".
LANE_BACKGROUND_CLASS: int = len(LANE_CATEGORIES)
#: Drivable logits: channel k is the drivable-mask value k (0 direct, 1 alternative, 2 background),
#: so the arg-max is the official drivable mask.
DRIVABLE_CHANNELS: int = len(DRIVABLE_CATEGORIES)
#: Target value ignored by every segmentation loss (as `lanes.data.IGNORE_INDEX`).
IGNORE_INDEX: int = -100


class MultiTaskModelConfig(ConfigModel):
    """The network's size.

    Attributes:
        backbone: a `core.backbones` preset name, a spec file (`.yaml`/`.json`, e.g. the
            `best_spec.yaml` of `vp-core search`; inlined when read with `from_params`) or a spec
            mapping. It must return features at strides 4, 8, 16 and 32.
        width: network input width (multiple of 32); the size the model is exported and profiled at.
        height: network input height (multiple of 32).
        neck_width: channels of the FPN and PAN levels (strides 8, 16, 32) the detection head reads.
        seg_width: channels of the segmentation decoder (ASPP output and the stride-8/4 fusions).
        lane_head_width: channels of the lane head's depthwise separable conv.
        lane_stride: the stride the lane logits are predicted at before the bilinear resize to the
            input: 2 (default; the decoder's stride-4 features fused with a stride-2 conv of the
            image, `model.DetailLaneHead`: lanes are 2-3 px wide at 448 px), 1 (those logits refined at
            the input's resolution with a stride-1 conv of the image, `model.FullResolutionLaneHead`)
            or 4 (the drivable head's layout).
        detail_width: channels of that stride-2 image conv.
        lane_upsample_width: with `lane_stride` 2, the decoder's features are projected to this
            many channels (a 1x1 conv at stride 4) before the lane head upsamples them to stride 2
            (0: all `seg_width` channels are upsampled, the layout of the models trained before).
        drivable_head_width: channels of the drivable head's depthwise separable conv.
        aspp_rates: dilation rates of the ASPP on the stride-16 level (in stride-16 cells).
        act: activation of the neck and segmentation heads (`core.layers` names).
        reg_max: DFL bins of the ultralytics `Detect` head.
        join_gaps, min_area, vote: the lane-level decoding of the lane output (as
            `LaneModelConfig`'s: join pieces of a lane across gaps up to `join_gaps` x the longer
            piece, drop pieces under `min_area` of the image, one style per piece); read by the
            evaluation and written into the ONNX metadata (`lane_decoding`).

    Frames are letterboxed into `width` x `height` (aspect kept, grey 114 padding, as the exported
    detector's `detection.runtime.letterbox`); segmentation outputs are cropped to the letterboxed
    image and resized back (`multitask.decode`).
    """

    backbone: str | dict[str, Any] = "mobilenet_v2"
    width: int = Field(384, ge=32, multiple_of=32)
    height: int = Field(224, ge=32, multiple_of=32)
    neck_width: int = Field(64, ge=8)
    seg_width: int = Field(64, ge=8)
    lane_head_width: int = Field(32, ge=4)
    lane_stride: Literal[1, 2, 4] = 2
    detail_width: int = Field(16, ge=4)
    lane_upsample_width: int = Field(0, ge=0)
    drivable_head_width: int = Field(16, ge=4)
    aspp_rates: list[int] = Field(default_factory=lambda: [2, 4, 6], min_length=1)
    act: str = "silu"
    reg_max: int = Field(16, ge=1)
    join_gaps: float = Field(3.0, ge=0)
    min_area: float = Field(0.0002, ge=0, lt=1)
    vote: bool = True

    def decoding(self) -> dict[str, Any]:
        """Keyword arguments of `lanes.decode.lane_mask_from_logits` (no `roi_top`: the network
        sees the whole frame)."""
        return {"join_gaps": self.join_gaps, "min_area": self.min_area, "vote": self.vote}

    @field_validator("aspp_rates")
    @classmethod
    def _positive_rates(cls, rates: list[int]) -> list[int]:
        if any(r < 1 for r in rates):
            raise ValueError(f"ASPP rates must be >= 1, got {rates}")
        return rates

    @model_validator(mode="after")
    def _upsample_width_needs_the_stride_2_head(self) -> MultiTaskModelConfig:
        if self.lane_upsample_width and self.lane_stride != 2:
            raise ValueError(
                f"lane_upsample_width applies to the stride-2 lane head only (lane_stride is {self.lane_stride}); "
                "set it to 0"
            )
        return self

    @classmethod
    def from_params(cls, data: Any, *, source: str) -> MultiTaskModelConfig:
        """Validate `data` and inline a backbone spec file, so a saved model never needs the file.

        Raises:
            UserError: on an unknown key (with the closest valid key), a bad value, or an
                unreadable spec file.
        """
        config = parse_config(cls, data, source=source)
        if isinstance(config.backbone, str):
            from visionpipes.core.backbones import inline_spec_file

            try:
                config.backbone = inline_spec_file(config.backbone)
            except ValueError as err:
                raise UserError(f"{source}: backbone {config.backbone}: {err}") from None
        return config


class MultiTaskLossConfig(ConfigModel):
    """Weights of the joint loss.

    Attributes:
        detection: weight of the detection loss (ultralytics' box + cls + DFL, gains below).
        lanes: weight of the lane loss.
        drivable: weight of the drivable-area loss.
        box: ultralytics' box (CIoU) gain (`cfg/default.yaml` box: 7.5).
        cls: ultralytics' classification BCE gain (cls: 0.5).
        dfl: ultralytics' distribution focal loss gain (dfl: 1.5).
        tal_topk: candidates per object of ultralytics' `TaskAlignedAssigner` (10 as in v8).
        lane_dice: weight of the multi-class Dice added to the lane category cross-entropy
            (as the lane model's `dice_weight`).
        lane_background: weight of the background class in the lane category cross-entropy
            (as the lane model's `background_weight`).
        lane_attributes: weight of the style and direction cross-entropies on lane pixels
            (as the lane model's `attribute_weight`).
        drivable_dice: weight of the multi-class Dice added to the drivable cross-entropy (0: CE only).
    """

    detection: float = Field(1.0, ge=0)
    lanes: float = Field(1.0, ge=0)
    drivable: float = Field(1.0, ge=0)
    box: float = Field(7.5, ge=0)
    cls: float = Field(0.5, ge=0)
    dfl: float = Field(1.5, ge=0)
    tal_topk: int = Field(10, ge=1)
    lane_dice: float = Field(1.0, ge=0)
    lane_background: float = Field(1.0, ge=0)
    lane_attributes: float = Field(0.5, ge=0)
    drivable_dice: float = Field(0.5, ge=0)

    @model_validator(mode="after")
    def _some_task(self) -> MultiTaskLossConfig:
        if self.detection == 0 and self.lanes == 0 and self.drivable == 0:
            raise ValueError("at least one of the task weights detection, lanes, drivable must be above 0")
        return self


#: The training schedules `MultiTaskTrainConfig.schedule` may name (see `multitask.train`).
SCHEDULES: tuple[str, ...] = ("joint", "staged")


class MultiTaskTrainConfig(ConfigModel):
    """How to train the multi-task network (`multitask.train` in params.yaml).

    Attributes:
        batch_size: images per batch.
        lr: peak learning rate (AdamW).
        weight_decay: AdamW weight decay.
        warmup_steps: linear warm-up steps.
        schedule: `joint` (every task from the first step, YOLOP's end-to-end) or `staged`
            (HybridNets / YOLOP's `ED-S-W`: encoder + detection first, then the segmentation
            heads on the frozen encoder and detection head, then everything jointly).
        stages: with `staged`, the shares of the run (time budget or steps, whichever is further
            along) of the detection phase and of the segmentation phase; the rest is joint.
        max_minutes: wall-clock training budget in minutes (None, the default: `max_epochs` only,
            so the result does not depend on the machine's load).
        max_epochs: the epochs to train (the cosine LR anneals over them).
        flip: probability of the horizontal flip (boxes, lane and drivable masks flipped alike).
        scale: the random affine warp's scale range, 1 +- scale (`multitask.augment`; YOLOP: 0.25).
        translate: its translation range, +- this share of each side (YOLOP: 0.1).
        degrees: its rotation range in degrees (YOLOP: 10).
        hsv: the colour jitter's hue, saturation and value gains (YOLOP: 0.015, 0.7, 0.4).
        workers: data-loader workers.
        cache: keep the letterboxed images and targets in memory after the first read.
        limit: use at most this many training images (0: all).
        seed: seed of the initialisation, the shuffling and the augmentation.
    """

    batch_size: int = Field(8, ge=1)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(5e-4, ge=0)
    warmup_steps: int = Field(20, ge=0)
    schedule: Literal["joint", "staged"] = "joint"
    stages: list[float] = Field(default_factory=lambda: [0.5, 0.25], min_length=2, max_length=2)
    max_minutes: float | None = Field(None, gt=0)
    max_epochs: int = Field(15, ge=1)
    flip: float = Field(0.5, ge=0, le=1)
    scale: float = Field(0.0, ge=0, lt=1)
    translate: float = Field(0.0, ge=0, le=0.5)
    degrees: float = Field(0.0, ge=0, le=45)
    hsv: list[float] = Field(default_factory=lambda: [0.0, 0.0, 0.0], min_length=3, max_length=3)
    workers: int = Field(0, ge=0)
    cache: bool = True
    limit: int = Field(0, ge=0)
    seed: int = 0

    @field_validator("stages")
    @classmethod
    def _stage_shares(cls, stages: list[float]) -> list[float]:
        if any(s < 0 for s in stages) or sum(stages) >= 1:
            raise ValueError(f"stage shares must be >= 0 and leave a joint phase (sum below 1), got {stages}")
        return stages


class MultiTaskConfig(ConfigModel):
    """The `multitask` section of params.yaml: the network, its joint loss, its training and extra
    Lightning trainer settings (`core.training.TrainConfig` keys such as `accelerator`,
    `precision`; `max_epochs`/`max_time` come from `train`)."""

    model: MultiTaskModelConfig = Field(default_factory=MultiTaskModelConfig)
    loss: MultiTaskLossConfig = Field(default_factory=MultiTaskLossConfig)
    train: MultiTaskTrainConfig = Field(default_factory=MultiTaskTrainConfig)
    trainer: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def from_params(cls, data: Any, *, source: str) -> MultiTaskConfig:
        """Validate `data` (see `MultiTaskModelConfig.from_params` for the backbone spec file).

        Raises:
            UserError: on an unknown key (with the closest valid key) or a bad value.
        """
        config = parse_config(cls, data, source=source)
        config.model = MultiTaskModelConfig.from_params(config.model.to_dict(), source=f"{source}.model")
        return config


#: The model families `model.family` may name.
FAMILIES: tuple[str, ...] = ("two_model", "multitask")


class FamilyConfig(ConfigModel):
    """The `model` section of params.yaml: which driving models the pipeline trains, evaluates and
    deploys. `two_model`: the YOLO detector and the lane model (no drivable area); `multitask`: those
    two and the multi-task network beside them (scored side by side; `perception.onnx` deployed).
    """

    family: Literal["two_model", "multitask"] = "two_model"
