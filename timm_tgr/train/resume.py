"""``--resume``: continue a run from its checkpoint, or say exactly why not.

The checkpoint is read once (:func:`timm_tgr.utils.checkpoint.read_checkpoint`: missing, empty, truncated
or corrupt files get one message naming the file and the fix) and then:

- compared with this command (when the checkpoint records train_tgr.py's args): the architecture and its
  model kwargs, the teacher and its kwargs, the TGR mode and layer map, and the optimizer must be the run's.
  A resume continues the same run; another ``--teacher`` or ``num_experts`` is refused naming both values
  and the two ways out (the run's flags again, or ``--initial-checkpoint`` for a new run from its weights);
- refused when its weights hold NaN or Inf (naming the tensors);
- loaded into the task (student, teacher routers, schedule, trainer state), the optimizer state (moments,
  step counts) unless ``--no-resume-opt``, the AMP scaler, and later the EMA (:func:`load_resumed_ema`).

The optimizer's settings (``--lr``, ``--weight-decay``, betas, eps, momentum) are this command's, not the
checkpoint's: a resume with another ``--lr`` trains the remaining epochs with it (the schedule is rebuilt
from the flags), and the log names each change. ``args.yaml`` then keeps the earlier flags beside it
(:func:`~timm_tgr.train.run_folder.write_args_yaml`).
"""
import logging
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import torch
import torch.nn as nn
from timm.models import clean_state_dict
from timm.utils import unwrap_model

from ..models._factory import is_architecture_kwarg
from ..task.options import MODEL, RUN
from ..utils.checkpoint import as_dict, check_finite, plain_value, read_checkpoint, state_dict_mismatches
from .record import RESOLVED, flag_names, record_roles
from .spec import RunSpec

__all__ = ['Resumed', 'resume_run', 'load_resumed_ema', 'run_differences']

_logger = logging.getLogger(__name__)


@dataclass
class Resumed:
    """The checkpoint read for ``--resume`` (kept until the EMA is restored) and the epoch to start at."""
    path: str
    checkpoint: Dict[str, Any]
    start_epoch: int


def _kwargs_differences(flag: str, before: Dict[str, Any], now: Dict[str, Any]) -> List[str]:
    out = []
    for k in sorted(set(before) | set(now)):
        if not is_architecture_kwarg(k):
            continue
        b, n = plain_value(before.get(k, '(default)')), plain_value(now.get(k, '(default)'))
        if b != n:
            out.append(f'{flag} {k} (the run: {b}; this command: {n})')
    return out


def run_differences(run_args: Dict[str, Any], now: Dict[str, Any], with_optimizer: bool = True) -> List[str]:
    """What this command (its record ``now``) trains differently from the run that wrote a checkpoint with
    ``run_args`` (train_tgr.py args): each flag of role model or run (``--opt`` only ``with_optimizer``) as
    '--flag (the run: X; this command: Y)', a kwargs flag per architecture kwarg. Empty for another trainer's
    checkpoint."""
    if 'model_kwargs_resolved' not in run_args:
        return []  # not recorded by train_tgr.py: the load below still fails clearly on a mismatch
    out = []
    both_guided = bool(run_args.get('teacher_resolved') and now.get('teacher_resolved'))
    for dest, role in record_roles().items():
        if role not in (MODEL, RUN) or dest not in flag_names() or (dest == 'opt' and not with_optimizer):
            continue
        key = RESOLVED.get(dest, dest)
        before, value = run_args.get(key, run_args.get(dest)), now.get(key)
        if isinstance(value, dict):  # --model-kwargs, and --teacher-kwargs when both runs have a teacher
            if dest != 'teacher_kwargs' or both_guided:
                out += _kwargs_differences(flag_names()[dest], before or {}, dict(value))
        elif plain_value(before) != plain_value(value):
            out.append(f'{flag_names()[dest]} (the run: {before}; this command: {value})')
    return out


def _ways_out(path: str) -> str:
    folder = os.path.dirname(os.path.abspath(path))
    return (f'A resume continues the same run: repeat its flags (they are in {os.path.join(folder, "args.yaml")}), '
            f'or start a new run from its weights with --initial-checkpoint {path} (fresh optimizer and schedule).')


def _check_weights(ckpt: Dict[str, Any], path: str) -> None:
    fix = ('Resume from an earlier checkpoint of the run (checkpoint-N.pth.tar of an epoch before it diverged), '
           'with a lower --lr.')
    for key in ('state_dict', 'model', 'state_dict_ema'):
        if isinstance(ckpt.get(key), dict):
            check_finite(ckpt[key], f'--resume {path} [{key}]', fix)
    routers = (ckpt.get('task_state') or {}).get('teacher_routers') if isinstance(ckpt.get('task_state'), dict) \
        else None
    if isinstance(routers, dict):
        check_finite(routers, f"--resume {path} [task_state['teacher_routers']]", fix)
    state = ckpt.get('optimizer', {}).get('state') if isinstance(ckpt.get('optimizer'), dict) else None
    if isinstance(state, dict):
        tensors = {f'{p}.{k}': v for p, s in state.items() if isinstance(s, dict) for k, v in s.items()}
        check_finite(tensors, f"--resume {path} [optimizer state]",
                     'Its weights may be finite, but the optimizer would make them NaN at the first step. Resume from '
                     'an earlier checkpoint of the run (checkpoint-N.pth.tar of an epoch before it diverged) with a '
                     'lower --lr, or keep these weights with a fresh optimizer state: --no-resume-opt.')


