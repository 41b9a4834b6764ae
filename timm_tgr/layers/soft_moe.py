"""Soft Mixture-of-Experts MLP (Puigcerver et al., "From Sparse to Soft Mixtures of Experts", ICLR 2024).

No token is routed to an expert: every expert processes ``p`` *slots*, and every slot is a
convex combination of all the tokens of a sample. With tokens ``X`` (``[N, d]``) and slot
parameters ``Phi`` (``[d, E*p]``)::

    logits = scale * l2norm(X) @ l2norm(Phi)       # [N, E*p], fp32 (L2 over d; scale learned, init 1)
    D = softmax(logits, over tokens)                # dispatch weights: column s mixes the tokens of slot s
    C = softmax(logits, over slots)                 # combine weights: row n mixes the slot outputs of token n
    slots = D^T X                                   # [E*p, d], slot s goes to expert s // p
    Y = C @ concat_e(f_e(slots of expert e))        # [N, d]

Nothing is dropped and there is no auxiliary loss. The dispatch normalizes over the tokens of one
sample, so a sample's output never depends on the other samples of the batch, and any number of
tokens works (``dynamic_img_size``, patch dropout).

Compute: ``E*p`` slot evaluations per sample, whatever N. ``p = ceil(N*K/E)`` (:func:`soft_moe_slots`)
is the capacity of a top-K V-MoE / Expert-Choice layer at capacity factor 1: the same expert compute.

Routing record (:class:`~timm_tgr.layers.moe_base.RoutingInfo`), defined so the routing metrics and losses of
the token-choice layers read it the same way:

- ``probs[b, n, e]``: token n's *combine mass* on expert e, the combine weights of e's p slots
  summed (``C`` is a softmax over all slots, so ``probs`` sums to 1 over experts);
- ``logits[b, n, e]``: logsumexp of the slot logits of expert e, so ``softmax(logits) == probs``;
- ``expert_index``: ``[B, N, 1]`` argmax of ``probs`` (the expert contributing most to the token's
  output), ``gates`` its mass, ``kept`` all True, ``dropped_fraction`` 0;
- ``expert_counts``: slot evaluations per expert (``B * p`` each: Soft-MoE is balanced by construction);
- ``load_loss``, ``z_loss``, ``aux_loss``: zeros (Soft-MoE has no auxiliary loss).

Teacher guidance (TGR): ``probs`` is a per-token distribution over experts with its autograd graph
to the slot parameters, so ``KL(p_t || p)`` can be computed and back-propagated as for the
top-K models. It then pulls each token's combine mass towards the teacher's expert, and the dispatch
(the same logits, softmaxed over tokens) only indirectly. This is not the paper's setting: TGR
targets the gradient blocking of top-K routing, and Soft-MoE, where every slot parameter gets a
gradient from every token, has none. There is no hard choice to override, so
``routing_override`` (teacher-route) is refused; ``detach_gates = True`` detaches dispatch and
combine weights, so the slots learn only from losses on ``probs`` (the distillation-only ablation).
"""
import math
from typing import Optional, Type

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checks import check_count
from .experts import GroupedExperts
from .moe_base import MoELayer, RoutingInfo, check_mlp_replacement
from .precision import autocast_off

__all__ = ['SoftMoE', 'SoftMoERouter', 'soft_moe_slots']


def soft_moe_slots(num_tokens: int, num_experts: int, top_k: int = 1) -> int:
    """Slots per expert with the expert compute of a top-K sparse layer at capacity factor 1: ceil(N*K/E)."""
    if num_tokens < 1 or num_experts < 1 or top_k < 1:
        raise ValueError(
            f'soft_moe_slots needs num_tokens, num_experts and top_k >= 1, got {num_tokens}, {num_experts}, {top_k}.')
    return max(1, math.ceil(num_tokens * top_k / num_experts))


def _resolve_slots_per_expert(
        slots_per_expert: Optional[int], num_tokens: Optional[int], num_experts: int, match_top_k: int) -> int:
    """``slots_per_expert`` checked, or sized from ``num_tokens`` by :func:`soft_moe_slots` when None."""
    if slots_per_expert is None:
        if num_tokens is None:
            raise ValueError(
                'SoftMoE needs slots_per_expert (>= 1), or num_tokens (tokens per sample) to size the slots '
                'as ceil(num_tokens * match_top_k / num_experts).')
        if not match_top_k >= 1:
            raise ValueError(f'match_top_k must be >= 1 (the K whose compute the slots match), got {match_top_k}.')
        slots_per_expert = soft_moe_slots(num_tokens, num_experts, match_top_k)
    if isinstance(slots_per_expert, bool) or int(slots_per_expert) != slots_per_expert or slots_per_expert < 1:
        raise ValueError(
            f'slots_per_expert must be an integer >= 1, got {slots_per_expert!r}: pass e.g. '
            f'slots_per_expert=ceil(tokens * K / num_experts), or leave it None and pass num_tokens.')
    return int(slots_per_expert)


