"""Layer factories: one convolution, norm, pooling or activation for any number of spatial dims.

Blocks ask these factories for their layers, so each block is written once for 2-D and 3-D and
takes its norm / activation / attention as an argument (a name, a `(name, kwargs)` pair, or a
class) instead of being copied per variant. Nothing here holds weights of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

#: A layer given by name (`"batch"`), by name with options (`("group", {"num_groups": 8})`),
#: or as a class / factory called with the layer's usual arguments.
LayerArg = str | tuple[str, dict[str, Any]] | type | Callable[..., nn.Module] | None

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_BATCH = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_INSTANCE = {1: nn.InstanceNorm1d, 2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}
_MAXPOOL = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}
_AVGPOOL = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}
_ADAPTIVE_MAX = {1: nn.AdaptiveMaxPool1d, 2: nn.AdaptiveMaxPool2d, 3: nn.AdaptiveMaxPool3d}

_ACTS: dict[str, Callable[..., nn.Module]] = {
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "leakyrelu": nn.LeakyReLU,
    "prelu": nn.PReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "mish": nn.Mish,
    "hardswish": nn.Hardswish,
    "hardsigmoid": nn.Hardsigmoid,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "identity": nn.Identity,
}
_INPLACE = {"relu", "relu6", "leakyrelu", "elu", "silu", "swish", "mish", "hardswish", "hardsigmoid"}


def check_spatial_dims(spatial_dims: int) -> int:
    """Return `spatial_dims` if it is 1, 2 or 3.

    Raises:
        ValueError: for any other value.
    """
    if spatial_dims not in _CONV:
        raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims!r}.")
    return spatial_dims


def conv_type(spatial_dims: int) -> type[nn.Module]:
    """`nn.Conv1d`, `nn.Conv2d` or `nn.Conv3d`."""
    return _CONV[check_spatial_dims(spatial_dims)]


def max_pool_type(spatial_dims: int) -> type[nn.Module]:
    """`nn.MaxPool{1,2,3}d`."""
    return _MAXPOOL[check_spatial_dims(spatial_dims)]


def adaptive_avg_pool(spatial_dims: int, output_size: int = 1) -> nn.Module:
    """`nn.AdaptiveAvgPool{1,2,3}d(output_size)`."""
    return _AVGPOOL[check_spatial_dims(spatial_dims)](output_size)


def adaptive_max_pool(spatial_dims: int, output_size: int = 1) -> nn.Module:
    """`nn.AdaptiveMaxPool{1,2,3}d(output_size)`."""
    return _ADAPTIVE_MAX[check_spatial_dims(spatial_dims)](output_size)


def _split(arg: LayerArg) -> tuple[Any, dict[str, Any]]:
    if isinstance(arg, tuple):
        if len(arg) != 2 or not isinstance(arg[1], dict):
            raise ValueError(f"a layer given as a tuple must be (name, kwargs), got {arg!r}.")
        return arg[0], dict(arg[1])
    return arg, {}


def make_norm(norm: LayerArg, spatial_dims: int, channels: int) -> nn.Module:
    """A normalisation layer over `channels` feature maps.

    Args:
        norm: `"batch"`, `"instance"`, `"group"` (kwarg `num_groups`, default 32 or fewer),
            `"layer"` (GroupNorm with one group), `None`/`"none"` for identity, a
            `(name, kwargs)` pair, or a class called as `cls(channels, **kwargs)`.
        spatial_dims: 1, 2 or 3.
        channels: number of channels.

    Raises:
        ValueError: for an unknown name.
    """
    name, kwargs = _split(norm)
    check_spatial_dims(spatial_dims)
    if name is None or name == "none":
        return nn.Identity()
    if not isinstance(name, str):
        return name(channels, **kwargs)
    key = name.lower()
    if key in ("batch", "bn", "batchnorm"):
        return _BATCH[spatial_dims](channels, **kwargs)
    if key in ("instance", "in", "instancenorm"):
        kwargs.setdefault("affine", True)
        return _INSTANCE[spatial_dims](channels, **kwargs)
    if key in ("group", "gn", "groupnorm"):
        groups = kwargs.pop("num_groups", 32)
        while channels % groups:
            groups //= 2
        return nn.GroupNorm(groups, channels, **kwargs)
    if key in ("layer", "ln", "layernorm"):
        return nn.GroupNorm(1, channels, **kwargs)
    raise ValueError(f"unknown norm {name!r}; use batch, instance, group, layer or none.")


def make_act(act: LayerArg) -> nn.Module:
    """An activation layer.

    Args:
        act: a name (`relu`, `relu6`, `silu`, `gelu`, `hardswish`, `leakyrelu`, ..., `None` for
            identity), a `(name, kwargs)` pair, or a class called with the kwargs.

    Raises:
        ValueError: for an unknown name.
    """
    name, kwargs = _split(act)
    if name is None or name == "none":
        return nn.Identity()
    if not isinstance(name, str):
        return name(**kwargs)
    key = name.lower()
    if key not in _ACTS:
        raise ValueError(f"unknown activation {name!r}; known: {', '.join(sorted(_ACTS))}.")
    if key in _INPLACE:
        kwargs.setdefault("inplace", True)
    return _ACTS[key](**kwargs)


def same_padding(kernel_size: int, dilation: int = 1) -> int:
    """Padding that keeps the size of an odd kernel at stride 1."""
    if kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd for same padding, got {kernel_size}.")
    return dilation * (kernel_size - 1) // 2


class ConvNormAct(nn.Sequential):
    """Convolution, then normalisation, then activation (`conv`, `norm`, `act` in the state dict).

    Example:
        >>> import torch
        >>> layer = ConvNormAct(2, 3, 16, kernel_size=3, stride=2)
        >>> layer(torch.zeros(1, 3, 32, 32)).shape
        torch.Size([1, 16, 16, 16])
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        norm: LayerArg = "batch",
        act: LayerArg = "relu",
        bias: bool | None = None,
    ) -> None:
        super().__init__()
        has_norm = norm is not None and norm != "none"
        self.add_module(
            "conv",
            conv_type(spatial_dims)(
                in_channels,
                out_channels,
                kernel_size,
                stride=stride,
                padding=same_padding(kernel_size, dilation),
                dilation=dilation,
                groups=groups,
                bias=(not has_norm) if bias is None else bias,
            ),
        )
        self.add_module("norm", make_norm(norm, spatial_dims, out_channels))
        self.add_module("act", make_act(act))
