"""Teacher-Guided Routing (TGR-MoE, arXiv 2604.21330): frozen teacher, teacher routers, schedule.

Pieces, each used by :class:`timm_tgr.task.tasks.TGRTask`:

- :class:`RoutingTeacher` - a frozen dense ViT teacher (timm name, ``nn.Module`` or checkpoint
  file), truncated after the deepest block a teacher router reads, returning the token features
  h_t of the layer-aligned blocks. Never trained, never in the student's state_dict.
- :class:`TeacherRouter` - p_t = softmax(R_t h_t), a bias-free linear teacher dim -> E per MoE layer.
- :func:`teacher_router_loss` - L_teacher = sum_i lambda_load L_load(p_t^i) + lambda_ent L_ent(p_t^i).
- :func:`routing_distillation_loss` - lambda_distill / |S| sum_i KL(stopgrad(p_t^i) || p^i).
- :class:`DistillSchedule` - when the distillation term is on (full, first fraction, off, adaptive).
"""
import logging
import os
from typing import Dict, List, Mapping, Optional, Sequence, Union

import torch
import torch.nn as nn

import timm
from timm.task import DistillationTeacher
from timm.utils import unwrap_model

from ..layers.losses import load_balance_loss, routing_entropy_loss, routing_kl_divergence

_logger = logging.getLogger(__name__)

__all__ = [
    'DEFAULT_TEACHERS', 'default_teacher', 'RoutingTeacher', 'TeacherRouter', 'resolve_layer_map',
    'align_teacher_tokens', 'teacher_router_loss', 'routing_distillation_loss', 'DistillSchedule', 'build_teacher',
]

# Table S2: TGR-Ti adds 3*384*16 router weights (DeiT-III-Small teacher), TGR-S/B add 3*768*8 (DeiT-III-Base).
DEFAULT_TEACHERS = {
    'tiny': 'deit3_small_patch16_224.fb_in22k_ft_in1k',
    'small': 'deit3_base_patch16_224.fb_in22k_ft_in1k',
    'base': 'deit3_base_patch16_224.fb_in22k_ft_in1k',
}


def default_teacher(model_name: str) -> str:
    """The paper's teacher for a registered student name (e.g. ``tgr_moe_deit_tiny`` -> DeiT-III-Small)."""
    for size, teacher in DEFAULT_TEACHERS.items():
        if f'_deit_{size}' in model_name:
            return teacher
    raise ValueError(
        f'no default teacher for {model_name!r}: pass teacher= a timm model name (e.g. '
        f'{DEFAULT_TEACHERS["tiny"]!r}), an nn.Module, or a model name with teacher_pretrained_path.')


def _create_teacher(name: str, pretrained_path: Optional[str], pretrained: bool, **kwargs) -> nn.Module:
    model_name = name.split('.')[0] if not name.startswith(('hf-hub:', 'local-dir:')) else name
    if not (name.startswith(('hf-hub:', 'local-dir:')) or timm.is_model(model_name)):
        raise ValueError(
            f'unknown teacher {name!r}: pass a timm model name such as {DEFAULT_TEACHERS["tiny"]!r} '
            f'(see timm.list_models()), an nn.Module, or local-dir:/hf-hub: paths.')
    if pretrained_path is not None and not os.path.isfile(pretrained_path):
        raise FileNotFoundError(f'teacher checkpoint {pretrained_path!r} does not exist: check the path.')
    overlay = dict(file=pretrained_path) if pretrained_path else None
    try:
        return timm.create_model(
            name, pretrained=pretrained or pretrained_path is not None, pretrained_cfg_overlay=overlay, **kwargs)
    except Exception as e:  # hub/offline/corrupt file: say what to do instead of a bare traceback
        raise RuntimeError(
            f'could not load teacher {name!r} weights ({type(e).__name__}: {e}). Without network access, '
            f'download the weights elsewhere and pass teacher_pretrained_path=FILE, or build the teacher '
            f'yourself and pass the nn.Module.') from e


