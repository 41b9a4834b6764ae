"""The teacher side of Teacher-Guided Routing (TGR-MoE, arXiv 2604.21330, Sec. 3.1): h_t for every MoE layer.

- :func:`default_teacher` / :func:`build_teacher`: which dense teacher (Table S2), and the one way every caller
  builds it (name, kwargs, weights, input normalization).
- :class:`FeatureTeacher`: a frozen dense ViT teacher, truncated after the deepest block a teacher router
  reads, returning the token features h_t of those blocks. Never trained, never in the student's state_dict.
- :func:`resolve_layer_map`: student MoE block -> teacher block (layer-aligned by default).
- :func:`check_token_grids` / :func:`align_teacher_tokens`: every student token gets a teacher token.
- :class:`TeacherGuidance`: the above put together: the student's input in, ``{block: h_t}`` out.

The teacher routers that turn h_t into p_t are trained, so they live with the student in
:class:`~timm_tgr.task.tgr_task.TGRTrainableModule` (:mod:`~timm_tgr.task.teacher_router`).
"""
import argparse
import logging
import os
from contextlib import contextmanager
from typing import Dict, List, Mapping, Optional, Sequence, Union

import torch
import torch.nn as nn

import timm
from timm.task import DistillationTeacher
from timm.utils import unwrap_model

__all__ = [
    'DEFAULT_TEACHERS', 'TEACHER_FIXES', 'TeacherFix', 'TeacherValueError', 'TeacherLoadError', 'teacher_fixes',
    'default_teacher', 'build_teacher', 'FeatureTeacher', 'resolve_layer_map',
    'check_token_grids', 'align_teacher_tokens', 'TeacherGuidance',
]

_logger = logging.getLogger(__name__)

# Table S2: TGR-Ti adds 3*384*16 router weights (DeiT-III-Small teacher), TGR-S/B add 3*768*8 (DeiT-III-Base).
DEFAULT_TEACHERS = {
    'tiny': 'deit3_small_patch16_224.fb_in22k_ft_in1k',
    'small': 'deit3_base_patch16_224.fb_in22k_ft_in1k',
    'base': 'deit3_base_patch16_224.fb_in22k_ft_in1k',
}


# what to give instead, in this API's words, by what is wrong (name: no teacher for the student; norm: the teacher's
# input normalization; weights: its weights; grid: its image size, formatted with the size that gives the teacher
# the student's token grid). Entry points phrase the same fixes in their options: :func:`teacher_fixes`.
TEACHER_FIXES = dict(
    name='pass teacher= a timm model name (e.g. {teacher!r}) or an nn.Module',
    norm="pass mean= and std= with the teacher's kwargs (build_teacher), the values the teacher was trained with",
    weights='pass teacher_pretrained_path=FILE (build_teacher: checkpoint=FILE), or build the teacher yourself and '
            'pass the nn.Module',
    grid="e.g. teacher_img_size={img_size}, or img_size={img_size} in build_teacher's kwargs",
)


class TeacherFix(Exception):
    """Base of the teacher errors whose fix depends on where the teacher was given: the message is ``before`` +
    the fix + ``after``; the fix is ``TEACHER_FIXES[kind]`` formatted with ``params``, or an entry point's own
    words for it (:func:`teacher_fixes`)."""

    def __init__(self, before: str, kind: str, after: str = '.', **params):
        self.before, self.kind, self.after, self.params = before, kind, after, params
        super().__init__(self.phrase(TEACHER_FIXES))

    def phrase(self, fixes: Mapping[str, str]) -> str:
        return self.before + fixes[self.kind].format(**self.params) + self.after


class TeacherValueError(TeacherFix, ValueError):
    """A teacher that does not fit the student or lacks what it needs."""


class TeacherLoadError(TeacherFix, RuntimeError):
    """A teacher whose weights could not be loaded."""


@contextmanager
def teacher_fixes(fixes: Mapping[str, str]):
    """Teacher errors raised inside say their fix in ``fixes``' words (an entry point's options, keys as
    :data:`TEACHER_FIXES`)."""
    try:
        yield
    except TeacherFix as e:
        e.args = (e.phrase(fixes),)
        raise


