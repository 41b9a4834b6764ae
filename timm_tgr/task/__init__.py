"""Training-time machinery: the frozen teacher and its routers, distillation schedules, routing metrics,
the timm ``TrainingTask``s for V-MoE and TGR-MoE, and the plugin for timm's own ``train.py``.
Nothing here is needed at inference.

Named after the paper's parts: ``teacher`` (h_t: build_teacher, FeatureTeacher, layer map, TeacherGuidance),
``teacher_router`` (p_t: TeacherRouters, TeacherRouting; L_teacher, L_distill), ``schedule`` (when L_distill is
on), ``vmoe_task`` / ``tgr_task`` (the timm tasks), ``metrics`` (routing stats and consistency), ``stablemoe`` (the
router-freezing baseline), ``options`` (:class:`GuidanceConfig`: every TGR option, declared once), ``factory`` (which
task a model trains with, for every caller), ``timm_train`` (the plugin for timm's train.py).

The package exports what a user calls, as timm's ``timm.task`` does; everything else is imported from its module
(``timm_tgr.task.metrics.RoutingStats``, ``timm_tgr.task.teacher_router.teacher_router_loss``, ...).
"""
from .schedule import DistillSchedule
from .stablemoe import RouterFreezeSchedule, freeze_routers
from .teacher import build_teacher, default_teacher
from .teacher_router import TeacherRouting
from .tgr_task import TGR_MODES, TGRTask, TGRTrainableModule
from .vmoe_task import VMoETask
from .factory import GuidanceConfig, create_training_task
from . import stablemoe

__all__ = [
    'TGRTask', 'TGRTrainableModule', 'TGR_MODES', 'VMoETask', 'GuidanceConfig', 'create_training_task',
    'build_teacher', 'default_teacher', 'TeacherRouting', 'DistillSchedule', 'RouterFreezeSchedule',
    'freeze_routers', 'stablemoe',
]
