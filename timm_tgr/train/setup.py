"""Everything a run needs before its first epoch, one function per piece.

:func:`setup_training` builds, in this order (the order keeps runs and resumed runs bit-identical
on the CPU): device and seed, dataset prerequisites, the student (:func:`create_model`), the data
loaders (:func:`create_loaders`), the task with its teacher (:func:`create_task`), optimizer / AMP /
scheduler, resume, and the run folder (checkpoint saver, ``args.yaml``, earlier metrics rows).
"""
import argparse
import logging
import math
import os
import time
from contextlib import suppress
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, List, Optional, Tuple

import torch
import torch.nn as nn
import yaml

import timm
from timm.data import FastCollateMixup, Mixup, create_dataset, create_loader, resolve_data_config
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.models import safe_model_name
from timm.optim import create_optimizer_v2, optimizer_kwargs
from timm.scheduler import create_scheduler_v2, scheduler_kwargs
from timm.task import ClassificationTask, load_task_ema_checkpoint, resume_task_checkpoint
from timm.utils import CheckpointSaver, NativeScaler, init_distributed_device, is_primary, random_seed, unwrap_model

from ..data import (
    DEFAULT_CROP_PADDING, FASHION_MNIST_MEAN, FASHION_MNIST_STD, DeviceDataLoader, check_device_data_args,
    prepare_fashion_mnist,
)
from ..models import upcycle_from
from ..task import (
    ConsistencyTracker, RouterFreezeSchedule, RoutingReference, TGRTask, VMoETask, build_teacher, default_teacher,
    read_teacher_routers,
)
from ..utils.metrics_log import read_metrics, write_metrics
from .args import checkpoint_args, yaml_safe
from .finetune import load_initial_checkpoint, log_pretrained_head, model_source, reset_classifier
from .report import row_metric

__all__ = [
    'Loaders', 'TaskSetup', 'Optimization', 'RunFolder', 'Training', 'setup_training', 'create_model',
    'create_loaders', 'create_device_loaders', 'create_task', 'create_reference', 'create_optimization', 'is_moe',
]

_logger = logging.getLogger('train_tgr')

_FASHION_MNIST = ('torch/fashion_mnist', 'torchvision/fashion_mnist')


@dataclass
class Loaders:
    """Training and validation loaders, the batch-level mixup (None when off or done in the collate)."""
    train: Any
    eval: Any
    mixup_fn: Optional[Callable] = None
    mixup_active: bool = False
    probe_batches: int = 0  # leading validation batches forming the routing-consistency probe set


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
class RunFolder:
    """The run's output folder; ``saver`` and ``rows`` (metrics.jsonl so far) on the primary process only."""
    output_dir: str
    saver: Optional[CheckpointSaver] = None
    rows: List[dict] = field(default_factory=list)

    @property
    def metrics_path(self) -> str:
        return os.path.join(self.output_dir, 'metrics.jsonl')


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


def setup_training(args: argparse.Namespace) -> Training:
    """Build the run described by ``args`` (see the module docstring for the order)."""
    device = init_distributed_device(args)
    args.prefetcher = device.type == 'cuda' and not args.no_prefetcher and not args.device_data
    random_seed(args.seed, 0)  # same initial weights on every rank
    prepare_dataset(args)  # before the model: Fashion-MNIST sets channel/class/size defaults
    model = create_model(args, device)
    args.teacher_resolved = resolve_teacher(args, model)  # before any data work: a bad combination fails fast
    data_config = resolve_data_config(vars(args), model=model, verbose=is_primary(args))
    set_input_normalization(model, data_config)
    if is_primary(args):
        _logger.info(f'Model {args.model} created, {sum(p.numel() for p in model.parameters()):,} parameters')
    make_loaders = create_device_loaders if args.device_data else create_loaders
    loaders = make_loaders(args, data_config, device, num_classes=unwrap_model(model).num_classes)
    ts = create_task(args, model, loaders, device)
    optim = create_optimization(args, ts.task, model, len(loaders.train), device)
    output_dir = setup_output_dir(args)
    start_epoch = resume_task(args, ts.task, optim) if args.resume else 0
    prepare_task(args, ts.task, optim, device)
    optim.lr_scheduler, optim.num_epochs = create_lr_scheduler(args, optim, start_epoch)
    run = open_run_folder(args, model, ts, optim, output_dir, start_epoch)
    return Training(device=device, model=model, loaders=loaders, task=ts.task, task_kind=ts.kind,
                    tracker=ts.tracker, optim=optim, run=run, start_epoch=start_epoch, reference=ts.reference)


