"""A trained student rebuilt from a ``train_tgr.py`` / timm checkpoint: architecture and ``create_model`` kwargs
from the run's recorded args, the student's weights loaded strictly, a ``pretrained_cfg`` describing them.

:func:`load_student` is what the export, the routing pictures and anything else that starts from a training
checkpoint use; the checkpoint file itself is read by :mod:`timm_tgr.utils.checkpoint` (one reader, one rule for
EMA weights, one set of messages). As timm's own ``create_model(..., checkpoint_path=...)``, it knows models
and files, not training.
"""
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import torch
import torch.nn as nn

import timm

from ..utils.checkpoint import (
    as_dict, check_finite, plain_value, read_checkpoint, select_weights, state_dict_mismatches, student_state_dict,
)

__all__ = ['LoadedStudent', 'load_student', 'is_architecture_kwarg', 'resolve_model_args', 'build_student',
           'run_args_of']

_logger = logging.getLogger(__name__)

# create_model kwargs that change neither the architecture nor the weights: regularization and how the model is
# created; with the tgr_* training options they are left out of config.json, resume checks and model descriptions
_NOT_ARCHITECTURE = {
    'drop_rate', 'drop_path_rate', 'attn_drop_rate', 'proj_drop_rate', 'pos_drop_rate', 'patch_drop_rate',
    'drop_block_rate', 'pretrained', 'pretrained_cfg', 'pretrained_cfg_overlay', 'checkpoint_path', 'cache_dir',
    'scriptable', 'exportable', 'no_jit', 'features_only', 'out_indices', 'device', 'dtype',
}


def is_architecture_kwarg(name: str) -> bool:
    """Whether ``timm.create_model`` kwarg ``name`` is part of the architecture (the one role a model kwarg has):
    not a dropout rate, a creation switch or a ``tgr_*`` teacher-guidance option for timm's train.py."""
    return name not in _NOT_ARCHITECTURE and not name.startswith('tgr_')


def _read_args_yaml(path: Path) -> Dict[str, Any]:
    import yaml
    with open(path, 'r') as f:
        data = yaml.safe_load(f)
    if not isinstance(data, dict):
        raise ValueError(f'{path} is not a mapping of run args.')
    return data


def resolve_model_args(
        run_args: Dict[str, Any],
        model: Optional[str] = None,
        model_kwargs: Optional[Dict[str, Any]] = None,
        checkpoint_arch: Optional[str] = None,
) -> Tuple[str, Dict[str, Any]]:
    """Architecture name and the ``timm.create_model`` kwargs that rebuild the trained model.

    From the run's ``model`` / ``model_kwargs`` plus its top-level ``num_classes``, ``in_chans``,
    ``img_size`` (or ``input_size``) and ``gp``; ``model`` and ``model_kwargs`` given here override them.
    Dropout rates, ``tgr_*`` guidance options and other arguments that do not change the architecture
    are left out.
    """
    # timm_tgr/train/ records the architecture of an hf-hub: / local-dir: --model as model_arch (args.yaml)
    arch = model or run_args.get('model_arch') or run_args.get('model')
    if not arch and checkpoint_arch and timm.is_model(checkpoint_arch):
        arch = checkpoint_arch
    if not arch:
        raise ValueError(
            'the checkpoint does not name its architecture (no args.model and no registered arch): pass '
            '--model NAME, e.g. --model tgr_moe_deit_small, and the --model-kwargs it was trained with.')
    if not timm.is_model(arch):
        raise ValueError(
            f"unknown architecture '{arch}': it is not a registered timm model. timm_tgr registers "
            f"{', '.join(timm.list_models('*moe_deit*')[:4])}, ...; pass --model with one of "
            f"timm.list_models('*moe_deit*').")
    # timm_tgr/train/ records the resolved create_model kwargs ('model_kwargs_resolved' in its args.yaml)
    args = dict(run_args.get('model_kwargs_resolved') or run_args.get('model_kwargs') or {})
    for k in ('num_classes', 'in_chans', 'img_size'):
        if run_args.get(k) is not None:
            args.setdefault(k, run_args[k])
    input_size = run_args.get('input_size')
    if input_size:
        args.setdefault('in_chans', input_size[0])
        args.setdefault('img_size', tuple(input_size[1:]))
    if run_args.get('gp'):
        args.setdefault('global_pool', run_args['gp'])
    args.update(model_kwargs or {})
    args = {k: plain_value(v) for k, v in args.items() if is_architecture_kwarg(k) and v is not None}
    try:
        json.dumps(args)
    except TypeError as e:
        raise ValueError(f'model args {args} cannot be written to config.json ({e}): pass them as numbers, '
                         f'strings or lists with --model-kwargs.') from e
    return arch, args


def _shape_hints(sd: Dict[str, torch.Tensor]) -> str:
    hints = []
    w = sd.get('patch_embed.proj.weight')
    if w is not None and w.ndim == 4:
        hints += [f'embed_dim={w.shape[0]}', f'in_chans={w.shape[1]}', f'patch_size={w.shape[2]}']
    if 'head.weight' in sd:
        hints.append(f'num_classes={sd["head.weight"].shape[0]}')
    return f' The weights look like {", ".join(hints)}.' if hints else ''


