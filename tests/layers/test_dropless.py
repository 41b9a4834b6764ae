"""SparseMoE's dropless path (choices sorted by expert, one jagged grouped matmul) against the capacity path and
the per-token brute-force reference, its automatic choice, and the fallback on a torch without grouped_mm."""
import copy

import pytest
import timm
import torch

from timm_tgr import ExpertChoiceMoE, SparseMoE
from timm_tgr.layers import experts as experts_module
from timm_tgr.layers.dispatch import combine_sorted, sort_by_expert
from timm_tgr.layers.experts import GroupedExperts, grouped_mm_op

from reference import brute_force_moe

pytestmark = pytest.mark.skipif(grouped_mm_op() is None, reason='this torch has no jagged grouped_mm')
FP32 = dict(rtol=1e-5, atol=1e-6)


def _moe(E=4, K=1, cf=None, group='sample', bpr=False, dim=16, hidden=32, **kw):
    moe = SparseMoE(dim, hidden, num_experts=E, top_k=K, capacity_factor=cf, capacity_group=group,
                    batch_prioritized_routing=bpr, **kw)
    with torch.no_grad():  # confident, distinct routing; biases that matter
        moe.router.proj.weight.normal_(0, 1.0)
        for p in (moe.experts.fc1_bias, moe.experts.fc2_bias):
            p.normal_(0, 0.1)
    moe.router.noise_std = 0.
    return moe


def _capacity_twin(moe):
    """The same layer on the capacity path (C = S where nothing can be dropped)."""
    twin = copy.deepcopy(moe)
    twin.use_dropless = False
    return twin


def _fwd_bwd(moe, x, g):
    x = x.clone().requires_grad_()
    out = moe(x)
    (out.float() * g).sum().backward()
    return out, x.grad, {n: p.grad for n, p in moe.named_parameters()}


