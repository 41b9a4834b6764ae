"""V-MoE's routing as its code does it (google-research/vmoe, ``vmoe/nn/routing.py``): routing groups of N images,
the importance loss per group on the clean softmax, the noise-based load loss, noise std 1/E. Each loss is checked
against a hand computation in plain Python floats, not against the layer's own functions."""
import math

import pytest
import torch

from timm_tgr.layers import SparseMoE
from timm_tgr.layers.dispatch import check_capacity_group, group_images, split_groups


def _moe(E=4, group=2, **kw):
    moe = SparseMoE(8, 16, num_experts=E, top_k=kw.pop('top_k', 1), capacity_group=group, **kw)
    with torch.no_grad():
        moe.router.proj.weight.normal_(0, 1.0)
    return moe


def _cv2(values):
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / len(values)  # population variance, as jnp.std
    return var / mean ** 2


def _groups(batch, images):
    """Image index ranges of the routing groups: full groups of ``images``, then the rest."""
    starts = list(range(0, batch, images))
    return [list(range(s, min(s + images, batch))) for s in starts]


def test_defaults_are_vmoe_codes():
    moe = SparseMoE(8, 16, num_experts=16)
    assert moe.capacity_group == 8 and moe.router.noise_std == 1 / 16
    assert moe.load_loss_weight == 0.005 and moe.noisy_load_loss_weight == 0.005
    assert moe.eval_capacity_group is None


def test_group_checks_and_split():
    assert check_capacity_group('8') == 8 and check_capacity_group(1) == 'sample'
    for bad in (0, -2, 'device', True, 2.5):
        with pytest.raises(ValueError, match='number of images per routing group'):
            check_capacity_group(bad)
    assert group_images(5, 8) == 5 and group_images(20, 8) == 8 and group_images(3, 'batch') == 3
    x = torch.arange(5 * 3).view(5, 3)
    parts = split_groups(x, 2)
    assert [tuple(p.shape) for p in parts] == [(2, 6), (1, 3)]
    assert parts[0][1].tolist() == list(range(6, 12)) and parts[1][0].tolist() == list(range(12, 15))


def test_importance_loss_is_per_group_on_the_clean_softmax():
    torch.manual_seed(0)
    moe = _moe(E=4, group=2, router_noise_std=1.0).train()  # big noise: noisy and clean softmax differ a lot
    x = torch.randn(5, 3, 8)  # 5 images in groups [0, 1], [2, 3], [4]
    with torch.no_grad():
        moe(x)
    logits = (x @ moe.router.proj.weight.t()).tolist()
    per_group = []
    for images in _groups(5, 2):
        imp = [0.] * 4
        for b in images:
            for n in range(3):
                exps = [math.exp(v) for v in logits[b][n]]
                for e in range(4):
                    imp[e] += exps[e] / sum(exps)
        per_group.append(_cv2(imp))
    assert moe.routing.load_loss.item() == pytest.approx(sum(per_group) / len(per_group), rel=1e-5)


def test_noisy_load_loss_matches_vmoe_formula():
    E, K, std = 4, 2, 0.3
    moe = _moe(E=E, group=2, top_k=K, router_noise_std=std, capacity_factor=2.0).train()
    x = torch.randn(4, 3, 8)
    torch.manual_seed(1)
    with torch.no_grad():
        moe(x)
    logits = x @ moe.router.proj.weight.t()
    torch.manual_seed(1)  # the router draws exactly one randn_like(logits) per forward
    noisy = (logits + torch.randn_like(logits) * std).tolist()
    logits = logits.tolist()
    per_group = []
    for images in _groups(4, 2):
        p_mean = [0.] * E
        tokens = [(b, n) for b in images for n in range(3)]
        for b, n in tokens:
            threshold = sorted(noisy[b][n], reverse=True)[K - 1]
            for e in range(E):
                z = (threshold - logits[b][n][e]) / std
                p_mean[e] += (1. - 0.5 * (1. + math.erf(z / math.sqrt(2.)))) / len(tokens)
        per_group.append(_cv2(p_mean))
    assert moe.routing.noisy_load_loss.item() == pytest.approx(sum(per_group) / len(per_group), rel=1e-4)
    expected_aux = 0.005 * moe.routing.load_loss.item() + 0.005 * sum(per_group) / len(per_group)
    assert moe.routing.aux_loss.item() == pytest.approx(expected_aux, rel=1e-4)


def test_noisy_load_loss_trains_the_router_and_is_absent_without_noise():
    moe = _moe(E=4, group=2, load_loss_weight=0., noisy_load_loss_weight=1.).train()
    moe(torch.randn(4, 3, 8)).sum().mul(0).add(moe.routing.aux_loss).backward()
    assert moe.router.proj.weight.grad.abs().sum() > 0
    moe.eval()
    with torch.no_grad():
        moe(torch.randn(4, 3, 8))
    assert moe.routing.noisy_load_loss.item() == 0.


def test_capacity_is_per_group_with_a_smaller_last_group():
    E, N, cf = 4, 3, 1.0
    moe = _moe(E=E, group=2, capacity_factor=cf).eval()
    B = 5
    forced = torch.zeros(B, N, E)
    forced[..., 0] = 1.  # every token wants expert 0
    moe.routing_override = forced
    moe.use_dropless = False
    with torch.no_grad():
        moe(torch.randn(B, N, 8))
    kept = moe.routing.kept[..., 0]
    for images in _groups(B, 2):
        S = len(images) * N
        capacity = math.ceil(S * cf / E)
        flat = [bool(kept[b, n]) for b in images for n in range(N)]
        assert flat == [i < capacity for i in range(S)]  # earlier tokens of the group win, per group
    assert int(moe.routing.expert_counts[0]) == 2 * math.ceil(6 / 4) + math.ceil(3 / 4)


def test_groups_of_images_match_routing_each_group_alone():
    torch.manual_seed(0)
    moe = _moe(E=4, group=2, capacity_factor=1.0).eval()
    moe.use_dropless = False
    x = torch.randn(5, 3, 8)
    with torch.no_grad():
        out = moe(x)
        alone = torch.cat([moe(x[i]) for i in (slice(0, 2), slice(2, 4), slice(4, 5))])
    torch.testing.assert_close(out, alone)


def test_eval_capacity_group_sample_makes_eval_batch_independent():
    torch.manual_seed(0)
    moe = _moe(E=4, group=8, capacity_factor=1.0, eval_capacity_group='sample').eval()
    x = torch.randn(6, 5, 8)
    with torch.no_grad():
        out = moe(x)
        one_by_one = torch.cat([moe(x[i:i + 1]) for i in range(6)])
    torch.testing.assert_close(out, one_by_one)
    assert moe.current_capacity_group() == 'sample' and moe.train().current_capacity_group() == 8
