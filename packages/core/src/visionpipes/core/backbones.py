"""Backbones built from a spec: a stem, then stages of blocks, returning multi-scale features.

A `BackboneSpec` names, per stage, the block type, depth, width, stride, cardinality and
attention; `build_backbone` turns a spec, a preset name or a plain dict (from `params.yaml`) into
a module whose forward returns the feature maps at strides 4, 8, 16, 32 and whose
`out_channels` lists their widths. Presets are registered by name. No classifier heads here.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from pydantic import model_validator
from torch import nn

from visionpipes.core.blocks import (
    Bottleneck,
    DepthwiseSeparableConv,
    InvertedResidual,
    ResidualBlock,
    SelfAttention,
)
from visionpipes.core.config import ConfigModel, Field, closest
from visionpipes.core.errors import UserError
from visionpipes.core.layers import ConvNormAct, LayerArg, check_spatial_dims, max_pool_type


class StageSpec(ConfigModel):
    """One stage: `depth` blocks of one type; the first block applies `stride`.

    Attributes:
        block: one of `BLOCK_TYPES`.
        depth: number of blocks.
        width: output channels of every block of the stage.
        stride: stride of the first block (1 or 2).
        cardinality: groups of the bottleneck's 3x3 conv (ResNeXt).
        base_width: bottleneck width per group per 64 planes (ResNeXt's "d").
        expansion: bottleneck expansion (out / planes).
        expand_ratio: inverted-residual expansion.
        kernel_size: spatial kernel.
        dilation: dilation of the spatial convs.
        attn: attention inside each block (`se`, `cbam`, `self_attention`) or None.
        num_heads: heads of `self_attention` blocks.
    """

    block: Literal["basic", "bottleneck", "inverted_residual", "depthwise_separable", "self_attention"]
    depth: int = Field(ge=1)
    width: int = Field(ge=1)
    stride: Literal[1, 2] = 1
    cardinality: int = Field(1, ge=1)
    base_width: int = Field(64, ge=1)
    expansion: int = Field(4, ge=1)
    expand_ratio: int | float = Field(6, gt=0)
    kernel_size: int = Field(3, ge=1)
    dilation: int = Field(1, ge=1)
    attn: str | None = None
    num_heads: int = Field(4, ge=1)


class BackboneSpec(ConfigModel):
    """A whole backbone: stem, stages, which stage outputs are returned, and layer choices.

    Build one from a mapping (a `params.yaml` section, a spec file) with
    `BackboneSpec.from_params(data, source=...)`: unknown keys get a did-you-mean `UserError`.

    Attributes:
        name: a label for reports.
        stages: the stages in order.
        stem: `resnet` (7x7/2 conv + 3x3/2 max-pool, stride 4), `conv` (3x3/2 conv, stride 2) or
            `none`.
        stem_width: channels of the stem.
        out_indices: indices of the stages whose outputs `forward` returns; default: the last
            stage at each stride.
        final_width: a 1x1 conv-norm-act after the last stage (MobileNetV2's 1280), or None.
        norm: normalisation of every block.
        act: activation of every block (None: each block's own default).
        zero_init_residual: start each residual branch's last norm at 0.
    """

    name: str
    stages: list[StageSpec] = Field(min_length=1)
    stem: Literal["resnet", "conv", "none"] = "resnet"
    stem_width: int = Field(64, ge=1)
    out_indices: list[int] | None = None
    final_width: int | None = Field(None, ge=1)
    norm: str = "batch"
    act: str | None = None
    zero_init_residual: bool = False

    @model_validator(mode="after")
    def _out_indices_in_range(self) -> BackboneSpec:
        if self.out_indices is not None:
            bad = [i for i in self.out_indices if not -len(self.stages) <= i < len(self.stages)]
            if bad:
                raise ValueError(f"out_indices {bad} out of range for {len(self.stages)} stages")
        return self


#: The block types a stage may use, and the stems (from the spec's own field types).
BLOCK_TYPES: tuple[str, ...] = get_args(StageSpec.model_fields["block"].annotation)
STEM_TYPES: tuple[str, ...] = get_args(BackboneSpec.model_fields["stem"].annotation)


def _make_block(spatial_dims: int, stage: StageSpec, in_ch: int, stride: int, spec: BackboneSpec) -> nn.Module:
    common: dict[str, Any] = {"norm": spec.norm}
    if spec.act is not None:
        common["act"] = spec.act
    if stage.block == "basic":
        return ResidualBlock(
            spatial_dims, in_ch, stage.width, stride, stage.dilation, stage.kernel_size,
            attn=_attn(stage), zero_init_residual=spec.zero_init_residual, **common,
        )
    if stage.block == "bottleneck":
        return Bottleneck(
            spatial_dims, in_ch, stage.width, stride, stage.cardinality, stage.base_width, stage.expansion,
            stage.dilation, stage.kernel_size, attn=_attn(stage), zero_init_residual=spec.zero_init_residual,
            **common,
        )
    if stage.block == "inverted_residual":
        return InvertedResidual(
            spatial_dims, in_ch, stage.width, stride, stage.expand_ratio, stage.kernel_size, stage.dilation,
            attn=_attn(stage), **common,
        )
    if stage.block == "depthwise_separable":
        return DepthwiseSeparableConv(
            spatial_dims, in_ch, stage.width, stage.kernel_size, stride, stage.dilation, attn=_attn(stage),
            skip=True, **common,
        )
    # self_attention: a strided projection when the shape changes, then a transformer layer.
    layers: list[nn.Module] = []
    if stride != 1 or in_ch != stage.width:
        layers.append(ConvNormAct(spatial_dims, in_ch, stage.width, 3, stride, **common))
    layers.append(SelfAttention(spatial_dims, stage.width, num_heads=stage.num_heads))
    return nn.Sequential(*layers)


def _attn(stage: StageSpec) -> LayerArg:
    if stage.attn in ("self_attention", "mhsa"):
        return ("self_attention", {"num_heads": stage.num_heads})
    return stage.attn


class Backbone(nn.Module):
    """A CNN feature extractor built from a `BackboneSpec`.

    `forward(x)` returns a list of feature maps, one per entry of `out_indices` (by default the
    last stage at each stride); `out_channels[i]` and `strides[i]` describe the i-th map.

    Example:
        >>> net = build_backbone("resnet18")
        >>> [tuple(f.shape) for f in net(torch.zeros(1, 3, 64, 64))]
        [(1, 64, 16, 16), (1, 128, 8, 8), (1, 256, 4, 4), (1, 512, 2, 2)]
    """

    def __init__(self, spec: BackboneSpec, in_channels: int = 3, spatial_dims: int = 2) -> None:
        super().__init__()
        check_spatial_dims(spatial_dims)
        self.spec = spec
        self.spatial_dims = spatial_dims
        norm = spec.norm
        stem_act = spec.act or ("relu6" if spec.stages[0].block == "inverted_residual" else "relu")
        if spec.stem == "resnet":
            self.stem = nn.Sequential(
                ConvNormAct(spatial_dims, in_channels, spec.stem_width, 7, 2, norm=norm, act=stem_act),
                max_pool_type(spatial_dims)(kernel_size=3, stride=2, padding=1),
            )
            ch, stride = spec.stem_width, 4
        elif spec.stem == "conv":
            self.stem = ConvNormAct(spatial_dims, in_channels, spec.stem_width, 3, 2, norm=norm, act=stem_act)
            ch, stride = spec.stem_width, 2
        else:
            self.stem = nn.Identity()
            ch, stride = in_channels, 1
        stages, stage_channels, stage_strides = [], [], []
        for stage in spec.stages:
            blocks = []
            for i in range(stage.depth):
                blocks.append(_make_block(spatial_dims, stage, ch, stage.stride if i == 0 else 1, spec))
                ch = stage.width
            stride *= stage.stride
            stages.append(nn.Sequential(*blocks))
            stage_channels.append(ch)
            stage_strides.append(stride)
        self.stages = nn.ModuleList(stages)
        self.final = (
            ConvNormAct(spatial_dims, ch, spec.final_width, 1, norm=norm, act=stem_act) if spec.final_width else None
        )
        if self.final is not None:
            stage_channels[-1] = spec.final_width
        if spec.out_indices is not None:
            indices = [i % len(stages) for i in spec.out_indices]
        else:
            last_at = {s: i for i, s in enumerate(stage_strides)}
            indices = sorted(last_at.values())
        if self.final is not None and indices[-1] != len(stages) - 1:
            raise ValueError("final_width needs the last stage among out_indices.")
        self.out_indices = indices
        self.out_channels = [stage_channels[i] for i in indices]
        self.strides = [stage_strides[i] for i in indices]
        self._init_weights()

    def _init_weights(self) -> None:
        zero_init = self.spec.zero_init_residual
        for m in self.modules():
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm)) and m.affine:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init:
            for m in self.modules():
                last = getattr(m, "conv3", None) if isinstance(m, Bottleneck) else getattr(m, "conv2", None)
                if isinstance(m, (Bottleneck, ResidualBlock)) and hasattr(last.norm, "weight"):
                    nn.init.zeros_(last.norm.weight)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        outs = []
        last = len(self.stages) - 1
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i == last and self.final is not None:
                x = self.final(x)
            if i in self.out_indices:
                outs.append(x)
        return outs


_REGISTRY: dict[str, Callable[[], BackboneSpec]] = {}


def register_backbone(fn: Callable[[], BackboneSpec]) -> Callable[[], BackboneSpec]:
    """Register a preset: a function named after the preset that returns its spec."""
    _REGISTRY[fn.__name__] = fn
    return fn


def list_backbones() -> list[str]:
    """Names of the registered presets."""
    return sorted(_REGISTRY)


#: File suffixes `get_spec` reads as spec files instead of preset names.
SPEC_FILE_SUFFIXES = (".yaml", ".yml", ".json")


def load_spec_file(path: str | Path) -> BackboneSpec:
    """Read a spec file: YAML or JSON holding the mapping `BackboneSpec.to_dict` writes (for
    example the `best_spec.yaml` of `vp-core search`).

    Raises:
        UserError: if the file is missing, unreadable or not a valid spec (the message names it,
            and the key at fault with the closest valid key).
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UserError(f"backbone spec file {path} does not exist.")
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as err:
        raise UserError(f"backbone spec file {path} is not valid YAML or JSON: {err}") from None
    return BackboneSpec.from_params(data, source=f"backbone spec file {path}")


def inline_spec_file(name: str | Mapping[str, Any]) -> str | dict[str, Any]:
    """`name` itself for a preset name or a mapping; the spec's mapping when `name` is a spec file.

    Configs call this when they are read, so that what they record (a checkpoint's config, a
    `model.json`) holds the searched architecture itself and never needs the file again.

    Raises:
        UserError: if the spec file is missing or invalid.
    """
    if isinstance(name, str) and name.endswith(SPEC_FILE_SUFFIXES):
        return load_spec_file(name).to_dict()
    return dict(name) if isinstance(name, Mapping) else name


def get_spec(name: str) -> BackboneSpec:
    """The spec of preset `name` (a fresh copy), or of the spec file `name` when it ends in
    `.yaml`, `.yml` or `.json` — so a `params.yaml` can select a searched architecture by path.

    Raises:
        ValueError: if no preset has that name.
        UserError: if the spec file is missing or invalid.
    """
    if name.endswith(SPEC_FILE_SUFFIXES):
        return load_spec_file(name)
    if name not in _REGISTRY:
        guess = closest(name, list_backbones())
        hint = f"did you mean '{guess}'? " if guess else ""
        raise ValueError(f"unknown backbone {name!r}; {hint}presets: {', '.join(list_backbones())}.")
    return copy.deepcopy(_REGISTRY[name]())


def build_backbone(
    spec: str | BackboneSpec | Mapping[str, Any],
    *,
    in_channels: int = 3,
    spatial_dims: int = 2,
    weights: str | os.PathLike | None = None,
    **overrides: Any,
) -> Backbone:
    """Build a backbone from a preset name, a `BackboneSpec`, or a plain mapping.

    Args:
        spec: preset name (see `list_backbones()`), spec, or mapping (`BackboneSpec.from_params`).
        in_channels: input channels (3 for RGB, 4 for BraTS MRI, ...).
        spatial_dims: 2 for images, 3 for volumes.
        weights: a local ImageNet checkpoint of torchvision or timm (`.pth`, `.safetensors`) loaded
            through the mapping tables of `visionpipes.core.pretrained` (never downloaded).
        **overrides: spec fields to replace (e.g. `norm="group"`).

    Raises:
        ValueError: for an unknown preset.
        UserError: for an invalid spec mapping or spec file, invalid `overrides`, or weights that are
            unreadable or of another architecture.

    Example:
        >>> net = build_backbone("mobilenet_v2")
        >>> net.out_channels, net.strides
        ([24, 32, 96, 1280], [4, 8, 16, 32])
    """
    if isinstance(spec, str):
        spec = get_spec(spec)
    elif isinstance(spec, Mapping):
        spec = BackboneSpec.from_params(spec, source="backbone spec")
    if overrides:
        spec = BackboneSpec.from_params({**spec.model_dump(), **overrides}, source="backbone overrides")
    net = Backbone(spec, in_channels=in_channels, spatial_dims=spatial_dims)
    if weights is not None:
        from visionpipes.core.pretrained import load_pretrained

        load_pretrained(net, weights)
    return net


def _resnet(name: str, block: str, depths: tuple[int, ...], widths: tuple[int, ...], **stage_kw: Any) -> BackboneSpec:
    stages = [
        StageSpec(block=block, depth=d, width=w, stride=1 if i == 0 else 2, **stage_kw) for i, (d, w) in enumerate(zip(depths, widths))
    ]
    return BackboneSpec(name=name, stages=stages)


_BASIC_WIDTHS = (64, 128, 256, 512)
_BOTTLENECK_WIDTHS = (256, 512, 1024, 2048)


@register_backbone
def resnet18() -> BackboneSpec:
    """ResNet-18 (He et al., 2016): basic blocks (2, 2, 2, 2); 11.2 M parameters without the head."""
    return _resnet("resnet18", "basic", (2, 2, 2, 2), _BASIC_WIDTHS)


@register_backbone
def resnet34() -> BackboneSpec:
    """ResNet-34: basic blocks (3, 4, 6, 3)."""
    return _resnet("resnet34", "basic", (3, 4, 6, 3), _BASIC_WIDTHS)


@register_backbone
def resnet50() -> BackboneSpec:
    """ResNet-50 (v1.5, stride on the 3x3 conv): bottlenecks (3, 4, 6, 3); 23.5 M parameters."""
    return _resnet("resnet50", "bottleneck", (3, 4, 6, 3), _BOTTLENECK_WIDTHS)


@register_backbone
def resnext50_32x4d() -> BackboneSpec:
    """ResNeXt-50 32x4d (Xie et al., 2017): ResNet-50 with cardinality 32, 4 channels per group."""
    return _resnet("resnext50_32x4d", "bottleneck", (3, 4, 6, 3), _BOTTLENECK_WIDTHS, cardinality=32, base_width=4)


@register_backbone
def se_resnet50() -> BackboneSpec:
    """SE-ResNet-50 (Hu et al., 2018): squeeze-excitation (r=16) in every bottleneck."""
    return _resnet("se_resnet50", "bottleneck", (3, 4, 6, 3), _BOTTLENECK_WIDTHS, attn="se")


@register_backbone
def cbam_resnet50() -> BackboneSpec:
    """CBAM-ResNet-50 (Woo et al., 2018): channel + spatial attention in every bottleneck."""
    return _resnet("cbam_resnet50", "bottleneck", (3, 4, 6, 3), _BOTTLENECK_WIDTHS, attn="cbam")


@register_backbone
def mobilenet_v2() -> BackboneSpec:
    """MobileNetV2 (Sandler et al., 2018), width 1.0: inverted residuals, ReLU6, final 1x1 to 1280."""
    table = [  # expand_ratio, width, depth, stride
        (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1),
    ]
    stages = [StageSpec(block="inverted_residual", depth=n, width=c, stride=s, expand_ratio=t) for t, c, n, s in table]
    return BackboneSpec(
        name="mobilenet_v2", stages=stages, stem="conv", stem_width=32, final_width=1280, out_indices=[1, 2, 4, 6]
    )


@register_backbone
def resnet18_mhsa() -> BackboneSpec:
    """A hybrid CNN + self-attention backbone: ResNet-18 whose stride-16 and stride-32 stages add
    multi-head self-attention (sinusoidal positions) to every block, so the coarse features see
    the whole image (in the spirit of BoTNet, Srinivas et al., 2021)."""
    spec = resnet18()
    spec.name = "resnet18_mhsa"
    for stage in spec.stages[2:]:
        stage.attn = "self_attention"
        stage.num_heads = 8
    return spec


@register_backbone
def mobilenet_v1() -> BackboneSpec:
    """MobileNetV1-style backbone (Howard et al., 2017) of depthwise separable convs."""
    table = [(64, 1, 1), (128, 2, 2), (256, 2, 2), (512, 6, 2), (1024, 2, 2)]  # width, depth, stride
    stages = [StageSpec(block="depthwise_separable", depth=n, width=c, stride=s) for c, n, s in table]
    return BackboneSpec(name="mobilenet_v1", stages=stages, stem="conv", stem_width=32, out_indices=[1, 2, 3, 4])


def spec_summary(spec: BackboneSpec) -> dict[str, Any]:
    """A short, JSON-friendly description of a spec (for model cards and reports)."""
    return {"name": spec.name, "stem": spec.stem, "stages": [s.model_dump() for s in spec.stages]}


__all__ = [
    "BLOCK_TYPES",
    "Backbone",
    "BackboneSpec",
    "StageSpec",
    "build_backbone",
    "get_spec",
    "list_backbones",
    "register_backbone",
    "spec_summary",
]

