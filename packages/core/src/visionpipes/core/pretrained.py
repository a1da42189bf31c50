"""ImageNet weights from local files into core backbone presets, through explicit name-mapping
tables: torchvision and timm ResNet/ResNeXt/SE-ResNet checkpoints and MobileNetV2 (torchvision and
timm) load into the matching presets with exact parity of the stage features.

Nothing here downloads anything: the user saves the official weights once on a machine with
internet (README: "Pretrained weights") and names the file. No training code is imported.

Mapping tables (source key pattern -> core key), applied in order; classifier keys are dropped:
    ResNet family (torchvision `resnet*`, `resnext*`; timm `resnet*`, `resnext*`, `seresnet*`)
        conv1                          -> stem.0.conv
        bn1                            -> stem.0.norm
        layer{L}.{b}.conv{c}           -> stages.{L-1}.{b}.conv{c}.conv
        layer{L}.{b}.bn{c}             -> stages.{L-1}.{b}.conv{c}.norm
        layer{L}.{b}.downsample.{0,1}  -> stages.{L-1}.{b}.shortcut.{0,1}
        layer{L}.{b}.se.fc{1,2}        -> stages.{L-1}.{b}.attn.fc{1,2}   (timm SE-ResNet)
        fc                             -> dropped (ImageNet classifier)
    MobileNetV2 (torchvision `features.*`; timm `conv_stem`/`blocks.*`/`conv_head`): the stem, then
        each inverted-residual block in order onto `stages.s.b` (expand, depthwise, project), then the
        final 1x1 conv onto `final`; the classifier is dropped.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from visionpipes.core.errors import UserError

__all__ = ["PretrainedReport", "convert_state_dict", "load_pretrained", "read_weights"]

_SUFFIX = r"\.(weight|bias|running_mean|running_var|num_batches_tracked)$"

#: ResNet-family table: (source regex, core replacement). Explicit, one rule per module kind.
RESNET_TABLE: tuple[tuple[str, str], ...] = (
    (r"^conv1" + _SUFFIX, r"stem.0.conv.\1"),
    (r"^bn1" + _SUFFIX, r"stem.0.norm.\1"),
    (r"^layer(\d)\.(\d+)\.conv(\d)" + _SUFFIX, "stages.{L}.\\2.conv\\3.conv.\\4"),
    (r"^layer(\d)\.(\d+)\.bn(\d)" + _SUFFIX, "stages.{L}.\\2.conv\\3.norm.\\4"),
    (r"^layer(\d)\.(\d+)\.downsample\.([01])" + _SUFFIX, "stages.{L}.\\2.shortcut.\\3.\\4"),
    (r"^layer(\d)\.(\d+)\.se\.fc([12])" + _SUFFIX, "stages.{L}.\\2.attn.fc\\3.\\4"),
)
RESNET_DROPPED = re.compile(r"^fc\.")

#: Per inverted-residual block, source sub-module -> core sub-module.
_TV_IR_EXPAND = {"conv.0.0": "expand.conv", "conv.0.1": "expand.norm", "conv.1.0": "depthwise.conv",
                 "conv.1.1": "depthwise.norm", "conv.2": "project.conv", "conv.3": "project.norm"}
_TV_IR_NO_EXPAND = {"conv.0.0": "depthwise.conv", "conv.0.1": "depthwise.norm", "conv.1": "project.conv",
                    "conv.2": "project.norm"}
_TIMM_IR_EXPAND = {"conv_pw": "expand.conv", "bn1": "expand.norm", "conv_dw": "depthwise.conv",
                   "bn2": "depthwise.norm", "conv_pwl": "project.conv", "bn3": "project.norm"}
_TIMM_IR_NO_EXPAND = {"conv_dw": "depthwise.conv", "bn1": "depthwise.norm", "conv_pw": "project.conv",
                      "bn2": "project.norm"}


@dataclass
class PretrainedReport:
    """What `load_pretrained` did.

    Attributes:
        path: the weights file.
        source: the layout recognised (`resnet`, `torchvision-mobilenet_v2`, `timm-mobilenet_v2`, `core`).
        loaded: core keys filled from the file.
        dropped: source keys with no core counterpart (the classifier).
        missing: core keys the file does not provide (e.g. SE/CBAM attention absent from a plain
            ResNet checkpoint); they keep their initialisation.
    """

    path: Path
    source: str
    loaded: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from a local `.pth`/`.pt`/`.ckpt` (torch, weights only) or `.safetensors` file.

    Raises:
        UserError: if the file is missing, unreadable or holds no state dict.
    """
    from visionpipes.core.checkpoint import load_checkpoint, state_dict_of

    path = Path(path)
    if path.suffix == ".safetensors":
        if not path.is_file():
            raise UserError(f"pretrained weights {path} do not exist (they are never downloaded).")
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path)))
        except (SafetensorError, OSError, ValueError) as err:
            raise UserError(f"pretrained weights {path} are not a readable safetensors file ({err}).") from None
    data = load_checkpoint(path, what="pretrained weights")
    return dict(state_dict_of(data, path=path, what="pretrained weights"))


