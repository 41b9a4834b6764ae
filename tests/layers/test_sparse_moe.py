"""SparseMoE against a per-token brute-force reference with the same weights."""
import math

import pytest
import torch
import torch.nn.functional as F
from timm.layers import Mlp

from timm_tgr import SparseMoE, expert_capacity
from timm_tgr.layers.losses import load_balance_loss, router_z_loss

from reference import brute_force_moe


def _moe(E=4, K=1, cf=1.0, bpr=False, group='sample', dim=8, hidden=16, **kw):
    moe = SparseMoE(dim, hidden, num_experts=E, top_k=K, capacity_factor=cf, batch_prioritized_routing=bpr,
                    capacity_group=group, **kw)
    with torch.no_grad():  # larger router weights: distinct, confident choices
        moe.router.proj.weight.normal_(0, 1.0)
        for p in (moe.experts.fc1_bias, moe.experts.fc2_bias):
            p.normal_(0, 0.1)
    return moe.eval()


@pytest.mark.parametrize('K', [1, 2])
@pytest.mark.parametrize('cf', [0.5, 1.0, 4.0])
@pytest.mark.parametrize('bpr', [False, True])
@pytest.mark.parametrize('group', ['sample', 'batch'])
def test_matches_brute_force(K, cf, bpr, group):
    moe = _moe(E=4, K=K, cf=cf, bpr=bpr, group=group)
    x = torch.randn(3, 11, 8)
    with torch.no_grad():
        out = moe(x)
    ref, ref_kept = brute_force_moe(moe, x, cf, group=group, bpr=bpr)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-6)
    assert torch.equal(moe.routing.kept, ref_kept)
    if cf < 1.0:  # capacity below the tokens' demand must drop something
        assert moe.routing.dropped_fraction.item() > 0
    if cf >= 4.0:  # C >= tokens: nothing can be dropped
        assert moe.routing.dropped_fraction.item() == 0


def test_bpr_changes_which_tokens_win():
    moe = _moe(E=2, K=1, cf=0.5)
    x = torch.randn(1, 16, 8)
    with torch.no_grad():
        moe(x)
        kept_plain = moe.routing.kept.clone()
        moe.batch_prioritized_routing = True
        moe(x)
        kept_bpr = moe.routing.kept.clone()
    # same number kept per expert, but BPR keeps the most confident tokens
    gates = moe.routing.gates[0, :, 0]
    experts = moe.routing.expert_index[0, :, 0]
    for e in range(2):
        sel = experts == e
        kept_gates = gates[sel & kept_bpr[0, :, 0]]
        dropped_gates = gates[sel & ~kept_bpr[0, :, 0]]
        if len(kept_gates) and len(dropped_gates):
            assert kept_gates.min() >= dropped_gates.max()
    assert kept_plain.sum() == kept_bpr.sum()


def test_dropped_tokens_get_zero_output():
    moe = _moe(E=2, K=1, cf=0.25)
    x = torch.randn(2, 12, 8)
    with torch.no_grad():
        out = moe(x)
    dropped = ~moe.routing.kept[..., 0]
    assert dropped.any()
    assert out[dropped].abs().max() == 0


def test_capacity_formula():
    assert expert_capacity(197, 16, 1, 1.0) == math.ceil(197 / 16)
    assert expert_capacity(197, 8, 2, 1.05) == math.ceil(197 * 2 * 1.05 / 8)
    moe = _moe(E=4, K=1, cf=1.0)
    moe.eval_capacity_factor = 2.0
    assert moe.current_capacity_factor() == 2.0
    moe.train()
    assert moe.current_capacity_factor() == 1.0


def test_single_expert_equals_dense_mlp():
    """E=1, K=1, ample capacity: the gate is 1 and the layer is exactly the dense Mlp."""
    moe = SparseMoE(8, 16, num_experts=1, top_k=1, capacity_factor=1.0).eval()
    mlp = Mlp(8, 16)
    with torch.no_grad():
        mlp.fc1.weight.copy_(moe.experts.fc1_weight[0])
        mlp.fc1.bias.copy_(moe.experts.fc1_bias[0])
        mlp.fc2.weight.copy_(moe.experts.fc2_weight[0])
        mlp.fc2.bias.copy_(moe.experts.fc2_bias[0])
        x = torch.randn(2, 5, 8)
        torch.testing.assert_close(moe(x), mlp(x))


