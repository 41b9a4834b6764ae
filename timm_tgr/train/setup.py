"""Everything a run needs before its first epoch, one function per piece, all read from its
:class:`~timm_tgr.train.spec.RunSpec`.

:func:`setup_training` builds, in this order (the order keeps runs and resumed runs bit-identical
on the CPU): the seed, dataset prerequisites (:mod:`.loaders`), the student (:func:`create_model`), the data
loaders, the task with its teacher (:func:`create_task`), optimizer / AMP / scheduler, resume, and the run folder
(:mod:`.run_folder`: checkpoint saver, ``args.yaml``, earlier metrics rows).
"""
import logging
import os
from contextlib import suppress
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Callable, Optional, Tuple

import torch
import torch.nn as nn

import timm
from timm.data import resolve_data_config
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2, optimizer_kwargs
from timm.scheduler import create_scheduler_v2, scheduler_kwargs
from timm.utils import NativeScaler, is_primary, random_seed, unwrap_model

from ..models import moe_model, upcycle_from
from ..task import RouterFreezeSchedule
from ..task.factory import create_training_task
from ..task.metrics import ConsistencyTracker, RoutingReference
from ..task.teacher import teacher_fixes
from ..task.timm_train import model_guidance_cfg
from ..utils.checkpoint import check_finite
from ..utils.metrics_log import read_metrics
from .finetune import load_initial_checkpoint, log_pretrained_head, reset_classifier
from .loaders import Loaders, create_device_loaders, create_loaders, prepare_dataset
from .record import checkpoint_args
from .report import row_metric
from .resume import Resumed, load_resumed_ema, resume_run
from .run_folder import RunFolder, complete_last_save, kept_checkpoints, read_bytes, setup_output_dir, write_args_yaml
from .saver import RunCheckpointSaver
from .spec import TRAIN_TGR_TEACHER_FIXES, ModelSpec, RunSpec

__all__ = [
    'TaskSetup', 'Optimization', 'Training', 'setup_training', 'create_model', 'create_task', 'create_reference',
    'create_optimization',
]

_logger = logging.getLogger(__name__)


@dataclass
class TaskSetup:
    """The timm TrainingTask, how it is described in the log, the MoE routing-consistency tracker and the
    routing of the starting weights (``consistency_pretrained``; None when off)."""
    task: nn.Module
    kind: str
    tracker: Optional[ConsistencyTracker] = None
    reference: Optional[RoutingReference] = None


@dataclass
class Optimization:
    """Optimizer, AMP, lr schedule and the StableMoE router freeze."""
    optimizer: torch.optim.Optimizer
    updates_per_epoch: int
    amp_autocast: Callable = suppress
    loss_scaler: Optional[NativeScaler] = None
    lr_scheduler: Any = None
    num_epochs: int = 0
    freeze: Optional[RouterFreezeSchedule] = None


@dataclass
class Training:
    """All of a run that the epoch loop touches."""
    device: torch.device
    model: nn.Module
    loaders: Loaders
    task: nn.Module
    task_kind: str
    tracker: Optional[ConsistencyTracker]
    optim: Optimization
    run: RunFolder
    start_epoch: int = 0
    reference: Optional[RoutingReference] = None


def setup_training(spec: RunSpec) -> Training:
    """Build the run ``spec`` describes (see the module docstring for the order)."""
    device = spec.runtime.device
    random_seed(spec.runtime.seed, 0)  # same initial weights on every rank
    prepare_dataset(spec)
    model = create_model(spec.model, device)
    check_teacher_fits(spec, model)  # before any data work: a bad combination fails fast
    data_config = resolve_data_config(data_config_args(spec), model=model, verbose=is_primary(spec))
    set_input_normalization(model, data_config)
    if is_primary(spec):
        _logger.info(f'Model {spec.model.model} created, {sum(p.numel() for p in model.parameters()):,} parameters')
    make_loaders = create_device_loaders if spec.data.device_data else create_loaders
    loaders = make_loaders(spec, data_config, device, num_classes=unwrap_model(model).num_classes)
    ts = create_task(spec, model, loaders, device)
    optim = create_optimization(spec, ts.task, model, len(loaders.train), device)
    output_dir, lock = setup_output_dir(spec)
    try:
        resumed = resume_task(spec, ts.task, optim) if spec.run.resume else None
        start_epoch = resumed.start_epoch if resumed is not None else 0
        prepare_task(spec, ts.task, optim, device, resumed)
        optim.lr_scheduler, optim.num_epochs = create_lr_scheduler(spec, optim, start_epoch)
        run = open_run_folder(spec, model, ts, optim, output_dir, start_epoch)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    run.lock = lock
    del resumed  # the checkpoint's tensors
    return Training(device=device, model=model, loaders=loaders, task=ts.task, task_kind=ts.kind,
                    tracker=ts.tracker, optim=optim, run=run, start_epoch=start_epoch, reference=ts.reference)