# --------------------------------------------------------------------------------------------------
# dataset and model
# --------------------------------------------------------------------------------------------------
def prepare_dataset(args: argparse.Namespace) -> None:
    """Fashion-MNIST defaults and files (on the primary process; the others wait)."""
    _dataset_defaults(args)
    if args.dataset.lower() in _FASHION_MNIST and is_primary(args):
        src = prepare_fashion_mnist(args.data_dir, download=args.dataset_download)
        _logger.info(f'Fashion-MNIST in {args.data_dir} (source: {src})')
    if args.distributed:
        torch.distributed.barrier()


def _dataset_defaults(args: argparse.Namespace) -> None:
    """Fashion-MNIST: 1 channel, 10 classes, 28x28, its own mean/std, no eval crop, unless given."""
    if args.dataset.lower() not in _FASHION_MNIST:
        return
    if args.mean is None:
        args.mean = list(FASHION_MNIST_MEAN)
    if args.std is None:
        args.std = list(FASHION_MNIST_STD)
    if args.in_chans is None and 'in_chans' not in args.model_kwargs:
        args.in_chans = 1
    if args.num_classes is None and 'num_classes' not in args.model_kwargs:
        args.num_classes = 10
    if args.img_size is None and 'img_size' not in args.model_kwargs:
        args.img_size = 28
    if args.crop_pct is None:
        args.crop_pct = 1.0  # evaluate on the whole 28x28 image (timm's default would crop 28 out of 32)


def model_kwargs(args: argparse.Namespace) -> dict:
    """create_model kwargs from the flags, recorded in the checkpoint so export can rebuild the model."""
    kw = dict(args.model_kwargs)
    for key in ('num_classes', 'img_size', 'in_chans'):
        if getattr(args, key) is not None:
            kw[key] = getattr(args, key)
    if args.drop:
        kw['drop_rate'] = args.drop
    if args.drop_path is not None:
        kw['drop_path_rate'] = args.drop_path
    return kw


def create_model(args: argparse.Namespace, device: torch.device) -> nn.Module:
    """The student: ``timm.create_model`` with the flags' kwargs, then ``--initial-checkpoint``, on ``device``.

    Sets ``args.model_arch`` (the architecture, also of ``hf-hub:`` / ``local-dir:`` names) and
    ``args.model_kwargs_resolved`` (every kwarg that rebuilds it; saved in checkpoints as ``model_kwargs``).
    A classifier for another class count than the weights' starts fresh (see :mod:`.finetune`).
    """
    args.model_arch, source_kwargs = model_source(args.model)
    flag_kwargs = model_kwargs(args)
    model = timm.create_model(args.model, pretrained=args.pretrained, **flag_kwargs)
    args.model_kwargs_resolved = {**source_kwargs, **flag_kwargs}  # as timm merges them: the flags win
    if args.pretrained:
        log_pretrained_head(model, args.model)
    if args.upcycle_from:
        _check_one_weight_source(args)
        upcycle_from(args.upcycle_from, model)
    if args.initial_checkpoint:
        load_initial_checkpoint(model, args.initial_checkpoint, args.model_arch, args.model_kwargs_resolved)
    if args.reset_classifier and (args.pretrained or args.initial_checkpoint):
        reset_classifier(model)
    if args.grad_checkpointing:
        model.set_grad_checkpointing(True)
    return model.to(device)


def _check_one_weight_source(args: argparse.Namespace) -> None:
    """--upcycle-from starts the MoE from dense weights; another source of starting weights would override them
    silently (--resume may come with it: the checkpoint then replaces the upcycled start, as for any resumed run)."""
    other = [flag for flag, on in (('--pretrained', args.pretrained), ('--initial-checkpoint', args.initial_checkpoint))
             if on]
    if other:
        raise ValueError(f'--upcycle-from {args.upcycle_from!r} and {" / ".join(other)} both give the model its '
                         f'starting weights: keep one.')


