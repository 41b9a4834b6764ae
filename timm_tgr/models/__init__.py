"""timm model families built on :mod:`timm_tgr.layers`; importing registers them with ``timm.create_model``.

``vmoe_deit`` (V-MoE / TGR-MoE DeiT) and ``moe_baselines`` (Soft-MoE, Expert-Choice DeiT) are the families;
``_moe_vit`` holds what their models share (the MoE block and the mixin with the routing API), ``_builder`` the
timm builder with pretrained-loading errors that name the fix, ``upcycle`` dense -> MoE weights, ``_factory`` the
student of a training checkpoint.
"""
from ._builder import HF_HUB_ORG, build_model_with_hub_cfg
from ._moe_vit import MoEBlock, MoEVisionTransformerMixin, PAPER_MOE_LAYERS, moe_layer_args, moe_model, vit_num_tokens
from .vmoe_deit import VMoEVisionTransformer, VMoEVisionTransformerDistilled
from .moe_baselines import ExpertChoiceVisionTransformer, SoftMoEVisionTransformer
from .upcycle import (
    UPCYCLE_ROUTER_LOGIT_STD, UPCYCLED_TAG, init_upcycled_router, is_dense_state_dict, is_upcycled_tag,
    load_dense_state_dict, upcycle_checkpoint_filter_fn, upcycle_dense_state_dict, upcycle_from,
    upcycled_eval_capacity_factor,
)

__all__ = [
    'HF_HUB_ORG', 'build_model_with_hub_cfg', 'MoEBlock', 'MoEVisionTransformerMixin', 'PAPER_MOE_LAYERS',
    'moe_layer_args', 'moe_model', 'vit_num_tokens', 'VMoEVisionTransformer', 'VMoEVisionTransformerDistilled',
    'ExpertChoiceVisionTransformer', 'SoftMoEVisionTransformer',
    'UPCYCLE_ROUTER_LOGIT_STD', 'UPCYCLED_TAG', 'init_upcycled_router', 'is_dense_state_dict', 'is_upcycled_tag',
    'load_dense_state_dict', 'upcycle_checkpoint_filter_fn', 'upcycle_dense_state_dict', 'upcycle_from',
    'upcycled_eval_capacity_factor',
]
