"""Sparse top-K Mixture-of-Experts MLP with expert capacity, as in V-MoE.

Three small pieces, kept apart so each can be replaced (e.g. by a grouped-GEMM fast path):

- :class:`~timm_tgr.layers.router.TopKRouter` picks experts,
- :func:`assign_slots` turns the choices into buffer slots under the capacity limit,
- :class:`GroupedExperts` runs all experts at once with batched matmuls.

Nothing in the forward loops over experts in Python or reads a tensor value on the host,
so ``torch.compile(fullgraph=True)`` captures the layer whole.

Capacity (V-MoE): tokens are routed in groups; by default a group is one sample's N tokens,
so a sample's output never depends on the other samples of the batch (``capacity_group='batch'``
makes the whole batch one group). Each expert takes at most
``C = ceil(S * K * capacity_factor / E)`` tokens of a group of S tokens. Choices are served
k-major (all first choices before any second choice); within a rank, earlier tokens win, or with
batch-prioritized routing (BPR) the tokens with the higher top-1 gate win. A choice beyond an
expert's capacity is dropped: the token gets nothing from that expert and, if all its choices
are dropped, passes through the block's residual connection only.
"""
import math
from dataclasses import dataclass
from typing import Optional, Type, Union

import torch
import torch.nn as nn

from .losses import load_balance_loss, router_z_loss
from .router import RouterOutput, TopKRouter

__all__ = ['GroupedExperts', 'SparseMoE', 'RoutingInfo', 'assign_slots', 'expert_capacity', 'EXPERT_IMPLS',
           'grouped_mm_available']

_CAPACITY_GROUPS = ('sample', 'batch')


def check_mlp_replacement(layer: str, extra: dict, in_features: int, out_features, norm_layer) -> None:
    """Shared argument checks of the MoE layers that stand in for a timm ``Mlp``."""
    if extra:
        raise TypeError(f'{layer} got unexpected arguments {sorted(extra)}.')
    if out_features not in (None, in_features):
        raise ValueError(f'{layer} keeps the feature size: out_features must equal in_features.')
    if norm_layer is not None:
        raise ValueError(f'{layer} has no inner MLP norm; build the model with scale_mlp_norm=False.')


def check_capacity(capacity_factor, eval_capacity_factor, capacity_group: str, meaning: str) -> None:
    """Capacity factors must be > 0 (``meaning`` says what they are for this layer); groups 'sample'/'batch'."""
    for name, cf in (('capacity_factor', capacity_factor), ('eval_capacity_factor', eval_capacity_factor)):
        if cf is not None and not cf > 0:
            raise ValueError(f'{name} must be > 0 ({meaning}), got {cf}.')
    if capacity_group not in _CAPACITY_GROUPS:
        raise ValueError(f'capacity_group must be one of {_CAPACITY_GROUPS}, got {capacity_group!r}.')


def expert_capacity(group_tokens: int, num_experts: int, top_k: int, capacity_factor: float) -> int:
    """C = ceil(tokens * K * capacity_factor / E), at least 1."""
    return max(1, math.ceil(group_tokens * top_k * capacity_factor / num_experts))


def assign_slots(
        expert_index: torch.Tensor,
        gates: torch.Tensor,
        num_experts: int,
        batch_prioritized: bool = False,
) -> torch.Tensor:
    """Position of every (token, choice) in its expert's buffer.

    Args:
        expert_index: ``[G, S, K]`` chosen experts per group, token and rank.
        gates: ``[G, S, K]`` their combine weights (BPR orders tokens by ``gates[..., 0]``).
        num_experts: E.
        batch_prioritized: serve tokens with a higher top-1 gate first instead of earlier tokens first.

    Returns:
        ``[G, S, K]`` int64 positions: the number of choices of the same expert in the same group
        served before this one. A choice is kept iff its position is below the capacity C.
    """
    G, S, K = expert_index.shape
    arange_s = torch.arange(S, device=expert_index.device)
    if batch_prioritized:
        order = torch.argsort(gates[..., 0].detach(), dim=1, descending=True, stable=True)
        token_rank = torch.empty_like(order).scatter_(1, order, arange_s.expand(G, S))
    else:
        token_rank = arange_s.expand(G, S)
    # priority of each choice: k-major, then token rank; unique within a group
    ranks_k = torch.arange(K, device=expert_index.device) * S
    priority = token_rank.unsqueeze(-1) + ranks_k  # [G, S, K]
    flat_e = expert_index.reshape(G, S * K)
    key = flat_e * (S * K) + priority.reshape(G, S * K)
    sorted_key, perm = torch.sort(key, dim=1)
    sorted_e = torch.div(sorted_key, S * K, rounding_mode='floor')
    counts = torch.zeros(G, num_experts, dtype=torch.long, device=expert_index.device)
    counts.scatter_add_(1, flat_e, torch.ones_like(flat_e))
    starts = counts.cumsum(1) - counts
    rank_in_expert = torch.arange(S * K, device=expert_index.device) - starts.gather(1, sorted_e)
    position = torch.empty_like(rank_in_expert).scatter_(1, perm, rank_in_expert)
    return position.view(G, S, K)


