"""GroupedExperts(impl='grouped_mm'): the torch._grouped_mm expert path gives the default 'bmm' path's results."""
import copy

import pytest
import timm
import torch

from timm_tgr import GroupedExperts, SparseMoE
from timm_tgr.layers.experts import grouped_mm_available

from reference import brute_force_moe


def _cpu_grouped_mm_works() -> bool:
    if not grouped_mm_available():
        return False
    try:  # torch 2.8 has the op but no CPU kernel
        torch._grouped_mm(torch.randn(2, 4, 8), torch.randn(2, 8, 4))
        return True
    except (NotImplementedError, RuntimeError):
        return False


pytestmark = pytest.mark.skipif(not _cpu_grouped_mm_works(), reason='torch._grouped_mm has no CPU kernel here')


def _pair(E=4, K=1, cf=1.0, bpr=False, group='sample', dim=16, hidden=32):
    moe = SparseMoE(dim, hidden, num_experts=E, top_k=K, capacity_factor=cf, batch_prioritized_routing=bpr,
                    capacity_group=group)
    with torch.no_grad():
        moe.router.proj.weight.normal_(0, 1.0)
        for p in (moe.experts.fc1_bias, moe.experts.fc2_bias):
            p.normal_(0, 0.1)
    moe.router.noise_std = 0.
    grouped = copy.deepcopy(moe)
    grouped.experts.impl = 'grouped_mm'
    return moe, grouped


def _fwd_bwd(moe, x, g):
    x = x.clone().requires_grad_()
    out = moe(x)
    (out.float() * g).sum().backward()
    return out, x.grad, {n: p.grad for n, p in moe.named_parameters()}


@pytest.mark.parametrize('K, group, bpr', [(1, 'sample', False), (2, 'sample', True), (2, 'batch', False)])
def test_grouped_mm_matches_bmm_fp32(K, group, bpr):
    """Forward and every gradient equal the bmm path's (bitwise on torch 2.14 CPU; fp32 rounding allowed)."""
    moe, grouped = _pair(K=K, group=group, bpr=bpr)
    moe.train(), grouped.train()
    x, g = torch.randn(3, 11, 16), torch.randn(3, 11, 16)
    out_a, gx_a, grads_a = _fwd_bwd(moe, x, g)
    out_b, gx_b, grads_b = _fwd_bwd(grouped, x, g)
    assert torch.equal(moe.routing.kept, grouped.routing.kept)
    assert moe.routing.dropped_fraction.item() > 0  # capacity overflow is exercised
    tol = dict(rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(out_b, out_a, **tol)
    torch.testing.assert_close(gx_b, gx_a, **tol)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], **tol, msg=name)


@pytest.mark.parametrize('K', [1, 2])
def test_grouped_mm_matches_brute_force(K):
    _, grouped = _pair(K=K, cf=0.75)
    grouped.eval()
    x = torch.randn(2, 9, 16)
    with torch.no_grad():
        out = grouped(x)
    ref, ref_kept = brute_force_moe(grouped, x, 0.75)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-6)
    assert torch.equal(grouped.routing.kept, ref_kept)


def test_grouped_mm_under_bf16_autocast():
    moe, grouped = _pair(K=2)
    moe.eval(), grouped.eval()
    x = torch.randn(2, 11, 16)
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        a, b = moe(x), grouped(x)
    assert a.dtype == b.dtype == torch.bfloat16  # grouped_mm is not on autocast's list: the layer casts
    torch.testing.assert_close(b.float(), a.float(), rtol=2e-2, atol=2e-2 * a.abs().max().item())


def test_expanded_output_gradient():
    """torch._grouped_mm's backward rejects stride-0 gradients (e.g. from .sum()); the layer makes them contiguous."""
    ex = GroupedExperts(4, 16, 32, impl='grouped_mm')
    ref = copy.deepcopy(ex)
    ref.impl = 'bmm'
    x = torch.randn(4, 5, 16)
    ex(x).sum().backward()
    ref(x).sum().backward()
    for (n, p), (_, q) in zip(ex.named_parameters(), ref.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=1e-7, msg=n)


def test_model_level_switch():
    m = timm.create_model('vmoe_deit_tiny', img_size=32, num_classes=10).eval()
    g = copy.deepcopy(m)
    for mod in g.modules():
        if isinstance(mod, GroupedExperts):
            mod.impl = 'grouped_mm'
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(g(x), m(x), rtol=1e-5, atol=1e-6)
    assert all(mod.impl == 'bmm' for mod in m.modules() if isinstance(mod, GroupedExperts))  # default unchanged


def test_bad_impl():
    assert GroupedExperts(2, 16, 32).impl == 'bmm'
    with pytest.raises(ValueError, match='impl must be one of'):
        GroupedExperts(2, 16, 32, impl='loop')
    with pytest.raises(ValueError, match='divisible by 8'):
        GroupedExperts(2, 12, 32, impl='grouped_mm')
    ex = GroupedExperts(2, 12, 32)
    with pytest.raises(ValueError, match='divisible by 8'):
        ex.impl = 'grouped_mm'
    assert ex.impl == 'bmm'


@pytest.mark.slow
def test_grouped_mm_compiles_in_bf16():
    _, grouped = _pair(K=1)
    grouped.eval()
    compiled = torch.compile(grouped, fullgraph=True)
    x = torch.randn(2, 8, 16, requires_grad=True)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = compiled(x)
        out.float().square().sum().backward()
    gx = x.grad.clone()
    x.grad = None
    with torch.autocast('cpu', dtype=torch.bfloat16):
        ref = grouped(x)
        ref.float().square().sum().backward()
    torch.testing.assert_close(out.float(), ref.float(), rtol=2e-2, atol=1e-3)
    torch.testing.assert_close(gx, x.grad, rtol=2e-2, atol=1e-4)
