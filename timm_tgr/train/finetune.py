"""Starting a run from trained weights: fine-tuning with a new classifier, as timm does it.

- ``--model hf-hub:ORG/NAME`` / ``local-dir:DIR`` (an exported model, :mod:`timm_tgr.export`):
  :func:`model_source` gives the architecture and the ``config.json`` model args, so checkpoints
  of the run record the real architecture and every kwarg that rebuilds it. With ``--pretrained``
  timm loads the weights and drops the classifier when ``--num-classes`` differs from the weights'
  (``pretrained_cfg['num_classes']`` / ``['classifier']``): :func:`log_pretrained_head` says so.
- ``--initial-checkpoint`` of a ``train_tgr.py`` (or timm) checkpoint: :func:`load_initial_checkpoint`
  reads it with :mod:`timm_tgr.utils.checkpoint` (its EMA weights when it has them, by that module's
  rule), loads the student (``module.`` / ``student.`` prefixes and teacher tensors removed), leaves out
  the classifier when the class count differs, and loads everything else strictly; weights of another
  architecture or expert count fail with an error naming both, weights holding NaN / Inf naming the tensors.
- ``--reset-classifier``: a fresh classifier also for the same class count (new classes, e.g. classes
  5-9 relabelled 0-4 after pre-training on 0-4), through timm's ``reset_classifier``.
"""
import logging
from typing import Any, Dict, List, Optional, Tuple

import timm
import torch
import torch.nn as nn
from timm.models import load_model_config_from_hf, parse_model_name
from timm.models._hub import load_model_config_from_path

from ..models._factory import is_architecture_kwarg, resolve_model_args
from ..utils.checkpoint import (
    as_dict, check_finite, describe_weights, read_checkpoint, select_weights, state_dict_mismatches, student_state_dict,
)

__all__ = [
    'model_source', 'classifier_names', 'log_pretrained_head', 'load_initial_checkpoint', 'reset_classifier',
    'describe_model',
]

_logger = logging.getLogger(__name__)

# MoE settings that change routing without changing any tensor shape: must match the checkpoint's too
_ROUTING_KWARGS = ('num_experts', 'top_k')


def _layout_kwarg(name: str) -> bool:
    """An architecture kwarg that starting weights must match: the classifier is made fresh for any class count."""
    return is_architecture_kwarg(name) and name != 'num_classes'


def model_source(name: str) -> Tuple[str, Dict[str, Any]]:
    """``(architecture, config.json model_args)`` of ``hf-hub:`` / ``local-dir:`` names; ``(name, {})`` otherwise."""
    source, model_id = parse_model_name(name)
    if source == 'hf-hub':
        _, arch, model_args = load_model_config_from_hf(model_id)
    elif source == 'local-dir':
        try:
            _, arch, model_args = load_model_config_from_path(model_id)
        except FileNotFoundError as e:
            raise FileNotFoundError(
                f'--model {name}: {e}. local-dir: takes a folder written by `python -m timm_tgr.export CKPT --out '
                f'DIR` (or timm.models.save_for_hf).') from e
    else:
        return name, {}
    return arch, dict(model_args or {})


def classifier_names(model: nn.Module) -> Tuple[str, ...]:
    """The classifier module names of ``pretrained_cfg['classifier']`` (``('head', 'head_dist')`` if distilled)."""
    names = (getattr(model, 'pretrained_cfg', None) or {}).get('classifier') or 'head'
    return (names,) if isinstance(names, str) else tuple(names)


def log_pretrained_head(model: nn.Module, source: str) -> None:
    """Log whether ``--pretrained`` weights came with their classifier or timm gave the model a fresh one."""
    pretrained_classes = (getattr(model, 'pretrained_cfg', None) or {}).get('num_classes')
    if pretrained_classes is not None and pretrained_classes != model.num_classes:
        _logger.info(f'Pretrained weights of {source} loaded except the classifier '
                     f'({", ".join(classifier_names(model))}: {pretrained_classes} classes): fresh for '
                     f'{model.num_classes} classes.')
    else:
        _logger.info(f'Pretrained weights of {source} loaded, classifier included.')


def reset_classifier(model: nn.Module) -> None:
    """A fresh classifier for the same class count (``--reset-classifier``: new classes), by timm's
    ``reset_classifier``."""
    model.reset_classifier(model.num_classes)
    _logger.info(f'Classifier reset (--reset-classifier): {", ".join(classifier_names(model))} fresh for '
                 f'{model.num_classes} classes.')


def describe_model(arch: str, kwargs: Dict[str, Any]) -> str:
    """``'vmoe_deit_tiny with num_experts=4, embed_dim=32'``: the architecture and its layout kwargs."""
    shown = {k: v for k, v in kwargs.items() if _layout_kwarg(k)}
    first = [k for k in _ROUTING_KWARGS if k in shown]
    items = [f'{k}={shown[k]}' for k in first] + [f'{k}={v}' for k, v in shown.items() if k not in first]
    return f'{arch} with {", ".join(items)}' if items else arch


def _checkpoint_model(ckpt: Dict[str, Any]) -> Tuple[Optional[str], Dict[str, Any]]:
    """The architecture and create_model kwargs the checkpoint's args record (None when not recorded)."""
    run_args = as_dict(ckpt.get('args'))
    try:
        return resolve_model_args(run_args, checkpoint_arch=ckpt.get('arch'))
    except ValueError:
        return None, {}


class _Mismatch(ValueError):
    pass


