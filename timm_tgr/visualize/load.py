"""The model to draw and, for a TGR checkpoint, its teacher: what ``python -m timm_tgr.visualize MODEL`` loads.

MODEL is a ``train_tgr.py`` / timm checkpoint file (the student is rebuilt from its recorded args, as
:mod:`timm_tgr.export` does; ``task_state['teacher_routers']`` holds the teacher routers) or anything
``timm.create_model(MODEL, pretrained=True)`` loads (``local-dir:``, ``hf-hub:``, a name with weights).
"""
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn as nn

import timm

from ..data.fashion_mnist import FASHION_MNIST_NAMES
from ..task.teacher_router import TeacherRouting

__all__ = ['LoadedModel', 'load_model', 'load_teacher_routing', 'class_names_for', 'run_title']

_logger = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """The model in eval mode, what it was loaded from, and for a training checkpoint its run args and task state."""
    model: nn.Module
    source: str
    run_args: Dict[str, Any] = field(default_factory=dict)
    task_state: Dict[str, Any] = field(default_factory=dict)
    checkpoint: Optional[str] = None


def load_model(spec: str, model_kwargs: Optional[Dict[str, Any]] = None, ema: bool = False,
               trust_checkpoint: bool = False) -> LoadedModel:
    """A checkpoint file's student (``ema``: its EMA weights), else ``timm.create_model(spec, pretrained=True)``."""
    if os.path.isfile(spec):
        from ..models._factory import load_student
        path = Path(spec)
        loaded = load_student(path, ema=True if ema else None, model_kwargs=model_kwargs,
                              trust_checkpoint=trust_checkpoint)
        ckpt = loaded.checkpoint
        task_state = ckpt.get('task_state') if isinstance(ckpt.get('task_state'), dict) else {}
        return LoadedModel(model=loaded.model, source=path.name, run_args=loaded.run_args, task_state=task_state,
                           checkpoint=str(path))
    if ema:
        raise ValueError('--ema picks the EMA weights of a training checkpoint; MODEL is not a checkpoint file.')
    model = timm.create_model(spec, pretrained=True, **(model_kwargs or {}))
    return LoadedModel(model=model.eval(), source=spec)


def load_teacher_routing(loaded: LoadedModel, teacher_checkpoint: Optional[str] = None,
                         device: Optional[torch.device] = None) -> Optional[TeacherRouting]:
    """The frozen teacher and trained teacher routers of a TGR run's checkpoint; None when the checkpoint holds
    no teacher routers (a V-MoE run, an exported model) or the teacher's weights cannot be had (logged).

    The teacher is the run's (``teacher`` / ``teacher_kwargs`` / ``layer_map`` of its args), with the weights
    of ``teacher_checkpoint`` if given, else of the run's ``teacher_checkpoint``.
    """
    from ..task.teacher import build_teacher
    from ..task.teacher_router import check_teacher_router_state
    state = loaded.task_state.get('teacher_routers')
    if not state:
        if teacher_checkpoint:
            raise ValueError(f'{loaded.source} holds no teacher routers (task_state): the agreement pictures need '
                             f'the checkpoint of a TGR run (train_tgr.py with a teacher).')
        return None
    args = loaded.run_args
    name = args.get('teacher_resolved') or args.get('teacher')
    if not name or str(name).lower() == 'none':
        raise ValueError(f'{loaded.source} has teacher routers but its run args name no teacher (args.teacher).')
    path = teacher_checkpoint or args.get('teacher_checkpoint') or None
    if path and not os.path.isfile(path):
        _logger.warning(f"the run's teacher checkpoint {path!r} is not there (moved, or relative to another "
                        f'folder): no teacher agreement pictures. Pass --teacher-checkpoint FILE.')
        return None
    student = loaded.model
    try:  # as the run built it (a random teacher, in tests, normalizes as the student does)
        teacher = build_teacher(name, checkpoint=path, pretrained=not args.get('no_teacher_pretrained', False),
                                student=student, **dict(args.get('teacher_kwargs') or {}))
    except (RuntimeError, OSError) as e:
        _logger.warning(f'could not load the teacher {name!r} ({e}): no teacher agreement pictures. '
                        f'Pass --teacher-checkpoint FILE.')
        return None
    layer_map = args.get('layer_map')
    routing = TeacherRouting.create(student, teacher, None if layer_map in (None, 'aligned') else layer_map)
    check_teacher_router_state(state, routing.routers, source=loaded.source)
    routing.routers.load_state_dict(state)
    return routing.to(device or next(student.parameters()).device).eval()


def _dataset_classes(dataset) -> Optional[List[str]]:
    classes = getattr(dataset, 'classes', None)
    if classes:
        return [str(c) for c in classes]
    reader = getattr(dataset, 'reader', None)
    class_to_idx = getattr(reader, 'class_to_idx', None)
    if class_to_idx:
        return [c for c, _ in sorted(class_to_idx.items(), key=lambda kv: kv[1])]
    return None


def class_names_for(model: nn.Module, run_args: Dict[str, Any], dataset=None,
                    names: Optional[Sequence[str]] = None) -> List[str]:
    """Class names for the titles and heatmaps: ``names``, the dataset's classes, the model's ``label_names``,
    Fashion-MNIST's for a Fashion-MNIST run, ImageNet's for 1000 classes, else the class indices."""
    num_classes = model.num_classes
    for candidate in (names, _dataset_classes(dataset) if dataset is not None else None,
                      (getattr(model, 'pretrained_cfg', None) or {}).get('label_names')):
        if candidate and len(candidate) == num_classes:
            return [str(c) for c in candidate]
    if str(run_args.get('dataset', '')).lower() in FASHION_MNIST_NAMES and num_classes == 10:
        from torchvision.datasets import FashionMNIST
        return list(FashionMNIST.classes)
    if num_classes == 1000:
        from timm.data import ImageNetInfo
        info = ImageNetInfo()
        return [info.index_to_description(i).split(',')[0] for i in range(1000)]
    return [str(i) for i in range(num_classes)]


def run_title(loaded: LoadedModel) -> str:
    """A short name for titles: the run's architecture and the source."""
    arch = loaded.run_args.get('model') if loaded.run_args else None
    return f'{arch} ({loaded.source})' if arch else loaded.source