class SoftMoERouter(nn.Module):
    """Slot parameters Phi (``[E*p, d]``) and the learned scale of Soft-MoE's normalized logits.

    ``compute_logits`` runs in fp32 with autocast disabled, like :class:`~timm_tgr.layers.router.TopKRouter`.
    """

    def __init__(self, dim: int, num_slots: int, normalize: bool = True, device=None, dtype=None):
        super().__init__()
        self.num_slots = num_slots
        self.normalize = normalize
        self.slot_embed = nn.Parameter(torch.empty(num_slots, dim, device=device, dtype=dtype))
        # the learned scale only exists with normalization (the paper's l2-normalized variant)
        self.scale = nn.Parameter(torch.empty((), device=device, dtype=dtype)) if normalize else None
        self.init_weights()

    def init_weights(self) -> None:
        """LeCun-normal slot parameters (std 1/sqrt(d)) and scale 1."""
        nn.init.normal_(self.slot_embed, std=self.slot_embed.shape[1] ** -0.5)
        if self.scale is not None:
            nn.init.ones_(self.scale)

    def compute_logits(self, x: torch.Tensor) -> torch.Tensor:
        """fp32 slot logits ``[B, N, E*p]``."""
        with autocast_off(x.device.type):
            x = x.float()
            phi = self.slot_embed.float()
            if self.normalize:
                x = F.normalize(x, dim=-1)
                phi = F.normalize(phi, dim=-1) * self.scale.float()
            return F.linear(x, phi)

    def extra_repr(self) -> str:
        return f'num_slots={self.num_slots}, normalize={self.normalize}'


class SoftMoE(MoELayer):
    """Soft-MoE replacement for a transformer MLP, on any ``[B, N, C]`` tensor.

    Takes timm ``Mlp``'s arguments, so it can be a ViT block's ``mlp_layer``.

    Args:
        num_experts: E.
        slots_per_expert: p (>= 1); None computes ``ceil(num_tokens * match_top_k / E)``.
        num_tokens: tokens per sample N, used only when ``slots_per_expert`` is None (then kept as
            ``self.num_tokens``; None otherwise).
        match_top_k: K of the top-K layer whose expert compute the slots match (default 1).
        normalize: L2-normalize tokens and slot parameters with a learned scale (paper's default
            for large models; False uses raw dot products).

    After every forward ``self.routing`` holds a :class:`~timm_tgr.layers.moe_base.RoutingInfo` (see the module
    docstring for what its fields mean here).
    """

    override_refused = (
        'Soft-MoE has no token-to-expert choice to override (every slot mixes all tokens): the '
        'teacher-route experiment needs a top-K or Expert-Choice model.')

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
            slots_per_expert: Optional[int] = None,
            num_tokens: Optional[int] = None,
            match_top_k: int = 1,
            normalize: bool = True,
            device=None,
            dtype=None,
            **kwargs,
    ):
        super().__init__()
        check_mlp_replacement('SoftMoE', kwargs, in_features, out_features, norm_layer)
        self.num_experts = num_experts = check_count('num_experts', num_experts)
        self.slots_per_expert = _resolve_slots_per_expert(slots_per_expert, num_tokens, num_experts, match_top_k)
        self.num_tokens = num_tokens if slots_per_expert is None else None  # the N the slots were sized for
        self.top_k = 1  # the routing record has one (argmax) expert per token
        dd = dict(device=device, dtype=dtype)
        self.router = SoftMoERouter(in_features, num_experts * self.slots_per_expert, normalize=normalize, **dd)
        self.experts = GroupedExperts(
            num_experts, in_features, hidden_features or in_features, act_layer=act_layer, bias=bias, drop=drop, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 3:
            raise ValueError(f'SoftMoE expects tokens as [B, N, C], got shape {tuple(x.shape)}.')
        B, N, D = x.shape
        E, P = self.num_experts, self.slots_per_expert
        logits = self.router.compute_logits(self.router_input(x))  # [B, N, E*P] fp32
        mix_logits = logits.detach() if self.detach_gates else logits
        dispatch = torch.softmax(mix_logits, dim=1)  # over tokens
        combine = torch.softmax(mix_logits, dim=2)  # over slots

        slots = torch.bmm(dispatch.transpose(1, 2).to(x.dtype), x)  # [B, E*P, D]
        slots = slots.view(B, E, P, D).transpose(0, 1).reshape(E, B * P, D)
        slot_out = self.experts(slots)  # [E, B*P, D]
        slot_out = slot_out.view(E, B, P, D).transpose(0, 1).reshape(B, E * P, D)
        out = torch.bmm(combine.to(slot_out.dtype), slot_out)

        self.routing = self._routing_info(logits, B)
        return out

    def _routing_info(self, logits: torch.Tensor, batch: int) -> RoutingInfo:
        B, N, _ = logits.shape
        E, P = self.num_experts, self.slots_per_expert
        expert_logits = torch.logsumexp(logits.view(B, N, E, P), dim=-1)  # softmax of these = combine mass
        probs = torch.softmax(expert_logits, dim=-1)
        gates, expert_index = probs.max(dim=-1, keepdim=True)
        zero = logits.new_zeros(())
        return RoutingInfo(
            probs=probs,
            logits=expert_logits,
            expert_index=expert_index,
            gates=gates,
            kept=torch.ones_like(expert_index, dtype=torch.bool),
            expert_counts=torch.full((E,), batch * P, dtype=torch.long, device=logits.device),
            dropped_fraction=zero,
            load_loss=zero,
            noisy_load_loss=zero,
            z_loss=zero,
            aux_loss=zero,
        )

    def extra_repr(self) -> str:
        return f'num_experts={self.num_experts}, slots_per_expert={self.slots_per_expert}'