@pytest.fixture
def jagged_calls(monkeypatch):
    """How many times GroupedExperts.forward_jagged ran."""
    calls = []
    original = GroupedExperts.forward_jagged

    def spy(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(GroupedExperts, 'forward_jagged', spy)
    return calls


def test_sort_and_combine_by_hand():
    # 3 tokens, K=2: token t chooses EXPERTS[t]; choice c = t * K + k
    experts = torch.tensor([[2, 0], [0, 1], [2, 1]])
    order, counts = sort_by_expert(experts, 3)
    assert order.tolist() == [1, 2, 3, 5, 0, 4]  # expert 0: choices 1, 2; expert 1: 3, 5; expert 2: 0, 4
    assert counts.tolist() == [2, 2, 2]
    rows = torch.arange(6.).unsqueeze(1)  # expert output of sorted row r is r
    gates = torch.tensor([[.5, .25], [1., 2.], [3., 4.]])
    # choice c sits at sorted row order.index(c): token 0 -> rows 4, 0; token 1 -> rows 1, 2; token 2 -> rows 5, 3
    assert combine_sorted(rows, order, gates).squeeze(1).tolist() == [.5 * 4 + .25 * 0, 1 * 1 + 2 * 2, 3 * 5 + 4 * 3]


@pytest.mark.parametrize('K, group, bpr', [(1, 'sample', False), (2, 'sample', True), (2, 'batch', False),
                                           (3, 'sample', False)])
def test_dropless_equals_capacity_path(K, group, bpr, jagged_calls):
    """Nothing dropped either way: outputs and every gradient equal the capacity path's at C = S (fp32)."""
    moe = _moe(E=4, K=K, group=group, bpr=bpr).train()
    twin = _capacity_twin(moe).train()
    x, g = torch.randn(3, 11, 16), torch.randn(3, 11, 16)
    out_a, gx_a, grads_a = _fwd_bwd(moe, x, g)
    assert len(jagged_calls) == 1
    out_b, gx_b, grads_b = _fwd_bwd(twin, x, g)
    assert len(jagged_calls) == 1  # the twin took the capacity path
    torch.testing.assert_close(out_a, out_b, **FP32)
    torch.testing.assert_close(gx_a, gx_b, **FP32)
    for name in grads_b:
        torch.testing.assert_close(grads_a[name], grads_b[name], **FP32, msg=name)
    for a, b in ((moe.routing, twin.routing),):
        assert torch.equal(a.kept, b.kept) and a.kept.all()
        assert torch.equal(a.expert_counts, b.expert_counts)
        assert a.dropped_fraction.item() == 0 == b.dropped_fraction.item()


@pytest.mark.parametrize('K', [1, 2])
def test_dropless_matches_brute_force_with_gradients(K):
    """Against the float64 per-token reference (any capacity >= S is the same V-MoE): output, input and parameter
    gradients, routing records."""
    moe = _moe(E=4, K=K).eval()
    ref = copy.deepcopy(moe)
    x, g = torch.randn(2, 9, 16), torch.randn(2, 9, 16)
    out, gx, grads = _fwd_bwd(moe, x, g)
    xr = x.clone().requires_grad_()
    ref_out, ref_kept = brute_force_moe(ref, xr, capacity_factor=4.0 / K)
    (ref_out * g.double()).sum().backward()
    assert ref_kept.all() and torch.equal(moe.routing.kept, ref_kept)
    for what, a, b in [('output', out, ref_out), ('input grad', gx, xr.grad)] + [
            (n, grads[n], p.grad) for n, p in ref.named_parameters()]:
        err = (a.double() - b).abs().max().item()
        assert err <= 1e-5 * b.abs().max().item(), f'{what}: max error {err:.3g}'
    counts = torch.bincount(moe.routing.expert_index.reshape(-1), minlength=4)
    assert torch.equal(moe.routing.expert_counts, counts) and counts.sum() == 2 * 9 * K


def test_automatic_choice(jagged_calls):
    x = torch.randn(2, 10, 16)
    moe = _moe(E=4, K=1, cf=1.05, eval_capacity_factor=4.0)  # the upcycled models' setting: eval C = S
    moe.train()(x)
    assert len(jagged_calls) == 0  # training capacity C < S: the capacity buffer, choices can be dropped
    moe.eval()(x)
    assert len(jagged_calls) == 1  # eval C = S: dropless
    moe.eval_capacity_factor = 2.0
    moe(x)
    assert len(jagged_calls) == 1  # C < S again
    moe.capacity_factor = moe.eval_capacity_factor = 'dropless'  # in both modes
    moe.train()(x)
    moe.eval()(x)
    assert len(jagged_calls) == 3
    moe.use_dropless = False  # the capacity buffer with C = S, for comparisons
    moe(x)
    assert len(jagged_calls) == 3 and moe.routing.kept.all()


@pytest.mark.parametrize('disable', ['no_op', 'unaligned'])
def test_fallback_without_grouped_mm(monkeypatch, jagged_calls, disable):
    """Without a jagged grouped_mm (torch < 2.9), or with rows that are not 16-byte aligned, the capacity path runs
    with C = S: same outputs, nothing dropped."""
    if disable == 'no_op':
        moe = _moe(E=4, K=2).eval()
        ref = copy.deepcopy(moe)
        monkeypatch.delattr(torch.nn.functional, 'grouped_mm', raising=False)
        monkeypatch.delattr(torch, '_grouped_mm')
        assert experts_module.grouped_mm_op() is None
    else:
        moe = _moe(E=4, K=2, dim=6, hidden=10).eval()  # 24- and 40-byte fp32 rows
        ref = copy.deepcopy(moe)
    x = torch.randn(3, 7, moe.experts.fc1_weight.shape[2])
    with torch.no_grad():
        out = moe(x)
    assert len(jagged_calls) == 0 and moe.routing.kept.all() and moe.routing.dropped_fraction.item() == 0
    ref_out, _ = brute_force_moe(ref, x, capacity_factor=2.0)
    torch.testing.assert_close(out.double(), ref_out, **FP32)


def test_bf16_autocast():
    moe = _moe(E=4, K=2).eval()
    twin = _capacity_twin(moe)
    x = torch.randn(2, 11, 16)
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        a, b = moe(x), twin(x)
    assert a.dtype == b.dtype == torch.bfloat16
    torch.testing.assert_close(a.float(), b.float(), rtol=2e-2, atol=2e-2 * b.abs().max().item())


def test_dropless_capacity_factor_in_models():
    # 'dropless' (timm.create_model drops None kwargs, so None cannot say it there); 8 images of 5 tokens at E=16
    m = timm.create_model('vmoe_deit_tiny', img_size=32, num_classes=3, capacity_factor='dropless').train()
    m(torch.randn(8, 3, 32, 32)).sum().backward()
    assert all(info.dropped_fraction.item() == 0 and info.kept.all() for info in m.routing_infos().values())
    assert "capacity_factor='dropless'" in repr(m.blocks[7].mlp)
    assert SparseMoE(16, 32, capacity_factor=None).capacity_factor == 'dropless'  # the layer itself takes None too
    assert _moe(eval_capacity_factor='Dropless').eval_capacity_factor == 'dropless'
    with pytest.raises(ValueError, match="capacity_factor must be > 0 and finite, or 'dropless'"):
        SparseMoE(16, 32, capacity_factor='none')
    with pytest.raises(ValueError, match='capacity_factor must be > 0'):
        ExpertChoiceMoE(16, 32, capacity_factor='dropless')  # Expert-Choice's capacity is its routing


@pytest.mark.slow
@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float32])
def test_compiles_fullgraph(dtype, jagged_calls):
    """torch.compile(fullgraph=True) captures the layer: the dropless path in bf16 (no graph break, so no host
    read), the capacity path at C = S in fp32, whose grouped_mm meta kernel is bf16/fp16 only."""
    moe = _moe(E=4, K=1).eval()
    compiled = torch.compile(moe, fullgraph=True)
    x = torch.randn(2, 8, 16, requires_grad=True)
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        out = compiled(x)
        out.float().square().sum().backward()
    assert bool(jagged_calls) == (dtype == torch.bfloat16)  # traced through forward_jagged, or not
    gx, x.grad = x.grad.clone(), None
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        ref = moe(x)
        ref.float().square().sum().backward()
    tol = dict(rtol=2e-2, atol=1e-3) if dtype == torch.bfloat16 else FP32
    torch.testing.assert_close(out.float(), ref.float(), **tol)
    torch.testing.assert_close(gx, x.grad, **tol)