def default_teacher(model_name: str) -> str:
    """The paper's teacher for a registered student name (e.g. ``tgr_moe_deit_tiny`` -> DeiT-III-Small)."""
    for size, teacher in DEFAULT_TEACHERS.items():
        if f'_deit_{size}' in model_name:
            return teacher
    raise TeacherValueError(f'no default teacher for {model_name!r}: ', 'name', teacher=DEFAULT_TEACHERS['tiny'])


def _check_teacher_name(name: str) -> None:
    model_name = name.split('.')[0] if not name.startswith(('hf-hub:', 'local-dir:')) else name
    if not (name.startswith(('hf-hub:', 'local-dir:')) or timm.is_model(model_name)):
        raise ValueError(
            f'unknown teacher {name!r}: pass a timm model name such as {DEFAULT_TEACHERS["tiny"]!r} '
            f'(see timm.list_models()), an nn.Module, or local-dir:/hf-hub: paths.')


def _student_input_kwargs(student: nn.Module) -> dict:
    """The student's ``img_size`` and ``in_chans``: what a named teacher is created with unless told otherwise."""
    base = unwrap_model(student)
    size = tuple(base.patch_embed.img_size)
    kwargs = {'img_size': size[0] if size[0] == size[1] else size}
    in_chans = getattr(base, 'in_chans', None)
    return kwargs if in_chans is None else dict(kwargs, in_chans=in_chans)


def build_teacher(teacher: Union[str, nn.Module], checkpoint: Optional[str] = None, pretrained: bool = True,
                  trust_checkpoint: bool = False, student: Optional[nn.Module] = None,
                  **kwargs) -> nn.Module:
    """The dense teacher: the one way train_tgr.py, timm's train.py, :class:`TGRTask` and the routing pictures
    build it.

    ``teacher`` is a timm model name (also ``hf-hub:`` / ``local-dir:``), created with ``kwargs``; an
    ``nn.Module`` is returned as it is. Built for a ``student``, the teacher takes the student's ``img_size``
    and ``in_chans`` unless ``kwargs`` give them (so each student token has a teacher token, and the teacher
    reads the student's images; timm adapts pretrained patch-embedding weights to the channel count).

    Its weights, and the input normalization they were trained with (its ``pretrained_cfg`` mean/std, to which
    TGR converts the student's input):

    - ``checkpoint``: a file of the teacher's weights, the one meaning of "teacher checkpoint": a
      ``train_tgr.py`` / timm checkpoint (read by :mod:`timm_tgr.utils.checkpoint`: its EMA weights when it
      has them, ``module.`` prefixes removed) or a plain state dict (``.pth``, ``.safetensors``), loaded
      strictly: every tensor must fit the teacher built with ``kwargs`` (a teacher trained with other kwargs is
      an error naming them, not a partial load), and weights holding NaN / Inf are refused. The mean/std the
      checkpoint's run args record are the teacher's (a run without them normalized with the cfg's); a file
      without run args takes those of the ``config.json`` beside it (an export folder), else ``mean`` / ``std``
      must be given in ``kwargs`` (an error says so: ImageNet's would silently re-normalize the input).
    - else, with ``pretrained``: the name's pretrained weights (the hub), with their cfg's mean/std.
    - else random weights (debugging only), which for a ``student`` take the student's mean/std: nothing to
      convert.

    ``mean`` / ``std`` in ``kwargs`` (one value or one per channel) set the teacher's normalization whatever the
    weights' source.
    """
    if isinstance(teacher, nn.Module):
        return teacher
    if not isinstance(teacher, str):
        raise TypeError(f'teacher must be a timm model name or an nn.Module, got {type(teacher)}.')
    _check_teacher_name(teacher)
    if checkpoint and not os.path.isfile(checkpoint):
        raise FileNotFoundError(f'teacher checkpoint {checkpoint!r} does not exist: check the path.')
    norm = {k: _mean_std(k, kwargs.pop(k)) for k in ('mean', 'std') if k in kwargs}
    if len(norm) == 1:
        raise ValueError(f'the teacher kwargs give {next(iter(norm))} without {({"mean", "std"} - set(norm)).pop()}: '
                         f'give both (the values the teacher was trained with).')
    if student is not None:
        kwargs = dict(_student_input_kwargs(student), **kwargs)
    if checkpoint:
        model = _load_teacher_checkpoint(teacher, checkpoint, trust_checkpoint, kwargs, norm)
        return _with_normalization(model, norm, f'teacher checkpoint {checkpoint}') if norm else model
    try:
        model = timm.create_model(teacher, pretrained=pretrained, **kwargs)
    except Exception as e:  # hub/offline/corrupt file: say what to do instead of a bare traceback
        raise TeacherLoadError(
            f'could not load teacher {teacher!r} weights ({type(e).__name__}: {e}). Without network access, '
            f'download the weights elsewhere and ', 'weights') from e
    if pretrained:
        from ..utils.checkpoint import check_finite
        check_finite(model.state_dict(), f'the pretrained weights of teacher {teacher!r}',
                     'Give the teacher weights from before it diverged.')
    if norm:
        return _with_normalization(model, norm, f'teacher {teacher!r}')
    if not pretrained and student is not None:
        norm = {k: unwrap_model(student).pretrained_cfg[k] for k in ('mean', 'std')}
        model.pretrained_cfg = model.default_cfg = dict(model.pretrained_cfg, **norm)
    return model


