"""ExpertChoiceMoE (Zhou et al.) against a brute-force per-expert top-C: outputs, capacity, gradients, bad input."""
import math

import pytest
import torch
import torch.nn.functional as F

from timm_tgr import ExpertChoiceMoE, expert_choice_capacity
from timm_tgr.layers.losses import routing_kl_divergence

from reference import expert_mlp


def _randomize_biases(moe):
    with torch.no_grad():
        for p in (moe.experts.fc1_bias, moe.experts.fc2_bias):
            p.normal_(0, 0.1)


def _ec(E=4, cf=1.0, group='sample', dim=8, hidden=16, **kw):
    moe = ExpertChoiceMoE(dim, hidden, num_experts=E, capacity_factor=cf, capacity_group=group, **kw)
    _randomize_biases(moe)
    with torch.no_grad():
        moe.router.proj.weight.normal_(0, 1.0)
    return moe.eval()


def brute_force_expert_choice(moe, x, capacity_factor, group='sample'):
    """Per-expert loop: each expert sorts its group's tokens by score and takes the first C."""
    x = x.double()
    B, N, D = x.shape
    E = moe.num_experts
    scores = torch.softmax(x @ moe.router.proj.weight.double().t(), dim=-1)
    groups = [[(b, n) for n in range(N)] for b in range(B)] if group == 'sample' else \
        [[(b, n) for b in range(B) for n in range(N)]]
    out = torch.zeros_like(x)
    chosen = torch.zeros(B, N, E, dtype=torch.bool)
    for tokens in groups:
        capacity = min(len(tokens), math.ceil(len(tokens) * capacity_factor / E))
        for e in range(E):
            ranked = sorted(tokens, key=lambda t: -scores[t[0], t[1], e].item())
            for b, n in ranked[:capacity]:
                chosen[b, n, e] = True
                out[b, n] += scores[b, n, e] * expert_mlp(moe, e, x[b, n])
    return out, chosen, scores


@pytest.mark.parametrize('cf', [0.5, 1.0, 2.0, 10.0])
@pytest.mark.parametrize('group', ['sample', 'batch'])
def test_expert_choice_matches_brute_force(cf, group):
    moe = _ec(E=4, cf=cf, group=group)
    x = torch.randn(3, 11, 8)
    with torch.no_grad():
        out = moe(x)
    ref, chosen, scores = brute_force_expert_choice(moe, x, cf, group)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-6)
    info = moe.routing
    kept = chosen.any(-1)
    assert torch.equal(info.kept[..., 0], kept)
    torch.testing.assert_close(info.dropped_fraction, 1 - kept.float().mean())
    best_chosen = torch.where(chosen, scores, torch.full_like(scores, -1.)).argmax(-1)
    expected_index = torch.where(kept, best_chosen, scores.argmax(-1))
    assert torch.equal(info.expert_index[..., 0], expected_index)
    torch.testing.assert_close(info.gates[..., 0].double(), scores.gather(-1, expected_index[..., None])[..., 0])
    S = 11 if group == 'sample' else 33
    groups = 3 if group == 'sample' else 1
    assert info.expert_counts.tolist() == [groups * expert_choice_capacity(S, 4, cf)] * 4
    assert torch.equal(chosen.sum((0, 1)), info.expert_counts)
    if cf >= 4:  # every expert takes every token
        assert kept.all() and chosen.all()


def test_expert_choice_capacity_formula():
    assert expert_choice_capacity(197, 16, 1.0) == math.ceil(197 / 16)
    assert expert_choice_capacity(197, 8, 2.0) == math.ceil(197 * 2 / 8)
    assert expert_choice_capacity(5, 4, 100.) == 5  # at most all tokens
    assert expert_choice_capacity(5, 16, 0.01) == 1
    moe = _ec(cf=1.0, eval_capacity_factor=2.0)
    assert moe.current_capacity_factor() == 2.0
    assert moe.train().current_capacity_factor() == 1.0


