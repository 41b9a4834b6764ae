"""timm's own ``train.py`` with the plugin: ``python train.py --device-modules timm_tgr.timm_train_hook --model ...``.

timm's train.py picks its task itself: ``ClassificationTask(model=..., criterion=...)``, or a
distillation task with ``--kd-model-name``. Those tasks know nothing of MoE auxiliary losses or
teacher guidance, so a timm_tgr model trained by them would silently lose both. ``--device-modules``
imports :mod:`timm_tgr.timm_train_hook` inside train.py's ``main()`` before the task is created; at that import
:func:`install` replaces the task names in train.py's namespace (``__main__``) with MoE-aware ones
(``import timm_tgr`` alone changes nothing; the deprecated ``--device-modules timm_tgr`` still installs, with a
warning, until 0.2: :func:`install_for_legacy_device_modules`):

- ``ClassificationTask(model, ...)`` -> :func:`create_task`: timm's ``ClassificationTask`` for dense
  models (unchanged behaviour), :class:`~timm_tgr.task.vmoe_task.VMoETask` for timm_tgr MoE models (adds
  lambda_load L_load and the z-loss), :class:`~timm_tgr.task.tgr_task.TGRTask` for ``tgr_moe_*`` models or any
  MoE model given ``tgr_*`` options (adds the teacher guidance).
- ``LogitDistillationTask`` / ``FeatureDistillationTask`` / ``TokenDistillationTask`` -> subclasses
  that add the MoE auxiliary losses of a timm_tgr student (TGR with timm's KD is refused).

Nothing else changes and nothing happens outside timm's train.py (the check is that ``__main__``
holds timm's own ``ClassificationTask`` and ``train_one_epoch``). A custom script calls
``install(globals())`` itself, or simply uses :func:`create_task`.

TGR options travel as model kwargs with a ``tgr_`` prefix (``--model-kwargs tgr_distill_weight=2.0``);
the model keeps them, unread, in ``guidance_cfg``, and :func:`create_task` checks them (:func:`check_guidance_cfg`:
an unknown option or a value of the wrong type is a TypeError, one out of range a ValueError) and reads them. They
are the fields of :class:`~timm_tgr.task.options.GuidanceConfig` (its meanings, defaults and ranges), and
``tgr_enable``: False trains a ``tgr_moe_*`` model without teacher (V-MoE):

{options}

What timm's loop then does is right by construction: every loss term is inside the one ``loss``
tensor (so ``/ grad_accum_steps`` and the fp16 GradScaler scale them all alike); the teacher routers
are part of the task's trainable module (optimizer, DDP, clipping); checkpoints hold the student as
``state_dict`` and the teacher routers as ``task_state`` (never the teacher); EMA is of the student.
The MoE load loss is computed on each process's own batch (as V-MoE does per device group).
"""
import logging
import sys
import warnings
from typing import Any, Dict, Optional

import torch.nn as nn
from timm.utils import unwrap_model

from ..models import moe_model
from .factory import create_training_task
from .options import GuidanceConfig, check_option, guidance_options, no_teacher, option_help, option_types
from .teacher import default_teacher, teacher_fixes

_logger = logging.getLogger(__name__)

__all__ = [
    'GUIDANCE_KEYS', 'check_guidance_cfg', 'pop_guidance_kwargs', 'model_guidance_cfg', 'guidance_config',
    'create_task', 'moe_aware_kd_task', 'install', 'is_timm_train', 'install_into_timm_train',
    'install_for_legacy_device_modules', 'LEGACY_HOOK_MESSAGE',
]

# the tgr_* model kwargs (without the prefix) and the types each takes
GUIDANCE_KEYS = {**{name: option_types(name) for name, (_, _, o) in guidance_options().items() if o.kwarg},
                 'enable': (bool,)}


def _kwarg(name: str) -> str:
    return 'tgr_' + name


def _options_table() -> str:
    """The tgr_* kwargs as an RST table (this module's docstring)."""
    rows = [('option', 'default', 'meaning')] + [
        (f'``{_kwarg(n)}``', repr(d), ('False: ' if d is True else '') + option_help(n, _kwarg))
        for n, (_, d, o) in guidance_options().items() if o.kwarg]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    rule = '  '.join('=' * w for w in widths)
    lines = ['  '.join(f'{c:<{w}}' for c, w in zip(r, widths)).rstrip() for r in rows]
    return '\n'.join([rule, lines[0], rule] + lines[1:] + [rule])


__doc__ = __doc__.format(options=_options_table())


