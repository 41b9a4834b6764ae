"""Routing baselines of the paper: Soft-MoE, Expert-Choice (layers and models) and StableMoE freezing."""
import math

import pytest
import timm
import torch
import torch.nn.functional as F

from timm_tgr import ExpertChoiceMoE, SoftMoE, expert_choice_capacity, soft_moe_slots
from timm_tgr.layers.losses import routing_kl_divergence
from timm_tgr.models.moe_baselines import ExpertChoiceVisionTransformer, SoftMoEVisionTransformer
from timm_tgr.task.stablemoe import RouterFreezeSchedule, freeze_routers, router_parameters, routers_frozen

from reference import expert_mlp

SOFT = ['soft_moe_deit_tiny', 'soft_moe_deit_small', 'soft_moe_deit_base']
EC = ['ec_moe_deit_tiny', 'ec_moe_deit_small', 'ec_moe_deit_base']
SIZES = {'tiny': (192, 16), 'small': (384, 8), 'base': (768, 8)}


def _count(model):
    return sum(p.numel() for p in model.parameters())


def _randomize_biases(moe):
    with torch.no_grad():
        for p in (moe.experts.fc1_bias, moe.experts.fc2_bias):
            p.normal_(0, 0.1)


# --- Soft-MoE layer -----------------------------------------------------------------------------

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


def test_soft_moe_refuses_routing_override():
    moe = _soft()
    moe.routing_override = None  # clearing is fine
    with pytest.raises(ValueError, match='Soft-MoE has no token-to-expert choice'):
        moe.routing_override = torch.rand(1, 5, 4)


# --- Expert-Choice layer ------------------------------------------------------------------------

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
    soft = _soft()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        soft(x)
    assert soft.routing.probs.dtype == torch.float32


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


# --- bad configurations -------------------------------------------------------------------------