def _strip_prefix(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop a wrapper prefix every key shares (`module.` of DataParallel, `model.` of Lightning)."""
    out = dict(state)
    for prefix in ("module.", "model.", "backbone."):
        if out and all(k.startswith(prefix) for k in out):
            out = {k[len(prefix):]: v for k, v in out.items()}
    return out


def _resnet_keys(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, str], list[str]]:
    mapping: dict[str, str] = {}
    dropped: list[str] = []
    for key in state:
        for pattern, repl in RESNET_TABLE:
            m = re.match(pattern, key)
            if m:
                target = repl.replace("{L}", str(int(m.group(1)) - 1)) if "{L}" in repl else repl
                mapping[key] = m.expand(target)
                break
        else:
            dropped.append(key)
    return mapping, dropped


def _core_blocks(core_keys: Iterable[str]) -> list[str]:
    """`stages.s.b` prefixes of the core model, in forward order."""
    blocks: dict[tuple[int, int], str] = {}
    for key in core_keys:
        m = re.match(r"^stages\.(\d+)\.(\d+)\.", key)
        if m:
            blocks[(int(m.group(1)), int(m.group(2)))] = f"stages.{m.group(1)}.{m.group(2)}"
    return [blocks[k] for k in sorted(blocks)]


def _mobilenet_keys(
    state: Mapping[str, torch.Tensor], core_keys: Iterable[str], *, timm: bool
) -> tuple[dict[str, str], list[str]]:
    core_keys = list(core_keys)
    blocks = _core_blocks(core_keys)
    if timm:
        block_re = re.compile(r"^blocks\.(\d+)\.(\d+)\.(.+)" + _SUFFIX)
        stem = {"conv_stem": "stem.conv", "bn1": "stem.norm", "conv_head": "final.conv", "bn2": "final.norm"}
    else:
        block_re = re.compile(r"^features\.(\d+)\.(.+)" + _SUFFIX)
        last = max(int(m.group(1)) for k in state if (m := re.match(r"^features\.(\d+)\.", k)))
        stem = {"features.0.0": "stem.conv", "features.0.1": "stem.norm",
                f"features.{last}.0": "final.conv", f"features.{last}.1": "final.norm"}
    # source blocks in forward order
    order: dict[tuple[int, ...], set[str]] = {}
    for key in state:
        m = block_re.match(key)
        if m and not (not timm and int(m.group(1)) in (0, last)):
            idx = (int(m.group(1)), int(m.group(2))) if timm else (int(m.group(1)),)
            order.setdefault(idx, set()).add(m.group(len(idx) + 1))
    source_blocks = sorted(order)
    if len(source_blocks) != len(blocks):
        raise UserError(
            f"the MobileNetV2 checkpoint has {len(source_blocks)} inverted-residual blocks, the core preset "
            f"{len(blocks)}: it is not the same architecture."
        )
    position = {idx: i for i, idx in enumerate(source_blocks)}
    mapping: dict[str, str] = {}
    dropped: list[str] = []
    for key in state:
        module, _, suffix = key.rpartition(".")
        if module in stem:
            mapping[key] = f"{stem[module]}.{suffix}"
            continue
        m = block_re.match(key)
        if m and (timm or int(m.group(1)) not in (0, last)):
            idx = (int(m.group(1)), int(m.group(2))) if timm else (int(m.group(1)),)
            sub = m.group(len(idx) + 1)
            has_expand = any(s.startswith("conv_pwl" if timm else "conv.3") for s in order[idx])
            table = (_TIMM_IR_EXPAND if has_expand else _TIMM_IR_NO_EXPAND) if timm else (
                _TV_IR_EXPAND if has_expand else _TV_IR_NO_EXPAND)
            if sub in table:
                mapping[key] = f"{blocks[position[idx]]}.{table[sub]}.{m.group(len(idx) + 2)}"
                continue
        dropped.append(key)
    return mapping, dropped


def _detect(state: Mapping[str, torch.Tensor]) -> tuple[str, Callable[..., tuple[dict[str, str], list[str]]]]:
    keys = set(state)
    if any(k.startswith("stages.") for k in keys) and any(k.startswith("stem.") for k in keys):
        return "core", lambda s, _c: ({k: k for k in s}, [])
    if "conv1.weight" in keys and any(k.startswith("layer1.") for k in keys):
        return "resnet", lambda s, _c: _resnet_keys(s)
    if "features.0.0.weight" in keys:
        return "torchvision-mobilenet_v2", lambda s, c: _mobilenet_keys(s, c, timm=False)
    if "conv_stem.weight" in keys and any(k.startswith("blocks.") for k in keys):
        return "timm-mobilenet_v2", lambda s, c: _mobilenet_keys(s, c, timm=True)
    sample = ", ".join(sorted(keys)[:3])
    raise UserError(
        "no mapping table for these weights (keys like "
        f"{sample}); supported: torchvision/timm ResNet, ResNeXt, SE-ResNet and MobileNetV2, or a core backbone."
    )


def convert_state_dict(
    state: Mapping[str, torch.Tensor], model: nn.Module, *, path: str | os.PathLike = "weights"
) -> tuple[dict[str, torch.Tensor], PretrainedReport]:
    """Rename a torchvision/timm state dict onto `model`'s keys through the mapping tables.

    Raises:
        UserError: if the layout is unknown, or a mapped tensor's shape differs from the model's
            (naming both keys and shapes: e.g. ResNet-18 weights into a ResNet-50 preset).
    """
    state = _strip_prefix(state)
    own = model.state_dict()
    source, mapper = _detect(state)
    mapping, dropped = mapper(state, own.keys())
    converted: dict[str, torch.Tensor] = {}
    for src, dst in mapping.items():
        if dst not in own:
            raise UserError(f"{path}: {src} maps to {dst}, which this backbone does not have: not the same architecture.")
        tensor = state[src]
        if tensor.shape != own[dst].shape:
            if tensor.numel() == own[dst].numel():  # 1x1 conv vs linear of the same weights
                tensor = tensor.reshape(own[dst].shape)
            else:
                raise UserError(
                    f"{path}: {src} has shape {tuple(tensor.shape)} but the backbone's {dst} has "
                    f"{tuple(own[dst].shape)}: these weights are for another architecture."
                )
        converted[dst] = tensor
    missing = sorted(k for k in own if k not in converted)
    return converted, PretrainedReport(Path(path), source, sorted(converted), sorted(dropped), missing)


def load_pretrained(model: nn.Module, path: str | os.PathLike, *, allow_missing: Iterable[str] = ("attn.",)) -> PretrainedReport:
    """Load local ImageNet weights (torchvision or timm, `.pth` or `.safetensors`) into a core backbone.

    Args:
        model: a core backbone (`build_backbone(...)`).
        path: the weights file.
        allow_missing: substrings of core keys that may stay at their initialisation (by default the
            attention modules of SE/CBAM presets, which a plain ResNet checkpoint lacks).

    Returns:
        What was loaded, dropped and left missing.

    Raises:
        UserError: if the file is unreadable, of an unknown layout or another architecture, or leaves
            a core key outside `allow_missing` unfilled.
    """
    state = read_weights(path)
    converted, report = convert_state_dict(state, model, path=path)
    allowed = tuple(allow_missing)
    bad = [k for k in report.missing if not any(a in k for a in allowed)]
    if bad:
        raise UserError(
            f"{path}: {len(bad)} backbone tensors have no counterpart in the file (first: {bad[0]}): "
            "not the same architecture."
        )
    model.load_state_dict(converted, strict=False)
    return report


