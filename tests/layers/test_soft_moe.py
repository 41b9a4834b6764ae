"""SoftMoE (Puigcerver et al.) against a float64 einsum reference: outputs, gradients, slots, bad configurations."""
import pytest
import torch

from timm_tgr import SoftMoE, soft_moe_slots
from timm_tgr.layers.losses import routing_kl_divergence

from reference import expert_mlp


def _randomize_biases(moe):
    with torch.no_grad():
        for p in (moe.experts.fc1_bias, moe.experts.fc2_bias):
            p.normal_(0, 0.1)


def _soft(E=4, p=3, dim=8, hidden=16, normalize=True):
    moe = SoftMoE(dim, hidden, num_experts=E, slots_per_expert=p, normalize=normalize)
    _randomize_biases(moe)
    with torch.no_grad():
        if normalize:
            moe.router.scale.fill_(3.0)  # sharper than the init, so the softmaxes are not flat
    return moe.eval()


def soft_moe_reference(moe, x):
    """Soft-MoE in float64 with einsums over an explicit [B, N, E, P] slot axis."""
    x = x.double()
    E, P = moe.num_experts, moe.slots_per_expert
    phi = moe.router.slot_embed.double().view(E, P, -1)
    if moe.router.normalize:
        xn = x / x.norm(dim=-1, keepdim=True)
        phi = phi / phi.norm(dim=-1, keepdim=True) * moe.router.scale.double()
    else:
        xn = x
    logits = torch.einsum('bnd,epd->bnep', xn, phi)
    B, N = x.shape[:2]
    dispatch = torch.softmax(logits, dim=1)  # each slot: a distribution over the sample's tokens
    combine = torch.softmax(logits.reshape(B, N, E * P), dim=-1).view(B, N, E, P)
    slots = torch.einsum('bnep,bnd->bepd', dispatch, x)
    slot_out = torch.stack([expert_mlp(moe, e, slots[:, e]) for e in range(E)], dim=1)  # [B, E, P, D]
    return torch.einsum('bnep,bepd->bnd', combine, slot_out), combine.sum(-1)


@pytest.mark.parametrize('normalize', [True, False])
@pytest.mark.parametrize('E, p', [(4, 3), (3, 1), (1, 5)])
def test_soft_moe_matches_einsum_reference(normalize, E, p):
    moe = _soft(E=E, p=p, normalize=normalize)
    x = torch.randn(3, 11, 8)
    with torch.no_grad():
        out = moe(x)
    ref, ref_mass = soft_moe_reference(moe, x)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-6)
    info = moe.routing
    torch.testing.assert_close(info.probs.double(), ref_mass, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(info.probs.sum(-1), torch.ones(3, 11))
    torch.testing.assert_close(torch.softmax(info.logits, -1), info.probs)
    assert torch.equal(info.expert_index[..., 0], ref_mass.argmax(-1))
    assert info.kept.all() and info.dropped_fraction == 0 and info.aux_loss == 0
    assert info.expert_counts.tolist() == [3 * p] * E


def test_soft_moe_samples_are_independent_and_any_length_works():
    moe = _soft()
    x = torch.randn(4, 9, 8)
    with torch.no_grad():
        full = moe(x)
        torch.testing.assert_close(moe(x[:1]), full[:1])
        assert moe(torch.randn(2, 30, 8)).shape == (2, 30, 8)  # more tokens than slots


def test_soft_moe_gradients_and_guidance():
    moe = _soft().train()
    x = torch.randn(2, 7, 8)
    out = moe(x)
    out.square().sum().backward()
    assert moe.router.slot_embed.grad.abs().sum() > 0 and moe.router.scale.grad.abs() > 0
    assert all(g.abs().sum() > 0 for g in (moe.experts.fc1_weight.grad, moe.experts.fc2_weight.grad))
    # the routing KL of TGR reaches the slot parameters through probs, also with detached gates
    moe.zero_grad()
    moe.detach_gates = True
    out = moe(x)
    out.square().sum().backward(retain_graph=True)
    assert moe.router.slot_embed.grad is None or moe.router.slot_embed.grad.abs().sum() == 0
    teacher = torch.softmax(torch.randn(2, 7, 4), -1)
    routing_kl_divergence(teacher, moe.routing.probs).backward()
    assert moe.router.slot_embed.grad.abs().sum() > 0


def test_soft_moe_slot_count():
    assert soft_moe_slots(197, 16) == 13 and soft_moe_slots(197, 8) == 25 and soft_moe_slots(197, 8, 2) == 50
    assert soft_moe_slots(5, 16) == 1
    assert SoftMoE(8, 16, num_experts=4, num_tokens=10).slots_per_expert == 3


def test_soft_moe_router_is_fp32_under_autocast():
    soft = _soft()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        soft(torch.randn(2, 6, 8))
    assert soft.routing.probs.dtype == torch.float32


def test_soft_moe_refuses_routing_override():
    moe = _soft()
    moe.routing_override = None  # clearing is fine
    with pytest.raises(ValueError, match='Soft-MoE has no token-to-expert choice'):
        moe.routing_override = torch.rand(1, 5, 4)


@pytest.mark.parametrize('cls, kwargs, match', [
    (SoftMoE, dict(slots_per_expert=0), 'slots_per_expert must be an integer >= 1'),
    (SoftMoE, dict(slots_per_expert=-2), 'slots_per_expert must be an integer >= 1'),
    (SoftMoE, dict(slots_per_expert=1.5), 'slots_per_expert must be an integer >= 1'),
    (SoftMoE, dict(), 'needs slots_per_expert'),
    (SoftMoE, dict(num_tokens=10, match_top_k=0), 'match_top_k must be >= 1'),
    (SoftMoE, dict(slots_per_expert=2, num_experts=0), 'num_experts must be >= 1'),
])
def test_bad_layer_configuration(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(8, 16, **kwargs)
