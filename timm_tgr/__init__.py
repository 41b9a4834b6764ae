"""timm-tgr: sparse Vision MoE (V-MoE) and Teacher-Guided Routing (TGR-MoE) for timm.

Importing the package registers its models with timm::

    import timm, timm_tgr
    model = timm.create_model('tgr_moe_deit_small', num_classes=100)

Layout (as timm's): ``layers/`` MoE blocks that know no models, ``models/`` the registered model
families, ``task/`` the training-time teacher, losses, schedules, metrics and timm ``TrainingTask``s,
``train/`` the trainer (``train_tgr.py``), ``data/`` dataset helpers, ``export`` the Hub export.
"""
import sys as _sys

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

# Module paths from before the layers/models/task layout keep importing (``from timm_tgr.vmoe_deit import
# HF_HUB_ORG``): each old module name is an alias of the module or package that now holds its names.
from . import layers as _layers, models as _models, task as _task
_MOVED_MODULES = {
    'router': _layers.router, 'moe': _layers, 'soft_moe': _layers.soft_moe, 'expert_choice': _layers.expert_choice,
    'vmoe_deit': _models.vmoe_deit, 'guidance': _task, 'tasks': _task, 'metrics': _task.metrics,
    'timm_train': _task.timm_train, 'losses': _layers.losses, 'moe_baselines': _models.moe_baselines,
    'stablemoe': _task.stablemoe,
}
for _old, _module in _MOVED_MODULES.items():
    _sys.modules[f'{__name__}.{_old}'] = _module
    globals()[_old] = _module

# Inside pytorch-image-models' train.py (``--device-modules timm_tgr``) make its tasks MoE-aware;
# anywhere else this does nothing (see timm_tgr.task.timm_train).
_timm_train.install_into_timm_train()
