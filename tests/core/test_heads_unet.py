"""The core-block U-Net head: 2-D and 3-D shapes, gradients, attention variants and bad arguments."""

from __future__ import annotations

import pytest
import torch

from visionpipes.core.heads.unet import AttentionResUNet


@pytest.mark.parametrize(("spatial_dims", "size"), [(2, (32, 24)), (3, (16, 16, 8))])
@pytest.mark.parametrize("attn", ["se", "cbam", "none"])
def test_maps_input_channels_to_logits_at_full_size(spatial_dims: int, size: tuple, attn: str) -> None:
    net = AttentionResUNet(spatial_dims, 4, 3, channels=(8, 16, 32), attn=attn)
    x = torch.randn(2, 4, *size, requires_grad=True)
    y = net(x)
    assert y.shape == (2, 3, *size) and net.divisor == 4
    y.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_state_dict_names_say_what_each_part_is() -> None:
    keys = {k.split(".")[0] for k in AttentionResUNet(3, 1, 2, channels=(4, 8)).state_dict()}
    assert keys == {"stem", "down", "bottleneck", "up", "decode", "head"}


def test_bad_arguments_are_value_errors() -> None:
    with pytest.raises(ValueError, match="at least two levels"):
        AttentionResUNet(3, 1, 1, channels=(8,))
    with pytest.raises(ValueError, match="attn must be"):
        AttentionResUNet(2, 1, 1, channels=(8, 16), attn="eca")
    with pytest.raises(ValueError):
        AttentionResUNet(4, 1, 1, channels=(8, 16))