def _mean_std(key: str, value) -> tuple:
    """A teacher kwarg ``mean`` / ``std``: one number or one per channel, as a tuple of floats."""
    values = value if isinstance(value, (list, tuple)) else (value,)
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        out = ()
    if not out or (key == 'std' and min(out) <= 0):
        raise ValueError(f'teacher kwarg {key}={value!r}: give one number or one per channel'
                         + (' (all > 0)' if key == 'std' else '') + f', e.g. {key}=0.5 or {key}=[0.5,0.5,0.5].')
    return out


def _with_normalization(model: nn.Module, norm: dict, what: str) -> nn.Module:
    """The teacher's ``pretrained_cfg`` mean/std := ``norm`` (one value, or one per input channel)."""
    channels = getattr(getattr(getattr(model, 'patch_embed', None), 'proj', None), 'in_channels', None)
    for k, v in norm.items():
        if channels is not None and len(v) not in (1, channels):
            raise ValueError(f'{what}: {k} has {len(v)} values for a teacher of {channels} input channels: give one '
                             f'value or {channels}.')
    model.pretrained_cfg = model.default_cfg = dict(model.pretrained_cfg, **norm)
    return model


def _load_teacher_checkpoint(name: str, checkpoint: str, trust_checkpoint: bool, kwargs: dict,
                             norm: dict) -> nn.Module:
    """``name`` built with ``kwargs``, its weights strictly from ``checkpoint`` (see :func:`build_teacher`); the
    input normalization its weights were trained with from ``norm`` (given), the checkpoint's run args, or the
    ``config.json`` beside it (an export); a file that records none needs ``norm``."""
    from ..utils.checkpoint import (
        check_finite, describe_weights, read_checkpoint, select_weights, state_dict_mismatches, student_state_dict,
    )
    ckpt = read_checkpoint(checkpoint, trust_checkpoint=trust_checkpoint, what='teacher checkpoint')
    raw, key = select_weights(ckpt, checkpoint, what='teacher checkpoint')
    state_dict = student_state_dict(raw)[0]
    check_finite(state_dict, f'teacher checkpoint {checkpoint} [{key or "state_dict"}]',
                 'Give a checkpoint of the teacher from an epoch before it diverged (checkpoint-N.pth.tar).')
    model = timm.create_model(name, pretrained=False, **kwargs)
    parts = state_dict_mismatches(state_dict, model.state_dict())
    if parts:
        raise RuntimeError(
            f'teacher checkpoint {checkpoint!r} does not fit {name!r} built with {kwargs}: {"; ".join(parts)}. Pass '
            f'the architecture and kwargs (embed_dim, patch_size, img_size, in_chans, num_classes, ...) it was '
            f'trained with.')
    model.load_state_dict(state_dict, strict=True)
    _logger.info(f'teacher {name}: {describe_weights(key)} of {checkpoint}')
    if norm:
        return model
    args = ckpt.get('args') if key is not None else None
    if isinstance(args, (argparse.Namespace, dict)):  # a train_tgr.py / timm training checkpoint
        _set_trained_normalization(model, args)
        return model
    recorded = _exported_normalization(checkpoint)
    if recorded is None:
        raise TeacherValueError(
            f'teacher checkpoint {checkpoint} holds weights only ({describe_weights(key)}, no run args) and records '
            f'no input normalization (mean/std), which the teacher needs to see the images as in its training '
            f'(timm\'s default for {name!r} is ImageNet\'s): ', 'norm',
            ', or give a train_tgr.py checkpoint of the teacher, or an export folder\'s model.safetensors (its '
            'config.json records them).')
    model.pretrained_cfg = model.default_cfg = dict(model.pretrained_cfg, **recorded)
    return model


