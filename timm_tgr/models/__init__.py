"""timm model families built on :mod:`timm_tgr.layers`; importing registers them with ``timm.create_model``."""
from .vmoe_deit import (
    HF_HUB_ORG, MoEBlock, MoEVisionTransformerMixin, PAPER_MOE_LAYERS, VMoEVisionTransformer,
    VMoEVisionTransformerDistilled, build_model_with_hub_cfg,
)
from .moe_baselines import ExpertChoiceVisionTransformer, SoftMoEVisionTransformer
