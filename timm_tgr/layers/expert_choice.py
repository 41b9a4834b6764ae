"""Expert-Choice MoE MLP (Zhou et al., "Mixture-of-Experts with Expert Choice Routing", NeurIPS 2022).

Token choice reversed: the router scores every (token, expert) pair with a softmax over experts,
``S = softmax(x W_r)`` (fp32, bias-free router, optional training noise on the logits), and each
expert takes the ``C`` tokens of a group with its highest scores::

    C = ceil(group_tokens * capacity_factor / E)    (at most group_tokens)
    y_n = sum over experts e that took token n of S[n, e] * f_e(x_n)

A token may be taken by 0..E experts; one that no expert takes passes through the block's residual
connection only. Every expert processes exactly C tokens per group: perfect load balance without an
auxiliary loss. With ``capacity_factor=1`` (the default) each expert processes ceil(S/E) tokens, the
compute of a top-1 V-MoE at capacity factor 1. Groups are as in :mod:`timm_tgr.layers.dispatch`: one sample's
tokens (``capacity_group='sample'``, outputs independent of the rest of the batch) or the batch.

Routing record (:class:`~timm_tgr.layers.moe_base.RoutingInfo`):

- ``probs``: the router softmax over experts ``[B, N, E]`` (noisy logits in training, as for
  :class:`~timm_tgr.layers.sparse_moe.SparseMoE`), with its autograd graph, so TGR's ``KL(p_t || p)`` applies
  directly (routing is orthogonal to teacher guidance); ``logits`` before noise;
- ``expert_index`` ``[B, N, 1]``: among the experts that took the token, the one with the highest
  score; a token no expert took gets its highest-score expert with ``kept`` False;
  ``gates``: the score of ``expert_index``;
- ``kept`` ``[B, N, 1]``: the token was taken by at least one expert; ``dropped_fraction``: share of
  tokens no expert took;
- ``expert_counts``: tokens processed per expert (``groups * C`` each);
- ``load_loss``: zero (no load loss); ``z_loss``: ST-MoE router z-loss when ``z_loss_weight > 0``;
  ``aux_loss = z_loss_weight * z_loss``.

Like :class:`~timm_tgr.layers.sparse_moe.SparseMoE`: ``routing_override`` (a ``[B, N, E]`` distribution) makes the
experts choose tokens (and weight them) by it instead of the router's scores, ``detach_gates``
stops the task loss reaching the router through the combine weights. No Python loop over experts
and no host sync: ``torch.compile(fullgraph=True)`` captures the layer.
"""
import math
from typing import Optional, Tuple, Type, Union

import torch
import torch.nn as nn

from .checks import check_count, check_weight
from .dispatch import ExpertChoiceDispatcher, capacity_groups
from .experts import GroupedExperts
from .losses import router_z_loss
from .moe_base import CapacityMoE, RoutingInfo, check_mlp_replacement
from .router import RouterOutput, TopKRouter

__all__ = ['ExpertChoiceMoE', 'expert_choice_capacity', 'expert_choice_select']


def expert_choice_capacity(group_tokens: int, num_experts: int, capacity_factor: float) -> int:
    """Tokens per expert and group: C = ceil(tokens * capacity_factor / E), in [1, tokens]."""
    return min(group_tokens, max(1, math.ceil(group_tokens * capacity_factor / num_experts)))


def expert_choice_select(scores: torch.Tensor, capacity: int):
    """Each expert's top-``capacity`` tokens of each group.

    Args:
        scores: ``[G, S, E]`` token-expert scores.
        capacity: C <= S.

    Returns:
        ``(weights, token_index)``, both ``[G, E, C]``: the scores and group positions of the tokens
        each expert takes, best first.
    """
    return torch.topk(scores.transpose(1, 2), capacity, dim=-1)


