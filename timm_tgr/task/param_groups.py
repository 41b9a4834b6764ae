"""Parameter groups of a task's trainable module for ``--layer-decay`` (timm's ``param_groups_layer_decay``).

A trainable module that holds the student under ``student.`` and parameters of its own beside it (TGR's teacher
routers) gives the student's parameters the student's own layer groups (its ``group_matcher``) and its own
parameters the last group, the head's, so new parameters train at the full learning rate, as timm's
``FeatureDistillationTrainableModule`` places its projection.
"""
from typing import Callable, Dict, Union

import torch.nn as nn
from timm.models import group_parameters
from timm.utils import unwrap_model

__all__ = ['student_task_group_matcher']


def student_task_group_matcher(student: nn.Module, coarse: bool = False) -> Union[Dict, Callable[[str], int]]:
    """``group_matcher`` of a module holding ``student`` as its attribute ``student`` (possibly DDP-wrapped): a
    function from a parameter name of that module to its layer id; ``{}`` (timm's fallback) when the student has no
    ``group_matcher``."""
    base = unwrap_model(student)
    if not hasattr(base, 'group_matcher'):
        return {}
    by_name = group_parameters(base, base.group_matcher(coarse=coarse), reverse=True)
    by_param = {id(p): by_name[n] for n, p in base.named_parameters() if n in by_name}
    last = max(by_name.values(), default=0)
    layers = {'student.' + n: by_param.get(id(p), last) for n, p in student.named_parameters()}

    def matcher(name: str) -> int:
        return layers.get(name, last)

    return matcher
