"""The routing losses against hand computations (float64 loops), with the paper's equations."""
import math

import pytest
import torch

from timm_tgr.layers.losses import (
    importance, load_balance_loss, normalized_utilization_entropy, router_z_loss, routing_entropy_loss,
    routing_kl_divergence,
)


def _probs(n=6, e=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(n, e, generator=g) * 2, -1)


def test_importance_and_load_loss_by_hand():
    """Imp_e = 1/N sum_i p_ie; L_load = (std(Imp) / mean(Imp))^2 with the population std."""
    p = _probs()
    rows = p.double().tolist()
    imp = [sum(r[e] for r in rows) / len(rows) for e in range(4)]
    mean = sum(imp) / 4
    var = sum((v - mean) ** 2 for v in imp) / 4
    torch.testing.assert_close(importance(p).double(), torch.tensor(imp, dtype=torch.float64))
    assert float(load_balance_loss(p)) == pytest.approx(var / mean ** 2, rel=1e-5)
    assert float(load_balance_loss(p.view(2, 3, 4))) == pytest.approx(var / mean ** 2, rel=1e-5)  # [B, N, E]
    assert float(load_balance_loss(torch.full((5, 4), 0.25))) == 0.


def test_entropy_loss_by_hand():
    p = _probs(seed=1)
    ref = sum(-sum(x * math.log(x) for x in row) for row in p.double().tolist()) / p.shape[0]
    assert float(routing_entropy_loss(p)) == pytest.approx(ref, rel=1e-5)
    assert float(routing_entropy_loss(torch.full((3, 4), 0.25))) == pytest.approx(math.log(4))


def test_z_loss_by_hand():
    logits = torch.randn(5, 4)
    ref = sum(math.log(sum(math.exp(v) for v in row)) ** 2 for row in logits.double().tolist()) / 5
    assert float(router_z_loss(logits)) == pytest.approx(ref, rel=1e-5)


def test_kl_by_hand_and_stopgrad():
    pt, p = _probs(seed=2).requires_grad_(), _probs(seed=3).requires_grad_()
    ref = sum(sum(a * math.log(a / b) for a, b in zip(rt, rs))
              for rt, rs in zip(pt.double().tolist(), p.double().tolist())) / pt.shape[0]
    kl = routing_kl_divergence(pt, p)
    assert kl.item() == pytest.approx(ref, rel=1e-5)
    kl.backward()
    assert pt.grad is None and p.grad.abs().sum() > 0  # stopgrad(p_t)
    assert float(routing_kl_divergence(p.detach(), p.detach())) == pytest.approx(0., abs=1e-7)
    with pytest.raises(ValueError, match='same shape'):
        routing_kl_divergence(torch.rand(3, 4), torch.rand(3, 5))


def test_normalized_entropy_by_hand():
    counts = torch.tensor([10., 30., 0., 60.])
    u = counts / 100
    ref = -sum(float(p) * math.log(float(p)) for p in u if p > 0) / math.log(4)
    assert float(normalized_utilization_entropy(counts)) == pytest.approx(ref)
    assert float(normalized_utilization_entropy(torch.ones(8))) == pytest.approx(1.0)
    assert float(normalized_utilization_entropy(torch.tensor([0., 5., 0., 0.]))) == pytest.approx(0.0)
