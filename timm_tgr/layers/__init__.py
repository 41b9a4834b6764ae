"""MoE building blocks that know nothing of models: routers, token dispatch, grouped experts, routing losses.

Each layer works on any ``[B, N, C]`` token tensor and takes timm ``Mlp``'s arguments, so it can be a
ViT block's ``mlp_layer``. Top-K V-MoE is three small pieces: ``router`` (TopKRouter) picks experts,
``dispatch`` places the choices in capacity-limited expert buffers (dispatcher objects:
``dispatch -> (tokens, metadata)``, ``combine(expert_out, metadata)``), ``experts`` (GroupedExperts) runs
all experts at once; ``sparse_moe`` (SparseMoE) strings them together. ``soft_moe`` and
``expert_choice`` are the baselines' layers, built from the same experts; ``moe_base`` holds what the layers
share (the routing record ``RoutingInfo``, the routing state of ``MoELayer``, the capacity state of ``CapacityMoE``).
``graph_tools``: for torch.fx the MoE layers are leaf modules, TorchScript is refused with a clear message.
"""
from .router import RouterOutput, TopKRouter, resolve_noise_std
from .dispatch import (
    CapacityDispatcher, ExpertChoiceDispatcher, SortedDispatcher, TokenDispatcher, assign_slots, check_capacity,
    expert_capacity,
)
from .experts import EXPERT_IMPLS, GroupedExperts, grouped_mm_available
from .moe_base import CapacityMoE, MoELayer, RoutingInfo, check_mlp_replacement
from .sparse_moe import SparseMoE
from .soft_moe import SoftMoE, SoftMoERouter, soft_moe_slots
from .expert_choice import ExpertChoiceMoE, expert_choice_capacity, expert_choice_select
from . import losses
from .graph_tools import register_graph_tools

register_graph_tools(SparseMoE, SoftMoE, ExpertChoiceMoE)

__all__ = [
    'RouterOutput', 'TopKRouter', 'resolve_noise_std', 'assign_slots', 'check_capacity', 'expert_capacity',
    'TokenDispatcher', 'CapacityDispatcher', 'SortedDispatcher', 'ExpertChoiceDispatcher',
    'EXPERT_IMPLS', 'GroupedExperts', 'grouped_mm_available', 'MoELayer', 'CapacityMoE', 'RoutingInfo',
    'check_mlp_replacement',
    'SparseMoE', 'SoftMoE', 'SoftMoERouter', 'soft_moe_slots', 'ExpertChoiceMoE', 'expert_choice_capacity',
    'expert_choice_select', 'losses',
]