def build_teacher(name: str, checkpoint: Optional[str] = None, pretrained: bool = True, **kwargs) -> nn.Module:
    """A dense teacher by timm name with ``kwargs``; weights from ``checkpoint`` (strict) or the hub.

    ``checkpoint`` may be a ``train_tgr.py`` / timm checkpoint (``state_dict`` key, ``module.`` prefixes)
    or a plain state dict; every tensor must fit (a teacher trained with other kwargs is an error, not
    a silent partial load). Without ``checkpoint`` the pretrained hub weights load when ``pretrained``.
    """
    if not checkpoint:
        return _create_teacher(name, None, pretrained, **kwargs)
    if not os.path.isfile(checkpoint):
        raise FileNotFoundError(f'teacher checkpoint {checkpoint!r} does not exist: check the path.')
    model_name = name.split('.')[0] if not name.startswith(('hf-hub:', 'local-dir:')) else name
    if not (name.startswith(('hf-hub:', 'local-dir:')) or timm.is_model(model_name)):
        raise ValueError(f'unknown teacher {name!r}: pass a timm model name (see timm.list_models()).')
    model = timm.create_model(name, pretrained=False, **kwargs)
    try:
        timm.models.load_checkpoint(model, checkpoint, strict=True)
    except RuntimeError as e:
        raise RuntimeError(
            f'teacher checkpoint {checkpoint!r} does not fit {name!r} built with {kwargs}: pass the architecture '
            f'and kwargs (embed_dim, patch_size, img_size, in_chans, num_classes, ...) it was trained with. ({e})') from e
    return model


class RoutingTeacher(DistillationTeacher):
    """Frozen dense ViT teacher returning token features at the blocks teacher routers read.

    Args:
        model_name_or_module: timm model name (``deit3_small_patch16_224.fb_in22k_ft_in1k``), or a
            timm ViT-like ``nn.Module`` with ``forward_intermediates``.
        blocks: teacher block indices (0-based) whose outputs are needed.
        pretrained_path: checkpoint file for a named teacher (loaded through timm's
            ``pretrained_cfg_overlay=dict(file=...)``).
        pretrained: load a named teacher's pretrained weights (True; False only for tests/debugging).
        img_size / in_chans: passed when creating a named teacher.

    The teacher is truncated after ``max(blocks)`` (later blocks, final norm and head are removed),
    kept in eval mode and has ``requires_grad=False`` everywhere. Inputs normalized for the student
    are re-normalized for the teacher when their mean/std differ (timm's DistillationTeacher).
    """

    def __init__(
            self,
            model_name_or_module: Union[str, nn.Module],
            blocks: Sequence[int],
            pretrained_path: Optional[str] = None,
            pretrained: bool = True,
            img_size: Optional[int] = None,
            in_chans: Optional[int] = None,
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
    ):
        if isinstance(model_name_or_module, str):
            kwargs = dict(num_classes=0)
            if img_size is not None:
                kwargs['img_size'] = img_size
            if in_chans is not None:
                kwargs['in_chans'] = in_chans
            model = _create_teacher(model_name_or_module, pretrained_path, pretrained, **kwargs)
        elif isinstance(model_name_or_module, nn.Module):
            model = model_name_or_module
        else:
            raise TypeError(f'teacher must be a timm model name or an nn.Module, got {type(model_name_or_module)}.')
        base = unwrap_model(model)
        for attr in ('forward_intermediates', 'prune_intermediate_layers', 'blocks', 'patch_embed'):
            if not hasattr(base, attr):
                raise ValueError(
                    f'teacher {type(base).__name__} has no {attr!r}: TGR needs a timm ViT-like teacher '
                    f'(e.g. deit3_*, vit_*) that exposes per-block token features.')
        depth = len(base.blocks)
        blocks = sorted(set(int(b) for b in blocks))
        if not blocks or blocks[0] < 0 or blocks[-1] >= depth:
            raise ValueError(f'teacher blocks {blocks} out of range for a teacher of depth {depth}.')
        super().__init__(model, device=device, dtype=dtype)
        base.prune_intermediate_layers(blocks, prune_norm=True, prune_head=True)
        self.blocks = blocks
        self.depth = depth
        self.embed_dim = base.embed_dim
        self.num_prefix_tokens = base.num_prefix_tokens
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> 'RoutingTeacher':
        """The teacher stays in eval mode (no dropout / drop-path) whatever the task's mode."""
        return super().train(False)

    def grid_size(self):
        return tuple(unwrap_model(self.model).patch_embed.grid_size)

    def _features(self, x: torch.Tensor) -> List[torch.Tensor]:
        out = self.model.forward_intermediates(
            x, indices=self.blocks, return_prefix_tokens=True, norm=False, stop_early=True,
            output_fmt='NLC', intermediates_only=True)
        feats = []
        for item in out:
            spatial, prefix = item if isinstance(item, (tuple, list)) else (item, None)
            feats.append(spatial if prefix is None else torch.cat([prefix, spatial], dim=1))
        return feats

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> Dict[int, torch.Tensor]:
        """``{teacher block: [B, prefix + patches, C] features}`` (no grad)."""
        feats = self._compiled_forward_features(x) if self._compiled_forward_features is not None \
            else self._features(x)
        return dict(zip(self.blocks, feats))

    def compile(self, backend: str = 'inductor', mode: Optional[str] = None, **kwargs) -> 'RoutingTeacher':
        self._compiled_forward_features = torch.compile(self._features, backend=backend, mode=mode, **kwargs)
        return self


