"""The architectural blocks of modern CNNs, each written once for 1-, 2- and 3-D inputs.

Norm, activation and attention are arguments (name, `(name, kwargs)` or class), never copies of a
block. Blocks hold no training or data logic. They build on `visionpipes.core.layers`
(`ConvNormAct`, the norm/activation factories), which is imported from there.
"""

from visionpipes.core.blocks.attention import CBAM, SelfAttention, SqueezeExcitation, make_attn
from visionpipes.core.blocks.context import ASPP
from visionpipes.core.blocks.efficient import DepthwiseSeparableConv, InvertedResidual
from visionpipes.core.blocks.fpn import FPN
from visionpipes.core.blocks.residual import Bottleneck, ResidualBlock

__all__ = [
    "ASPP",
    "CBAM",
    "FPN",
    "Bottleneck",
    "DepthwiseSeparableConv",
    "InvertedResidual",
    "ResidualBlock",
    "SelfAttention",
    "SqueezeExcitation",
    "make_attn",
]