def build_student(
        arch: str,
        model_args: Dict[str, Any],
        state_dict: Dict[str, torch.Tensor],
        source: str = 'the checkpoint',
        checkpoint_arch: Optional[str] = None,
) -> nn.Module:
    """``timm.create_model(arch, **model_args)`` with ``state_dict`` loaded strictly, in eval mode."""
    model = timm.create_model(arch, **model_args)
    parts = state_dict_mismatches(state_dict, model.state_dict())
    if parts:
        if checkpoint_arch and checkpoint_arch != arch and timm.is_model(checkpoint_arch):
            fix = (f"The checkpoint was saved for architecture '{checkpoint_arch}': export it with "
                   f'--model {checkpoint_arch} (or without --model).')
        else:
            fix = ('Pass the architecture and model args the weights were trained with '
                   '(--model NAME --model-kwargs k=v ...).' + _shape_hints(state_dict))
        raise RuntimeError(
            f"{source} does not fit '{arch}' built with {model_args}: {'; '.join(parts)}. {fix}")
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


def _update_pretrained_cfg(model: nn.Module, run_args: Dict[str, Any], source: str) -> None:
    """Make the model's pretrained_cfg (written to config.json) describe the exported weights."""
    cfg = dict(model.pretrained_cfg)
    pe = getattr(model, 'patch_embed', None)
    img_size = tuple(pe.img_size) if pe is not None and pe.img_size is not None else tuple(cfg['input_size'][1:])
    cfg['input_size'] = (getattr(model, 'in_chans', cfg['input_size'][0]), *img_size)
    cfg['num_classes'] = model.num_classes
    if getattr(model, 'dynamic_img_size', False):
        cfg['fixed_input_size'] = False
    for k in ('mean', 'std', 'crop_pct', 'interpolation', 'crop_mode'):
        if run_args.get(k) not in (None, ''):
            cfg[k] = tuple(run_args[k]) if isinstance(run_args[k], list) else run_args[k]
    if cfg['input_size'][0] != 3:
        # timm "converts" `first_conv` of pretrained weights whenever in_chans != 3, assuming RGB weights;
        # these are already in_chans wide (for 1 channel the sum over one channel is a no-op that still logs
        # a misleading conversion), so skip that: they load at the exported in_chans only
        cfg['first_conv'] = None
    cfg['notes'] = (f'Student weights of {source} (timm_tgr).',)
    for k in ('url', 'file', 'hf_hub_id', 'hf_hub_filename', 'source', 'state_dict'):
        cfg.pop(k, None)
    cfg['tag'] = None  # not the tag the architecture was created with (e.g. the upcycled dense weights)
    model.pretrained_cfg = model.default_cfg = cfg


def run_args_of(ckpt: Dict[str, Any], path: Path) -> Dict[str, Any]:
    """The run's args: the checkpoint's 'args', else the args.yaml next to it, else empty."""
    run_args = as_dict(ckpt.get('args'))
    args_yaml = path.parent / 'args.yaml'
    if not run_args and args_yaml.is_file():
        run_args = _read_args_yaml(args_yaml)
    return run_args


@dataclass
class LoadedStudent:
    """:func:`load_student`'s result: the model (eval mode) and where it came from."""
    model: nn.Module
    arch: str
    model_args: Dict[str, Any]
    run_args: Dict[str, Any] = field(default_factory=dict)
    checkpoint: Dict[str, Any] = field(default_factory=dict)  # the checkpoint dict ({} for a bare state_dict)
    weights_key: Optional[str] = None  # 'state_dict', 'state_dict_ema', ... (None: a bare state_dict)
    path: Optional[Path] = None


def load_student(
        path: Union[str, Path],
        ema: Optional[bool] = None,
        model: Optional[str] = None,
        model_kwargs: Optional[Dict[str, Any]] = None,
        trust_checkpoint: bool = False,
        fix: str = 'Use an earlier checkpoint of the run (checkpoint-N.pth.tar of an epoch before it diverged).',
) -> LoadedStudent:
    """The student of the checkpoint ``path`` (teacher and teacher-router tensors left out), in eval mode.

    ``ema``: the checkpoint's EMA weights when it has them (None), required (True) or never (False), by
    :func:`~timm_tgr.utils.checkpoint.select_weights`. ``model`` / ``model_kwargs`` override the run's
    recorded architecture and kwargs (needed for a bare state_dict without an ``args.yaml`` beside it).
    Non-finite weights are refused, naming the tensors and ``fix``.
    """
    path = Path(path)
    ckpt = read_checkpoint(path, trust_checkpoint=trust_checkpoint)
    raw, key = select_weights(ckpt, path, ema=ema)
    ckpt = ckpt if key is not None else {}
    state_dict, dropped = student_state_dict(raw)
    check_finite(state_dict, f'{path} [{key or "state_dict"}]', fix)
    if dropped:
        _logger.info(f'left out {len(dropped)} non-student tensors: {", ".join(dropped[:8])}'
                     + (' ...' if len(dropped) > 8 else ''))
    run_args = run_args_of(ckpt, path)
    arch, model_args = resolve_model_args(run_args, model, model_kwargs, checkpoint_arch=ckpt.get('arch'))
    student = build_student(arch, model_args, state_dict, source=str(path), checkpoint_arch=ckpt.get('arch'))
    _update_pretrained_cfg(student, run_args, path.name)
    return LoadedStudent(model=student, arch=arch, model_args=model_args, run_args=run_args, checkpoint=ckpt,
                         weights_key=key, path=path)