def _load_optimizer(optimizer: torch.optim.Optimizer, state: Dict[str, Any], path: str, log_info: bool) -> None:
    """The checkpoint's optimizer state (moments, step counts) with this command's settings (lr, weight decay,
    betas, ...): the scheduler then starts from this command's --lr (its ``initial_lr`` is dropped)."""
    fresh = [{k: v for k, v in g.items() if k != 'params'} for g in optimizer.param_groups]
    try:
        optimizer.load_state_dict(state)
    except (ValueError, KeyError) as e:
        raise ValueError(
            f"--resume {path}: its optimizer state does not fit this run's optimizer ({e}): the trainable "
            f'parameters differ (another --teacher, --model-kwargs, --layer-decay or optimizer). {_ways_out(path)} '
            f'To keep these flags and weights with a fresh optimizer, pass --no-resume-opt.') from e
    hyper = set(optimizer.defaults) | {'weight_decay', 'lr_scale'}
    changes = {}
    for group, new in zip(optimizer.param_groups, fresh):
        saved_lr = group.pop('initial_lr', group.get('lr'))
        if plain_value(saved_lr) != plain_value(new.get('lr')):
            changes['lr'] = (saved_lr, new.get('lr'))
        for k in hyper & set(new):
            if k != 'lr' and k in group and plain_value(group[k]) != plain_value(new[k]):
                changes.setdefault(k, (group[k], new[k]))
            group[k] = new[k]
    if changes and log_info:
        _logger.info('--resume: the optimizer state comes from the checkpoint, its settings from this command: '
                     + ', '.join(f'{k} {n} (the run: {b})' for k, (b, n) in changes.items()) + '.')


def resume_run(spec: RunSpec, task: nn.Module, optimizer: Optional[torch.optim.Optimizer],
               loss_scaler=None, log_info: bool = True) -> Resumed:
    """Restore ``--resume`` into ``task`` (and ``optimizer`` / ``loss_scaler`` unless --no-resume-opt)."""
    path = spec.run.resume
    ckpt = read_checkpoint(path, trust_checkpoint=spec.model.trust_checkpoint, what='--resume')
    key = next((k for k in ('state_dict', 'model') if isinstance(ckpt, dict) and isinstance(ckpt.get(k), dict)), None)
    if key is None:
        raise ValueError(
            f"--resume {path} is not a training checkpoint (no 'state_dict'): give last.pth.tar or "
            f'checkpoint-N.pth.tar of a train_tgr.py / timm run; to start from bare weights, use --initial-checkpoint.')
    keep_opt = optimizer is not None and not spec.run.no_resume_opt
    differ = run_differences(as_dict(ckpt.get('args')), spec.record(), with_optimizer=keep_opt)
    if differ:
        raise ValueError(f'--resume {path} continues a run trained with other settings: {"; ".join(differ)}. '
                         f'{_ways_out(path)}')
    _check_weights(ckpt, path)
    state_dict = clean_state_dict(ckpt[key])
    try:
        task.load_checkpoint_state(state_dict, ckpt.get('task_state') if key == 'state_dict' else None)
    except RuntimeError as e:
        trainable = unwrap_model(task.get_trainable_module())
        student = unwrap_model(getattr(trainable, 'student', trainable))
        parts = state_dict_mismatches(state_dict, student.state_dict())
        detail = '; '.join(parts) if parts else str(e).strip().splitlines()[0][:300]
        raise ValueError(f"--resume {path} does not fit this run's model ({detail}). {_ways_out(path)}") from e
    if keep_opt and 'optimizer' in ckpt:
        if log_info:
            _logger.info('Restoring optimizer state from checkpoint...')
        _load_optimizer(optimizer, ckpt['optimizer'], path, log_info)
    if keep_opt and loss_scaler is not None and loss_scaler.state_dict_key in ckpt:
        loss_scaler.load_state_dict(ckpt[loss_scaler.state_dict_key])
    epoch = ckpt.get('epoch')
    start = 0 if epoch is None else int(epoch) + (1 if ckpt.get('version', 1) > 1 else 0)
    if log_info:
        _logger.info(f"Loaded checkpoint '{path}' (epoch {epoch})")
    return Resumed(path=path, checkpoint=ckpt, start_epoch=start)


def load_resumed_ema(task: nn.Module, resumed: Resumed) -> None:
    """The EMA from the resumed checkpoint, as timm's ``load_task_ema_checkpoint`` picks it: its EMA weights,
    else (a run that had no EMA) the model's."""
    ckpt = resumed.checkpoint
    for key, task_key in (('state_dict_ema', 'task_state_ema'), ('model_ema', ''), ('state_dict', 'task_state'),
                          ('model', '')):
        if ckpt.get(key) is not None:
            task.load_checkpoint_state(clean_state_dict(ckpt[key]), ckpt.get(task_key) if task_key else None, ema=True)
            _logger.info(f"Loaded {key} from checkpoint '{resumed.path}' into the EMA")
            return
