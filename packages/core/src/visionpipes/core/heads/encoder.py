"""A core backbone as an encoder in the segmentation-models-pytorch shape: a list of features at
strides 1, 2, 4, ..., 32 with fixed widths, so that decoders written for such encoders (smp's U-Net
and FPN) take a core backbone unchanged.

Generic model part: no segmentation-models-pytorch import, no domain code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["CoreFeatureEncoder"]


class CoreFeatureEncoder(nn.Module):
    """Features of a `core.backbones` backbone at strides 1, 2, 4, 8, 16 and 32 with given widths.

    The stride-1 feature is the input, the stride-2 one a 3x3/2 conv-norm-act of it, the others the
    backbone's stride-4..32 features, each projected by a 1x1 conv when its width differs from the
    width asked for (e.g. the widths of the smp encoder whose decoder the model was built with).

    Args:
        preset: a backbone preset name or spec mapping (`core.backbones.build_backbone`).
        out_channels: the six widths, stride 1 (the input's channels) to stride 32.
        in_channels: input channels.

    Raises:
        ValueError: if the preset is unknown or its last four strides are not 4, 8, 16, 32.

    Example:
        >>> enc = CoreFeatureEncoder("resnet18", [3, 64, 64, 128, 256, 512])
        >>> [f.shape[1] for f in enc(torch.rand(1, 3, 64, 64))]
        [3, 64, 64, 128, 256, 512]
    """

    def __init__(self, preset: str | Mapping[str, Any], out_channels: Sequence[int], in_channels: int = 3) -> None:
        super().__init__()
        from visionpipes.core.backbones import build_backbone
        from visionpipes.core.layers import ConvNormAct

        self.backbone = build_backbone(preset, in_channels=in_channels)
        if list(self.backbone.strides[-4:]) != [4, 8, 16, 32]:
            raise ValueError(
                f"the backbone returns strides {self.backbone.strides}; features at strides 4, 8, 16 and 32 are needed"
            )
        self._out_channels = list(out_channels)
        self._depth = len(self._out_channels) - 1
        self.stem2 = ConvNormAct(2, in_channels, self._out_channels[1], 3, 2)
        widths = self.backbone.out_channels[-4:]
        self.proj = nn.ModuleList(
            nn.Identity() if c == t else nn.Conv2d(c, t, 1) for c, t in zip(widths, self._out_channels[2:])
        )

    @property
    def out_channels(self) -> list[int]:
        """The feature widths, stride 1 to stride 32 (smp decoders read this)."""
        return self._out_channels

    @property
    def output_stride(self) -> int:
        return 32

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = self.backbone(x)[-4:]
        return [x, self.stem2(x), *(p(f) for p, f in zip(self.proj, feats))]
