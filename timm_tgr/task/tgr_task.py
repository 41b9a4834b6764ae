"""timm ``TrainingTask`` for Teacher-Guided Routing (TGR-MoE, arXiv 2604.21330, Sec. 3).

:class:`TGRTask` has three named parts:

- the teacher side, :class:`~timm_tgr.task.teacher.TeacherGuidance` (``task.guidance``): frozen
  teacher + layer map, giving h_t per student MoE block; outside DDP, never trained;
- :class:`TGRTrainableModule` (``task.trainable_module``): the student and the teacher routers
  p_t = softmax(R_t h_t), everything TGR trains, in the one module DDP wraps;
- the loss: L = L_task + L_teacher (+ lambda_load L_load of the student in ``'tgr'`` mode)
  + lambda_distill L_distill while the :class:`~timm_tgr.task.schedule.DistillSchedule` is on.

Modes for the paper's ablations:

- ``'tgr'``: the method, L_student = L_task + lambda_distill/|S| sum_i KL_i (main paper).
- ``'distill_only'``: the student router learns only from the distillation term: its combine weights
  are detached from the task loss and its load loss is dropped.
- ``'teacher_route'``: the upper bound of Table 5 / supplement Sec. B. The teacher router chooses the
  experts and its probabilities are the combine weights, so it is trained by L_task + lambda_load
  sum_i L_load(p_t^i) (Eq. S1; no entropy term). The student router is not in the forward's routing:
  it learns only from lambda_distill sum_i KL_i (Eq. S2, summed over the MoE layers, not averaged), on tokens
  read without gradient, so the KL trains the student routers' weights and nothing upstream of them (neither the
  student's blocks nor, through the p_t-gated MoE outputs of earlier blocks, the teacher router).
  :meth:`TGRTask.forward_teacher_route` evaluates with teacher routing; the plain student gives
  student-route inference.

Checkpoints: the student is the ``state_dict``; ``task_state`` holds ``'teacher_routers'`` (the
:class:`TGRTrainableModule` ``teacher_routers`` state_dict, keys ``'{block}.proj.weight'``),
``'distill_schedule'`` and, when a trainer registered any, ``'trainer'``.
"""
import logging
from contextlib import nullcontext
from typing import Dict, Mapping, Optional, Tuple, Union

import torch
import torch.nn as nn
from timm.task import TrainingTask
from timm.utils import unwrap_model
from timm.utils.model_ema import ModelEmaV3

from ..models import moe_model
from .options import TGR_MODES, GuidanceConfig, check_option, guidance_options, paper_value
from .param_groups import student_task_group_matcher
from .schedule import DistillSchedule
from .teacher import FeatureTeacher, build_teacher, default_teacher
from .teacher_router import (
    TeacherRouters, TeacherRouting, check_teacher_router_state, routing_distillation_loss, teacher_router_loss,
)
from .vmoe_task import TrainerStateMixin, moe_loss_components, wrap_ddp

_logger = logging.getLogger(__name__)

__all__ = ['TGR_MODES', 'TGRTask', 'TGRTrainableModule']

_G = GuidanceConfig  # the defaults of the options (timm_tgr.task.options)


class TGRTrainableModule(nn.Module):
    """Student + teacher routers: everything TGR trains, in one module so DDP wraps exactly it.

    ``forward(x, teacher_features, route_with_teacher)`` runs the teacher routers on the (no-grad)
    teacher features and the student on ``x``; returns ``(logits, {block: p_t})``.
    """

    def __init__(self, student: nn.Module, teacher_routers: TeacherRouters):
        super().__init__()
        self.student = student
        self.teacher_routers = teacher_routers

    def no_weight_decay(self):
        student = unwrap_model(self.student)
        nwd = student.no_weight_decay() if hasattr(student, 'no_weight_decay') else set()
        return {'student.' + n for n in nwd}

    def group_matcher(self, coarse: bool = False):
        """``--layer-decay`` groups: the student's own; the teacher routers in the last (head's) group."""
        return student_task_group_matcher(self.student, coarse)

    def forward(self, x: torch.Tensor, teacher_features: Mapping[int, torch.Tensor],
                route_with_teacher: bool = False):
        teacher_probs = self.teacher_routers(teacher_features)
        student = unwrap_model(self.student)
        if route_with_teacher:
            student.set_routing_override(teacher_probs)
        try:
            logits = self.student(x)
        finally:
            if route_with_teacher:
                student.set_routing_override(None)
        return logits, teacher_probs