class ExpertChoiceMoE(CapacityMoE):
    """Expert-Choice MoE replacement for a transformer MLP, on any ``[B, N, C]`` tensor.

    Takes timm ``Mlp``'s arguments, so it can be a ViT block's ``mlp_layer``.

    Args:
        num_experts: E.
        capacity_factor: average experts per token c (> 0); each expert takes C = ceil(S*c/E) tokens
            of a group of S (1.0 matches a top-1 V-MoE's compute; the EC paper's default is 2).
        eval_capacity_factor: c in eval mode; None uses ``capacity_factor``.
        capacity_group: ``'sample'`` or ``'batch'``.
        router_noise_std: Gaussian noise std on the router logits in training (EC uses none: 0).
        z_loss_weight: ST-MoE router z-loss weight in ``aux_loss`` (0 disables).
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
            capacity_factor: float = 1.0,
            eval_capacity_factor: Optional[float] = None,
            capacity_group: str = 'sample',
            router_noise_std: Union[float, str, None] = 0.,
            z_loss_weight: float = 0.,
            device=None,
            dtype=None,
            **kwargs,
    ):
        check_mlp_replacement('ExpertChoiceMoE', kwargs, in_features, out_features, norm_layer)
        super().__init__(
            capacity_factor, eval_capacity_factor, capacity_group,
            "the average number of experts per token: 1.0 matches a top-1 V-MoE's compute, 2.0 is the "
            "Expert-Choice paper's default")
        self.num_experts = check_count('num_experts', num_experts)
        self.top_k = 1  # the routing record has one expert per token (see expert_index)
        self.z_loss_weight = check_weight('z_loss_weight', z_loss_weight, '0 disables the router z-loss')
        dd = dict(device=device, dtype=dtype)
        # TopKRouter for its fp32 logits and training noise; its top-1 choice is unused
        self.router = TopKRouter(in_features, num_experts, top_k=1, noise_std=router_noise_std, **dd)
        self.experts = GroupedExperts(
            num_experts, in_features, hidden_features or in_features, act_layer=act_layer, bias=bias, drop=drop, **dd)
        self.dispatcher = ExpertChoiceDispatcher(self.num_experts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 3:
            raise ValueError(f'ExpertChoiceMoE expects tokens as [B, N, C], got shape {tuple(x.shape)}.')
        route = self.router.route(self.router.compute_logits(self.router_input(x)))
        scores = self._choice_scores(route)
        out, chosen, per_expert = self._dispatch_combine(x, scores)
        self.routing = self._routing_info(route.logits, route.probs, scores, chosen, per_expert)
        return out

    def _choice_scores(self, route: RouterOutput) -> torch.Tensor:
        """``[B, N, E]`` scores the experts choose tokens by: the router's probs or ``routing_override``."""
        scores = route.probs
        if self.routing_override is not None:
            if self.routing_override.shape != scores.shape:
                raise ValueError(
                    f'routing override has shape {tuple(self.routing_override.shape)} but the router produces '
                    f'{tuple(scores.shape)}: it must give every token a distribution over the '
                    f'{self.num_experts} experts.')
            scores = self.routing_override.to(scores.dtype)
        return scores.detach() if self.detach_gates else scores

    def _dispatch_combine(self, x: torch.Tensor, scores: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, int]:
        """Each expert's top-C tokens through the experts, score-weighted and summed back per token.

        Returns ``(out [B, N, D], chosen [G, S, E] bool, tokens per expert G*C)``.
        """
        B, N, D = x.shape
        E = self.num_experts
        G, S = capacity_groups(B, N, self.current_capacity_group())
        capacity = expert_choice_capacity(S, E, self.current_capacity_factor())
        weights, token_index = expert_choice_select(scores.reshape(G, S, E), capacity)  # [G, E, C]

        tokens, meta = self.dispatcher.dispatch(x.reshape(G, S, D), token_index, weights)
        out = self.dispatcher.combine(self.experts(tokens), meta)
        chosen = torch.zeros(G, E, S, dtype=torch.bool, device=x.device).scatter(
            2, token_index, torch.ones_like(token_index, dtype=torch.bool))
        return out.view(B, N, D), chosen.transpose(1, 2), G * capacity

    def _routing_info(self, logits, probs, scores, chosen, per_expert: int) -> RoutingInfo:
        B, N, E = probs.shape
        chosen = chosen.reshape(B, N, E)
        scores = scores.reshape(B, N, E)
        # any expert that took the token outranks every one that did not (scores <= 1)
        key = scores.detach() + 2. * chosen.to(scores.dtype)
        expert_index = key.argmax(dim=-1, keepdim=True)
        kept = chosen.any(dim=-1, keepdim=True)
        z = router_z_loss(logits) if self.z_loss_weight > 0 else logits.new_zeros(())
        return RoutingInfo(
            probs=probs,
            logits=logits,
            expert_index=expert_index,
            gates=scores.gather(-1, expert_index),
            kept=kept,
            expert_counts=torch.full((E,), per_expert, dtype=torch.long, device=probs.device),
            dropped_fraction=1. - kept.float().mean(),
            load_loss=logits.new_zeros(()),
            noisy_load_loss=logits.new_zeros(()),
            z_loss=z,
            aux_loss=self.z_loss_weight * z,
        )

    def extra_repr(self) -> str:
        s = (f'num_experts={self.num_experts}, capacity_factor={self.capacity_factor:g}, '
             f'capacity_group={self.capacity_group!r}')
        if self.eval_capacity_factor is not None:
            s += f', eval_capacity_factor={self.eval_capacity_factor:g}'
        return s
