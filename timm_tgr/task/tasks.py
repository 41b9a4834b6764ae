"""timm ``TrainingTask``s for V-MoE and TGR-MoE: the loss hook timm's training loop calls.

Both return the dict timm's loop expects (``'loss'``, ``'output'``) plus every loss component as a
detached scalar tensor for logging (no host sync in the forward).

- :class:`VMoETask`: L = L_task + sum_i lambda_load L_load(p^i) (+ z-loss if configured on the model).
- :class:`TGRTask`: the same plus the teacher routers' L_teacher and, while the schedule is on,
  lambda_distill / |S| sum_i KL(stopgrad(p_t^i) || p^i) (paper Sec. 3). Modes for the paper's
  ablations: ``'tgr'`` (the method), ``'distill_only'`` (the student router learns only from the
  distillation term: its combine weights are detached from the task loss and its load loss is
  dropped), ``'teacher_route'`` (the upper bound of Table 5 / supplement Sec. B: the teacher router
  chooses the experts and is trained by the task loss + lambda_load L_load (Eq. S1), the student
  router learns only by distillation (Eq. S2); :meth:`TGRTask.forward_teacher_route` evaluates with
  teacher routing, the plain student gives student-route inference).

All losses are summed into the one ``'loss'`` tensor, so timm's gradient-accumulation division and
fp16 GradScaler scale every component alike and the relative weights never change.
"""
import logging
from typing import Dict, Mapping, Optional, Union

import torch
import torch.nn as nn
from timm.task import TrainingTask
from timm.utils import unwrap_model
from timm.utils.model_ema import ModelEmaV3

from .guidance import (
    DistillSchedule, RoutingTeacher, TeacherRouter, align_teacher_tokens, check_token_grids, default_teacher,
    resolve_layer_map, routing_distillation_loss, teacher_router_loss,
)

_logger = logging.getLogger(__name__)

__all__ = ['VMoETask', 'TGRTask', 'TGRTrainableModule', 'moe_loss_components']

TGR_MODES = ('tgr', 'distill_only', 'teacher_route')


def _moe_student(module: nn.Module) -> nn.Module:
    student = unwrap_model(module)
    if not hasattr(student, 'routing_infos'):
        raise TypeError(
            f'{type(student).__name__} is not a timm_tgr MoE model (no routing_infos()); create it with '
            f"timm.create_model('vmoe_deit_small') or another model registered by timm_tgr.")
    return student


def moe_loss_components(routing_infos: Mapping[int, object]) -> Dict[str, torch.Tensor]:
    """The MoE layers' auxiliary loss (with grad) and detached means for logging."""
    infos = list(routing_infos.values())
    return {
        'moe_aux_loss': torch.stack([r.aux_loss for r in infos]).sum(),
        'load_loss': torch.stack([r.load_loss for r in infos]).mean().detach(),
        'z_loss': torch.stack([r.z_loss for r in infos]).mean().detach(),
        'dropped_fraction': torch.stack([r.dropped_fraction for r in infos]).mean().detach(),
    }


def _student_mean_std(student: nn.Module, device, dtype):
    cfg = getattr(student, 'pretrained_cfg', None) or {}
    mean, std = cfg.get('mean'), cfg.get('std')
    if mean is None or std is None:
        return None, None
    to = dict(device=device, dtype=dtype)
    return torch.tensor(mean, **to).view(1, -1, 1, 1), torch.tensor(std, **to).view(1, -1, 1, 1)


def wrap_ddp(module: nn.Module, device_ids: Optional[list] = None, **ddp_kwargs) -> nn.Module:
    """DistributedDataParallel; ``device_ids`` are dropped for a CPU module (timm's train.py passes
    ``[device]`` even on CPU, which DDP rejects), so gloo training on CPU works from timm's train.py too."""
    from torch.nn.parallel import DistributedDataParallel as DDP
    if all(p.device.type == 'cpu' for p in module.parameters()):
        device_ids = None
    return DDP(module, device_ids=device_ids, **ddp_kwargs)


