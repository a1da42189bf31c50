"""Metric-learning losses (pytorch-metric-learning, with our option names and defaults) against hand
computation and their defining behaviour, batch augmentation, P x K batches, and the retrieval
metrics (product-level Recall@K, image-level mAP) on known rankings."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from visionpipes.core.errors import UserError
from visionpipes.retail.training.augment import BatchAugment
from visionpipes.retail.training.data import pk_sampler
from visionpipes.retail.training.evaluate import score_retrieval
from visionpipes.retail.training.losses import build_loss


def test_proxy_anchor_matches_its_formula():
    loss = build_loss("proxy_anchor", 3, 2, margin=0.1, alpha=32)
    with torch.no_grad():
        loss.proxies.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))
    x = F.normalize(torch.tensor([[1.0, 0.2], [0.3, 1.0], [0.9, -0.1]]), dim=1)
    y = torch.tensor([0, 1, 0])
    cos = (x @ F.normalize(loss.proxies, dim=1).T).detach()
    expected_pos = sum(
        math.log(1 + sum(math.exp(-32 * (cos[i, c] - 0.1)) for i in range(3) if y[i] == c)) for c in (0, 1)
    ) / 2
    expected_neg = sum(
        math.log(1 + sum(math.exp(32 * (cos[i, c] + 0.1)) for i in range(3) if y[i] != c)) for c in range(3)
    ) / 3
    assert float(loss(x, y).detach()) == pytest.approx(expected_pos + expected_neg, rel=1e-5)


def test_multi_similarity_mines_and_prefers_separated_embeddings():
    loss = build_loss("multi_similarity", 2, 2)
    y = torch.tensor([0, 0, 1, 1])
    separated = F.normalize(torch.tensor([[1.0, 0.05], [1.0, -0.05], [0.05, 1.0], [-0.05, 1.0]]), dim=1)
    mixed = F.normalize(torch.tensor([[1.0, 0.05], [0.05, 1.0], [1.0, -0.05], [-0.05, 1.0]]), dim=1)
    # Well separated: every pair is outside the mining margins -> no informative pair, zero loss.
    assert float(loss(separated, y).detach()) == 0.0
    assert float(loss(mixed, y).detach()) > 0.5


def test_arcface_is_softmax_with_an_angular_margin():
    torch.manual_seed(0)
    x, y = F.normalize(torch.randn(8, 4), dim=1), torch.randint(0, 5, (8,))
    plain = build_loss("arcface", 5, 4, margin=0.0, scale=10.0)
    (weight,) = plain.parameters()  # (dimension, classes) in pytorch-metric-learning
    logits = 10.0 * x @ F.normalize(weight, dim=0)
    assert float(plain(x, y).detach()) == pytest.approx(float(F.cross_entropy(logits, y).detach()), rel=1e-4)
    margin = build_loss("arcface", 5, 4, margin=0.3, scale=10.0)  # our margin is in radians
    with torch.no_grad():
        next(iter(margin.parameters())).copy_(weight)
    assert float(margin(x, y).detach()) > float(plain(x, y).detach())


def test_build_loss_refuses_an_unknown_option():
    with pytest.raises(UserError, match="arcface has no option 'marginn'"):
        build_loss("arcface", 5, 4, marginn=0.3)


@pytest.mark.parametrize("name", ["proxy_anchor", "multi_similarity", "arcface"])
def test_each_loss_trains_a_linear_embedding(name):
    torch.manual_seed(0)
    centres = torch.randn(4, 16) * 1.5
    labels = torch.arange(4).repeat_interleave(8)
    data = centres[labels] + torch.randn(32, 16)
    head = torch.nn.Linear(16, 8)
    loss_fn = build_loss(name, 4, 8)
    opt = torch.optim.Adam([*head.parameters(), *loss_fn.parameters()], lr=1e-2)
    first = None
    for _ in range(60):
        loss = loss_fn(F.normalize(head(data), dim=1), labels)
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    emb = F.normalize(head(data), dim=1).detach()
    sims = emb @ emb.T - 2 * torch.eye(32)
    assert float(loss.detach()) < first
    assert float((labels[sims.argmax(1)] == labels).float().mean()) == 1.0


def test_batch_augment_and_pk_batches():
    torch.manual_seed(0)
    x = torch.rand(6, 3, 32, 32)
    out = BatchAugment("strong")(x)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1 and not torch.allclose(out, x)
    assert torch.equal(BatchAugment("none")(x), x)
    np.random.seed(1)  # noqa: NPY002 - MPerClassSampler draws from numpy's global generator
    sampler = pk_sampler([0, 0, 0, 1, 1, 2, 2, 2, 2, 3], p=2, k=3)
    batches = list(torch.utils.data.DataLoader(range(10), batch_size=sampler.batch_size, sampler=sampler))
    assert len(batches) == 1 and len(batches[0]) == 6
    batches = [b.tolist() for b in batches]
    labels = [[0, 0, 0, 1, 1, 2, 2, 2, 2, 3][i] for i in batches[0]]
    assert sorted({labels.count(v) for v in set(labels)}) == [3] and len(set(labels)) == 2


def test_retrieval_metrics_on_known_rankings():
    # Catalog: products a (2 views), b, c. Query 1 is nearest a; query 2 ranks b's view after c's.
    gallery = np.eye(4, dtype=np.float32)
    g_labels = ["a", "a", "b", "c"]
    queries = np.array([[0.9, 0.1, 0.0, 0.0], [0.0, 0.0, 0.5, 0.9], [0.0, 0.3, 0.0, 0.95]], dtype=np.float32)
    result = score_retrieval(queries, ["a", "b", "a"], gallery, g_labels)
    m = result.metrics
    # Product ranks of the true product: 1, 2, 2 -> R@1 = 1/3, R@5 = 1.
    assert m["recall_at_1"] == pytest.approx(1 / 3) and m["recall_at_5"] == 1.0 and m["recall_at_10"] == 1.0
    # AP: q1 ranks a's views 1st and 2nd -> 1; q2 b's view 2nd -> 1/2; q3 a's views at image ranks 2 and 3
    # -> (1/2 + 2/3) / 2.
    assert m["mAP"] == pytest.approx((1 + 0.5 + (0.5 + 2 / 3) / 2) / 3)
    assert [p for p, _, _ in result.top_products[1]] == ["c", "b", "a"]
    assert result.recall_curve[0] == (1, pytest.approx(1 / 3)) and len(result.recall_curve) == 3


def test_a_searched_backbone_spec_file_is_recorded_inline(tmp_path):
    import yaml

    from visionpipes.core.backbones import get_spec
    from visionpipes.core.config import parse_config
    from visionpipes.retail.embedding.config import EmbeddingConfig
    from visionpipes.retail.embedding.network import EmbeddingNet

    spec = get_spec("resnet18").to_dict()
    spec["name"] = "searched"
    (tmp_path / "best_spec.yaml").write_text(yaml.safe_dump(spec))
    config = parse_config(EmbeddingConfig, {"backbone": str(tmp_path / "best_spec.yaml"), "dimension": 16}, source="t")
    assert config.backbone == spec  # what model.json records: no file needed later
    net = EmbeddingNet.from_config(config).eval()
    assert tuple(net(torch.zeros(1, 3, 64, 64)).shape) == (1, 16)
    with pytest.raises(UserError, match="does not exist"):
        parse_config(EmbeddingConfig, {"backbone": str(tmp_path / "none.yaml")}, source="t")
