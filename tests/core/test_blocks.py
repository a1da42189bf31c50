"""The block library: shapes and gradients in 2-D and 3-D, and the claims each block is built
on, measured (parameter savings, residual learning, cardinality, dilation)."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from visionpipes.core.blocks import (
    ASPP,
    CBAM,
    FPN,
    Bottleneck,
    DepthwiseSeparableConv,
    InvertedResidual,
    ResidualBlock,
    SelfAttention,
    SqueezeExcitation,
)
from visionpipes.core.layers import ConvNormAct, make_act, make_norm


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


BLOCKS = {
    "residual": lambda d: ResidualBlock(d, 16, 32, stride=2),
    "residual_se": lambda d: ResidualBlock(d, 16, 16, attn="se"),
    "bottleneck_resnext": lambda d: Bottleneck(d, 16, 64, stride=2, cardinality=4, base_width=4, attn="cbam"),
    "depthwise_separable": lambda d: DepthwiseSeparableConv(d, 16, 32, stride=2),
    "inverted_residual": lambda d: InvertedResidual(d, 16, 16, expand_ratio=4, attn="se"),
    "squeeze_excitation": lambda d: SqueezeExcitation(d, 16, reduction=4),
    "cbam": lambda d: CBAM(d, 16, reduction=4),
    "self_attention_learned": lambda d: SelfAttention(d, 16, num_heads=2, pos_encoding="learned", pos_grid=4),
    "self_attention_sinusoidal": lambda d: SelfAttention(d, 16, num_heads=2, pos_encoding="sinusoidal"),
    "aspp": lambda d: ASPP(d, 16, 8, rates=(1, 2, 3)),
}
EXPECTED_CHANNELS_STRIDE = {
    "residual": (32, 2),
    "bottleneck_resnext": (64, 2),
    "depthwise_separable": (32, 2),
    "aspp": (8, 1),
}


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_block_shapes_and_gradients(name: str, spatial_dims: int) -> None:
    torch.manual_seed(0)
    block = BLOCKS[name](spatial_dims)
    x = torch.randn(2, 16, *([8] * spatial_dims), requires_grad=True)
    y = block(x)
    channels, stride = EXPECTED_CHANNELS_STRIDE.get(name, (16, 1))
    assert tuple(y.shape) == (2, channels, *([8 // stride] * spatial_dims))
    y.square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for pname, p in block.named_parameters():
        assert p.grad is not None, f"{name}: no gradient reached {pname}"
        assert torch.isfinite(p.grad).all()
    assert any(p.grad.abs().sum() > 0 for p in block.parameters())


def test_fpn_top_down_in_2d_and_3d() -> None:
    for dims in (2, 3):
        fpn = FPN([8, 16, 32], 12, spatial_dims=dims, extra_levels=1)
        feats = [torch.randn(1, c, *([16 // 2**i] * dims)) for i, c in enumerate((8, 16, 32))]
        outs = fpn(feats)
        assert [tuple(o.shape[1:]) for o in outs] == [(12, *([s] * dims)) for s in (16, 8, 4, 2)]
        assert fpn.out_channels == [12] * 4
    # the coarsest input reaches the finest output through the top-down path
    fpn = FPN([4, 4], 4).eval()
    fine, coarse = torch.zeros(1, 4, 8, 8), torch.zeros(1, 4, 4, 4)
    base = fpn([fine, coarse])[0]
    coarse[0, :, 0, 0] = 1.0
    assert not torch.allclose(fpn([fine, coarse])[0][..., :2, :2], base[..., :2, :2])
    with pytest.raises(ValueError, match="levels"):
        fpn([fine])


def test_depthwise_separable_parameters_closed_form() -> None:
    k, c_in, c_out = 3, 256, 256
    standard = nn.Conv2d(c_in, c_out, k, padding=1)
    separable = DepthwiseSeparableConv(2, c_in, c_out, kernel_size=k, norm=None, act=None, pw_act=None)
    closed_form = (k * k * c_in + c_in) + (c_in * c_out + c_out)  # depthwise + pointwise, with biases
    assert n_params(separable) == closed_form
    assert n_params(standard) == k * k * c_in * c_out + c_out
    assert n_params(standard) / n_params(separable) >= 8.0
    # with batch norm (no conv bias), as used in MobileNets
    bn = DepthwiseSeparableConv(2, c_in, c_out, kernel_size=k)
    assert n_params(bn) == k * k * c_in + 2 * c_in + c_in * c_out + 2 * c_out


def _deep_stack(skip: bool, norm: str | None, depth: int = 25, ch: int = 8) -> nn.Sequential:
    """1 stem conv + `depth` two-conv blocks = 51 conv layers at depth 25."""
    blocks = [ResidualBlock(2, ch, ch, norm=norm, skip=skip) for _ in range(depth)]
    return nn.Sequential(
        ConvNormAct(2, 3, ch, 3, norm=norm), *blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(ch, 4)
    )


def _quadrant_task() -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed synthetic task: which quadrant of the image has the highest mean."""
    x = torch.randn(64, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    quadrants = torch.stack(
        [x[:, :, :4, :4].mean((1, 2, 3)), x[:, :, :4, 4:].mean((1, 2, 3)), x[:, :, 4:, :4].mean((1, 2, 3)),
         x[:, :, 4:, 4:].mean((1, 2, 3))], dim=1,
    )
    return x, quadrants.argmax(1)


def _first_grad_and_final_loss(skip: bool, norm: str | None, steps: int = 40) -> tuple[float, float]:
    torch.manual_seed(0)
    net = _deep_stack(skip, norm)
    assert sum(isinstance(m, nn.Conv2d) for m in net.modules()) >= 51
    x, y = _quadrant_task()
    nn.functional.cross_entropy(net(x), y).backward()
    first_grad = net[0].conv.weight.grad.norm().item()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(steps):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
    return first_grad, loss.item()


def test_skip_connections_keep_the_gradient_and_train_lower() -> None:
    """51 conv layers, PyTorch's default init, no normalisation: the classic vanishing gradient."""
    grad_res, loss_res = _first_grad_and_final_loss(skip=True, norm=None)
    grad_plain, loss_plain = _first_grad_and_final_loss(skip=False, norm=None)
    assert grad_res >= 10 * grad_plain, (grad_res, grad_plain)
    assert loss_res < loss_plain, (loss_res, loss_plain)


def test_skip_connections_train_lower_with_batch_norm() -> None:
    """With batch norm the plain stack's gradient explodes instead of vanishing (Yang et al.,
    2019), but it still trains far worse than the residual stack in the same steps."""
    _, loss_res = _first_grad_and_final_loss(skip=True, norm="batch", steps=25)
    _, loss_plain = _first_grad_and_final_loss(skip=False, norm="batch", steps=25)
    assert loss_res < 0.5 * loss_plain, (loss_res, loss_plain)


@pytest.mark.parametrize("in_ch,out_ch,stride", [(256, 256, 1), (256, 512, 2), (1024, 1024, 1), (1024, 2048, 2)])
def test_resnext_cardinality_keeps_parameters(in_ch: int, out_ch: int, stride: int) -> None:
    resnet = Bottleneck(2, in_ch, out_ch, stride=stride)
    resnext = Bottleneck(2, in_ch, out_ch, stride=stride, cardinality=32, base_width=4)
    ratio = n_params(resnext) / n_params(resnet)
    assert 0.9 <= ratio <= 1.1, ratio
    assert resnext.conv2.conv.groups == 32
    # and it is torchvision's block, parameter for parameter
    tv = torchvision.models.resnet.Bottleneck(
        in_ch, out_ch // 4, stride, groups=32, base_width=4,
        downsample=nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))
        if stride != 1 or in_ch != out_ch else None,
    )
    assert n_params(resnext) == n_params(tv)


