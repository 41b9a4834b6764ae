"""timm model families built on :mod:`timm_tgr.layers`; importing registers them with ``timm.create_model``."""
from .vmoe_deit import (
    HF_HUB_ORG, MoEBlock, MoEVisionTransformerMixin, PAPER_MOE_LAYERS, UPCYCLED_TAG, VMoEVisionTransformer,
    VMoEVisionTransformerDistilled, build_model_with_hub_cfg, is_upcycled_tag,
)
from .moe_baselines import ExpertChoiceVisionTransformer, SoftMoEVisionTransformer
from .upcycle import (
    UPCYCLE_ROUTER_LOGIT_STD, init_upcycled_router, is_dense_state_dict, load_dense_state_dict,
    upcycle_checkpoint_filter_fn, upcycle_dense_state_dict, upcycle_from, upcycled_eval_capacity_factor,
)