# --------------------------------------------------------------------------------------------------
# model
# --------------------------------------------------------------------------------------------------
def create_model(spec: ModelSpec, device: torch.device) -> nn.Module:
    """The student: ``timm.create_model`` with the flags' kwargs, its starting weights (``--pretrained``,
    ``--upcycle-from``, ``--initial-checkpoint``), on ``device``. A classifier for another class count than the
    weights' starts fresh (see :mod:`.finetune`)."""
    flag_kwargs = spec.flag_kwargs
    try:
        model = timm.create_model(spec.model, pretrained=spec.pretrained, **flag_kwargs)
    except (AssertionError, TypeError) as e:  # timm's checks of the kwargs: an assert or an unknown keyword
        raise ValueError(build_error(spec.model, flag_kwargs, e)) from e
    model_guidance_cfg(model)  # tgr_* kwargs (recorded, read by timm's train.py only) must be known options
    if spec.pretrained:
        check_finite(model.state_dict(), f'--pretrained {spec.model}',
                     'Use weights from before it diverged (another export or checkpoint).')
        log_pretrained_head(model, spec.model)
    if spec.upcycle_from:
        upcycle_from(spec.upcycle_from, model, trust_checkpoint=spec.trust_checkpoint)
    if spec.initial_checkpoint:
        load_initial_checkpoint(model, spec.initial_checkpoint, spec.model_arch, spec.model_kwargs_resolved,
                                trust_checkpoint=spec.trust_checkpoint)
    if spec.reset_classifier and spec.weights_loaded:
        reset_classifier(model)
    if spec.grad_checkpointing:
        model.set_grad_checkpointing(True)
    return model.to(device)


def build_error(name: str, kwargs: dict, e: BaseException) -> str:
    """Why ``timm.create_model(name, **kwargs)`` failed, naming the flags that set the kwargs."""
    text = (str(e).strip().splitlines() or [''])[0][:200] or type(e).__name__
    hint = ''
    if 'num_heads' in text:
        hint = (' The width (embed_dim) must be a multiple of num_heads: pass --model-kwargs num_heads=H with H '
                'dividing embed_dim (e.g. embed_dim=32 num_heads=2).')
    return (f'--model {name} cannot be built with the kwargs {kwargs} (from --model-kwargs, --num-classes, '
            f'--img-size, --in-chans, --drop, --drop-path): {type(e).__name__}: {text}.{hint or " Fix those flags."}')


def check_teacher_fits(spec: RunSpec, model: nn.Module) -> None:
    """A teacher guides MoE routers: a dense student with one is an error naming the fix."""
    teacher = spec.guidance.teacher
    if teacher is not None and moe_model(model) is None:
        raise ValueError(f'--teacher {teacher!r} guides MoE routers, but {spec.model.model!r} is a dense model: '
                         f'drop --teacher, or train a timm_tgr MoE model (e.g. tgr_moe_deit_tiny).')


def data_config_args(spec: RunSpec) -> dict:
    """What timm's ``resolve_data_config`` reads of the flags: size, channels, normalization, eval crop."""
    return dict(img_size=spec.model.img_size, in_chans=spec.model.in_chans, mean=spec.data.mean, std=spec.data.std,
                crop_pct=spec.data.crop_pct, interpolation=spec.data.interpolation)


def set_input_normalization(model: nn.Module, data_config: dict) -> None:
    """The student's ``pretrained_cfg`` mean/std := those the loaders normalize with: TGR's teacher converts
    the input from them to its own (an exported student's cfg holds its pre-training data's, which
    ``--mean`` / ``--std`` or a dataset default may replace)."""
    cfg = dict(model.pretrained_cfg, mean=tuple(data_config['mean']), std=tuple(data_config['std']))
    model.pretrained_cfg = model.default_cfg = cfg


# --------------------------------------------------------------------------------------------------
# task, optimization
# --------------------------------------------------------------------------------------------------
def train_criterion(smoothing: float, mixup_active: bool) -> nn.Module:
    """Soft-target CE under mixup/cutmix, else label-smoothed CE (--smoothing), else plain CE."""
    if mixup_active:
        return SoftTargetCrossEntropy()
    if smoothing:
        return LabelSmoothingCrossEntropy(smoothing=smoothing)
    return nn.CrossEntropyLoss()