def _checkpoint_routing(ckpt_arch: Optional[str], ckpt_kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """``num_experts`` / ``top_k`` of the checkpoint's model: as recorded, else its architecture's defaults
    (read from the model built on the meta device: no memory, no init)."""
    values = {k: ckpt_kwargs[k] for k in _ROUTING_KWARGS if k in ckpt_kwargs}
    if ckpt_arch and len(values) < len(_ROUTING_KWARGS):
        try:
            with torch.device('meta'):
                built = timm.create_model(ckpt_arch, **ckpt_kwargs)
        except (TypeError, ValueError, RuntimeError):
            return values  # kwargs this timm cannot build: the layout check below still applies
        values = {**{k: getattr(built, k) for k in _ROUTING_KWARGS if hasattr(built, k)}, **values}
    return values


def _check_routing_kwargs(model: nn.Module, ckpt_kwargs: Dict[str, Any]) -> None:
    """The checkpoint's expert count and top-k must be the model's (top-k changes no tensor shape)."""
    for key in _ROUTING_KWARGS:
        if key in ckpt_kwargs and hasattr(model, key) and ckpt_kwargs[key] != getattr(model, key):
            raise _Mismatch(f'{key} {ckpt_kwargs[key]} vs {getattr(model, key)}')


def _split_classifier(
        model: nn.Module, state_dict: Dict[str, torch.Tensor],
) -> Tuple[Dict[str, torch.Tensor], List[str], int]:
    """``state_dict`` without its classifier tensors when its class count differs from the model's;
    the keys left out and the checkpoint's class count (-1 when it has no classifier)."""
    names = classifier_names(model)
    head = [k for k in state_dict if k.split('.')[0] in names]
    weights = [state_dict[k] for k in head if k.endswith('weight')]
    ckpt_classes = weights[0].shape[0] if weights else -1
    if not head or ckpt_classes == model.num_classes:
        return state_dict, [], ckpt_classes
    return {k: v for k, v in state_dict.items() if k not in head}, head, ckpt_classes


def _check_layout(model: nn.Module, state_dict: Dict[str, torch.Tensor], left_out: List[str]) -> None:
    """Every tensor of the model but the reset classifier is in ``state_dict`` with its shape, and nothing else."""
    ref = model.state_dict()
    fresh = {k for k in ref if k.split('.')[0] in classifier_names(model)} if left_out else set()
    parts = state_dict_mismatches(state_dict, ref, ignore=fresh)
    if parts:
        raise _Mismatch('; '.join(parts))


def _mismatch_error(path: str, detail: str, ckpt_model: Tuple[Optional[str], Dict[str, Any]], arch: str,
                    kwargs: Dict[str, Any]) -> ValueError:
    """The error for weights that do not fit this run's model, naming both models and the fix."""
    ckpt_arch, ckpt_kwargs = ckpt_model
    trained = describe_model(ckpt_arch, ckpt_kwargs) if ckpt_arch else 'an architecture it does not record'
    differ = [f'{k}={v}' for k, v in ckpt_kwargs.items()
              if _layout_kwarg(k) and kwargs.get(k) != v]
    fix = f'pass --model {ckpt_arch}' if ckpt_arch and ckpt_arch != arch else 'pass'
    fix = f'{fix} --model-kwargs {" ".join(differ)}' if differ else (fix if fix != 'pass' else '')
    fix = (fix + ', or ' if fix else '') + 'give an --initial-checkpoint of this architecture'
    return ValueError(f'--initial-checkpoint {path} was trained as {trained}; this run builds '
                      f'{describe_model(arch, kwargs)} ({detail}): {fix}.')


def load_initial_checkpoint(model: nn.Module, path: str, arch: str, kwargs: Dict[str, Any],
                            trust_checkpoint: bool = False, ema: Optional[bool] = None) -> List[str]:
    """Load the student weights of checkpoint ``path`` into ``model`` (built as ``arch`` with ``kwargs``).

    The classifier is left fresh when the checkpoint's class count differs (as timm's pretrained
    loading does); every other tensor must match. ``ema`` picks the weights as
    :func:`timm_tgr.utils.checkpoint.select_weights` does. Returns the classifier keys left out.
    """
    ckpt = read_checkpoint(path, trust_checkpoint=trust_checkpoint, what='--initial-checkpoint')
    raw, key = select_weights(ckpt, path, ema=ema, what='--initial-checkpoint')
    ckpt = ckpt if key is not None else {}
    state_dict, dropped = student_state_dict(raw)
    check_finite(state_dict, f'--initial-checkpoint {path} [{key or "state_dict"}]',
                 'Start from an earlier checkpoint of that run (checkpoint-N.pth.tar of an epoch before it diverged).')
    ckpt_arch, ckpt_kwargs = _checkpoint_model(ckpt)
    ckpt_kwargs = {**_checkpoint_routing(ckpt_arch, ckpt_kwargs), **ckpt_kwargs}
    try:
        _check_routing_kwargs(model, ckpt_kwargs)
        state_dict, left_out, ckpt_classes = _split_classifier(model, state_dict)
        _check_layout(model, state_dict, left_out)
    except _Mismatch as e:
        kwargs = {**{k: getattr(model, k) for k in _ROUTING_KWARGS if hasattr(model, k)}, **kwargs}
        raise _mismatch_error(path, str(e), (ckpt_arch, ckpt_kwargs), arch, kwargs) from None
    model.load_state_dict(state_dict, strict=not left_out)
    note = f' ({len(dropped)} teacher / teacher-router tensors left out)' if dropped else ''
    what = describe_weights(key)
    if left_out:
        _logger.info(f'Initial checkpoint {path}: {what} loaded{note}, except its classifier '
                     f'({", ".join(left_out)}: {ckpt_classes} classes): fresh for {model.num_classes} classes.')
    else:
        _logger.info(f'Initial checkpoint {path}: {what} loaded{note}, classifier included.')
    return left_out