@pytest.mark.parametrize("rate", [2, 4])
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_aspp_sees_pixels_at_its_dilation_rate(rate: int, spatial_dims: int) -> None:
    torch.manual_seed(0)
    aspp = ASPP(spatial_dims, 4, 4, rates=(rate,), image_pooling=False).eval()
    size = 2 * rate + 3
    centre = (size // 2,) * spatial_dims
    x = torch.randn(1, 4, *([size] * spatial_dims))

    def output_at_centre(inp: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return aspp(inp)[(0, slice(None), *centre)]

    base = output_at_centre(x)
    for offset, should_change in ((rate, True), (1, False)):
        moved = x.clone()
        moved[(0, slice(None), centre[0] + offset, *centre[1:])] += 5.0
        changed = not torch.allclose(output_at_centre(moved), base)
        assert changed is should_change, f"pixel at distance {offset} (rate {rate})"


def test_aspp_global_pooling_sees_the_whole_image() -> None:
    aspp = ASPP(2, 4, 4, rates=(2,)).eval()
    x = torch.randn(1, 4, 33, 33)
    with torch.no_grad():
        base = aspp(x)[0, :, 0, 0]
        x[0, :, 32, 32] += 10.0
        assert not torch.allclose(aspp(x)[0, :, 0, 0], base)


def test_factories_accept_names_tuples_and_classes() -> None:
    assert isinstance(make_norm(("group", {"num_groups": 4}), 3, 16), nn.GroupNorm)
    assert isinstance(make_norm(nn.LayerNorm, 2, 16), nn.LayerNorm)
    assert isinstance(make_act("silu"), nn.SiLU)
    assert isinstance(make_act(("leakyrelu", {"negative_slope": 0.2})), nn.LeakyReLU)
    assert isinstance(ResidualBlock(2, 8, 8, attn=CBAM).attn, CBAM)
    with pytest.raises(ValueError, match="unknown norm"):
        make_norm("nope", 2, 8)
    with pytest.raises(ValueError, match="spatial_dims"):
        ResidualBlock(4, 8, 8)
    with pytest.raises(ValueError, match="divisible"):
        SelfAttention(2, 10, num_heads=4)
    with pytest.raises(ValueError, match="rates"):
        ASPP(2, 8, 8, rates=(0,))


def test_self_attention_is_global() -> None:
    """One output position depends on an input position far outside any conv's receptive field."""
    torch.manual_seed(0)
    sa = SelfAttention(2, 8, num_heads=2).eval()
    x = torch.randn(1, 8, 16, 16)
    with torch.no_grad():
        base = sa(x)[0, :, 0, 0]
        x[0, :, 15, 15] += 3.0
        assert not torch.allclose(sa(x)[0, :, 0, 0], base)
