"""Training-time machinery: the frozen teacher and its routers, distillation schedules, routing metrics,
the timm ``TrainingTask``s for V-MoE and TGR-MoE, and the plugin for timm's own ``train.py``.
Nothing here is needed at inference."""
from .guidance import (
    DistillSchedule, RoutingTeacher, TeacherRouter, build_teacher, default_teacher, resolve_layer_map,
)
from .metrics import ConsistencyTracker, RoutingStats, record_assignments, routing_consistency
from .stablemoe import RouterFreezeSchedule, freeze_routers
from .tasks import TGR_MODES, TGRTask, TGRTrainableModule, VMoETask, moe_loss_components
from . import stablemoe