def _exported_normalization(checkpoint: str) -> Optional[dict]:
    """mean/std of the ``config.json`` beside ``checkpoint`` (a timm / timm_tgr.export folder), when it has them."""
    import json
    path = os.path.join(os.path.dirname(os.path.abspath(checkpoint)), 'config.json')
    try:
        with open(path) as f:
            cfg = json.load(f).get('pretrained_cfg') or {}
    except (OSError, ValueError, AttributeError):
        return None
    if cfg.get('mean') is None or cfg.get('std') is None:
        return None
    return {'mean': tuple(cfg['mean']), 'std': tuple(cfg['std'])}


def _set_trained_normalization(model: nn.Module, args) -> None:
    """``pretrained_cfg`` mean/std from the run args of a ``train_tgr.py`` / timm checkpoint, when recorded (a run
    without --mean / --std normalized with the model's own cfg, which the teacher keeps)."""
    run_args = vars(args) if isinstance(args, argparse.Namespace) else (args if isinstance(args, dict) else {})
    mean, std = run_args.get('mean'), run_args.get('std')
    if mean is not None and std is not None:
        model.pretrained_cfg = dict(model.pretrained_cfg, mean=tuple(mean), std=tuple(std))


def _vit_teacher(model: nn.Module) -> nn.Module:
    """The unwrapped teacher, checked to expose per-block token features as timm's ViTs do."""
    base = unwrap_model(model)
    for attr in ('forward_intermediates', 'prune_intermediate_layers', 'blocks', 'patch_embed'):
        if not hasattr(base, attr):
            raise ValueError(
                f'teacher {type(base).__name__} has no {attr!r}: TGR needs a timm ViT-like teacher '
                f'(e.g. deit3_*, vit_*) that exposes per-block token features.')
    return base


class FeatureTeacher(DistillationTeacher):
    """Frozen dense ViT teacher returning token features at the blocks teacher routers read.

    Args:
        model: the built teacher (:func:`build_teacher`), a timm ViT-like ``nn.Module`` with
            ``forward_intermediates``.
        blocks: teacher block indices (0-based) whose outputs are needed.

    The teacher is truncated after ``max(blocks)`` (later blocks, final norm and head are removed), kept in eval
    mode and has ``requires_grad=False`` everywhere.
    Inputs normalized for the student are re-normalized for the teacher when their mean/std differ (timm's
    DistillationTeacher).
    """

    def __init__(
            self,
            model: nn.Module,
            blocks: Sequence[int],
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f'FeatureTeacher takes the built teacher (build_teacher(name, ...)), got {type(model)}.')
        base = _vit_teacher(model)
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

    def train(self, mode: bool = True) -> 'FeatureTeacher':
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

    def compile(self, backend: str = 'inductor', mode: Optional[str] = None, **kwargs) -> 'FeatureTeacher':
        self._compiled_forward_features = torch.compile(self._features, backend=backend, mode=mode, **kwargs)
        return self


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