def set_input_normalization(model: nn.Module, data_config: dict) -> None:
    """The student's ``pretrained_cfg`` mean/std := those the loaders normalize with: TGR's teacher converts
    the input from them to its own (an exported student's cfg holds its pre-training data's, which
    ``--mean`` / ``--std`` or a dataset default may replace)."""
    cfg = dict(model.pretrained_cfg, mean=tuple(data_config['mean']), std=tuple(data_config['std']))
    model.pretrained_cfg = model.default_cfg = cfg


def is_moe(model: nn.Module) -> bool:
    """True for timm_tgr MoE models (they report routing through ``routing_infos``)."""
    return hasattr(unwrap_model(model), 'routing_infos')


def resolve_teacher(args: argparse.Namespace, model: nn.Module) -> Optional[str]:
    """The teacher's name: --teacher, else the paper's for ``tgr_*`` models; None for 'none' or no teacher."""
    teacher = args.teacher
    if teacher is not None and teacher.lower() == 'none':
        return None
    if teacher is None and args.model_arch.startswith('tgr_'):
        teacher = default_teacher(args.model_arch)
    if teacher is not None and not is_moe(model):
        raise ValueError(f'--teacher {teacher!r} guides MoE routers, but {args.model!r} is a dense model: '
                         f'drop --teacher, or train a timm_tgr MoE model (e.g. tgr_moe_deit_tiny).')
    if teacher is None and args.teacher_routers_from:
        raise ValueError(f'--teacher-routers-from continues teacher-guided routing, but {args.model!r} trains '
                         f'without a teacher: pass --teacher NAME (with its --teacher-checkpoint / --teacher-kwargs).')
    return teacher


# --------------------------------------------------------------------------------------------------
# data loaders
# --------------------------------------------------------------------------------------------------
def create_datasets(args: argparse.Namespace, data_config: dict) -> Tuple[Any, Any]:
    """timm datasets of ``--train-split`` and ``--val-split`` (1- or 3-channel images)."""
    channels = data_config['input_size'][0]
    if channels not in (1, 3):
        raise ValueError(f'train_tgr.py reads 1- or 3-channel images; the model wants {channels}')
    img_mode = 'RGB' if channels == 3 else 'L'
    dataset_train = create_dataset(
        args.dataset, root=args.data_dir, split=args.train_split, is_training=True, class_map=args.class_map,
        download=args.dataset_download, batch_size=args.batch_size, seed=args.seed, input_img_mode=img_mode)
    dataset_eval = create_dataset(
        args.dataset, root=args.data_dir, split=args.val_split, is_training=False, class_map=args.class_map,
        download=args.dataset_download, batch_size=args.validation_batch_size or args.batch_size,
        input_img_mode=img_mode)
    return dataset_train, dataset_eval


def _mixup(args: argparse.Namespace, num_classes: int) -> Tuple[bool, Optional[Mixup], Optional[Callable]]:
    """(active, batch-level Mixup, collate_fn): timm's FastCollateMixup with the prefetcher, else Mixup."""
    active = args.mixup > 0 or args.cutmix > 0. or args.cutmix_minmax is not None
    if not active:
        return False, None, None
    mixup_args = dict(
        mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax,
        prob=args.mixup_prob, switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
        label_smoothing=args.smoothing, num_classes=num_classes)
    if args.prefetcher:
        return True, None, FastCollateMixup(**mixup_args)
    return True, Mixup(**mixup_args), None