class TrainerStateMixin:
    """Lets a trainer keep its own resumable state (e.g. the routing-consistency tracker) in the task's
    checkpoint entry: objects given to :meth:`register_trainer_state` (with ``state_dict`` /
    ``load_state_dict``) are saved under ``task_state['trainer'][name]`` by timm's CheckpointSaver and
    restored by ``resume_task_checkpoint``."""

    def register_trainer_state(self, name: str, obj) -> None:
        if not hasattr(self, '_trainer_state'):
            self._trainer_state = {}
        self._trainer_state[name] = obj

    def _trainer_state_dict(self) -> Dict[str, object]:
        return {k: v.state_dict() for k, v in getattr(self, '_trainer_state', {}).items()}

    def _load_trainer_state(self, state: Optional[Mapping[str, object]]) -> None:
        for k, v in (state or {}).items():
            if k in getattr(self, '_trainer_state', {}):
                self._trainer_state[k].load_state_dict(v)


class VMoETask(TrainerStateMixin, TrainingTask):
    """Classification + the MoE layers' auxiliary losses: L_task + sum_i lambda_load L_load^i."""

    def __init__(self, model: nn.Module, criterion: Optional[nn.Module] = None, device=None, dtype=None,
                 verbose: bool = True):
        super().__init__(device=device, dtype=dtype, verbose=verbose)
        _moe_student(model)
        self.trainable_module = model
        self.criterion = criterion if criterion is not None else nn.CrossEntropyLoss()

    def get_task_state(self, module: Optional[nn.Module] = None, ema: bool = False) -> Dict[str, object]:
        trainer = {} if ema else self._trainer_state_dict()
        return {'trainer': trainer} if trainer else {}

    def load_task_state(self, state: Optional[Dict[str, object]], strict: bool = True,
                        module: Optional[nn.Module] = None, ema: bool = False) -> None:
        if not ema and state:
            self._load_trainer_state(state.get('trainer'))

    def prepare_distributed(self, device_ids: Optional[list] = None, **ddp_kwargs) -> 'VMoETask':
        self.trainable_module = wrap_ddp(self.trainable_module, device_ids, **ddp_kwargs)
        return self

    def compile(self, backend: str = 'inductor', mode: Optional[str] = None, **compile_kwargs) -> nn.Module:
        self.trainable_module = torch.compile(self.trainable_module, backend=backend, mode=mode, **compile_kwargs)
        self.eval_model = self.trainable_module
        return self.trainable_module

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> Dict[str, torch.Tensor]:
        output = self.trainable_module(input)
        task_loss = self.criterion(output, target)
        moe = moe_loss_components(_moe_student(self.trainable_module).routing_infos())
        loss = task_loss + moe['moe_aux_loss']
        moe['moe_aux_loss'] = moe['moe_aux_loss'].detach()
        return {'loss': loss, 'output': output, 'task_loss': task_loss.detach(), **moe}


class TGRTrainableModule(nn.Module):
    """Student + teacher routers: everything TGR trains, in one module so DDP wraps exactly it.

    ``forward(x, teacher_features, route_with_teacher)`` runs the teacher routers on the (no-grad)
    teacher features and the student on ``x``; returns ``(logits, {block: p_t})``.
    """

    def __init__(self, student: nn.Module, teacher_routers: nn.ModuleDict):
        super().__init__()
        self.student = student
        self.teacher_routers = teacher_routers

    def no_weight_decay(self):
        student = unwrap_model(self.student)
        nwd = student.no_weight_decay() if hasattr(student, 'no_weight_decay') else set()
        return {'student.' + n for n in nwd}

    def forward(self, x: torch.Tensor, teacher_features: Mapping[str, torch.Tensor],
                route_with_teacher: bool = False):
        teacher_probs = {k: router(teacher_features[k]) for k, router in self.teacher_routers.items()}
        student = unwrap_model(self.student)
        if route_with_teacher:
            student.set_routing_override({int(k): p for k, p in teacher_probs.items()})
        try:
            logits = self.student(x)
        finally:
            if route_with_teacher:
                student.set_routing_override(None)
        return logits, teacher_probs


