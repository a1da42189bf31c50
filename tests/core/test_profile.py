"""Parameter and FLOP counts against closed forms and torchvision; latency statistics; the table."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from visionpipes.core.backbones import build_backbone
from visionpipes.core.profile import (
    LatencyStats,
    ProfileRow,
    backbone_table,
    count_flops,
    count_parameters,
    format_table,
    measure_latency,
)


@pytest.mark.parametrize(("cin", "cout", "k", "stride", "groups"), [(16, 32, 3, 1, 1), (8, 24, 5, 2, 1), (32, 32, 3, 1, 32)])
def test_conv_flops_equal_the_closed_form(cin, cout, k, stride, groups):
    conv = nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=False)
    h, w = 20, 24
    h_out, w_out = (h + 2 * (k // 2) - k) // stride + 1, (w + 2 * (k // 2) - k) // stride + 1
    # One multiply-accumulate = 2 FLOPs in torch's counter.
    expected = 2 * (cin // groups) * cout * k * k * h_out * w_out
    assert count_flops(conv, torch.zeros(1, cin, h, w)) == expected
    assert count_flops(conv, torch.zeros(3, cin, h, w)) == 3 * expected


def test_attention_flops_are_counted_on_cpu_whatever_kernel_runs():
    class Attend(nn.Module):
        def forward(self, q: torch.Tensor) -> torch.Tensor:
            return F.scaled_dot_product_attention(q, q, q)

    b, heads, n, d = 2, 4, 49, 16
    expected = 2 * (2 * b * heads * n * n * d)  # Q @ K^T and A @ V, 2 FLOPs per MAC
    q = torch.randn(b, heads, n, d)
    assert count_flops(Attend(), q) == expected  # contiguous: CPU flash kernel
    assert count_flops(Attend(), q.transpose(-1, -2).contiguous().transpose(-1, -2)) == expected  # math path


def test_resnet50_parameters_and_flops_match_torchvision():
    tv = torchvision.models.resnet50()
    fc = tv.fc.in_features * tv.fc.out_features + tv.fc.out_features
    published = torchvision.models.ResNet50_Weights.IMAGENET1K_V1.meta["num_params"]
    assert count_parameters(tv) == published == 25_557_032
    ours = build_backbone("resnet50")
    assert count_parameters(ours) == published - fc
    x = torch.randn(1, 3, 64, 64)
    assert count_flops(ours, x) == count_flops(tv, x) - 2 * tv.fc.in_features * tv.fc.out_features


def test_trainable_only_and_eval_mode_restored():
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 1))
    net[0].requires_grad_(False)
    assert count_parameters(net) == (3 * 8 * 9 + 8) + 16 + (8 * 4 + 4)
    assert count_parameters(net, trainable_only=True) == 16 + (8 * 4 + 4)
    net.train()
    before = net[1].running_mean.clone()
    count_flops(net, torch.randn(2, 3, 8, 8))
    measure_latency(net, torch.randn(2, 3, 8, 8), warmup=1, repeats=2)
    assert net.training and net[1].training
    assert torch.equal(net[1].running_mean, before)  # measured in eval mode: BN stats untouched


def test_latency_stats_from_samples():
    stats = LatencyStats.from_samples([5.0, 1.0, 3.0, 2.0, 4.0, 10.0, 6.0, 7.0, 8.0, 9.0])
    assert (stats.median_ms, stats.p90_ms, stats.min_ms, stats.runs) == (5.5, 9.0, 1.0, 10)
    with pytest.raises(ValueError):
        LatencyStats.from_samples([])


def test_measure_latency_restores_threads_and_orders_statistics():
    before = torch.get_num_threads()
    stats = measure_latency(nn.Conv2d(3, 8, 3), torch.randn(1, 3, 32, 32), warmup=1, repeats=5, threads=1)
    assert torch.get_num_threads() == before
    assert stats.runs == 5
    assert 0 < stats.min_ms <= stats.median_ms <= stats.p90_ms
    with pytest.raises(ValueError):
        measure_latency(nn.Identity(), torch.zeros(1), repeats=0)


def test_backbone_table_and_format():
    rows = backbone_table(["mobilenet_v2", "resnet18"], batch=1, size=64, repeats=1, warmup=0, threads=1)
    assert [r.name for r in rows] == ["mobilenet_v2", "resnet18"]
    assert rows[1].params == count_parameters(build_backbone("resnet18"))
    # resnet18 at 224: 1.82 GMACs in torchvision's metadata (incl. the 1000-way fc) -> 3.63 GFLOPs;
    # at 64x64 the convolutions scale with the pixel count.
    tv_gflops_224 = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["_ops"] * 2
    fc_gflops = 2 * 512 * 1000 / 1e9
    assert rows[1].gflops == pytest.approx((tv_gflops_224 - fc_gflops) * (64 / 224) ** 2, rel=0.01)
    text = format_table(rows)
    lines = text.splitlines()
    assert lines[0].split()[:2] == ["model", "params"] and len(lines) == 3
    assert lines[2].startswith("resnet18 ") and "11.18" in lines[2] and "1x3x64x64" in lines[2]
    # numeric columns are right-aligned: each ends at the same character position as its header
    header_end = lines[0].index("GFLOPs") + len("GFLOPs")
    assert all(line[header_end - 1] != " " and line[header_end] == " " for line in lines)
    with pytest.raises(ValueError, match="unknown backbone"):
        backbone_table(["resnet1000"], size=64, repeats=1)


def test_format_table_of_a_hand_made_row():
    row = ProfileRow("tiny", 1234, 0.5, LatencyStats(2.0, 3.0, 1.5, 4), (2, 3, 32, 32), 1)
    assert format_table([row]).splitlines()[1].split() == ["tiny", "0.00", "0.500", "2.00", "3.00", "2x3x32x32"]