def test_gradients_reach_router_and_used_experts_only():
    moe = _moe(E=4, K=1, cf=4.0)
    with torch.no_grad():  # positive tokens and a negative router row: expert 3 is never chosen
        moe.router.proj.weight[3] = -5.0
    x = torch.randn(2, 10, 8).abs()
    moe.train()
    moe.router.noise_std = 0.
    out = moe(x)
    (out.square().sum()).backward()
    counts = moe.routing.expert_counts
    assert counts[3] == 0 and counts[:3].sum() == 20
    assert moe.router.proj.weight.grad.abs().sum() > 0
    ex = moe.experts
    for e in range(4):
        grads = [ex.fc1_weight.grad[e], ex.fc1_bias.grad[e], ex.fc2_weight.grad[e], ex.fc2_bias.grad[e]]
        total = sum(g.abs().sum() for g in grads)
        if counts[e] > 0:
            assert total > 0, f'expert {e} received {counts[e]} tokens but no gradient'
        else:
            assert total == 0, f'expert {e} received no tokens but got gradient'


def test_router_is_fp32_under_autocast():
    moe = _moe(E=4, K=1)
    x = torch.randn(2, 6, 8)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = moe(x)
    assert moe.routing.probs.dtype == torch.float32
    assert moe.routing.logits.dtype == torch.float32
    ref = (x @ moe.router.proj.weight.t())  # fp32 reference logits
    torch.testing.assert_close(moe.routing.logits, ref)
    assert out.shape == x.shape


def test_aux_losses_match_hand_computation():
    moe = _moe(E=4, K=1, load_loss_weight=0.005, z_loss_weight=1e-3)
    x = torch.randn(2, 7, 8)
    with torch.no_grad():
        moe(x)
    p = torch.softmax(x @ moe.router.proj.weight.t(), dim=-1)  # [2, 7, 4]; group='sample': one image a group
    imp = p.mean(1)
    cv2 = ((imp.std(dim=1, unbiased=False) / imp.mean(dim=1)) ** 2).mean()
    z = (torch.logsumexp(x @ moe.router.proj.weight.t(), -1) ** 2).mean()
    torch.testing.assert_close(moe.routing.load_loss, cv2)
    torch.testing.assert_close(moe.routing.z_loss, z)
    torch.testing.assert_close(moe.routing.aux_loss, 0.005 * cv2 + 1e-3 * z)
    assert load_balance_loss(torch.full((10, 4), 0.25)) == 0
    torch.testing.assert_close(router_z_loss(torch.zeros(3, 4)), torch.tensor(math.log(4) ** 2))


def test_routing_override_chooses_experts():
    moe = _moe(E=4, K=1, cf=4.0)
    x = torch.randn(1, 6, 8)
    forced = F.one_hot(torch.tensor([[3, 2, 1, 0, 3, 2]]), 4).float() * 0.7 + 0.075
    moe.routing_override = forced
    with torch.no_grad():
        moe(x)
    assert moe.routing.expert_index[0, :, 0].tolist() == [3, 2, 1, 0, 3, 2]
    torch.testing.assert_close(moe.routing.gates[0, :, 0], torch.full((6,), 0.775))
    own = torch.softmax(x @ moe.router.proj.weight.t(), -1)  # recorded probs stay the router's own
    torch.testing.assert_close(moe.routing.probs, own)
    moe.routing_override = forced[:, :3]
    with pytest.raises(ValueError, match='routing override has shape'):
        moe(x)


@pytest.mark.parametrize('kwargs, match', [
    (dict(num_experts=4, top_k=5), 'top_k=5'),
    (dict(num_experts=4, top_k=0), 'top_k=0'),
    (dict(num_experts=0), 'num_experts'),
    (dict(capacity_factor=0.), 'capacity_factor must be > 0'),
    (dict(eval_capacity_factor=-1.), 'eval_capacity_factor must be > 0'),
    (dict(capacity_group='device'), 'capacity_group'),
    (dict(router_noise_std='loud'), 'router_noise_std'),
    (dict(router_noise_std=-1.), 'router_noise_std'),
])
def test_bad_configuration(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SparseMoE(8, 16, **kwargs)


def test_bad_input_shape():
    with pytest.raises(ValueError, match=r'\[B, N, C\]'):
        _moe()(torch.randn(4, 8))
