"""SparseMoE on CUDA (bf16 autocast, and fp32) against the float64 CPU per-token reference on the same weights.

Forward output, kept choices and the gradients of the input and of every parameter are compared with
tests/reference.py's brute-force V-MoE (no batching tricks, float64 on the CPU). The CUDA cases are
marked ``gpu`` and skip without a CUDA device; the same harness also runs on the CPU (bf16 autocast
there), so the comparison itself is exercised everywhere.
"""
import copy

import pytest
import torch

from timm_tgr import SparseMoE
from timm_tgr.layers.experts import grouped_mm_available, grouped_mm_op

from reference import brute_force_moe

_needs_cuda = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')]
DEVICES = ['cpu', pytest.param('cuda', marks=_needs_cuda)]
CASES = [(1, 'sample', False), (2, 'sample', True), (2, 'batch', False)]  # (K, capacity group, BPR)
# max |error| / max |reference|, per tensor: bf16 keeps 8 mantissa bits (2^-8 = 0.4% per rounding)
TOL = {'bf16': 2e-2, 'fp32': 1e-5}  # measured on CPU: bf16 <= 0.8e-2, fp32 <= 5e-7


@pytest.fixture(autouse=True)
def _no_tf32():
    """fp32 on CUDA must be real fp32 for the fp32 tolerance."""
    if not torch.cuda.is_available():
        yield
        return
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _moe(K, group, bpr, cf=1.0, E=4, dim=64, hidden=128):
    moe = SparseMoE(dim, hidden, num_experts=E, top_k=K, capacity_factor=cf, batch_prioritized_routing=bpr,
                    capacity_group=group)
    with torch.no_grad():  # confident, distinct routing; experts big enough that bf16 errors are visible
        moe.router.proj.weight.normal_(0, 0.5)
        moe.experts.fc1_weight.normal_(0, 0.1)
        moe.experts.fc2_weight.normal_(0, 0.1)
        moe.experts.fc1_bias.normal_(0, 0.1)
        moe.experts.fc2_bias.normal_(0, 0.1)
    return moe.eval()  # no router noise: the reference is deterministic


def _reference(moe, x, g, cf, group, bpr):
    ref = copy.deepcopy(moe)
    x = x.clone().requires_grad_()
    out, kept = brute_force_moe(ref, x, cf, group=group, bpr=bpr)
    (out * g.double()).sum().backward()
    grads = {n: p.grad.double() for n, p in ref.named_parameters()}
    return out, kept, x.grad.double(), grads


def _close(actual, expected, tol, what):
    actual = actual.detach().double().cpu()
    scale = expected.abs().max().item()
    err = (actual - expected).abs().max().item()
    assert scale > 0, f'{what}: the reference is all zeros, the check would be vacuous'
    assert err <= tol * scale, f'{what}: max error {err:.3g} > {tol} x max |ref| {scale:.3g}'


def _check(device, precision, impl, K, group, bpr, cf=1.0):
    moe = _moe(K, group, bpr, cf=cf)
    x, g = torch.randn(3, 17, 64), torch.randn(3, 17, 64)
    dropless = cf == 'dropless'
    ref_out, ref_kept, ref_gx, ref_grads = _reference(moe, x, g, moe.num_experts / K if dropless else cf, group, bpr)

    dev = torch.device(device)
    model = copy.deepcopy(moe).to(dev)
    model.experts.impl = impl
    xd = x.to(dev).requires_grad_()
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == 'bf16'):
        out = model(xd)
    (out.float() * g.to(dev)).sum().backward()

    assert torch.equal(model.routing.kept.cpu(), ref_kept), 'capacity kept/dropped choices differ from the reference'
    assert ref_kept.all() if dropless else not ref_kept.all(), 'the path meant is not exercised'
    tol = TOL[precision]
    _close(out, ref_out, tol, 'output')
    _close(xd.grad, ref_gx, tol, 'input grad')
    for name, p in model.named_parameters():
        _close(p.grad, ref_grads[name], tol, f'{name}.grad')


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('precision', ['bf16', 'fp32'])
@pytest.mark.parametrize('K, group, bpr', CASES)
def test_moe_matches_float64_reference(device, precision, K, group, bpr):
    _check(device, precision, 'bmm', K, group, bpr)


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('precision', ['bf16', 'fp32'])
@pytest.mark.parametrize('K, group, bpr', CASES)
@pytest.mark.skipif(not grouped_mm_available(), reason='torch._grouped_mm needs torch >= 2.9')
def test_grouped_mm_matches_float64_reference(device, precision, K, group, bpr):
    try:
        _check(device, precision, 'grouped_mm', K, group, bpr)
    except (NotImplementedError, RuntimeError) as e:
        # which dtypes/devices torch._grouped_mm accepts varies by torch version (e.g. fp32 on CUDA, or
        # no CPU kernel in 2.8); only that is a skip, anything else fails
        if isinstance(e, NotImplementedError) or 'mat_a to be' in str(e):
            pytest.skip(f'torch._grouped_mm does not support {device}/{precision} here: {e}')
        raise


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('precision', ['bf16', 'fp32'])
@pytest.mark.parametrize('K, group, bpr', CASES)
@pytest.mark.skipif(grouped_mm_op() is None, reason='the dropless path needs a jagged grouped_mm (torch >= 2.9)')
def test_dropless_matches_float64_reference(device, precision, K, group, bpr):
    _check(device, precision, 'bmm', K, group, bpr, cf='dropless')


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
@pytest.mark.skipif(grouped_mm_op() is None, reason='the dropless path needs a jagged grouped_mm (torch >= 2.9)')
def test_dropless_has_no_host_sync_in_bf16():
    """The dropless forward and backward in bf16 never wait for the device (torch's sync debug mode raises on a
    sync). On GPUs without torch's grouped GEMM kernel (it is sm90/sm100 bf16) torch's fallback reads the group
    offsets on the host: skipped there."""
    if torch.cuda.get_device_capability()[0] not in (9, 10):
        pytest.skip('torch takes its fallback grouped_mm (host-read offsets) on this GPU')
    moe = _moe(1, 'sample', False, cf='dropless').cuda().train()
    x = torch.randn(8, 197, 64, device='cuda', requires_grad=True)
    with torch.autocast('cuda', dtype=torch.bfloat16):
        moe(x).float().sum().backward()  # warm up (lazy init may sync)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('error')
    try:
        with torch.autocast('cuda', dtype=torch.bfloat16):
            out = moe(x)
        out.float().sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert moe.routing.kept.all()