EXPERT_IMPLS = ('bmm', 'grouped_mm')


def grouped_mm_available() -> bool:
    """Whether ``torch._grouped_mm`` exists (CUDA since torch 2.8; CPU and the CUDA fallback since 2.9)."""
    return hasattr(torch, '_grouped_mm')


def _autocast_dtype(device_type: str) -> Optional[torch.dtype]:
    """The autocast dtype for ``device_type`` if autocast is on there, else None (torch >= 2.4 API)."""
    try:
        if torch.is_autocast_enabled(device_type):
            return torch.get_autocast_dtype(device_type)
    except TypeError:  # older torch: no device_type argument
        if device_type == 'cuda' and torch.is_autocast_enabled():
            return torch.get_autocast_gpu_dtype()
    return None


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward makes the incoming gradient contiguous."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous()


class GroupedExperts(nn.Module):
    """E two-layer MLP experts (fc1 -> act -> drop -> fc2 -> drop) evaluated with batched matmuls.

    Weights are stored like E stacked ``nn.Linear`` layers (``fc1_weight`` is ``[E, hidden, dim]``),
    so a dense timm ``Mlp`` can be copied into any expert (sparse upcycling).
    Input ``[E, T, dim]`` (T slots per expert), output ``[E, T, dim]``.

    ``impl`` picks the matmul (set it at construction or later, e.g. ``moe.experts.impl = 'grouped_mm'``):

    - ``'bmm'`` (default): ``torch.baddbmm`` / ``torch.bmm``; autocast casts as for any matmul.
    - ``'grouped_mm'``: ``torch._grouped_mm`` on the same ``[E, T, dim]`` layout (torch >= 2.9 for
      the CPU kernel; the CUDA grouped-GEMM kernel is bf16 on sm90/sm100, other cases take
      PyTorch's fallback). Autocast does not cover ``_grouped_mm``, so operands are cast to the
      autocast dtype here; the bias is added after the matmul. ``dim`` and ``hidden_dim`` must be
      multiples of 8 (16-byte strides in bf16). Under ``torch.compile`` only bf16/fp16 operands take
      ``_grouped_mm`` (torch's meta kernel rejects fp32); fp32 there falls back to ``'bmm'``.
      Same results as ``'bmm'`` up to float rounding; no speed claim is made for it (BENCHMARKS.md).
    """

    def __init__(
            self,
            num_experts: int,
            dim: int,
            hidden_dim: int,
            act_layer: Type[nn.Module] = nn.GELU,
            bias: bool = True,
            drop: float = 0.,
            impl: str = 'bmm',
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.num_experts = num_experts
        self.fc1_weight = nn.Parameter(torch.empty(num_experts, hidden_dim, dim, **dd))
        self.fc1_bias = nn.Parameter(torch.empty(num_experts, hidden_dim, **dd)) if bias else None
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.fc2_weight = nn.Parameter(torch.empty(num_experts, dim, hidden_dim, **dd))
        self.fc2_bias = nn.Parameter(torch.empty(num_experts, dim, **dd)) if bias else None
        self.drop2 = nn.Dropout(drop)
        self.impl = impl
        self.init_weights()

    def init_weights(self) -> None:
        """timm's ViT init for every expert: truncated normal std 0.02, zero bias."""
        for w in (self.fc1_weight, self.fc2_weight):
            nn.init.trunc_normal_(w, std=.02)
        for b in (self.fc1_bias, self.fc2_bias):
            if b is not None:
                nn.init.zeros_(b)

    @staticmethod
    def _linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        if bias is None:
            return torch.bmm(x, weight.transpose(1, 2))
        return torch.baddbmm(bias.unsqueeze(1).to(x.dtype), x, weight.transpose(1, 2))

    @property
    def impl(self) -> str:
        return getattr(self, '_impl', 'bmm')  # modules pickled before ``impl`` existed use bmm

    @impl.setter
    def impl(self, impl: str) -> None:
        if impl not in EXPERT_IMPLS:
            raise ValueError(f'GroupedExperts impl must be one of {EXPERT_IMPLS}, got {impl!r}.')
        if impl == 'grouped_mm':
            if not grouped_mm_available():
                raise RuntimeError(
                    f"impl='grouped_mm' needs torch._grouped_mm (torch >= 2.9), this is torch {torch.__version__}; "
                    f"use impl='bmm'.")
            hidden_dim, dim = self.fc1_weight.shape[1:]
            if dim % 8 or hidden_dim % 8:
                raise ValueError(
                    f"impl='grouped_mm' needs dim and hidden_dim divisible by 8 (16-byte strides in bf16), got "
                    f"dim={dim}, hidden_dim={hidden_dim}; use impl='bmm'.")
        self._impl = impl

    @classmethod
    def _grouped_linear(cls, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        dtype = _autocast_dtype(x.device.type) or x.dtype
        if dtype not in (torch.bfloat16, torch.float16) and torch.compiler.is_compiling():
            # torch's meta kernel for _grouped_mm (used when tracing) accepts only bf16/fp16 operands
            return cls._linear(x, weight, bias)
        out = torch._grouped_mm(x.to(dtype), weight.to(dtype).transpose(1, 2))
        out = _ContiguousGrad.apply(out)  # its backward rejects expanded (stride-0) output grads
        if bias is not None:
            out = out + bias.to(out.dtype).unsqueeze(1)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        linear = self._grouped_linear if self.impl == 'grouped_mm' else self._linear
        x = linear(x, self.fc1_weight, self.fc1_bias)
        x = self.drop1(self.act(x))
        x = linear(x, self.fc2_weight, self.fc2_bias)
        return self.drop2(x)

    def extra_repr(self) -> str:
        hidden_dim, dim = self.fc1_weight.shape[1:]
        return f'num_experts={self.num_experts}, dim={dim}, hidden_dim={hidden_dim}, impl={self.impl!r}'


@dataclass
class RoutingInfo:
    """Routing of one MoE layer in its last forward (tensors keep their autograd graph).

    ``probs``/``logits``: ``[B, N, E]`` fp32; ``expert_index``/``gates``/``kept``: ``[B, N, K]``;
    ``expert_counts``: ``[E]`` kept choices per expert; ``dropped_fraction``: share of the
    B*N*K choices dropped by capacity; ``load_loss``/``z_loss``: unweighted L_load and z-loss;
    ``aux_loss``: their weighted sum as configured on the layer.
    """
    probs: torch.Tensor
    logits: torch.Tensor
    expert_index: torch.Tensor
    gates: torch.Tensor
    kept: torch.Tensor
    expert_counts: torch.Tensor
    dropped_fraction: torch.Tensor
    load_loss: torch.Tensor
    z_loss: torch.Tensor
    aux_loss: torch.Tensor


class SparseMoE(nn.Module):
    """Top-K sparse MoE replacement for a transformer MLP, on any ``[B, N, C]`` tensor.

    The constructor takes timm ``Mlp``'s arguments (``in_features``, ``hidden_features``,
    ``act_layer``, ``bias``, ``drop``), so it can be passed as a ViT block's ``mlp_layer``.

    Args:
        num_experts: E.
        top_k: K.
        capacity_factor: training capacity factor (> 0).
        eval_capacity_factor: capacity factor in eval mode; None uses ``capacity_factor``.
        router_noise_std: Gaussian noise std on router logits in training; ``'1/E'`` allowed.
        batch_prioritized_routing: BPR (higher top-1 gate wins a full expert).
        capacity_group: ``'sample'`` (each sample's tokens are one routing group) or ``'batch'``.
        load_loss_weight: lambda_load of the importance (CV^2) loss in ``aux_loss``.
        z_loss_weight: lambda of the ST-MoE router z-loss in ``aux_loss`` (0 disables).

    After every forward, ``self.routing`` holds a :class:`RoutingInfo`. Setting
    ``self.routing_override`` to a ``[B, N, E]`` probability tensor makes the next forwards choose
    experts (and gates) from it instead of the router (the paper's teacher-route experiment); the
    recorded ``probs`` stay the router's own. ``self.detach_gates = True`` stops the task loss from
    reaching the router through the combine weights (the paper's distillation-only ablation).
    """

    def __init__(
            self,
            in_features: int,
            hidden_features: Optional[int] = None,
            out_features: Optional[int] = None,
            act_layer: Type[nn.Module] = nn.GELU,
            norm_layer: Optional[Type[nn.Module]] = None,
            bias: bool = True,
            drop: float = 0.,
            num_experts: int = 8,
            top_k: int = 1,
            capacity_factor: float = 1.05,
            eval_capacity_factor: Optional[float] = None,
            router_noise_std: Union[float, str, None] = 1.0,
            batch_prioritized_routing: bool = False,
            capacity_group: str = 'sample',
            load_loss_weight: float = 0.005,
            z_loss_weight: float = 0.,
            device=None,
            dtype=None,
            **kwargs,
    ):
        super().__init__()
        check_mlp_replacement('SparseMoE', kwargs, in_features, out_features, norm_layer)
        check_capacity(capacity_factor, eval_capacity_factor, capacity_group,
                       '1.0 gives each expert an equal share of the tokens; larger drops fewer tokens')
        hidden_features = hidden_features or in_features
        self.num_experts = num_experts
        self.top_k = top_k
        self.capacity_factor = float(capacity_factor)
        self.eval_capacity_factor = float(eval_capacity_factor) if eval_capacity_factor is not None else None
        self.batch_prioritized_routing = batch_prioritized_routing
        self.capacity_group = capacity_group
        self.load_loss_weight = load_loss_weight
        self.z_loss_weight = z_loss_weight
        self.router = TopKRouter(
            in_features, num_experts, top_k=top_k, noise_std=router_noise_std, device=device, dtype=dtype)
        self.experts = GroupedExperts(
            num_experts, in_features, hidden_features, act_layer=act_layer, bias=bias, drop=drop,
            device=device, dtype=dtype)
        self.routing: Optional[RoutingInfo] = None
        self.routing_override: Optional[torch.Tensor] = None
        self.detach_gates = False

    def current_capacity_factor(self) -> float:
        if not self.training and self.eval_capacity_factor is not None:
            return self.eval_capacity_factor
        return self.capacity_factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 3:
            raise ValueError(f'SparseMoE expects tokens as [B, N, C], got shape {tuple(x.shape)}.')
        B, N, D = x.shape
        route = self.router.route(self.router.compute_logits(x), choice_probs=self.routing_override)
        if self.detach_gates:
            route.gates = route.gates.detach()
        out, kept, counts = self._dispatch_combine(x, route)
        self.routing = self._routing_info(route, kept, counts)
        return out

    def _dispatch_combine(self, x: torch.Tensor, route: RouterOutput):
        B, N, D = x.shape
        E, K = self.num_experts, self.top_k
        G, S = (B, N) if self.capacity_group == 'sample' else (1, B * N)
        capacity = expert_capacity(S, E, K, self.current_capacity_factor())
        expert_index = route.expert_index.reshape(G, S, K)
        gates = route.gates.reshape(G, S, K)
        position = assign_slots(expert_index, gates, E, self.batch_prioritized_routing)
        kept = position < capacity

        # expert-major slots: expert e, group g, position c -> e * (G * C) + g * C + c;
        # every dropped choice goes to one extra slot at the end, which is discarded
        num_slots = E * G * capacity
        group_base = (torch.arange(G, device=x.device) * capacity).view(G, 1, 1)
        slot = expert_index * (G * capacity) + group_base + position
        slot = torch.where(kept, slot, torch.full_like(slot, num_slots)).reshape(-1)

        tokens = x.reshape(G, S, 1, D).expand(G, S, K, D).reshape(G * S * K, D)
        buffer = x.new_zeros(num_slots + 1, D).index_copy(0, slot, tokens)
        expert_out = self.experts(buffer[:num_slots].view(E, G * capacity, D)).reshape(num_slots, D)
        expert_out = torch.cat([expert_out, expert_out.new_zeros(1, D)], dim=0)

        weights = (gates * kept).to(expert_out.dtype).reshape(G * S * K, 1)
        out = (expert_out.index_select(0, slot) * weights).view(B, N, K, D).sum(dim=2)
        counts = torch.zeros(E, dtype=torch.long, device=x.device).scatter_add_(
            0, expert_index.reshape(-1), kept.reshape(-1).long())
        return out, kept.view(B, N, K), counts

    def _routing_info(self, route: RouterOutput, kept: torch.Tensor, counts: torch.Tensor) -> RoutingInfo:
        load = load_balance_loss(route.probs)
        z = router_z_loss(route.logits) if self.z_loss_weight > 0 else load.new_zeros(())
        aux = self.load_loss_weight * load + self.z_loss_weight * z
        return RoutingInfo(
            probs=route.probs,
            logits=route.logits,
            expert_index=route.expert_index,
            gates=route.gates,
            kept=kept,
            expert_counts=counts,
            dropped_fraction=1. - kept.float().mean(),
            load_loss=load,
            z_loss=z,
            aux_loss=aux,
        )

    def extra_repr(self) -> str:
        s = (f'num_experts={self.num_experts}, top_k={self.top_k}, capacity_factor={self.capacity_factor:g}, '
             f'capacity_group={self.capacity_group!r}, bpr={self.batch_prioritized_routing}')
        if self.eval_capacity_factor is not None:
            s += f', eval_capacity_factor={self.eval_capacity_factor:g}'
        return s
