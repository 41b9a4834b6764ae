"""timm-tgr: sparse Vision MoE (V-MoE) and Teacher-Guided Routing (TGR-MoE) for timm.

Importing the package registers its models with timm::

    import timm, timm_tgr
    model = timm.create_model('tgr_moe_deit_small', num_classes=100)
"""
from .version import __version__
from .router import RouterOutput, TopKRouter
from .moe import GroupedExperts, RoutingInfo, SparseMoE, assign_slots, expert_capacity
from .vmoe_deit import (
    MoEBlock, VMoEVisionTransformer, VMoEVisionTransformerDistilled, PAPER_MOE_LAYERS,
)
from . import losses
from .soft_moe import SoftMoE, SoftMoERouter, soft_moe_slots
from .expert_choice import ExpertChoiceMoE, expert_choice_capacity
from .moe_baselines import (
    SoftMoEVisionTransformer, ExpertChoiceVisionTransformer,
)
from . import moe_baselines, stablemoe
from . import timm_train as _timm_train

# Inside pytorch-image-models' train.py (``--device-modules timm_tgr``) make its tasks MoE-aware;
# anywhere else this does nothing (see timm_tgr.timm_train).
_timm_train.install_into_timm_train()
