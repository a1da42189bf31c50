"""GeM pooling: the generalised mean of its definition, average pooling at p = 1, 2-D and 3-D inputs,
and a learnable p."""

from __future__ import annotations

import pytest
import torch

from visionpipes.core.heads.pooling import GeM


def test_gem_matches_its_definition_in_2d_and_3d():
    torch.manual_seed(0)
    pool = GeM(p=3.0)
    x2 = torch.rand(2, 4, 5, 6)
    assert torch.allclose(pool(x2), x2.pow(3).mean(dim=(2, 3)).pow(1 / 3), atol=1e-6)
    x3 = torch.rand(2, 4, 3, 5, 6)
    assert pool(x3).shape == (2, 4)
    assert torch.allclose(pool(x3), x3.pow(3).mean(dim=(2, 3, 4)).pow(1 / 3), atol=1e-6)


def test_gem_at_p_one_is_average_pooling_and_lies_between_mean_and_max():
    x = torch.rand(3, 2, 4, 4)
    assert torch.allclose(GeM(p=1.0)(x), x.mean(dim=(2, 3)), atol=1e-6)
    high = GeM(p=8.0)(x)
    assert (high >= x.mean(dim=(2, 3)) - 1e-6).all() and (high <= x.amax(dim=(2, 3)) + 1e-6).all()


def test_gem_learns_p_and_refuses_a_vector():
    pool = GeM()
    pool(torch.rand(2, 3, 4, 4)).sum().backward()
    assert pool.p.grad is not None and [n for n, _ in pool.named_parameters()] == ["p"]
    with pytest.raises(ValueError, match="spatial"):
        pool(torch.rand(2, 3))