def create_loaders(args: argparse.Namespace, data_config: dict, device: torch.device, num_classes: int) -> Loaders:
    """timm's ``create_loader`` for both splits, with the flags' augmentation and mixup."""
    dataset_train, dataset_eval = create_datasets(args, data_config)
    mixup_active, mixup_fn, collate_fn = _mixup(args, num_classes)
    train_interpolation = args.train_interpolation
    if args.no_aug or not train_interpolation:
        train_interpolation = data_config['interpolation']
    loader_train = create_loader(
        dataset_train, input_size=data_config['input_size'], batch_size=args.batch_size, is_training=True,
        no_aug=args.no_aug, re_prob=args.reprob, re_mode=args.remode, re_count=args.recount, scale=args.scale,
        ratio=args.ratio, hflip=args.hflip, vflip=args.vflip, color_jitter=args.color_jitter,
        auto_augment=args.aa, interpolation=train_interpolation, mean=data_config['mean'], std=data_config['std'],
        num_workers=args.workers, distributed=args.distributed, collate_fn=collate_fn, pin_memory=args.pin_mem,
        device=device, use_prefetcher=args.prefetcher, persistent_workers=False)
    eval_batch = args.validation_batch_size or args.batch_size
    loader_eval = create_loader(
        dataset_eval, input_size=data_config['input_size'], batch_size=eval_batch, is_training=False,
        interpolation=data_config['interpolation'], mean=data_config['mean'], std=data_config['std'],
        num_workers=args.workers, distributed=args.distributed, crop_pct=data_config['crop_pct'],
        pin_memory=args.pin_mem, device=device, use_prefetcher=args.prefetcher, persistent_workers=False)
    return _loaders(args, loader_train, loader_eval, len(dataset_train), eval_batch, mixup_active, mixup_fn)


def create_device_loaders(args: argparse.Namespace, data_config: dict, device: torch.device,
                          num_classes: int) -> Loaders:
    """--device-data: both splits held on ``device`` (DeviceDataLoader); crop, flip and the batch Mixup there."""
    check_device_data_args(args)
    dataset_train, dataset_eval = create_datasets(args, data_config)
    mixup_active, mixup_fn, _ = _mixup(args, num_classes)  # args.prefetcher is off: batch-level Mixup
    common = dict(mean=data_config['mean'], std=data_config['std'], device=device, rank=args.rank,
                  world_size=args.world_size, input_size=data_config['input_size'])
    loader_train = DeviceDataLoader.from_dataset(
        dataset_train, args.batch_size, is_training=True, seed=args.seed,
        padding=0 if args.no_aug else DEFAULT_CROP_PADDING, hflip=0. if args.no_aug else args.hflip, **common)
    eval_batch = args.validation_batch_size or args.batch_size
    loader_eval = DeviceDataLoader.from_dataset(dataset_eval, eval_batch, **common)
    return _loaders(args, loader_train, loader_eval, loader_train.num_samples, eval_batch, mixup_active, mixup_fn)


def _loaders(args: argparse.Namespace, loader_train, loader_eval, num_train: int, eval_batch: int,
             mixup_active: bool, mixup_fn: Optional[Mixup]) -> Loaders:
    """Both loaders with the probe-set size; a training split smaller than one batch is an error."""
    if len(loader_train) == 0:
        raise ValueError(f'the training split has fewer images ({num_train}) than one batch '
                         f'({args.batch_size}, incomplete batches are dropped): lower --batch-size.')
    probe_batches = math.ceil(args.probe_samples / eval_batch) if args.probe_samples > 0 else 0
    return Loaders(train=loader_train, eval=loader_eval, mixup_fn=mixup_fn, mixup_active=mixup_active,
                   probe_batches=probe_batches)


# --------------------------------------------------------------------------------------------------
# task, teacher, optimization
# --------------------------------------------------------------------------------------------------
def train_criterion(args: argparse.Namespace, mixup_active: bool) -> nn.Module:
    """Soft-target CE under mixup/cutmix, else label-smoothed CE (--smoothing), else plain CE."""
    if mixup_active:
        return SoftTargetCrossEntropy()
    if args.smoothing:
        return LabelSmoothingCrossEntropy(smoothing=args.smoothing)
    return nn.CrossEntropyLoss()


def create_teacher(args: argparse.Namespace, device: torch.device, student: Optional[nn.Module] = None) -> nn.Module:
    """The named teacher with --teacher-kwargs; weights from --teacher-checkpoint (strict) or the hub.

    Its input normalization is that of its weights (the checkpoint's recorded mean/std, or the hub
    cfg's); a teacher without weights (--no-teacher-pretrained) takes the ``student``'s: nothing to convert.
    """
    teacher = build_teacher(
        args.teacher_resolved, checkpoint=args.teacher_checkpoint or None,
        pretrained=not args.no_teacher_pretrained, **dict(args.teacher_kwargs))
    if student is not None and args.no_teacher_pretrained and not args.teacher_checkpoint:
        norm = {k: unwrap_model(student).pretrained_cfg[k] for k in ('mean', 'std')}
        teacher.pretrained_cfg = teacher.default_cfg = dict(teacher.pretrained_cfg, **norm)
    return teacher.to(device)


