"""The one place that decides a model's training task and assembles it, for train_tgr.py and timm's train.py.

:func:`create_training_task` gives

- timm's ``ClassificationTask`` for a dense model,
- :class:`~timm_tgr.task.vmoe_task.VMoETask` (task loss + the MoE load / z losses) for a timm_tgr MoE model
  without teacher,
- :class:`~timm_tgr.task.tgr_task.TGRTask` for an MoE model with teacher guidance (a :class:`GuidanceConfig`):
  the teacher built by :func:`~timm_tgr.task.teacher.build_teacher` for the student, and the teacher routers of an
  earlier TGR run when given.

Its callers only translate their options: ``timm_tgr.train.setup.create_task`` (train_tgr.py's flags) and
:func:`timm_tgr.task.timm_train.create_task` (the ``tgr_*`` model kwargs of timm's train.py).
"""
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Union

import torch.nn as nn
from timm.task import ClassificationTask

from ..models import moe_model
from .teacher import build_teacher
from .teacher_router import read_teacher_routers
from .tgr_task import TGRTask
from .vmoe_task import VMoETask

__all__ = ['GuidanceConfig', 'create_training_task']


@dataclass
class GuidanceConfig:
    """Teacher-guided routing of one run: the teacher, where its routers start, and :class:`TGRTask`'s options.

    ``teacher`` (a timm name), ``teacher_kwargs``, ``teacher_checkpoint``, ``teacher_pretrained`` and
    ``trust_checkpoint`` build the teacher (:func:`~timm_tgr.task.teacher.build_teacher`); ``teacher_routers`` is
    the checkpoint of a TGR run whose teacher routers (``task_state``) start this run's (None: fresh routers);
    ``mode`` ... ``distill_fraction`` are :class:`TGRTask`'s arguments. Teacher errors name the fix in this API's
    words; an entry point phrases it in its options (:func:`~timm_tgr.task.teacher.teacher_fixes`).
    """
    teacher: str
    teacher_kwargs: Dict[str, Any] = field(default_factory=dict)
    teacher_checkpoint: Optional[str] = None
    teacher_pretrained: bool = True
    trust_checkpoint: bool = False
    teacher_routers: Optional[str] = None
    mode: str = 'tgr'
    layer_map: Union[None, str, Mapping[int, int]] = None
    distill_weight: float = 5.0
    teacher_load_weight: float = 0.005
    teacher_entropy_weight: Optional[float] = None
    schedule: str = 'full'
    total_steps: Optional[int] = None
    distill_fraction: float = 0.5


def create_training_task(model: nn.Module, criterion: Optional[nn.Module] = None,
                         guidance: Optional[GuidanceConfig] = None, device=None, dtype=None, verbose: bool = True,
                         **kwargs) -> nn.Module:
    """The training task of ``model``: TGR with ``guidance``, else V-MoE for an MoE model, else timm's dense
    classification (which alone takes further ``kwargs``, as timm's ``ClassificationTask``)."""
    if guidance is None:
        if moe_model(model) is not None:
            return VMoETask(model, criterion=criterion, device=device, dtype=dtype, verbose=verbose)
        return ClassificationTask(model=model, criterion=criterion, device=device, dtype=dtype, verbose=verbose,
                                  **kwargs)
    student = moe_model(model, required=True)
    teacher = build_teacher(
        guidance.teacher, checkpoint=guidance.teacher_checkpoint or None, pretrained=guidance.teacher_pretrained,
        trust_checkpoint=guidance.trust_checkpoint, student=student, **guidance.teacher_kwargs)
    task = TGRTask(
        model, teacher_model=teacher.to(device) if device is not None else teacher, criterion=criterion,
        layer_map=guidance.layer_map, distill_weight=guidance.distill_weight,
        teacher_load_weight=guidance.teacher_load_weight, teacher_entropy_weight=guidance.teacher_entropy_weight,
        schedule=guidance.schedule, total_steps=guidance.total_steps, distill_fraction=guidance.distill_fraction,
        mode=guidance.mode, device=device, dtype=dtype, verbose=verbose)
    if guidance.teacher_routers:
        task.load_teacher_routers(read_teacher_routers(guidance.teacher_routers, guidance.trust_checkpoint),
                                  source=guidance.teacher_routers)
    return task
