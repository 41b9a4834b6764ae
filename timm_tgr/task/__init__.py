"""Training-time machinery: the frozen teacher and its routers, distillation schedules, routing metrics,
the timm ``TrainingTask``s for V-MoE and TGR-MoE, and the plugin for timm's own ``train.py``.
Nothing here is needed at inference.

Named after the paper's parts: ``teacher`` (h_t: FeatureTeacher, layer map, TeacherGuidance),
``teacher_router`` (p_t, L_teacher, L_distill), ``schedule`` (when L_distill is on), ``vmoe_task`` /
``tgr_task`` (the timm tasks), ``metrics`` (routing stats and consistency), ``stablemoe`` (the
router-freezing baseline), ``factory`` (which task a model trains with, for every caller), ``timm_train`` (the
plugin for timm's train.py).
"""
from .metrics import (
    ConsistencyTracker, RoutingReference, RoutingStats, mean_over_layers, record_assignments, routing_consistency,
)
from .schedule import DistillSchedule
from .stablemoe import RouterFreezeSchedule, freeze_routers
from .teacher import (
    DEFAULT_TEACHERS, FeatureTeacher, TeacherGuidance, align_teacher_tokens, build_teacher, check_token_grids,
    default_teacher, resolve_layer_map,
)
from .teacher_router import (
    TeacherRouter, TeacherRouters, TeacherRouting, check_teacher_router_state, read_teacher_routers, routing_distillation_loss, teacher_router_loss,
    teacher_routers,
)
from .tgr_task import TGR_MODES, TGRTask, TGRTrainableModule
from .vmoe_task import TrainerStateMixin, VMoETask, moe_loss_components, wrap_ddp
from .factory import GuidanceConfig, create_training_task
from . import stablemoe

__all__ = [
    'ConsistencyTracker', 'RoutingReference', 'RoutingStats', 'mean_over_layers', 'record_assignments',
    'routing_consistency', 'DistillSchedule', 'RouterFreezeSchedule', 'freeze_routers', 'DEFAULT_TEACHERS',
    'FeatureTeacher', 'TeacherGuidance', 'align_teacher_tokens', 'build_teacher', 'check_token_grids',
    'default_teacher', 'resolve_layer_map', 'TeacherRouter', 'TeacherRouters', 'TeacherRouting', 'check_teacher_router_state', 'read_teacher_routers',
    'routing_distillation_loss', 'teacher_router_loss', 'teacher_routers', 'TGR_MODES', 'TGRTask',
    'TGRTrainableModule', 'TrainerStateMixin', 'VMoETask', 'moe_loss_components', 'wrap_ddp', 'GuidanceConfig',
    'create_training_task', 'stablemoe',
]