def create_task(args: argparse.Namespace, model: nn.Module, loaders: Loaders, device: torch.device) -> TaskSetup:
    """TGRTask with a teacher, VMoETask for an MoE without one, timm's ClassificationTask for dense models."""
    criterion = train_criterion(args, loaders.mixup_active).to(device)
    tracker = ConsistencyTracker() if is_moe(model) else None
    verbose = is_primary(args)
    if args.teacher_resolved is not None:
        if args.distill_schedule == 'adaptive' and args.probe_samples <= 0:
            raise ValueError('--distill-schedule adaptive watches probe-set consistency: set --probe-samples > 0')
        task = TGRTask(
            model, teacher_model=create_teacher(args, device, model), criterion=criterion,
            layer_map=None if args.layer_map == 'aligned' else args.layer_map, distill_weight=args.distill_weight,
            teacher_load_weight=args.teacher_load_weight, teacher_entropy_weight=args.teacher_entropy_weight,
            schedule=args.distill_schedule, total_steps=args.epochs * len(loaders.train),
            distill_fraction=args.distill_fraction, mode=args.tgr_mode, device=device, verbose=verbose)
        kind = f'TGR ({args.tgr_mode}, teacher {args.teacher_resolved}, schedule {args.distill_schedule})'
    elif is_moe(model):
        task = VMoETask(model, criterion=criterion, device=device, verbose=verbose)
        kind = 'V-MoE (no teacher)'
    else:
        task = ClassificationTask(model, criterion=criterion, device=device, verbose=verbose)
        kind = 'dense classification'
    if tracker is not None:
        task.register_trainer_state('consistency', tracker)  # saved with checkpoints, restored on resume
    if args.teacher_routers_from:
        task.load_teacher_routers(read_teacher_routers(args.teacher_routers_from), source=args.teacher_routers_from)
        kind += f', teacher routers from {args.teacher_routers_from}'
    reference = create_reference(args, model, task)
    if verbose:
        _logger.info(f'Task: {kind}')
    return TaskSetup(task=task, kind=kind, tracker=tracker, reference=reference)


def create_reference(args: argparse.Namespace, model: nn.Module, task: nn.Module) -> Optional[RoutingReference]:
    """The routing of the starting weights for ``consistency_pretrained`` (``--consistency-pretrained``;
    ``auto``: when starting from trained weights), kept in the task state so a resumed run keeps it."""
    mode = args.consistency_pretrained
    if mode == 'off' or (mode == 'auto' and not (args.pretrained or args.initial_checkpoint)):
        return None
    if not is_moe(model) or args.probe_samples <= 0:
        if mode == 'on':
            raise ValueError('--consistency-pretrained on compares MoE routing on the probe set: train a timm_tgr '
                             'MoE model with --probe-samples > 0.')
        return None
    reference = RoutingReference()
    task.register_trainer_state('consistency_pretrained', reference)
    return reference


def create_optimization(
        args: argparse.Namespace, task: nn.Module, model: nn.Module, batches_per_epoch: int, device: torch.device,
) -> Optimization:
    """timm's optimizer over the task's trainable module, AMP (a scaler for float16), the router freeze."""
    updates_per_epoch = (batches_per_epoch + args.grad_accum_steps - 1) // args.grad_accum_steps
    freeze = None
    if args.freeze_router_at is not None:
        if not is_moe(model):
            raise ValueError('--freeze-router-at freezes MoE routers: the model has none')
        freeze = RouterFreezeSchedule(fraction=args.freeze_router_at, total_steps=args.epochs * updates_per_epoch)
    optimizer = create_optimizer_v2(task.get_trainable_module(), **optimizer_kwargs(cfg=args), **args.opt_kwargs)
    amp_autocast, loss_scaler = suppress, None
    if args.amp:
        amp_dtype = torch.bfloat16 if args.amp_dtype == 'bfloat16' else torch.float16
        amp_autocast = partial(torch.autocast, device_type=device.type, dtype=amp_dtype)
        if amp_dtype == torch.float16:
            loss_scaler = NativeScaler(device=device.type)
    return Optimization(optimizer=optimizer, updates_per_epoch=updates_per_epoch, amp_autocast=amp_autocast,
                        loss_scaler=loss_scaler, freeze=freeze)


