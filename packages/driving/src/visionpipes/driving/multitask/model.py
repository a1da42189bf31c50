"""The multi-task network (YOLOP's layout on core blocks): one backbone, an FPN + PAN neck for
ultralytics' `Detect` head, and an ASPP decoder for the lane and drivable-area heads.

Model code only: no loss, no data, no training; nothing is downloaded (random initialisation,
pretrained backbone weights are the caller's `core.pretrained` business).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from visionpipes.core.blocks import ASPP, FPN, DepthwiseSeparableConv
from visionpipes.core.errors import UserError
from visionpipes.core.layers import ConvNormAct
from visionpipes.driving.multitask.config import (
    DETECTION_CLASSES,
    DRIVABLE_CHANNELS,
    LANE_CHANNELS,
    MultiTaskModelConfig,
)

#: Strides of the detection levels (ultralytics' P3/P4/P5).
DETECTION_STRIDES: tuple[int, int, int] = (8, 16, 32)
#: The backbone strides the network reads (stride 4 feeds the segmentation decoder).
BACKBONE_STRIDES: tuple[int, int, int, int] = (4, 8, 16, 32)
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


def _ultralytics_detect() -> type[nn.Module]:
    """ultralytics' `Detect` class, imported after the project's offline set-up."""
    from visionpipes.driving.ultralytics_env import apply_ultralytics_env

    apply_ultralytics_env()
    from ultralytics.nn.modules.head import Detect

    return Detect


def build_core_backbone(spec: str | Mapping[str, Any]) -> nn.Module:
    """A `core.backbones` backbone whose features are at strides 4, 8, 16 and 32.

    Raises:
        UserError: if the preset is unknown, the spec invalid, or the strides differ.
    """
    from visionpipes.core.backbones import build_backbone

    name = spec if isinstance(spec, str) else str(spec.get("name", "spec"))
    try:
        backbone = build_backbone(spec)
    except ValueError as err:
        raise UserError(f"multi-task backbone {name}: {err}") from None
    if tuple(backbone.strides) != BACKBONE_STRIDES:
        raise UserError(
            f"multi-task backbone {name} returns features at strides {list(backbone.strides)}; "
            f"the network needs exactly {list(BACKBONE_STRIDES)}."
        )
    return backbone


class PANBottomUp(nn.Module):
    """The bottom-up path of PANet (Liu et al., 2018) over FPN outputs: each level takes the
    finer level through a stride-2 depthwise separable conv, concatenates it with its own FPN
    output and fuses the two with another depthwise separable conv (YOLOv5/YOLOP's PAN with
    DW-separable convs instead of CSP blocks).

    Args:
        channels: width of every level (input and output).
        levels: number of levels, fine to coarse.
        act: activation.
    """

    def __init__(self, channels: int, levels: int = 3, act: str = "silu") -> None:
        super().__init__()
        self.down = nn.ModuleList(
            DepthwiseSeparableConv(2, channels, channels, 3, stride=2, act=act, pw_act=act)
            for _ in range(levels - 1)
        )
        self.fuse = nn.ModuleList(
            DepthwiseSeparableConv(2, 2 * channels, channels, 3, act=act, pw_act=act)
            for _ in range(levels - 1)
        )

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        outs = [features[0]]
        for i, (down, fuse) in enumerate(zip(self.down, self.fuse)):
            outs.append(fuse(torch.cat([down(outs[-1]), features[i + 1]], dim=1)))
        return outs


class SegmentationDecoder(nn.Module):
    """DeepLabV3+-style decoder shared by the lane and drivable heads: ASPP on the stride-16 FPN
    level, upsampled and fused with the stride-8 FPN level, then with the stride-4 backbone
    feature; returns `seg_width` channels at stride 4.
    """

    def __init__(
        self, neck_width: int, skip4_channels: int, seg_width: int, rates: list[int], act: str
    ) -> None:
        super().__init__()
        self.aspp = ASPP(2, neck_width, seg_width, rates=rates, act=act)
        self.fuse8 = DepthwiseSeparableConv(2, seg_width + neck_width, seg_width, 3, act=act, pw_act=act)
        skip = max(8, seg_width // 2)
        self.skip4 = ConvNormAct(2, skip4_channels, skip, 1, act=act)
        self.fuse4 = DepthwiseSeparableConv(2, seg_width + skip, seg_width, 3, act=act, pw_act=act)

    def forward(self, c2: torch.Tensor, p3: torch.Tensor, p4: torch.Tensor) -> torch.Tensor:
        x = self.aspp(p4)
        x = F.interpolate(x, size=p3.shape[2:], mode="bilinear", align_corners=False)
        x = self.fuse8(torch.cat([x, p3], dim=1))
        x = F.interpolate(x, size=c2.shape[2:], mode="bilinear", align_corners=False)
        return self.fuse4(torch.cat([x, self.skip4(c2)], dim=1))


class SegmentationHead(nn.Sequential):
    """A depthwise separable conv then a 1x1 classifier, at the decoder's stride 4."""

    def __init__(self, in_channels: int, width: int, classes: int, act: str) -> None:
        super().__init__()
        self.add_module("conv", DepthwiseSeparableConv(2, in_channels, width, 3, act=act, pw_act=act))
        self.add_module("classifier", nn.Conv2d(width, classes, 1))


