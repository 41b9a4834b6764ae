"""TopKRouter against hand computations: fp32 logits, training noise, top-K and gates, overrides, bad arguments."""
import pytest
import torch

from timm_tgr.layers.router import TopKRouter, resolve_noise_std


def test_logits_are_fp32_under_autocast_and_bias_free():
    router = TopKRouter(8, 4)
    x = torch.randn(5, 8)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        logits = router.compute_logits(x)
    assert logits.dtype == torch.float32 and router.proj.bias is None
    torch.testing.assert_close(logits, x @ router.proj.weight.t())


def test_top_k_and_gates_by_hand():
    router = TopKRouter(3, 4, top_k=2).eval()
    logits = torch.tensor([[2.0, 0.5, 1.0, -1.0], [0.0, 0.0, 3.0, 1.0]])
    out = router.route(logits)
    p = torch.softmax(logits, -1)
    assert out.expert_index.tolist() == [[0, 2], [2, 3]]
    # gates are the softmax over all experts at the chosen ones, not renormalized over the K choices
    torch.testing.assert_close(out.gates, torch.stack([p[0, [0, 2]], p[1, [2, 3]]]))
    torch.testing.assert_close(out.probs, p)


def test_training_noise_std():
    router = TopKRouter(8, 4, noise_std=1.0)
    router.train()
    logits = torch.zeros(20000, 4)
    out = router.route(logits)
    noisy = torch.log(out.probs)  # softmax of zero logits + noise: log p = noise - logsumexp(noise)
    centered = noisy - noisy.mean(-1, keepdim=True)
    # per-expert noise minus its mean over 4 experts has variance sigma^2 * (1 - 1/4)
    assert abs(centered.var().item() - 0.75) < 0.03
    router.eval()
    assert torch.equal(router.route(logits).probs, torch.full((20000, 4), 0.25))
    assert TopKRouter(8, 16, noise_std='1/E').noise_std == 1 / 16


def test_noise_std_conventions():
    assert resolve_noise_std(None, 8) == 0. and resolve_noise_std(0.5, 8) == 0.5
    assert resolve_noise_std('1/E', 16) == 1 / 16 and resolve_noise_std('inv_experts', 4) == 0.25
    assert resolve_noise_std('0.25', 4) == 0.25


def test_choice_override_picks_experts_and_gates_keeps_probs():
    router = TopKRouter(3, 4).eval()
    logits = torch.zeros(2, 4)
    override = torch.tensor([[0.1, 0.2, 0.6, 0.1], [0.7, 0.1, 0.1, 0.1]], requires_grad=True)
    out = router.route(logits, choice_probs=override)
    assert out.expert_index[:, 0].tolist() == [2, 0]
    torch.testing.assert_close(out.probs, torch.full((2, 4), 0.25))  # the router's own distribution
    out.gates.sum().backward()  # the override's gates keep their graph (teacher route trains its router)
    assert override.grad.tolist() == [[0, 0, 1, 0], [1, 0, 0, 0]]
    with pytest.raises(ValueError, match='routing override has shape'):
        router.route(logits, choice_probs=torch.rand(2, 3))


@pytest.mark.parametrize('kwargs, match', [
    (dict(num_experts=0), 'num_experts must be >= 1'),
    (dict(num_experts=4, top_k=5), r'top_k=5 is not in \[1, num_experts=4\]'),
    (dict(num_experts=4, top_k=0), 'top_k=0'),
    (dict(num_experts=4, noise_std=-1.), 'must be >= 0'),
    (dict(num_experts=4, noise_std='loud'), 'is not understood'),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TopKRouter(8, **kwargs)
