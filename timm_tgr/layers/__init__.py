"""MoE building blocks that know nothing of models: routers, token dispatch, grouped experts, routing losses.

Each layer works on any ``[B, N, C]`` token tensor and takes timm ``Mlp``'s arguments, so it can be a
ViT block's ``mlp_layer``.
"""
from .router import RouterOutput, TopKRouter, resolve_noise_std
from .moe import (
    EXPERT_IMPLS, GroupedExperts, RoutingInfo, SparseMoE, assign_slots, expert_capacity, grouped_mm_available,
)
from .soft_moe import SoftMoE, SoftMoERouter, soft_moe_slots
from .expert_choice import ExpertChoiceMoE, expert_choice_capacity, expert_choice_select
from . import losses