class DetailLaneHead(nn.Module):
    """The lane head at stride 2: the decoder's stride-4 features upsampled and fused with a cheap
    stride-2 conv of the image (lane markings are 2-3 px wide at the network's input: at stride 4
    a lane is under one cell, so its edges come from the image itself), then a 1x1 classifier.

    Args:
        in_channels: channels of the decoder output (stride 4).
        detail_channels: channels of the stride-2 image conv.
        width: channels of the fused depthwise separable conv.
        classes: output channels.
        act: activation.
        upsample_channels: project the decoder's features to this many channels by a 1x1 conv at
            stride 4 before upsampling them (0: upsample all `in_channels`). Everything after the
            upsampling runs on four times the cells, so the projection shrinks the head's stride-2
            tensors (resize, concatenation, depthwise conv) from `in_channels + detail_channels`
            channels to `upsample_channels + detail_channels`.
    """

    def __init__(
        self,
        in_channels: int,
        detail_channels: int,
        width: int,
        classes: int,
        act: str,
        upsample_channels: int = 0,
    ) -> None:
        super().__init__()
        self.detail = ConvNormAct(2, 3, detail_channels, 3, 2, act=act)
        self.project = ConvNormAct(2, in_channels, upsample_channels, 1, act=act) if upsample_channels else None
        fused = (upsample_channels or in_channels) + detail_channels
        self.conv = DepthwiseSeparableConv(2, fused, width, 3, act=act, pw_act=act)
        self.classifier = nn.Conv2d(width, classes, 1)

    def forward(self, seg: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        detail = self.detail(image)
        if self.project is not None:
            seg = self.project(seg)
        x = F.interpolate(seg, size=detail.shape[2:], mode="bilinear", align_corners=False)
        return self.classifier(self.conv(torch.cat([x, detail], dim=1)))


class FullResolutionLaneHead(DetailLaneHead):
    """`DetailLaneHead`'s stride-2 logits, upsampled bilinearly to the input and refined there by a
    residual depthwise separable conv over them and a stride-1 conv of the image (`lane_stride: 1`).

    Why: the official lane F-scores have a 2-pixel tolerance at 1280x720, where a stride-2 cell of a
    384-wide input is 6.7 px; ground-truth masks resampled through a 192x108 grid and back score
    F1_pix2 87.8, through 384x216 97.6 (the lane model's 448x160 ROI: 97.8). The refinement adds about
    0.12 GFLOPs at 384x224 (6 % of the network).

    Args:
        in_channels, detail_channels, width, classes, act: as `DetailLaneHead`.
        fine_channels: channels of the stride-1 image conv.
    """

    def __init__(
        self,
        in_channels: int,
        detail_channels: int,
        width: int,
        classes: int,
        act: str,
        fine_channels: int = 8,
    ) -> None:
        super().__init__(in_channels, detail_channels, width, classes, act)
        self.fine = ConvNormAct(2, 3, fine_channels, 3, 1, act=act)
        self.refine = DepthwiseSeparableConv(2, classes + fine_channels, classes, 3, act=act, pw_act=None)

    def forward(self, seg: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        coarse = super().forward(seg, image)
        up = F.interpolate(coarse, size=image.shape[2:], mode="bilinear", align_corners=False)
        return up + self.refine(torch.cat([up, self.fine(image)], dim=1))


class MultiTaskNet(nn.Module):
    """RGB in [0, 1] (N, 3, H, W) -> detection, lane logits and drivable logits from one backbone.

    Layout (YOLOP's, `lib/models/YOLOP.py`, on core blocks): a `core.backbones` backbone (features
    at strides 4/8/16/32); an `FPN` top-down over strides 8/16/32 and a PAN bottom-up path
    (`PANBottomUp`) feeding ultralytics' `Detect` head (DFL, anchor-free, strides 8/16/32, 10
    BDD100K classes); an `ASPP` decoder over the FPN's stride-16/8 levels and the backbone's
    stride-4 feature (`SegmentationDecoder`) feeding two heads: drivable at stride 4, lanes at stride
    2 (`DetailLaneHead`: the decoder's features fused with a stride-2 conv of the image; lanes of
    8 px at 1280 are under 3 px at 384), both resized bilinearly to the input size (as smp's FPN
    and HybridNets' `SegmentationHead(upsampling=4)` do) unless `native_outputs` is set (the
    exported graph and the evaluation: the decoders resize straight to each frame). The ImageNet normalisation is part of the
    network, so the exported graph takes plain [0, 1] RGB like the exported detector and lane model.

    Outputs, a tuple `(detection, lanes, drivable)`:
        - detection: in training, `Detect`'s raw dict (`boxes` (N, 4*reg_max, A), `scores`
          (N, nc, A), `feats`), the input of `MultiTaskLoss`; in eval, the decoded predictions
          (N, 4 + nc, A): box centre x, y, width, height in input pixels, then class
          probabilities (sigmoid) — the layout of the exported YOLO detector, A = sum of
          H/s * W/s over s in 8, 16, 32.
        - lanes: (N, 13, H, W) logits: 9 category (8 lane types, background last), 2 style,
          2 direction (the lane model's layout); (N, 13, H/s, W/s) with `native_outputs`, s the
          `lane_stride`.
        - drivable: (N, 3, H, W) logits, channel k = drivable-mask value k (direct,
          alternative, background); (N, 3, H/4, W/4) with `native_outputs`.

    Measured (default config: mobilenet_v2 backbone, neck 64 (so `Detect`'s box and class branches
    are 64 wide), seg 64, lane head 32 at stride 2, drivable head 16; one image; `core.profile`,
    i.e. torch's flop counter, 2 FLOPs per multiply-accumulate): 2.88 M parameters, 1.90 GFLOPs at
    the default 384x224, 2.53 at 448x256 (there: backbone 1.37, FPN 0.20, Detect 0.41, decoder 0.27,
    lane head ~0.24), 5.42 GFLOPs at 640x384, against YOLOP's published 7.9 M / 18.6 GFLOPs at
    640x384 (YOLOP's own `MCnet(YOLOP)` from hustvl/YOLOP measures 7.94 M / 18.49 GFLOPs with the
    same counter, so the conventions agree). With `lane_upsample_width: 16` (the pipeline's
    params.yaml): 2.88 M, 1.82 GFLOPs at 384x224, 5.21 at 640x384. The first layout (neck 128, seg 96,
    lanes at stride 4) was 3.87 M / 3.71 GFLOPs at 448x256. Command: `.venv/bin/python -c "from visionpipes.driving.multitask.model
    import MultiTaskNet; m = MultiTaskNet(); print(m.profile(), m.profile(640, 384))"`.

    Args:
        config: the network's size (default `MultiTaskModelConfig()`).

    Raises:
        UserError: if the backbone is unknown or not at strides 4/8/16/32.
    """

    def __init__(self, config: MultiTaskModelConfig | None = None) -> None:
        super().__init__()
        config = config or MultiTaskModelConfig()
        self.config = config
        self.backbone = build_core_backbone(config.backbone)
        c2, c3, c4, c5 = self.backbone.out_channels
        width, act = config.neck_width, config.act
        self.fpn = FPN([c3, c4, c5], width, norm="batch", act=act)
        self.pan = PANBottomUp(width, 3, act=act)
        self.detect = _ultralytics_detect()(nc=DETECTION_CLASSES, reg_max=config.reg_max, ch=(width,) * 3)
        self.detect.stride = torch.tensor(DETECTION_STRIDES, dtype=torch.float32)
        self.detect.bias_init()
        self.decoder = SegmentationDecoder(width, c2, config.seg_width, list(config.aspp_rates), act)
        self.lane_head: nn.Module
        if config.lane_stride == 1:
            self.lane_head = FullResolutionLaneHead(
                config.seg_width, config.detail_width, config.lane_head_width, LANE_CHANNELS, act
            )
        elif config.lane_stride == 2:
            self.lane_head = DetailLaneHead(
                config.seg_width,
                config.detail_width,
                config.lane_head_width,
                LANE_CHANNELS,
                act,
                config.lane_upsample_width,
            )
        else:
            self.lane_head = SegmentationHead(config.seg_width, config.lane_head_width, LANE_CHANNELS, act)
        self.drivable_head = SegmentationHead(
            config.seg_width, config.drivable_head_width, DRIVABLE_CHANNELS, act
        )
        #: False (training, the loss): lane and drivable logits resized to the input size; True
        #: (the exported graph, the evaluation): at the heads' own strides (`output_strides`), resized
        #: once, straight to each frame, by the decoders (`multitask.decode.unletterbox`).
        self.native_outputs = False
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def stride(self) -> torch.Tensor:
        """The detection strides (what ultralytics' code reads from a detection model)."""
        return self.detect.stride

    @property
    def output_strides(self) -> dict[str, int]:
        """The strides of the lane and drivable logits when `native_outputs` is set."""
        return {"lanes": self.config.lane_stride, "drivable": 4}

    def task_modules(self) -> dict[str, list[nn.Module]]:
        """The parts a staged schedule freezes or trains (YOLOP's encoder / detect head / segment
        heads, HybridNets' `--freeze_backbone`, `--freeze_det`, `--freeze_seg`): `encoder` (backbone
        and FPN, shared by all tasks), `detection` (PAN and `Detect`), `segmentation` (the ASPP
        decoder and both segmentation heads)."""
        return {
            "encoder": [self.backbone, self.fpn],
            "detection": [self.pan, self.detect],
            "segmentation": [self.decoder, self.lane_head, self.drivable_head],
        }

    def _features(
        self, images: torch.Tensor
    ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
        """PAN levels for `Detect`, lane logits and drivable logits (both at the input size)."""
        x = (images - self.mean) / self.std
        c2, c3, c4, c5 = self.backbone(x)
        p3, p4, p5 = self.fpn([c3, c4, c5])
        seg = self.decoder(c2, p3, p4)
        size = images.shape[2:]
        lanes = self.lane_head(seg, x) if isinstance(self.lane_head, DetailLaneHead) else self.lane_head(seg)
        drivable = self.drivable_head(seg)
        if not self.native_outputs:
            if lanes.shape[2:] != size:
                lanes = F.interpolate(lanes, size=size, mode="bilinear", align_corners=False)
            drivable = F.interpolate(drivable, size=size, mode="bilinear", align_corners=False)
        return self.pan([p3, p4, p5]), lanes, drivable

    def forward(self, images: torch.Tensor) -> tuple[Any, torch.Tensor, torch.Tensor]:
        levels, lanes, drivable = self._features(images)
        detection = self.detect(levels)
        if isinstance(detection, tuple):  # eval, not export mode: (decoded, raw dict)
            detection = detection[0]
        return detection, lanes, drivable

    def forward_raw(self, images: torch.Tensor) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor]:
        """`forward` with `Detect`'s raw dict in any mode (a validation loss in eval mode)."""
        levels, lanes, drivable = self._features(images)
        return self.detect.forward_head(levels, **self.detect.one2many), lanes, drivable

    def profile(self, width: int | None = None, height: int | None = None) -> dict[str, float]:
        """Parameters (millions) and GFLOPs of one image at `width` x `height` (default the
        config's), by `core.profile` (torch's flop counter, 2 FLOPs per multiply-accumulate)."""
        from visionpipes.core.profile import count_flops, count_parameters

        example = torch.zeros(1, 3, height or self.config.height, width or self.config.width)
        return {
            "params_m": count_parameters(self) / 1e6,
            "gflops": count_flops(self, example) / 1e9,
            "width": example.shape[3],
            "height": example.shape[2],
        }


def build_multitask_model(config: MultiTaskModelConfig | Mapping[str, Any] | None = None) -> MultiTaskNet:
    """A freshly initialised `MultiTaskNet` from a config or a `params.yaml` mapping.

    Raises:
        UserError: on an unknown key (with the closest valid key), a bad value, or a backbone
            that is unknown or not at strides 4/8/16/32.
    """
    if config is None or isinstance(config, Mapping):
        config = MultiTaskModelConfig.from_params(config or {}, source="multitask.model")
    return MultiTaskNet(config)


def save_multitask_model(
    path: str | os.PathLike, model: MultiTaskNet, extra: Mapping[str, Any] | None = None
) -> None:
    """Save a multi-task model as `{config, state_dict, extra}` (atomically; the backbone spec is
    inside the config, so loading never needs a spec file).

    Raises:
        UserError: if the folder does not exist.
    """
    from visionpipes.core.checkpoint import save_model_file

    save_model_file(path, model.config, model.state_dict(), extra)


def load_multitask_model(path: str | os.PathLike) -> MultiTaskNet:
    """Load a model saved by `save_multitask_model`, in eval mode.

    Raises:
        UserError: if the file is missing or is not a multi-task model.
    """
    from visionpipes.core.checkpoint import load_model_file, load_state_into

    config, state, _ = load_model_file(path, MultiTaskModelConfig, what="multi-task model")
    return load_state_into(MultiTaskNet(config), state, path=path, what="multi-task model")