@pytest.mark.parametrize('cls, kwargs, match', [
    (SoftMoE, dict(slots_per_expert=0), 'slots_per_expert must be an integer >= 1'),
    (SoftMoE, dict(slots_per_expert=-2), 'slots_per_expert must be an integer >= 1'),
    (SoftMoE, dict(slots_per_expert=1.5), 'slots_per_expert must be an integer >= 1'),
    (SoftMoE, dict(), 'needs slots_per_expert'),
    (SoftMoE, dict(num_tokens=10, match_top_k=0), 'match_top_k must be >= 1'),
    (SoftMoE, dict(slots_per_expert=2, num_experts=0), 'num_experts must be >= 1'),
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


@pytest.mark.parametrize('name, kwargs, match', [
    ('soft_moe_deit_tiny', dict(slots_per_expert=0), 'slots_per_expert must be an integer >= 1'),
    ('soft_moe_deit_tiny', dict(match_top_k=0), 'match_top_k must be >= 1'),
    ('soft_moe_deit_tiny', dict(capacity_factor=1.0), 'capacity_factor'),  # not a Soft-MoE argument
    ('ec_moe_deit_tiny', dict(capacity_factor=0), 'capacity_factor must be > 0'),
    ('ec_moe_deit_tiny', dict(moe_layers=(7, 12)), 'moe_layers'),
])
def test_bad_model_configuration(name, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        timm.create_model(name, img_size=32, device='meta', **kwargs)


# --- models -------------------------------------------------------------------------------------

def test_registered_names():
    assert timm.list_models('soft_moe_deit_*') == sorted(SOFT)
    assert timm.list_models('ec_moe_deit_*') == sorted(EC)


@pytest.mark.parametrize('name', SOFT + EC)
def test_parameter_counts(name):
    size = name.split('_')[-1]
    dim, experts = SIZES[size]
    model = timm.create_model(name, device='meta')
    vmoe = _count(timm.create_model(f'vmoe_deit_{size}', device='meta'))
    moes = model.get_moe_layers()
    assert sorted(moes) == [7, 9, 11] and all(m.num_experts == experts for m in moes.values())
    if name.startswith('soft'):
        assert isinstance(model, SoftMoEVisionTransformer)
        slots = math.ceil(197 / experts)  # 196 patches + class token, top-1 compute
        assert all(m.slots_per_expert == slots for m in moes.values())
        # V-MoE's routers (dim x E) become slot parameters (E*slots x dim) and a scale
        assert _count(model) == vmoe - 3 * dim * experts + 3 * (experts * slots * dim + 1)
    else:
        assert isinstance(model, ExpertChoiceVisionTransformer)
        assert _count(model) == vmoe  # same router and experts as V-MoE
        assert all(m.capacity_factor == 1.0 and m.router.proj.bias is None for m in moes.values())
    assert model.pretrained_cfg['paper_ids'] == ('arXiv:2308.00951' if name.startswith('soft') else 'arXiv:2202.09368')
    assert not model.pretrained_cfg.get('url') and not model.pretrained_cfg.get('hf_hub_id')


@pytest.mark.parametrize('name', [n for n in SOFT + EC if not n.endswith('base')])
def test_forward_backward_small_image(name):
    model = timm.create_model(name, img_size=32, num_classes=7)
    model.train()
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 7)
    (out.logsumexp(-1).mean() + model.moe_aux_loss()).backward()
    for i, info in model.routing_infos().items():
        moe = model.blocks[i].mlp
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in moe.router.parameters())
        assert info.probs.shape == (2, 5, moe.num_experts) and info.expert_index.shape == (2, 5, 1)
        assert info.kept.shape == (2, 5, 1) and info.expert_counts.shape == (moe.num_experts,)


def test_model_kwargs():
    m = timm.create_model('ec_moe_deit_tiny', img_size=32, num_classes=3, num_experts=4, moe_layers=(3, 11),
                          capacity_factor=2.0, eval_capacity_factor=1.0, capacity_group='batch',
                          router_noise_std='1/E', z_loss_weight=1e-3)
    moe = m.get_moe_layers()[3]
    assert (moe.num_experts, moe.capacity_factor, moe.eval_capacity_factor, moe.capacity_group) == (4, 2., 1., 'batch')
    assert moe.router.noise_std == 0.25
    m(torch.randn(2, 3, 32, 32))
    assert m.moe_aux_loss() > 0  # the z-loss
    s = timm.create_model('soft_moe_deit_tiny', img_size=64, num_experts=4, slots_per_expert=2, normalize=False)
    assert s.blocks[7].mlp.slots_per_expert == 2 and s.blocks[7].mlp.router.scale is None
    s2 = timm.create_model('soft_moe_deit_tiny', img_size=64, num_experts=4, match_top_k=2)
    assert s2.blocks[7].mlp.slots_per_expert == math.ceil(17 * 2 / 4)
    with pytest.raises(ValueError, match='Soft-MoE has no token-to-expert choice'):
        s.set_routing_override({7: torch.rand(1, 17, 4)})
    s.set_routing_override(None)


def test_soft_moe_model_dynamic_img_size():
    m = timm.create_model('soft_moe_deit_tiny', img_size=32, dynamic_img_size=True, num_classes=2)
    assert m.blocks[7].mlp.slots_per_expert == 1  # sized for 4 patches + class token
    assert m(torch.randn(1, 3, 48, 48)).shape == (1, 2)
    assert m.routing_infos()[7].probs.shape == (1, 10, 16)


# --- StableMoE ----------------------------------------------------------------------------------

def _small_model(name='vmoe_deit_tiny', **kw):
    return timm.create_model(name, img_size=32, depth=4, moe_layers=(1, 3), num_classes=5, **kw)


@pytest.mark.parametrize('name', ['vmoe_deit_tiny', 'ec_moe_deit_tiny', 'soft_moe_deit_tiny'])
def test_freeze_routers_stops_router_gradients(name):
    model = _small_model(name).train()
    x = torch.randn(2, 3, 32, 32)
    routers = router_parameters(model)
    assert routers and all('.mlp.router.' in n for n in routers) and not routers_frozen(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    (model(x).logsumexp(-1).mean() + model.moe_aux_loss()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in routers.values())  # stage 1
    opt.step()

    names = freeze_routers(model)
    assert names == sorted(routers) and routers_frozen(model)
    assert all(p.grad is None and not p.requires_grad for p in routers.values())
    before = {n: p.detach().clone() for n, p in routers.items()}
    expert = model.blocks[3].mlp.experts.fc1_weight
    expert_before = expert.detach().clone()
    opt.zero_grad()
    (model(x).logsumexp(-1).mean() + model.moe_aux_loss()).backward()  # stage 2
    assert all(p.grad is None for p in routers.values())
    assert expert.grad is not None and expert.grad.abs().sum() > 0
    opt.step()
    assert all(torch.equal(p, before[n]) for n, p in routers.items())  # no update, no weight decay
    assert not torch.equal(expert, expert_before)
    assert freeze_routers(model) == names  # idempotent


def test_frozen_router_routes_deterministically():
    """StableMoE's stage 2 has fixed routing: after the freeze (default) two training-mode forwards of the same
    input choose the same experts, where the noisy router (std 1.0) before it does not."""
    model = _small_model(router_noise_std=1.0).train()
    x = torch.randn(4, 3, 32, 32)

    def choices():
        model(x)
        return torch.cat([i.expert_index.reshape(-1) for i in model.routing_infos().values()])
    torch.manual_seed(0)
    assert not torch.equal(choices(), choices())
    RouterFreezeSchedule(switch_step=0).maybe_freeze(model, 0)
    assert torch.equal(choices(), choices())
    assert torch.equal(choices(), torch.cat([i.expert_index.reshape(-1) for i in _eval_routing(model, x)]))
    kept_noise = _small_model(router_noise_std=1.0)
    freeze_routers(kept_noise, disable_noise=False)
    assert kept_noise.blocks[1].mlp.router.noise_std == 1.0


def _eval_routing(model, x):
    model.eval()
    with torch.no_grad():
        model(x)
    model.train()
    return list(model.routing_infos().values())


def test_router_freeze_schedule():
    model = _small_model(router_noise_std=1.0)
    sched = RouterFreezeSchedule(fraction=0.5, total_steps=10)
    assert sched.switch_step == 5
    assert sched.maybe_freeze(model, 4) is None and not routers_frozen(model)
    names = sched.maybe_freeze(model, 5)
    assert names == ['blocks.1.mlp.router.proj.weight', 'blocks.3.mlp.router.proj.weight']
    assert routers_frozen(model) and model.blocks[1].mlp.router.noise_std == 0
    assert sched.maybe_freeze(model, 6) is None
    resumed = RouterFreezeSchedule(switch_step=0)
    resumed.load_state_dict(sched.state_dict())
    fresh = _small_model()
    assert resumed.maybe_freeze(fresh, 7) == names and routers_frozen(fresh)  # re-freezes after a resume
    for kwargs, match in [(dict(), 'exactly one'), (dict(switch_step=3, fraction=0.5), 'exactly one'),
                          (dict(fraction=0.5), 'total_steps'), (dict(fraction=1.5, total_steps=10), r'\[0, 1\]'),
                          (dict(switch_step=-1), '>= 0')]:
        with pytest.raises(ValueError, match=match):
            RouterFreezeSchedule(**kwargs)
    with pytest.raises(TypeError, match='not a timm_tgr MoE model'):
        freeze_routers(torch.nn.Linear(2, 2))
