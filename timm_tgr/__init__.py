"""timm-tgr: sparse Vision MoE (V-MoE) and Teacher-Guided Routing (TGR-MoE) for timm.

Importing the package registers its models with timm::

    import timm, timm_tgr
    model = timm.create_model('tgr_moe_deit_small', num_classes=100)

Importing has no other effect. ``python -m timm_tgr.run_timm SCRIPT ARGS`` runs any timm script (validate.py,
benchmark.py, ...) with the models registered; ``--device-modules timm_tgr.timm_train_hook`` is the plugin for
timm's train.py.

Layout (as timm's): ``layers/`` MoE blocks that know no models, ``models/`` the registered model
families, ``task/`` the training-time teacher, losses, schedules, metrics and timm ``TrainingTask``s,
``train/`` the trainer (``train_tgr.py``), ``data/`` dataset helpers, ``export`` the Hub export.
"""
from .version import __version__
from .layers import (
    ExpertChoiceMoE, GroupedExperts, RouterOutput, RoutingInfo, SoftMoE, SoftMoERouter, SparseMoE, TopKRouter,
    assign_slots, expert_capacity, expert_choice_capacity, soft_moe_slots,
)
from .layers import losses
from .models import (
    ExpertChoiceVisionTransformer, MoEBlock, PAPER_MOE_LAYERS, SoftMoEVisionTransformer, VMoEVisionTransformer,
    VMoEVisionTransformerDistilled,
)
from .models import (
    UPCYCLED_TAG, load_dense_state_dict, upcycle_dense_state_dict, upcycle_from, upcycled_eval_capacity_factor,
)
from .models import moe_baselines
from .task import stablemoe
from .task import timm_train as _timm_train

__all__ = [
    '__version__', 'ExpertChoiceMoE', 'GroupedExperts', 'RouterOutput', 'RoutingInfo', 'SoftMoE', 'SoftMoERouter',
    'SparseMoE', 'TopKRouter', 'assign_slots', 'expert_capacity', 'expert_choice_capacity', 'soft_moe_slots',
    'losses', 'ExpertChoiceVisionTransformer', 'MoEBlock', 'PAPER_MOE_LAYERS', 'SoftMoEVisionTransformer',
    'VMoEVisionTransformer', 'VMoEVisionTransformerDistilled', 'UPCYCLED_TAG', 'load_dense_state_dict',
    'upcycle_dense_state_dict', 'upcycle_from', 'upcycled_eval_capacity_factor', 'moe_baselines', 'stablemoe',
]

# Importing the package only registers the models. The train.py hook is its own module
# (``--device-modules timm_tgr.timm_train_hook``); the deprecated ``--device-modules timm_tgr`` still installs it,
# with a warning, until 0.2 (a no-op for every other import: see timm_tgr.task.timm_train).
_timm_train.install_for_legacy_device_modules()
