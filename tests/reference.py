"""Independent per-token reference implementations used by the tests (slow, obvious loops)."""
import math

import torch
import torch.nn.functional as F


def expert_mlp(moe, e: int, x: torch.Tensor) -> torch.Tensor:
    """Expert e of a SparseMoE applied to one token, as two plain linear layers (float64)."""
    ex = moe.experts
    h = F.linear(x, ex.fc1_weight[e].double(), ex.fc1_bias[e].double())
    h = F.gelu(h)
    return F.linear(h, ex.fc2_weight[e].double(), ex.fc2_bias[e].double())


def brute_force_moe(moe, x: torch.Tensor, capacity_factor: float, group: str = 'sample', bpr: bool = False):
    """Per-token V-MoE: softmax router, top-K, k-major capacity filling, gate-weighted sum.

    Returns (output [B, N, D], kept [B, N, K] bool). No noise: call with the layer in eval mode
    or with noise disabled.
    """
    x = x.double()
    B, N, D = x.shape
    E, K = moe.num_experts, moe.top_k
    probs = torch.softmax(x @ moe.router.proj.weight.double().t(), dim=-1)
    out = torch.zeros_like(x)
    kept = torch.zeros(B, N, K, dtype=torch.bool)
    groups = [[(b, n) for n in range(N)] for b in range(B)] if group == 'sample' else \
        [[(b, n) for b in range(B) for n in range(N)]]
    for tokens in groups:
        capacity = max(1, math.ceil(len(tokens) * K * capacity_factor / E))
        load = [0] * E
        if bpr:
            order = sorted(range(len(tokens)), key=lambda i: -probs[tokens[i]].max().item())
        else:
            order = list(range(len(tokens)))
        for k in range(K):
            for i in order:
                b, n = tokens[i]
                ranked = sorted(range(E), key=lambda e: -probs[b, n, e].item())
                e = ranked[k]
                if load[e] < capacity:
                    load[e] += 1
                    kept[b, n, k] = True
                    out[b, n] += probs[b, n, e] * expert_mlp(moe, e, x[b, n])
    return out, kept


def architecture_kwargs(kwargs: dict, keys) -> dict:
    """The kwargs among ``keys`` that define a ViT's architecture, in one form whatever timm version wrote them:
    sequences as tuples, ``img_size`` and ``patch_size`` as (h, w) (timm 1.0.31's ``save_for_hf`` writes
    ``img_size`` as a list; 1.0.29 as the int it was given)."""
    out = {}
    for k in keys:
        v = kwargs.get(k)
        if isinstance(v, (list, tuple)):
            v = tuple(v)
        if k in ('img_size', 'patch_size') and isinstance(v, int):
            v = (v, v)
        out[k] = v
    return out