def create_task(spec: RunSpec, model: nn.Module, loaders: Loaders, device: torch.device) -> TaskSetup:
    """The task of :func:`~timm_tgr.task.factory.create_training_task` for the run (TGRTask with a teacher,
    VMoETask for an MoE without one, timm's ClassificationTask for dense models), with the trainer's
    routing-consistency tracker and reference in its state."""
    criterion = train_criterion(spec.augment.smoothing, loaders.mixup_active).to(device)
    verbose = is_primary(spec)
    guidance = spec.guidance.config
    if guidance is not None:
        guidance = replace(guidance, total_steps=spec.optim.epochs * len(loaders.train))
    with teacher_fixes(TRAIN_TGR_TEACHER_FIXES):
        task = create_training_task(model, criterion=criterion, guidance=guidance, device=device, verbose=verbose)
    if guidance is not None:
        kind = f'TGR ({guidance.mode}, teacher {guidance.teacher}, schedule {guidance.schedule})'
        if guidance.teacher_routers:
            kind += f', teacher routers from {guidance.teacher_routers}'
    else:
        kind = 'V-MoE (no teacher)' if moe_model(model) is not None else 'dense classification'
    tracker = ConsistencyTracker() if moe_model(model) is not None else None
    if tracker is not None:
        task.register_trainer_state('consistency', tracker)  # saved with checkpoints, restored on resume
    reference = create_reference(spec, model, task)
    if verbose:
        _logger.info(f'Task: {kind}')
    return TaskSetup(task=task, kind=kind, tracker=tracker, reference=reference)


def create_reference(spec: RunSpec, model: nn.Module, task: nn.Module) -> Optional[RoutingReference]:
    """The routing of the starting weights for ``consistency_pretrained`` (``--consistency-pretrained``;
    ``auto``: when starting from trained weights), kept in the task state so a resumed run keeps it."""
    mode = spec.guidance.consistency_pretrained
    if mode == 'off' or (mode == 'auto' and not spec.model.weights_loaded):
        return None
    if moe_model(model) is None or spec.guidance.probe_samples <= 0:
        if mode == 'on':
            raise ValueError('--consistency-pretrained on compares MoE routing on the probe set: train a timm_tgr '
                             'MoE model with --probe-samples > 0.')
        return None
    reference = RoutingReference()
    task.register_trainer_state('consistency_pretrained', reference)
    return reference


def create_optimization(
        spec: RunSpec, task: nn.Module, model: nn.Module, batches_per_epoch: int, device: torch.device,
) -> Optimization:
    """timm's optimizer over the task's trainable module, AMP (a scaler for float16), the router freeze."""
    optim = spec.optim
    updates_per_epoch = (batches_per_epoch + optim.grad_accum_steps - 1) // optim.grad_accum_steps
    freeze = None
    if spec.guidance.freeze_router_at is not None:
        if moe_model(model) is None:
            raise ValueError('--freeze-router-at freezes MoE routers: the model has none')
        freeze = RouterFreezeSchedule(fraction=spec.guidance.freeze_router_at,
                                      total_steps=optim.epochs * updates_per_epoch)
    optimizer = create_optimizer_v2(task.get_trainable_module(), **optimizer_kwargs(cfg=optim), **optim.opt_kwargs)
    check_step_size(spec, optimizer)
    amp_autocast, loss_scaler = suppress, None
    if optim.amp:
        amp_dtype = torch.bfloat16 if optim.amp_dtype == 'bfloat16' else torch.float16
        amp_autocast = partial(torch.autocast, device_type=device.type, dtype=amp_dtype)
        if amp_dtype == torch.float16:
            loss_scaler = NativeScaler(device=device.type)
    return Optimization(optimizer=optimizer, updates_per_epoch=updates_per_epoch, amp_autocast=amp_autocast,
                        loss_scaler=loss_scaler, freeze=freeze)


def check_step_size(spec: RunSpec, optimizer: torch.optim.Optimizer) -> None:
    """Refuse a learning rate whose first update cannot be computed in float32: Adam-style optimizers step by
    lr / (1 - beta1) and decay by lr * weight_decay; beyond float32's largest value (3.4e38) torch stops the step
    with an overflow error instead of an update."""
    largest = torch.finfo(torch.float32).max
    for group in optimizer.param_groups:
        lr = max(float(group.get('lr', 0.)), float(spec.optim.warmup_lr or 0.))
        betas = group.get('betas')
        scale = 1. / (1. - betas[0]) if isinstance(betas, (tuple, list)) and betas and 0 <= betas[0] < 1 else 1.
        step = max(lr * scale, lr * float(group.get('weight_decay') or 0.))
        if step >= largest:
            raise ValueError(
                f'--lr {spec.optim.lr:g} is too large for --opt {spec.optim.opt}: its first update steps by '
                f'{step:.3g}, beyond float32\'s largest value ({largest:.3g}), so no update can be computed. Use a '
                f'learning rate that trains (the recipes use 5e-4 to 2e-3).')