class TGRTask(TrainerStateMixin, TrainingTask):
    """Teacher-Guided Routing for a timm_tgr MoE student (paper Sec. 3).

    Args:
        student_model: a timm_tgr MoE model (e.g. ``tgr_moe_deit_small``).
        teacher_model: timm model name, ``nn.Module`` or :class:`RoutingTeacher`; None picks the
            paper's teacher for the student's size (DeiT-III-Small for Tiny, DeiT-III-Base otherwise).
        criterion: task loss (default cross-entropy; pass timm's SoftTargetCrossEntropy with Mixup).
        teacher_pretrained_path: checkpoint file for a named teacher.
        teacher_pretrained: load a named teacher's weights (False only for tests/debugging).
        teacher_img_size: image size to create a named teacher with (default: the student's).
        layer_map: student MoE block -> teacher block (None: aligned, ``'last'``, or a dict).
        distill_weight: lambda_distill (5.0).
        teacher_load_weight / teacher_entropy_weight: lambda_load / lambda_ent of L_teacher (0.005 each;
            entropy defaults to 0 in ``'teacher_route'`` mode, where Eq. S1 has none).
        schedule: a :class:`DistillSchedule` or its mode name (``'full'``, ``'first'``, ``'off'``,
            ``'adaptive'``); ``total_steps`` and ``distill_fraction`` configure a named schedule.
        mode: ``'tgr'``, ``'distill_only'`` or ``'teacher_route'``.
    """

    def __init__(
            self,
            student_model: nn.Module,
            teacher_model: Union[str, nn.Module, RoutingTeacher, None] = None,
            criterion: Optional[nn.Module] = None,
            teacher_pretrained_path: Optional[str] = None,
            teacher_pretrained: bool = True,
            teacher_img_size: Optional[int] = None,
            layer_map: Union[None, str, Mapping[int, int]] = None,
            distill_weight: float = 5.0,
            teacher_load_weight: float = 0.005,
            teacher_entropy_weight: Optional[float] = None,
            schedule: Union[str, DistillSchedule] = 'full',
            total_steps: Optional[int] = None,
            distill_fraction: float = 0.5,
            mode: str = 'tgr',
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
            verbose: bool = True,
    ):
        super().__init__(device=device, dtype=dtype, verbose=verbose)
        if mode not in TGR_MODES:
            raise ValueError(f'TGR mode must be one of {TGR_MODES}, got {mode!r}.')
        student = _moe_student(student_model)
        moe_layers = sorted(student.get_moe_layers())
        num_experts = {m.num_experts for m in student.get_moe_layers().values()}
        if len(num_experts) != 1:
            raise ValueError('TGR needs the same number of experts in every MoE layer.')

        if teacher_model is None:
            teacher_model = default_teacher(student.pretrained_cfg.get('architecture', ''))
        if isinstance(teacher_model, RoutingTeacher):
            teacher = teacher_model
            mapping = resolve_layer_map(moe_layers, teacher.depth, layer_map)
            missing = set(mapping.values()) - set(teacher.blocks)
            if missing:
                raise ValueError(f'the RoutingTeacher was built for blocks {teacher.blocks}, but TGR needs {sorted(missing)}.')
        else:
            depth = _teacher_depth(teacher_model)
            mapping = resolve_layer_map(moe_layers, depth, layer_map)
            teacher = RoutingTeacher(
                teacher_model, blocks=sorted(set(mapping.values())), pretrained_path=teacher_pretrained_path,
                pretrained=teacher_pretrained,
                img_size=teacher_img_size or _img_size(student), in_chans=student.in_chans,
                device=self.device, dtype=self.dtype)
        check_token_grids(student, teacher)
        self.teacher = teacher
        self.layer_map = mapping
        self.student_prefix_tokens = student.num_prefix_tokens

        e = num_experts.pop()
        routers = nn.ModuleDict({
            str(i): TeacherRouter(teacher.embed_dim, e, device=self.device, dtype=self.dtype) for i in moe_layers})
        self.trainable_module = TGRTrainableModule(student_model, routers)

        self.criterion = criterion if criterion is not None else nn.CrossEntropyLoss()
        self.mode = mode
        self.distill_weight = distill_weight
        self.teacher_load_weight = teacher_load_weight
        if teacher_entropy_weight is None:
            teacher_entropy_weight = 0. if mode == 'teacher_route' else 0.005
        self.teacher_entropy_weight = teacher_entropy_weight
        if isinstance(schedule, str):
            schedule = DistillSchedule(schedule, total_steps=total_steps, fraction=distill_fraction)
        self.schedule = schedule

        mean, std = _student_mean_std(student, self.device, self.dtype)
        self.register_buffer('student_mean', mean, persistent=False)
        self.register_buffer('student_std', std, persistent=False)
        for moe in student.get_moe_layers().values():
            moe.detach_gates = mode in ('distill_only', 'teacher_route')
        if verbose:
            _logger.info(
                f'TGRTask: mode={mode}, layer_map={mapping}, lambda_distill={distill_weight}, '
                f'lambda_load={teacher_load_weight}, lambda_ent={self.teacher_entropy_weight}, '
                f'schedule={schedule.mode}')

    # --- parts -------------------------------------------------------------------------------
    def _trainable(self) -> TGRTrainableModule:
        return unwrap_model(self.trainable_module)

    def _student(self) -> nn.Module:
        return unwrap_model(self._trainable().student)

    def teacher_features(self, input: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Teacher token features per student MoE block (keys are str(block)), laid out like the student's."""
        with torch.no_grad():
            x = self.teacher.normalize_input(input, self.student_mean, self.student_std)
            feats = self.teacher(x.detach())
        return {
            str(s): align_teacher_tokens(feats[t], self.teacher.num_prefix_tokens, self.student_prefix_tokens)
            for s, t in self.layer_map.items()}

    # --- forward -----------------------------------------------------------------------------
    def forward(self, input: torch.Tensor, target: torch.Tensor) -> Dict[str, torch.Tensor]:
        feats = self.teacher_features(input)
        teacher_route = self.mode == 'teacher_route'
        output, teacher_probs = self.trainable_module(input, feats, route_with_teacher=teacher_route)
        task_loss = self.criterion(output, target)
        infos = self._student().routing_infos()
        moe = moe_loss_components(infos)

        teacher = teacher_router_loss(teacher_probs, self.teacher_load_weight, self.teacher_entropy_weight)
        student_probs = {k: infos[int(k)].probs for k in teacher_probs}
        active = self.schedule.active()
        if active:
            distill = routing_distillation_loss(teacher_probs, student_probs)
        else:
            with torch.no_grad():
                distill = routing_distillation_loss(teacher_probs, student_probs)

        loss = task_loss + teacher['loss']
        if self.mode == 'tgr':  # distill_only / teacher_route: the student router learns by distillation only
            loss = loss + moe['moe_aux_loss']
        if active:
            loss = loss + self.distill_weight * distill
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
        trainable = unwrap_model(module) if module is not None else self._trainable()
        trainable.teacher_routers.load_state_dict(state['teacher_routers'], strict=strict)
        if 'distill_schedule' in state:
            self.schedule.load_state_dict(state['distill_schedule'])
        self._load_trainer_state(state.get('trainer'))


def _img_size(student: nn.Module):
    size = tuple(student.patch_embed.img_size)
    return size[0] if size[0] == size[1] else size


def _teacher_depth(teacher: Union[str, nn.Module]) -> int:
    if isinstance(teacher, nn.Module):
        base = unwrap_model(teacher)
        if not hasattr(base, 'blocks'):
            raise ValueError(f'teacher {type(base).__name__} has no blocks: TGR needs a timm ViT-like teacher.')
        return len(base.blocks)
    import timm
    name = teacher.split('.')[0]
    if not timm.is_model(name):
        raise ValueError(
            f'unknown teacher {teacher!r}: pass a timm model name such as '
            f"'deit3_small_patch16_224.fb_in22k_ft_in1k' (see timm.list_models()) or an nn.Module.")
    return len(timm.create_model(name, device='meta').blocks)