def _entropy_weight(weight: Optional[float], mode: str) -> float:
    """lambda_ent: as given, else the paper's, or 0 in teacher_route mode (Eq. S1 has no entropy term)."""
    if weight is not None:
        return weight
    return 0. if mode == 'teacher_route' else paper_value('teacher_entropy_weight')


class TGRTask(TrainerStateMixin, TrainingTask):
    """Teacher-Guided Routing for a timm_tgr MoE student (paper Sec. 3).

    Args:
        student_model: a timm_tgr MoE model (e.g. ``tgr_moe_deit_small``).
        teacher_model: the built teacher (:func:`~timm_tgr.task.teacher.build_teacher`, an ``nn.Module`` or a
            :class:`FeatureTeacher`). For a quick start also a timm model name, or None for the paper's teacher
            for the student's size (DeiT-III-Small for Tiny, DeiT-III-Base otherwise): built here by
            ``build_teacher`` for the student, with the three ``teacher_*`` arguments below.
        criterion: task loss (default cross-entropy; pass timm's SoftTargetCrossEntropy with Mixup).
        teacher_pretrained_path: checkpoint file for a named teacher.
        teacher_pretrained: load a named teacher's weights (False only for tests/debugging).
        teacher_img_size: image size to create a named teacher with (default: the student's).
        layer_map: student MoE block -> teacher block (``'aligned'``, ``'last'``, or a dict).
        distill_weight: lambda_distill.
        teacher_load_weight / teacher_entropy_weight: lambda_load / lambda_ent of L_teacher (entropy: the paper's
            unless given, 0 in ``'teacher_route'`` mode, where Eq. S1 has none).
        schedule: a :class:`DistillSchedule` or its mode name (``'full'``, ``'first'``, ``'off'``,
            ``'adaptive'``); ``total_steps`` and ``distill_fraction`` configure a named schedule.
        mode: ``'tgr'``, ``'distill_only'`` or ``'teacher_route'``.

    The options' defaults, ranges and meanings are :class:`~timm_tgr.task.options.GuidanceConfig`'s.
    """

    def __init__(
            self,
            student_model: nn.Module,
            teacher_model: Union[str, nn.Module, FeatureTeacher, None] = None,
            criterion: Optional[nn.Module] = None,
            teacher_pretrained_path: Optional[str] = None,
            teacher_pretrained: bool = _G.teacher_pretrained,
            teacher_img_size: Optional[int] = None,
            layer_map: Union[None, str, Mapping[int, int]] = _G.layer_map,
            distill_weight: float = _G.distill_weight,
            teacher_load_weight: float = _G.teacher_load_weight,
            teacher_entropy_weight: Optional[float] = _G.teacher_entropy_weight,
            schedule: Union[str, DistillSchedule] = _G.schedule,
            total_steps: Optional[int] = _G.total_steps,
            distill_fraction: float = _G.distill_fraction,
            mode: str = _G.mode,
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
            verbose: bool = True,
    ):
        super().__init__(device=device, dtype=dtype, verbose=verbose)
        for name, value in dict(locals()).items():  # checked before the teacher is built (may download it)
            if name in guidance_options() and not isinstance(value, DistillSchedule):
                check_option(name, value)
        student = moe_model(student_model, required=True)
        if not isinstance(teacher_model, nn.Module):  # a name: the one place TGRTask builds a teacher
            teacher_model = build_teacher(
                teacher_model or default_teacher(student.pretrained_cfg.get('architecture', '')),
                checkpoint=teacher_pretrained_path, pretrained=teacher_pretrained, student=student,
                **({'img_size': teacher_img_size} if teacher_img_size is not None else {}))
        routing = TeacherRouting.create(student, teacher_model, layer_map, device=self.device, dtype=self.dtype)
        self.guidance = routing.guidance
        self.trainable_module = TGRTrainableModule(student_model, routing.routers)
        self.criterion = criterion if criterion is not None else nn.CrossEntropyLoss()
        self.mode = mode
        self.distill_weight, self.teacher_load_weight = float(distill_weight), float(teacher_load_weight)
        self.teacher_entropy_weight = float(_entropy_weight(teacher_entropy_weight, mode))
        if isinstance(schedule, str):
            schedule = DistillSchedule(schedule, total_steps=total_steps, fraction=distill_fraction)
        self.schedule = schedule
        for moe in student.get_moe_layers().values():
            # distill_only: the student's own gates must not carry the task loss to its router. In
            # teacher_route the gates are p_t, and their task gradient is what trains the teacher router; the
            # student router reads its tokens without gradient, so its distillation loss (Eq. S2) trains its own
            # weights only and cannot flow back through the tokens into the p_t-gated blocks before it (that
            # would train the teacher router on lambda_distill * KL, which Eq. S1 leaves out).
            moe.detach_gates = mode == 'distill_only'
            moe.detach_router_input = mode == 'teacher_route'
        if verbose:
            _logger.info(f'TGRTask: {self.extra_repr()}')

    def extra_repr(self) -> str:
        return (f'mode={self.mode}, layer_map={self.layer_map}, lambda_distill={self.distill_weight}, '
                f'lambda_load={self.teacher_load_weight}, lambda_ent={self.teacher_entropy_weight}, '
                f'schedule={self.schedule.mode}')

    # --- parts -------------------------------------------------------------------------------
    @property
    def teacher(self) -> FeatureTeacher:
        """The frozen :class:`FeatureTeacher` (held by ``self.guidance``)."""
        return self.guidance.teacher

    @property
    def layer_map(self) -> Dict[int, int]:
        """Student MoE block -> teacher block."""
        return self.guidance.layer_map

    def _trainable(self) -> TGRTrainableModule:
        return unwrap_model(self.trainable_module)

    def _student(self) -> nn.Module:
        return unwrap_model(self._trainable().student)

    def teacher_features(self, input: torch.Tensor) -> Dict[int, torch.Tensor]:
        """Teacher token features per student MoE block, laid out like the student's."""
        return self.guidance(input)

    # --- forward -----------------------------------------------------------------------------
    def forward(self, input: torch.Tensor, target: torch.Tensor) -> Dict[str, torch.Tensor]:
        feats = self.teacher_features(input)
        output, teacher_probs = self.trainable_module(
            input, feats, route_with_teacher=self.mode == 'teacher_route')
        self.last_teacher_probs = {k: p.detach() for k, p in teacher_probs.items()}  # for the trainer's NaN watch
        task_loss = self.criterion(output, target)
        infos = self._student().routing_infos()
        moe = moe_loss_components(infos)
        teacher = teacher_router_loss(teacher_probs, self.teacher_load_weight, self.teacher_entropy_weight)
        distill, active = self._distillation(teacher_probs, {k: infos[k].probs for k in teacher_probs})
        loss = self._total_loss(task_loss, moe['moe_aux_loss'], teacher['loss'], distill, active)
        if self.training:
            self.schedule.advance()
        moe['moe_aux_loss'] = moe['moe_aux_loss'].detach()
        return {
            'loss': loss,
            'output': output,
            'task_loss': task_loss.detach(),
            **moe,
            'distill_loss': distill.detach(),
            'distill_active': torch.tensor(float(active)),
            'teacher_router_loss': teacher['loss'].detach(),
            'teacher_load_loss': teacher['load'].detach(),
            'teacher_entropy': teacher['entropy'].detach(),
        }

    def _distillation(self, teacher_probs: Mapping[int, torch.Tensor],
                      student_probs: Mapping[int, torch.Tensor]) -> Tuple[torch.Tensor, bool]:
        """L_distill and whether the schedule has it on now; when off it is computed for logging only.

        The mean over MoE layers (main paper, lambda_distill/|S| sum_i), the sum in teacher_route mode (Eq. S2).
        """
        active = self.schedule.active()
        reduction = 'sum' if self.mode == 'teacher_route' else 'mean'
        with nullcontext() if active else torch.no_grad():
            return routing_distillation_loss(teacher_probs, student_probs, reduction=reduction), active

    def _total_loss(self, task_loss: torch.Tensor, moe_aux_loss: torch.Tensor, teacher_loss: torch.Tensor,
                    distill: torch.Tensor, active: bool) -> torch.Tensor:
        """L_task + L_teacher (+ the student's MoE aux loss in 'tgr' mode) (+ lambda_distill L_distill if on)."""
        loss = task_loss + teacher_loss
        if self.mode == 'tgr':  # distill_only / teacher_route: the student router learns by distillation only
            loss = loss + moe_aux_loss
        if active:
            loss = loss + self.distill_weight * distill
        return loss

    @torch.no_grad()
    def forward_teacher_route(self, input: torch.Tensor) -> torch.Tensor:
        """Logits with the teacher router choosing the experts (Table 5's teacher-route inference)."""
        output, _ = self.trainable_module(input, self.teacher_features(input), route_with_teacher=True)
        return output

    # --- timm task plumbing ------------------------------------------------------------------
    def prepare_distributed(self, device_ids: Optional[list] = None, **ddp_kwargs) -> 'TGRTask':
        self.teacher.requires_grad_(False)
        self.trainable_module = wrap_ddp(self.trainable_module, device_ids, **ddp_kwargs)
        return self

    def compile(self, backend: str = 'inductor', mode: Optional[str] = None, **compile_kwargs) -> nn.Module:
        trainable = self._trainable()
        self.eval_model = torch.compile(trainable.student, backend=backend, mode=mode, **compile_kwargs)
        self.trainable_module = torch.compile(self.trainable_module, backend=backend, mode=mode, **compile_kwargs)
        self.teacher.compile(backend=backend, mode=mode, **compile_kwargs)
        return self.eval_model

    def get_eval_model(self, module: Optional[nn.Module] = None, ema: bool = False) -> Optional[nn.Module]:
        if module is None and not ema and not hasattr(self, 'eval_model'):
            return self._trainable().student
        return super().get_eval_model(module=module, ema=ema)

    def setup_ema(self, decay: float = 0.9999, use_warmup: bool = False, device=None, **kwargs) -> nn.Module:
        """EMA of the student only (teacher routers are training machinery, not the model)."""
        self.trainable_module_ema = ModelEmaV3(self._student(), decay=decay, use_warmup=use_warmup, device=device,
                                               **kwargs)
        return self.trainable_module_ema

    def update_ema(self, step: Optional[int] = None) -> None:
        if self.has_ema():
            self.trainable_module_ema.update(self._student(), step=step)

    def get_clip_parameters(self, exclude_head: bool = False):
        params = list(self._student().parameters())
        if exclude_head:
            params = params[:-2]
        return params + list(self._trainable().teacher_routers.parameters())

    # --- checkpoint --------------------------------------------------------------------------
    def get_task_state(self, module: Optional[nn.Module] = None, ema: bool = False) -> Dict[str, object]:
        """Teacher routers and schedule: everything trained or counted outside the student's state_dict."""
        if ema:
            return {}
        trainable = unwrap_model(module) if module is not None else self._trainable()
        state = {
            'teacher_routers': {k: v.detach().clone() for k, v in trainable.teacher_routers.state_dict().items()},
            'distill_schedule': self.schedule.state_dict(),
        }
        trainer = self._trainer_state_dict()
        if trainer:
            state['trainer'] = trainer
        return state

    def load_task_state(self, state: Optional[Dict[str, object]], strict: bool = True,
                        module: Optional[nn.Module] = None, ema: bool = False) -> None:
        if ema:
            return
        if not state:
            if strict:
                raise RuntimeError(
                    'checkpoint has no TGR task state (teacher routers, schedule): resume from a TGRTask '
                    'checkpoint, or load with strict=False to start the teacher routers fresh.')
            return
        self.load_teacher_routers(state['teacher_routers'], strict=strict, module=module)
        if 'distill_schedule' in state:
            self.schedule.load_state_dict(state['distill_schedule'])
        self._load_trainer_state(state.get('trainer'))

    def load_teacher_routers(self, state_dict: Mapping[str, torch.Tensor], strict: bool = True,
                             module: Optional[nn.Module] = None, source: str = 'the checkpoint') -> None:
        """Teacher router weights from ``task_state['teacher_routers']`` (keys ``'{block}.proj.weight'``);
        with ``strict``, routers for other blocks, expert count or teacher width fail naming both."""
        trainable = unwrap_model(module) if module is not None else self._trainable()
        if strict:
            check_teacher_router_state(state_dict, trainable.teacher_routers, source=source)
        trainable.teacher_routers.load_state_dict(state_dict, strict=strict)