class TeacherRouter(nn.Module):
    """p_t = softmax(R_t h_t): bias-free linear router on teacher features, computed in fp32."""

    def __init__(self, dim: int, num_experts: int, device=None, dtype=None):
        super().__init__()
        self.proj = nn.Linear(dim, num_experts, bias=False, device=device, dtype=dtype)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=h.device.type, enabled=False):
            return torch.softmax(nn.functional.linear(h.float(), self.proj.weight.float()), dim=-1)


def resolve_layer_map(
        student_layers: Sequence[int],
        teacher_depth: int,
        layer_map: Union[None, str, Mapping[int, int]] = None,
) -> Dict[int, int]:
    """Student MoE block -> teacher block. Default: the same index (layer-aligned); ``'last'``: the
    teacher's last block for every layer (the paper's ablation); or an explicit ``{student: teacher}``."""
    if layer_map is None or layer_map == 'aligned':
        mapping = {i: i for i in student_layers}
    elif layer_map == 'last':
        mapping = {i: teacher_depth - 1 for i in student_layers}
    elif isinstance(layer_map, Mapping):
        mapping = {int(k): int(v) for k, v in layer_map.items()}
        if set(mapping) != set(student_layers):
            raise ValueError(
                f'layer_map keys {sorted(mapping)} must be exactly the student MoE blocks {sorted(student_layers)}.')
    else:
        raise ValueError(f"layer_map must be None/'aligned', 'last' or a {{student: teacher}} dict, got {layer_map!r}.")
    bad = {s: t for s, t in mapping.items() if not 0 <= t < teacher_depth}
    if bad:
        raise ValueError(
            f'layer_map {bad} points outside the teacher (depth {teacher_depth}): teacher blocks are '
            f'0..{teacher_depth - 1}; use a deeper teacher or another mapping.')
    return mapping


def check_token_grids(student: nn.Module, teacher: RoutingTeacher) -> None:
    """The teacher must see the same patch grid as the student, and a compatible set of prefix tokens."""
    s = unwrap_model(student)
    s_grid, t_grid = tuple(s.patch_embed.grid_size), teacher.grid_size()
    if s_grid != t_grid:
        raise ValueError(
            f'token-grid mismatch: the student has a {s_grid[0]}x{s_grid[1]} patch grid, the teacher '
            f'{t_grid[0]}x{t_grid[1]}. Give the teacher the same img_size/patch_size ratio (e.g. '
            f'teacher_img_size=...), so every student token has a teacher token.')
    p_s, p_t = s.num_prefix_tokens, teacher.num_prefix_tokens
    if not (p_s == p_t or p_t == 1):
        raise ValueError(
            f'prefix-token mismatch: the student has {p_s} prefix tokens, the teacher {p_t}; TGR maps equal '
            f'counts one to one, or one teacher class token onto every student prefix token.')


def align_teacher_tokens(h: torch.Tensor, teacher_prefix: int, student_prefix: int) -> torch.Tensor:
    """Teacher tokens laid out like the student's: the teacher's class token guides every student prefix
    token (e.g. DeiT's class and distillation tokens) when the teacher has one prefix token."""
    if teacher_prefix == student_prefix:
        return h
    cls = h[:, :1].expand(-1, student_prefix, -1)
    return torch.cat([cls, h[:, teacher_prefix:]], dim=1)


def teacher_router_loss(
        teacher_probs: Mapping[int, torch.Tensor],
        load_weight: float = 0.005,
        entropy_weight: float = 0.005,
) -> Dict[str, torch.Tensor]:
    """L_teacher = sum_i (lambda_load L_load(p_t^i) + lambda_ent L_ent(p_t^i)); returns the parts too."""
    loads = torch.stack([load_balance_loss(p) for p in teacher_probs.values()])
    ents = torch.stack([routing_entropy_loss(p) for p in teacher_probs.values()])
    total = load_weight * loads.sum() + entropy_weight * ents.sum()
    return {'loss': total, 'load': loads.mean(), 'entropy': ents.mean()}


