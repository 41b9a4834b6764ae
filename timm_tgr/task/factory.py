"""The one place that decides a model's training task and assembles it, for train_tgr.py and timm's train.py.

:func:`create_training_task` gives

- timm's ``ClassificationTask`` for a dense model,
- :class:`~timm_tgr.task.vmoe_task.VMoETask` (task loss + the MoE load / z losses) for a timm_tgr MoE model
  without teacher,
- :class:`~timm_tgr.task.tgr_task.TGRTask` for an MoE model with teacher guidance (a
  :class:`~timm_tgr.task.options.GuidanceConfig`):
  the teacher built by :func:`~timm_tgr.task.teacher.build_teacher` for the student, and the teacher routers of an
  earlier TGR run when given.

Its callers only translate their options: ``timm_tgr.train.setup.create_task`` (train_tgr.py's flags) and
:func:`timm_tgr.task.timm_train.create_task` (the ``tgr_*`` model kwargs of timm's train.py).
"""
import inspect
from dataclasses import fields
from typing import Optional

import torch.nn as nn
from timm.task import ClassificationTask

from ..models import moe_model
from .options import GuidanceConfig
from .teacher import build_teacher, default_teacher
from .teacher_router import read_teacher_routers
from .tgr_task import TGRTask
from .vmoe_task import VMoETask

__all__ = ['GuidanceConfig', 'create_training_task']


def create_training_task(model: nn.Module, criterion: Optional[nn.Module] = None,
                         guidance: Optional[GuidanceConfig] = None, device=None, dtype=None, verbose: bool = True,
                         **kwargs) -> nn.Module:
    """The training task of ``model``: TGR with ``guidance``, else V-MoE for an MoE model, else timm's dense
    classification (which alone takes further ``kwargs``, as timm's ``ClassificationTask``). A ``guidance``
    without teacher name gets the paper's for the student's size."""
    if guidance is None or not guidance.guided:
        if moe_model(model) is not None:
            return VMoETask(model, criterion=criterion, device=device, dtype=dtype, verbose=verbose)
        return ClassificationTask(model=model, criterion=criterion, device=device, dtype=dtype, verbose=verbose,
                                  **kwargs)
    student = moe_model(model, required=True)
    teacher = build_teacher(
        guidance.teacher or default_teacher(student.pretrained_cfg.get('architecture', '')),
        checkpoint=guidance.teacher_checkpoint or None, pretrained=guidance.teacher_pretrained,
        trust_checkpoint=guidance.trust_checkpoint, student=student, **guidance.teacher_kwargs)
    task = TGRTask(
        model, teacher_model=teacher.to(device) if device is not None else teacher, criterion=criterion,
        device=device, dtype=dtype, verbose=verbose, **task_options(guidance))
    if guidance.teacher_routers:
        task.load_teacher_routers(read_teacher_routers(guidance.teacher_routers, guidance.trust_checkpoint),
                                  source=guidance.teacher_routers)
    return task


def task_options(guidance: GuidanceConfig) -> dict:
    """The options of ``guidance`` that are TGRTask's keyword arguments (the others build the teacher here)."""
    params = inspect.signature(TGRTask).parameters
    return {f.name: getattr(guidance, f.name) for f in fields(guidance) if f.name in params}