def resume_task(spec: RunSpec, task: nn.Module, optim: Optimization) -> Resumed:
    """Restore ``--resume`` into the task (and optimizer/scaler unless --no-resume-opt); see :mod:`.resume`."""
    return resume_run(spec, task, optim.optimizer, optim.loss_scaler, log_info=is_primary(spec))


def prepare_task(spec: RunSpec, task: nn.Module, optim: Optimization, device: torch.device,
                 resumed: Optional[Resumed] = None) -> None:
    """EMA (restored from --resume), torch.compile, DDP, in timm's order."""
    model = spec.model
    if model.model_ema:
        task.setup_ema(decay=model.model_ema_decay, use_warmup=model.model_ema_warmup)
        if resumed is not None:
            load_resumed_ema(task, resumed)
    if model.torchcompile:
        task.compile(backend=model.torchcompile)
    if spec.runtime.distributed:
        ddp_kwargs = dict(find_unused_parameters=True) if optim.freeze is not None else {}
        task.prepare_distributed(device_ids=[device] if device.type == 'cuda' else None, **ddp_kwargs)


def create_lr_scheduler(spec: RunSpec, optim: Optimization, start_epoch: int) -> Tuple[Any, int]:
    """timm's scheduler and the number of epochs it runs, stepped to ``start_epoch`` when resuming."""
    kwargs = dict(scheduler_kwargs(spec.optim, decreasing_metric=False), noise_seed=spec.runtime.seed)
    lr_scheduler, num_epochs = create_scheduler_v2(optim.optimizer, **kwargs,
                                                   updates_per_epoch=optim.updates_per_epoch)
    if start_epoch > 0:
        if spec.optim.sched_on_updates:
            lr_scheduler.step_update(start_epoch * optim.updates_per_epoch)
        else:
            lr_scheduler.step(start_epoch)
    return lr_scheduler, num_epochs


def open_run_folder(
        spec: RunSpec, model: nn.Module, task: TaskSetup, optim: Optimization, output_dir: str, start_epoch: int,
) -> RunFolder:
    """Checkpoint saver, ``args.yaml``, and the metrics rows before ``start_epoch`` (primary process only).

    Resuming in the run's folder keeps the earlier rows and the best of them, so ``model_best.pth.tar``
    stays the best of all epochs.
    """
    run = RunFolder(output_dir=output_dir)
    if not is_primary(spec):
        return run
    resume = spec.run.resume
    run.saver = RunCheckpointSaver(
        model=model, optimizer=optim.optimizer, args=checkpoint_args(spec.record()), model_ema=None,
        amp_scaler=optim.loss_scaler, checkpoint_dir=output_dir, recovery_dir=output_dir, decreasing=False,
        max_history=spec.run.checkpoint_hist, task=task.task, resumed_from=resume or None,
        resumed_epoch=start_epoch - 1 if resume else None)
    if start_epoch == 0:
        write_args_yaml(spec.record(), output_dir, start_epoch)
    else:  # written with the first saved epoch, as the kept metrics rows (rewritten whole each epoch)
        run.pending = partial(write_args_yaml, spec.record(), output_dir, start_epoch)
        for name in ('metrics.jsonl', 'summary.csv'):
            run.originals[name] = read_bytes(os.path.join(output_dir, name))
    if os.path.isfile(run.metrics_path):
        run.rows = [r for r in read_metrics(run.metrics_path) if r['epoch'] < start_epoch]
    if run.rows:
        best = max(run.rows, key=lambda r: row_metric(r, spec))
        run.saver.best_metric, run.saver.best_epoch = row_metric(best, spec), best['epoch']
        run.saver.checkpoint_files = kept_checkpoints(output_dir, run.rows, spec)
    if start_epoch > 0:
        complete_last_save(spec, run, start_epoch - 1)
    _logger.info(f'Output: {output_dir}; task {task.kind}; epochs {start_epoch}..{optim.num_epochs - 1}; '
                 f'{optim.updates_per_epoch} updates/epoch')
    return run