def resume_task(args: argparse.Namespace, task: nn.Module, optim: Optimization) -> int:
    """Restore ``--resume`` into the task (and optimizer/scaler unless --no-resume-opt); the next epoch."""
    keep_opt = not args.no_resume_opt
    return resume_task_checkpoint(
        task, args.resume, optimizer=optim.optimizer if keep_opt else None,
        loss_scaler=optim.loss_scaler if keep_opt else None, log_info=is_primary(args)) or 0


def prepare_task(args: argparse.Namespace, task: nn.Module, optim: Optimization, device: torch.device) -> None:
    """EMA (restored from --resume), torch.compile, DDP, in timm's order."""
    if args.model_ema:
        task.setup_ema(decay=args.model_ema_decay, use_warmup=args.model_ema_warmup)
        if args.resume:
            load_task_ema_checkpoint(task, args.resume)
    if args.torchcompile:
        task.compile(backend=args.torchcompile)
    if args.distributed:
        ddp_kwargs = dict(find_unused_parameters=True) if optim.freeze is not None else {}
        task.prepare_distributed(device_ids=[device] if device.type == 'cuda' else None, **ddp_kwargs)


def create_lr_scheduler(args: argparse.Namespace, optim: Optimization, start_epoch: int) -> Tuple[Any, int]:
    """timm's scheduler and the number of epochs it runs, stepped to ``start_epoch`` when resuming."""
    lr_scheduler, num_epochs = create_scheduler_v2(
        optim.optimizer, **scheduler_kwargs(args, decreasing_metric=False),
        updates_per_epoch=optim.updates_per_epoch)
    if start_epoch > 0:
        if args.sched_on_updates:
            lr_scheduler.step_update(start_epoch * optim.updates_per_epoch)
        else:
            lr_scheduler.step(start_epoch)
    return lr_scheduler, num_epochs


# --------------------------------------------------------------------------------------------------
# run folder
# --------------------------------------------------------------------------------------------------
def setup_output_dir(args: argparse.Namespace) -> str:
    """``<output>/<experiment or time-model>``; resuming without --experiment continues the checkpoint's folder."""
    if args.resume and not args.experiment:
        out = os.path.dirname(os.path.abspath(args.resume))  # continue the run in its own folder
    else:
        name = args.experiment or '-'.join([time.strftime('%Y%m%d-%H%M%S'), safe_model_name(args.model)])
        out = os.path.join(args.output, name)
    if is_primary(args):
        os.makedirs(out, exist_ok=True)
    return out


def open_run_folder(
        args: argparse.Namespace, model: nn.Module, task: TaskSetup, optim: Optimization, output_dir: str,
        start_epoch: int,
) -> RunFolder:
    """Checkpoint saver, ``args.yaml``, and the metrics rows before ``start_epoch`` (primary process only).

    Resuming in the run's folder keeps the earlier rows and the best of them, so ``model_best.pth.tar``
    stays the best of all epochs.
    """
    run = RunFolder(output_dir=output_dir)
    if not is_primary(args):
        return run
    run.saver = CheckpointSaver(
        model=model, optimizer=optim.optimizer, args=checkpoint_args(args), model_ema=None,
        amp_scaler=optim.loss_scaler, checkpoint_dir=output_dir, recovery_dir=output_dir, decreasing=False,
        max_history=args.checkpoint_hist, task=task.task)
    with open(os.path.join(output_dir, 'args.yaml'), 'w') as f:
        yaml.safe_dump(yaml_safe(vars(args)), f, default_flow_style=False)
    if os.path.isfile(run.metrics_path):
        run.rows = [r for r in read_metrics(run.metrics_path) if r['epoch'] < start_epoch]
        write_metrics(run.metrics_path, run.rows)
    if run.rows:
        best = max(run.rows, key=lambda r: row_metric(r, args))
        run.saver.best_metric, run.saver.best_epoch = row_metric(best, args), best['epoch']
    _logger.info(f'Output: {output_dir}; task {task.kind}; epochs {start_epoch}..{optim.num_epochs - 1}; '
                 f'{optim.updates_per_epoch} updates/epoch')
    return run