def test_expert_choice_unpicked_tokens_get_zero_output():
    moe = _ec(E=2, cf=0.25)
    with torch.no_grad():
        out = moe(torch.randn(2, 12, 8))
    dropped = ~moe.routing.kept[..., 0]
    assert dropped.any() and out[dropped].abs().max() == 0


def test_expert_choice_probs_keep_graph_for_guidance_and_z_loss():
    moe = _ec(E=4, z_loss_weight=1e-3).train()
    x = torch.randn(2, 7, 8)
    out = moe(x)
    info = moe.routing
    logits = x @ moe.router.proj.weight.t()
    torch.testing.assert_close(info.probs, torch.softmax(logits, -1))
    z = (torch.logsumexp(logits, -1) ** 2).mean()
    torch.testing.assert_close(info.z_loss, z)
    torch.testing.assert_close(info.aux_loss, 1e-3 * z)
    assert info.load_loss == 0
    teacher = torch.softmax(torch.randn(2, 7, 4), -1)
    routing_kl_divergence(teacher, info.probs).backward(retain_graph=True)
    g_kl = moe.router.proj.weight.grad.clone()
    assert g_kl.abs().sum() > 0
    moe.zero_grad()
    out.square().sum().backward()  # task loss reaches the router through the combine weights
    assert moe.router.proj.weight.grad.abs().sum() > 0
    assert _ec(E=4).routing is None and ExpertChoiceMoE(8, 16).z_loss_weight == 0


def test_expert_choice_detach_gates_and_override():
    moe = _ec(E=4, cf=1.0).train()
    moe.detach_gates = True
    x = torch.randn(1, 8, 8)
    moe(x).square().sum().backward()
    assert moe.router.proj.weight.grad is None or moe.router.proj.weight.grad.abs().sum() == 0
    # an override distribution makes the experts choose by it: expert e takes tokens 2e and 2e+1
    moe.detach_gates = False
    forced = F.one_hot(torch.arange(8) // 2, 4).float().unsqueeze(0) * 0.9 + 0.025
    moe.routing_override = forced
    with torch.no_grad():
        moe(x)
    assert moe.routing.expert_index[0, :, 0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert moe.routing.kept.all()
    moe.routing_override = torch.rand(1, 8, 3)
    with pytest.raises(ValueError, match='routing override'):
        moe(x)


def test_expert_choice_router_is_fp32_under_autocast():
    moe = _ec(E=4)
    x = torch.randn(2, 6, 8)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = moe(x)
    assert moe.routing.probs.dtype == torch.float32 and out.shape == x.shape
    torch.testing.assert_close(moe.routing.logits, x @ moe.router.proj.weight.t())


@pytest.mark.slow
def test_expert_choice_layer_compiles_fullgraph():
    torch._dynamo.reset()
    moe = _ec(E=4, cf=1.5, z_loss_weight=1e-3).train()
    compiled = torch.compile(moe, fullgraph=True)
    x = torch.randn(2, 9, 8)
    out = compiled(x)
    (out.sum() + moe.routing.aux_loss).backward()
    assert moe.router.proj.weight.grad.abs().sum() > 0
    with torch.no_grad():
        torch.testing.assert_close(out, moe(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('cls, kwargs, match', [
    (ExpertChoiceMoE, dict(capacity_factor=0.), 'capacity_factor must be > 0'),
    (ExpertChoiceMoE, dict(capacity_factor=-1.), 'capacity_factor must be > 0'),
    (ExpertChoiceMoE, dict(eval_capacity_factor=0.), 'eval_capacity_factor must be > 0'),
    (ExpertChoiceMoE, dict(capacity_group='device'), 'capacity_group'),
    (ExpertChoiceMoE, dict(z_loss_weight=-1.), 'z_loss_weight must be >= 0'),
    (ExpertChoiceMoE, dict(num_experts=0), 'num_experts'),
    (ExpertChoiceMoE, dict(router_noise_std='loud'), 'router_noise_std'),
])
def test_bad_layer_configuration(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(8, 16, **kwargs)