def check_guidance_cfg(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """``cfg`` (a model's ``guidance_cfg``: its ``tgr_*`` kwargs without the prefix), every key known and its value
    of its type and range; a TypeError or ValueError naming the option otherwise."""
    for name, value in cfg.items():
        key = _kwarg(name)
        if name not in GUIDANCE_KEYS:
            raise TypeError(
                f'unknown TGR option {key!r}: the tgr_* model kwargs are '
                f'{", ".join(_kwarg(k) for k in sorted(GUIDANCE_KEYS))} (see timm_tgr.task.timm_train).')
        if name == 'enable':
            if not isinstance(value, bool):
                raise TypeError(f'{key}={value!r} must be bool.')
            continue
        default = guidance_options()[name][1]
        check_option(name, value, key, f' Pass --model-kwargs {key}=VALUE, or leave it out for the default '
                                       f'({default!r}).')
    return cfg


def pop_guidance_kwargs(kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """Remove ``tgr_*`` keys from model kwargs and return them checked (:func:`check_guidance_cfg`), without the
    prefix."""
    return check_guidance_cfg({k[len('tgr_'):]: kwargs.pop(k) for k in [k for k in kwargs if k.startswith('tgr_')]})


def model_guidance_cfg(model: nn.Module) -> Dict[str, Any]:
    """The checked ``tgr_*`` options a timm_tgr model was created with (``{}`` for other models)."""
    return check_guidance_cfg(dict(getattr(unwrap_model(model), 'guidance_cfg', None) or {}))


def _wants_guidance(base: nn.Module, cfg: Dict[str, Any]) -> bool:
    if 'enable' in cfg:
        return bool(cfg['enable'])
    if no_teacher(cfg.get('teacher')):
        return False
    name = (getattr(base, 'pretrained_cfg', None) or {}).get('architecture', '')
    return name.startswith('tgr_') or bool(cfg)


# the fixes of teacher errors (keys of timm_tgr.task.teacher.TEACHER_FIXES) in train.py's options
TRAIN_PY_TEACHER_FIXES = dict(
    name='pass --model-kwargs tgr_teacher=NAME (e.g. {teacher})',
    norm='pass --model-kwargs "tgr_teacher_kwargs={{\'mean\': M, \'std\': S}}" (the values the teacher was trained '
         'with)',
    weights='pass --model-kwargs tgr_teacher_checkpoint=FILE',
    grid='pass --model-kwargs "tgr_teacher_kwargs={{\'img_size\': {img_size}}}"',
)


def _default_teacher(arch: str) -> str:
    with teacher_fixes(TRAIN_PY_TEACHER_FIXES):
        return default_teacher(arch)


def guidance_config(model: nn.Module) -> Optional[GuidanceConfig]:
    """The teacher guidance the ``tgr_*`` kwargs of ``model`` ask for; None for a dense model or an MoE model
    trained without teacher (a ``vmoe_*`` model without ``tgr_*`` kwargs, or ``tgr_enable=False``).

    The teacher defaults to the paper's for the student's size, created at the student's image size and channels
    unless ``tgr_teacher_kwargs`` say otherwise.
    """
    if moe_model(model) is None:
        return None
    base = unwrap_model(model)
    cfg = model_guidance_cfg(base)
    if not _wants_guidance(base, cfg):
        return None
    schedule = cfg.get('schedule', GuidanceConfig.schedule)
    if schedule == 'adaptive':
        raise ValueError(
            "tgr_schedule='adaptive' needs the probe-set consistency measured at each epoch end, which timm's "
            "train.py does not do: use train_tgr.py --distill-schedule adaptive, or tgr_schedule='first'.")
    if schedule == 'first' and 'total_steps' not in cfg:
        raise ValueError(
            "tgr_schedule='first' needs tgr_total_steps (training forwards of the whole run: epochs x batches "
            "per epoch, counting every micro-batch with --grad-accum-steps).")
    arch = (getattr(base, 'pretrained_cfg', None) or {}).get('architecture', '')
    options = {k: v for k, v in cfg.items() if k != 'enable'}
    return GuidanceConfig(**dict(options, teacher=cfg.get('teacher') or _default_teacher(arch)))


def create_task(model: nn.Module, criterion: Optional[nn.Module] = None, device=None, dtype=None,
                verbose: bool = True, **kwargs):
    """The task timm's train.py should use for ``model`` (its ``ClassificationTask`` signature): see
    :func:`~timm_tgr.task.factory.create_training_task`, with the guidance of :func:`guidance_config`."""
    guidance = guidance_config(model)
    with teacher_fixes(TRAIN_PY_TEACHER_FIXES):
        task = create_training_task(model, criterion=criterion, guidance=guidance, device=device, dtype=dtype,
                                    verbose=verbose, **kwargs)
    if verbose and guidance is not None:
        routers = f', teacher routers from {guidance.teacher_routers}' if guidance.teacher_routers else ''
        _logger.info(f'timm_tgr: TGR task, teacher {guidance.teacher}{routers}')
    elif verbose and moe_model(model) is not None:
        _logger.info('timm_tgr: V-MoE task (task loss + MoE load/z losses)')
    return task


class _MoEAuxMixin:
    """Adds the MoE auxiliary losses of a timm_tgr student to a timm distillation task's loss."""

    def forward(self, input, target):
        result = super().forward(input, target)
        student = self.__dict__.get('_moe_student')
        if student is not None:
            from .vmoe_task import moe_loss_components
            moe = moe_loss_components(student.routing_infos())
            result['loss'] = result['loss'] + moe['moe_aux_loss']
            result.update({k: v.detach() for k, v in moe.items()})
        return result


def moe_aware_kd_task(task_cls):
    """A subclass of timm distillation task ``task_cls`` that also adds a timm_tgr student's MoE losses."""

    class MoEAwareTask(_MoEAuxMixin, task_cls):
        def __init__(self, student_model, *args, **kwargs):
            super().__init__(student_model, *args, **kwargs)
            if moe_model(student_model) is not None:
                base = unwrap_model(student_model)
                if _wants_guidance(base, model_guidance_cfg(base)):
                    raise ValueError(
                        f'{task_cls.__name__} (--kd-model-name) with teacher-guided routing is not supported: '
                        f'train a vmoe_deit_* model with timm KD, or a tgr_moe_* model without --kd-model-name '
                        f'(or pass --model-kwargs tgr_enable=False).')
                self.__dict__['_moe_student'] = unwrap_model(student_model)  # not a registered submodule

    MoEAwareTask.__name__ = MoEAwareTask.__qualname__ = f'MoEAware{task_cls.__name__}'
    return MoEAwareTask


def is_timm_train(namespace: Dict[str, Any]) -> bool:
    """True for the globals of pytorch-image-models' train.py."""
    try:
        from timm.task import ClassificationTask
    except ImportError:
        return False
    return namespace.get('ClassificationTask') is ClassificationTask and 'train_one_epoch' in namespace


def install(namespace: Dict[str, Any]) -> bool:
    """Swap timm's task classes in ``namespace`` (train.py's globals) for the MoE-aware ones."""
    if namespace.get('ClassificationTask') is create_task:
        return True
    namespace['ClassificationTask'] = create_task
    for name in ('LogitDistillationTask', 'FeatureDistillationTask', 'TokenDistillationTask'):
        if isinstance(namespace.get(name), type):
            namespace[name] = moe_aware_kd_task(namespace[name])
    _logger.info('timm_tgr: tasks of this training script made MoE-aware (MoE losses and teacher-guided routing '
                 'for timm_tgr models; dense models unchanged)')
    return True


def _timm_train_namespace() -> Optional[Dict[str, Any]]:
    namespace = getattr(sys.modules.get('__main__'), '__dict__', None)
    return namespace if namespace is not None and is_timm_train(namespace) else None


def install_into_timm_train() -> bool:
    """What importing :mod:`timm_tgr.timm_train_hook` does: installs only when ``__main__`` is timm's train.py."""
    namespace = _timm_train_namespace()
    return namespace is not None and install(namespace)


LEGACY_HOOK_MESSAGE = (
    "'--device-modules timm_tgr' is deprecated: name the train.py hook, '--device-modules timm_tgr.timm_train_hook' "
    "(from timm_tgr 0.2 'import timm_tgr' will only register the models, leaving train.py's tasks unchanged).")


def _import_module_name() -> Optional[str]:
    """The ``name`` of the ``importlib.import_module(name)`` call running now, if any (train.py imports its
    ``--device-modules`` that way)."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == 'import_module' and frame.f_globals.get('__name__') == 'importlib':
            return frame.f_locals.get('name')
        frame = frame.f_back
    return None


def install_for_legacy_device_modules() -> bool:
    """Called on ``import timm_tgr``: the deprecated ``--device-modules timm_tgr`` keeps working for one release.

    Only when that import is train.py's ``importlib.import_module('timm_tgr')`` of its ``--device-modules``
    (``__main__`` is timm's train.py) are the tasks installed, with a DeprecationWarning and a logged warning; any
    other ``import timm_tgr`` (a plain import statement, or the hook module's) changes nothing.
    """
    if _import_module_name() != 'timm_tgr':
        return False
    namespace = _timm_train_namespace()
    if namespace is None:
        return False
    warnings.warn(LEGACY_HOOK_MESSAGE, DeprecationWarning, stacklevel=2)
    _logger.warning(LEGACY_HOOK_MESSAGE)
    return install(namespace)