def routing_distillation_loss(
        teacher_probs: Mapping[int, torch.Tensor],
        student_probs: Mapping[int, torch.Tensor],
) -> torch.Tensor:
    """1/|S| sum_i KL(stopgrad(p_t^i) || p^i): the mean over MoE layers (multiply by lambda_distill)."""
    if set(teacher_probs) != set(student_probs):
        raise ValueError(f'teacher routes blocks {sorted(teacher_probs)}, student {sorted(student_probs)}.')
    kls = []
    for i, p in student_probs.items():
        pt = teacher_probs[i]
        if pt.shape != p.shape:
            raise ValueError(
                f'token-grid mismatch at block {i}: teacher probabilities {tuple(pt.shape)} vs student '
                f'{tuple(p.shape)}; teacher and student must see the same image size and patch grid.')
        kls.append(routing_kl_divergence(pt, p))
    return torch.stack(kls).mean()


class DistillSchedule:
    """When the distillation term is on, counted in training forwards (micro-batches).

    Modes:
        ``'full'``: always (standard TGR-MoE, 77.81 in the paper's Tiny E=8 ablation).
        ``'first'``: for the first ``fraction`` of ``total_steps`` (paper's best: first half, 78.13).
        ``'off'``: never (plain V-MoE with teacher routers still trained, for ablations).
        ``'adaptive'``: our rule for the paper's open problem. Distill until the student's adjacent-epoch
            routing consistency on the probe set plateaus: after at least ``min_fraction`` of training,
            once each of the last ``patience`` epochs gained less than ``delta`` consistency (absolute),
            distillation switches off for good. It never runs past ``max_fraction`` (default 1.0).
            The trainer reports consistency with :meth:`observe_consistency` at each epoch end.
    """

    MODES = ('full', 'first', 'off', 'adaptive')

    def __init__(
            self,
            mode: str = 'full',
            total_steps: Optional[int] = None,
            fraction: float = 0.5,
            delta: float = 0.01,
            patience: int = 2,
            min_fraction: float = 0.1,
            max_fraction: float = 1.0,
    ):
        if mode not in self.MODES:
            raise ValueError(f'distill schedule must be one of {self.MODES}, got {mode!r}.')
        if mode in ('first', 'adaptive') and (total_steps is None or total_steps <= 0):
            raise ValueError(f"schedule '{mode}' needs total_steps > 0 (training forwards in the whole run).")
        if not 0. <= fraction <= 1.:
            raise ValueError(f'distill fraction must be in [0, 1], got {fraction}.')
        self.mode = mode
        self.total_steps = total_steps
        self.fraction = fraction
        self.delta = delta
        self.patience = patience
        self.min_fraction = min_fraction
        self.max_fraction = max_fraction
        self.step = 0
        self.stopped_at: Optional[int] = None
        self.history: List[float] = []

    def active(self) -> bool:
        if self.mode == 'full':
            return True
        if self.mode == 'off':
            return False
        if self.mode == 'first':
            return self.step < self.fraction * self.total_steps
        if self.stopped_at is not None:
            return False
        return self.step < self.max_fraction * self.total_steps

    def advance(self) -> None:
        self.step += 1

    def observe_consistency(self, consistency: float) -> None:
        """Adaptive mode: feed the mean adjacent-epoch routing consistency at each epoch end."""
        self.history.append(float(consistency))
        if self.mode != 'adaptive' or self.stopped_at is not None:
            return
        if self.step < self.min_fraction * self.total_steps or len(self.history) <= self.patience:
            return
        recent = self.history[-(self.patience + 1):]
        gains = [b - a for a, b in zip(recent[:-1], recent[1:])]
        if all(g < self.delta for g in gains):
            self.stopped_at = self.step
            _logger.info(f'TGR adaptive schedule: routing consistency plateaued at {recent[-1]:.4f}; '
                         f'distillation off from step {self.step}.')

    def state_dict(self) -> dict:
        return {'mode': self.mode, 'total_steps': self.total_steps, 'fraction': self.fraction, 'step': self.step,
                'stopped_at': self.stopped_at, 'history': list(self.history)}

    def load_state_dict(self, state: dict) -> None:
        if state.get('mode', self.mode) != self.mode:
            raise ValueError(f"checkpoint schedule mode {state['mode']!r} differs from this run's {self.mode!r}.")
        self.step = int(state['step'])
        self.stopped_at = state.get('stopped_at')
        self.history = list(state.get('history', []))