def check_token_grids(student: nn.Module, teacher: Union['FeatureTeacher', nn.Module]) -> None:
    """The teacher must see the same patch grid as the student, and a compatible set of prefix tokens.

    ``teacher`` is a :class:`FeatureTeacher` or the timm ViT it wraps.
    """
    s = unwrap_model(student)
    t = _vit_teacher(teacher.model if isinstance(teacher, FeatureTeacher) else teacher)
    s_grid, t_grid = tuple(s.patch_embed.grid_size), tuple(t.patch_embed.grid_size)
    if s_grid != t_grid:
        t_patch = tuple(t.patch_embed.patch_size)
        size = (s_grid[0] * t_patch[0], s_grid[1] * t_patch[1])
        raise TeacherValueError(
            f'token-grid mismatch: the student has a {s_grid[0]}x{s_grid[1]} patch grid, the teacher '
            f'{t_grid[0]}x{t_grid[1]}. Give the teacher the same img_size/patch_size ratio (', 'grid',
            '), so every student token has a teacher token.', img_size=size[0] if size[0] == size[1] else size)
    p_s, p_t = s.num_prefix_tokens, t.num_prefix_tokens
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


def _student_mean_std(student: nn.Module, device, dtype):
    cfg = getattr(student, 'pretrained_cfg', None) or {}
    mean, std = cfg.get('mean'), cfg.get('std')
    if mean is None or std is None:
        return None, None
    to = dict(device=device, dtype=dtype)
    return torch.tensor(mean, **to).view(1, -1, 1, 1), torch.tensor(std, **to).view(1, -1, 1, 1)


class TeacherGuidance(nn.Module):
    """Frozen teacher + layer map: the student's input in, h_t per student MoE block out (no grad).

    ``forward(input)`` returns ``{student block: [B, N, C_t]}``: the input re-normalized from the
    student's mean/std to the teacher's, the teacher's block ``layer_map[block]`` output, with its
    tokens laid out like the student's (:func:`align_teacher_tokens`). Build it with :meth:`create`.
    """

    def __init__(self, teacher: FeatureTeacher, layer_map: Mapping[int, int], student: nn.Module,
                 device=None, dtype=None):
        super().__init__()
        student = unwrap_model(student)
        missing = set(layer_map.values()) - set(teacher.blocks)
        if missing:
            raise ValueError(
                f'the FeatureTeacher was built for blocks {teacher.blocks}, but the layer map needs {sorted(missing)}: '
                f'build it with blocks covering every mapped teacher block.')
        check_token_grids(student, teacher)
        self.teacher = teacher
        self.layer_map = dict(layer_map)
        self.student_prefix_tokens = student.num_prefix_tokens
        mean, std = _student_mean_std(student, device, dtype)
        self.register_buffer('student_mean', mean, persistent=False)
        self.register_buffer('student_std', std, persistent=False)

    @classmethod
    def create(
            cls,
            student: nn.Module,
            teacher: nn.Module,
            layer_map: Union[None, str, Mapping[int, int]] = None,
            device=None,
            dtype=None,
    ) -> 'TeacherGuidance':
        """Guidance for ``student`` from the built ``teacher`` (:func:`build_teacher`), which becomes a
        :class:`FeatureTeacher` for exactly the mapped blocks unless it is one already."""
        student = unwrap_model(student)
        moe_layers = sorted(student.get_moe_layers())
        if isinstance(teacher, FeatureTeacher):
            return cls(teacher, resolve_layer_map(moe_layers, teacher.depth, layer_map), student,
                       device=device, dtype=dtype)
        mapping = resolve_layer_map(moe_layers, len(_vit_teacher(teacher).blocks), layer_map)
        teacher = FeatureTeacher(teacher, blocks=sorted(set(mapping.values())), device=device, dtype=dtype)
        return cls(teacher, mapping, student, device=device, dtype=dtype)

    def forward(self, input: torch.Tensor) -> Dict[int, torch.Tensor]:
        with torch.no_grad():
            x = self.teacher.normalize_input(input, self.student_mean, self.student_std)
            feats = self.teacher(x.detach())
        return {
            s: align_teacher_tokens(feats[t], self.teacher.num_prefix_tokens, self.student_prefix_tokens)
            for s, t in self.layer_map.items()}

    def extra_repr(self) -> str:
        return f'layer_map={self.layer_map}'
