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
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import yaml

import timm
from timm.data import FastCollateMixup, Mixup, create_dataset, create_loader, resolve_data_config
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.models import safe_model_name
from timm.optim import create_optimizer_v2, optimizer_kwargs
from timm.scheduler import create_scheduler_v2, scheduler_kwargs
from timm.utils import NativeScaler, init_distributed_device, is_primary, random_seed, unwrap_model

from ..data import (
    DEFAULT_CROP_PADDING, FASHION_MNIST_MEAN, FASHION_MNIST_STD, MNIST_FOLDERS, DeviceDataLoader,
    check_device_data_args, check_mnist_files, prepare_fashion_mnist,
)
from ..data.fashion_mnist import FASHION_MNIST_NAMES
from ..data.checks import FOLDER_DATASETS, check_class_lists, check_folder_dataset, check_images, check_labels
from ..models import upcycle_from
from ..task import RouterFreezeSchedule, default_teacher
from ..task.metrics import ConsistencyTracker, RoutingReference
from ..task.teacher import teacher_fixes
from ..models import moe_model
from ..task.factory import GuidanceConfig, create_training_task
from ..task.options import NEUTRAL, RUN_FOLDER
from ..task.timm_train import model_guidance_cfg
from ..utils.checkpoint import check_finite, run_outputs
from ..utils.metrics_log import read_metrics
from .args import RESOLVED, checkpoint_args, earlier_run, guidance_from_flags, record_roles, yaml_safe
from .finetune import load_initial_checkpoint, log_pretrained_head, model_source, reset_classifier
from .lock import RunFolderBusy, RunLock
from .report import row_metric
from .resume import Resumed, load_resumed_ema, resume_run
from .saver import RunCheckpointSaver

__all__ = [
    'Loaders', 'TaskSetup', 'Optimization', 'RunFolder', 'Training', 'setup_training', 'create_model',
    'create_loaders', 'create_device_loaders', 'create_task', 'create_reference', 'create_optimization',
]

_logger = logging.getLogger(__name__)


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
    """The run's output folder; ``saver`` and ``rows`` (metrics.jsonl so far) on the primary process only.

    A resumed run changes nothing in its folder until its first epoch is saved: ``pending`` holds what is still
    to write then (``args.yaml``), ``originals`` the metrics files as they were, put back if that save fails.
    """
    output_dir: str
    saver: Optional[RunCheckpointSaver] = None
    rows: List[dict] = field(default_factory=list)
    pending: Optional[Callable[[], None]] = None
    originals: Dict[str, Optional[bytes]] = field(default_factory=dict)
    lock: Optional[RunLock] = None  # held from setup to the run's end (primary process)

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
    output_dir, lock = setup_output_dir(args)
    try:
        resumed = resume_task(args, ts.task, optim) if args.resume else None
        start_epoch = resumed.start_epoch if resumed is not None else 0
        prepare_task(args, ts.task, optim, device, resumed)
        optim.lr_scheduler, optim.num_epochs = create_lr_scheduler(args, optim, start_epoch)
        run = open_run_folder(args, model, ts, optim, output_dir, start_epoch)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    run.lock = lock
    del resumed  # the checkpoint's tensors
    return Training(device=device, model=model, loaders=loaders, task=ts.task, task_kind=ts.kind,
                    tracker=ts.tracker, optim=optim, run=run, start_epoch=start_epoch, reference=ts.reference)


# --------------------------------------------------------------------------------------------------
# dataset and model
# --------------------------------------------------------------------------------------------------
def prepare_dataset(args: argparse.Namespace) -> None:
    """Fashion-MNIST defaults and files (on the primary process; the others wait), then the dataset's files are
    checked before anything trains: the raw IDX files of the torchvision MNIST family, the folders of an image
    folder dataset (the labels are checked against the model in :func:`create_datasets`)."""
    _dataset_defaults(args)
    name = args.dataset.lower()
    if name in FASHION_MNIST_NAMES and is_primary(args):
        src = prepare_fashion_mnist(args.data_dir, download=args.dataset_download)
        _logger.info(f'Fashion-MNIST in {args.data_dir} (source: {src})')
    if args.distributed:
        torch.distributed.barrier()
    short = name.split('/', 1)[1] if name.startswith(('torch/', 'torchvision/')) else None
    if short in MNIST_FOLDERS:
        check_mnist_files(args.data_dir, MNIST_FOLDERS[short])
    elif name in FOLDER_DATASETS:
        check_folder_dataset(args.data_dir, args.train_split, args.val_split)


def _dataset_defaults(args: argparse.Namespace) -> None:
    """Fashion-MNIST: 1 channel, 10 classes, 28x28, its own mean/std, no eval crop, unless given."""
    if args.dataset.lower() not in FASHION_MNIST_NAMES:
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
    try:
        model = timm.create_model(args.model, pretrained=args.pretrained, **flag_kwargs)
    except (AssertionError, TypeError) as e:  # timm's checks of the kwargs: an assert or an unknown keyword
        raise ValueError(build_error(args.model, flag_kwargs, e)) from e
    model_guidance_cfg(model)  # tgr_* kwargs (recorded, read by timm's train.py only) must be known options
    args.model_kwargs_resolved = {**source_kwargs, **flag_kwargs}  # as timm merges them: the flags win
    if args.pretrained:
        check_finite(model.state_dict(), f'--pretrained {args.model}',
                     'Use weights from before it diverged (another export or checkpoint).')
        log_pretrained_head(model, args.model)
    if args.upcycle_from:
        upcycle_from(args.upcycle_from, model, trust_checkpoint=args.trust_checkpoint)
    if args.initial_checkpoint:
        load_initial_checkpoint(model, args.initial_checkpoint, args.model_arch, args.model_kwargs_resolved,
                                trust_checkpoint=args.trust_checkpoint)
    if args.reset_classifier and (args.pretrained or args.initial_checkpoint):
        reset_classifier(model)
    if args.grad_checkpointing:
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


def set_input_normalization(model: nn.Module, data_config: dict) -> None:
    """The student's ``pretrained_cfg`` mean/std := those the loaders normalize with: TGR's teacher converts
    the input from them to its own (an exported student's cfg holds its pre-training data's, which
    ``--mean`` / ``--std`` or a dataset default may replace)."""
    cfg = dict(model.pretrained_cfg, mean=tuple(data_config['mean']), std=tuple(data_config['std']))
    model.pretrained_cfg = model.default_cfg = cfg


# the fixes of teacher errors (keys of timm_tgr.task.teacher.TEACHER_FIXES) in train_tgr.py's flags
TRAIN_TGR_TEACHER_FIXES = dict(
    name='pass --teacher NAME (e.g. --teacher {teacher}), or --teacher none to train without one',
    norm='pass --teacher-kwargs mean=M std=S (the values the teacher was trained with, e.g. mean=0.286 std=0.353 '
         'for Fashion-MNIST)',
    weights='pass --teacher-checkpoint FILE (e.g. model_best.pth.tar of a train_tgr.py run of the teacher), or '
            '--no-teacher-pretrained for a random teacher (debugging only)',
    grid='pass --teacher-kwargs img_size={img_size}',
)


def resolve_teacher(args: argparse.Namespace, model: nn.Module) -> Optional[str]:
    """The teacher's name: --teacher, else the paper's for ``tgr_*`` models; None for 'none' or no teacher."""
    teacher = args.teacher
    if teacher is not None and teacher.lower() == 'none':
        return None
    if teacher is None and args.model_arch.startswith('tgr_'):
        with teacher_fixes(TRAIN_TGR_TEACHER_FIXES):
            teacher = default_teacher(args.model_arch)
    if teacher is not None and moe_model(model) is None:
        raise ValueError(f'--teacher {teacher!r} guides MoE routers, but {args.model!r} is a dense model: '
                         f'drop --teacher, or train a timm_tgr MoE model (e.g. tgr_moe_deit_tiny).')
    if teacher is None and args.teacher_routers_from:
        raise ValueError(f'--teacher-routers-from continues teacher-guided routing, but {args.model!r} trains '
                         f'without a teacher: pass --teacher NAME (with its --teacher-checkpoint / --teacher-kwargs).')
    return teacher


# --------------------------------------------------------------------------------------------------
# data loaders
# --------------------------------------------------------------------------------------------------
def create_datasets(args: argparse.Namespace, data_config: dict, num_classes: Optional[int] = None) -> Tuple[Any, Any]:
    """timm datasets of ``--train-split`` and ``--val-split`` (1- or 3-channel images); with ``num_classes`` their
    labels are checked against it."""
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
    if args.dataset.lower() in FOLDER_DATASETS:
        check_class_lists(dataset_train, dataset_eval, args.data_dir, args.train_split, args.val_split)
        check_images(dataset_train, args.train_split, args.data_dir)
        check_images(dataset_eval, args.val_split, args.data_dir)
    if num_classes is not None:
        loaded = bool(args.pretrained or args.initial_checkpoint)
        for dataset, split in ((dataset_train, args.train_split), (dataset_eval, args.val_split)):
            check_labels(dataset, split, num_classes, args.dataset, args.data_dir, loaded)
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
    dataset_train, dataset_eval = create_datasets(args, data_config, num_classes)
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
    dataset_train, dataset_eval = create_datasets(args, data_config, num_classes)
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


def guidance_config(args: argparse.Namespace, batches_per_epoch: int) -> Optional[GuidanceConfig]:
    """Teacher-guided routing from the flags; None without a teacher (``args.teacher_resolved``)."""
    if args.teacher_resolved is None:
        return None
    if args.distill_schedule == 'adaptive' and args.probe_samples <= 0:
        raise ValueError('--distill-schedule adaptive watches probe-set consistency: set --probe-samples > 0')
    return guidance_from_flags(args, teacher=args.teacher_resolved, trust_checkpoint=args.trust_checkpoint,
                               total_steps=args.epochs * batches_per_epoch)


def create_task(args: argparse.Namespace, model: nn.Module, loaders: Loaders, device: torch.device) -> TaskSetup:
    """The task of :func:`~timm_tgr.task.factory.create_training_task` for the flags (TGRTask with a teacher,
    VMoETask for an MoE without one, timm's ClassificationTask for dense models), with the trainer's
    routing-consistency tracker and reference in its state."""
    criterion = train_criterion(args, loaders.mixup_active).to(device)
    verbose = is_primary(args)
    guidance = guidance_config(args, len(loaders.train))
    with teacher_fixes(TRAIN_TGR_TEACHER_FIXES):
        task = create_training_task(model, criterion=criterion, guidance=guidance, device=device, verbose=verbose)
    if guidance is not None:
        kind = f'TGR ({args.tgr_mode}, teacher {args.teacher_resolved}, schedule {args.distill_schedule})'
        if guidance.teacher_routers:
            kind += f', teacher routers from {guidance.teacher_routers}'
    else:
        kind = 'V-MoE (no teacher)' if moe_model(model) is not None else 'dense classification'
    tracker = ConsistencyTracker() if moe_model(model) is not None else None
    if tracker is not None:
        task.register_trainer_state('consistency', tracker)  # saved with checkpoints, restored on resume
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
    if moe_model(model) is None or args.probe_samples <= 0:
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
        if moe_model(model) is None:
            raise ValueError('--freeze-router-at freezes MoE routers: the model has none')
        freeze = RouterFreezeSchedule(fraction=args.freeze_router_at, total_steps=args.epochs * updates_per_epoch)
    optimizer = create_optimizer_v2(task.get_trainable_module(), **optimizer_kwargs(cfg=args), **args.opt_kwargs)
    check_step_size(args, optimizer)
    amp_autocast, loss_scaler = suppress, None
    if args.amp:
        amp_dtype = torch.bfloat16 if args.amp_dtype == 'bfloat16' else torch.float16
        amp_autocast = partial(torch.autocast, device_type=device.type, dtype=amp_dtype)
        if amp_dtype == torch.float16:
            loss_scaler = NativeScaler(device=device.type)
    return Optimization(optimizer=optimizer, updates_per_epoch=updates_per_epoch, amp_autocast=amp_autocast,
                        loss_scaler=loss_scaler, freeze=freeze)


def check_step_size(args: argparse.Namespace, optimizer: torch.optim.Optimizer) -> None:
    """Refuse a learning rate whose first update cannot be computed in float32: Adam-style optimizers step by
    lr / (1 - beta1) and decay by lr * weight_decay; beyond float32's largest value (3.4e38) torch stops the step
    with an overflow error instead of an update."""
    largest = torch.finfo(torch.float32).max
    for group in optimizer.param_groups:
        lr = max(float(group.get('lr', 0.)), float(args.warmup_lr or 0.))
        betas = group.get('betas')
        scale = 1. / (1. - betas[0]) if isinstance(betas, (tuple, list)) and betas and 0 <= betas[0] < 1 else 1.
        step = max(lr * scale, lr * float(group.get('weight_decay') or 0.))
        if step >= largest:
            raise ValueError(
                f'--lr {args.lr:g} is too large for --opt {args.opt}: its first update steps by {step:.3g}, beyond '
                f'float32\'s largest value ({largest:.3g}), so no update can be computed. Use a learning rate that '
                f'trains (the recipes use 5e-4 to 2e-3).')


def resume_task(args: argparse.Namespace, task: nn.Module, optim: Optimization) -> Resumed:
    """Restore ``--resume`` into the task (and optimizer/scaler unless --no-resume-opt); see :mod:`.resume`."""
    return resume_run(args, task, optim.optimizer, optim.loss_scaler, log_info=is_primary(args))


def prepare_task(args: argparse.Namespace, task: nn.Module, optim: Optimization, device: torch.device,
                 resumed: Optional[Resumed] = None) -> None:
    """EMA (restored from --resume), torch.compile, DDP, in timm's order."""
    if args.model_ema:
        task.setup_ema(decay=args.model_ema_decay, use_warmup=args.model_ema_warmup)
        if resumed is not None:
            load_resumed_ema(task, resumed)
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
def setup_output_dir(args: argparse.Namespace) -> Tuple[str, Optional[RunLock]]:
    """``<output>/<experiment or time-model>`` and its lock (:class:`~timm_tgr.train.lock.RunLock`, held for the
    whole run; None on the other processes); resuming without --experiment continues the checkpoint's folder.

    Never an earlier run's folder without --resume: a named --experiment holding a run was refused with the
    flags (``args._check_run_folder``) and is checked again once the folder is locked (a run may have finished
    there since); a time-stamped name already taken (or in use) gets a numeric suffix (``-1``, ``-2``), as timm's
    train.py does. A folder another run holds stops this one, naming the running one.
    """
    if args.resume and not args.experiment:
        out = os.path.dirname(os.path.abspath(args.resume))  # continue the run in its own folder
    elif args.experiment:
        out = os.path.join(args.output, args.experiment)
    else:
        base = os.path.join(args.output, '-'.join([time.strftime('%Y%m%d-%H%M%S'), safe_model_name(args.model)]))
        for n in range(1000):
            out = base if n == 0 else f'{base}-{n}'
            if run_outputs(out):
                continue
            if not is_primary(args):
                return out, None
            os.makedirs(out, exist_ok=True)
            try:
                lock = RunLock(out).acquire()
            except RunFolderBusy:
                continue
            if not run_outputs(out):
                return out, lock
            lock.release()
        raise RuntimeError(f'no free run folder named {base}[-N] in --output {args.output}: give --experiment NAME.')
    if not is_primary(args):
        return out, None
    os.makedirs(out, exist_ok=True)
    lock = RunLock(out).acquire()
    message = earlier_run(out, args, log=False)
    if message:  # a run finished there after the flags were checked
        lock.release()
        raise FileExistsError(message)
    return out, lock


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
    run.saver = RunCheckpointSaver(
        model=model, optimizer=optim.optimizer, args=checkpoint_args(args), model_ema=None,
        amp_scaler=optim.loss_scaler, checkpoint_dir=output_dir, recovery_dir=output_dir, decreasing=False,
        max_history=args.checkpoint_hist, task=task.task, resumed_from=args.resume or None,
        resumed_epoch=start_epoch - 1 if args.resume else None)
    if start_epoch == 0:
        write_args_yaml(args, output_dir, start_epoch)
    else:  # written with the first saved epoch, as the kept metrics rows (rewritten whole each epoch)
        run.pending = partial(write_args_yaml, args, output_dir, start_epoch)
        for name in ('metrics.jsonl', 'summary.csv'):
            run.originals[name] = _read_bytes(os.path.join(output_dir, name))
    if os.path.isfile(run.metrics_path):
        run.rows = [r for r in read_metrics(run.metrics_path) if r['epoch'] < start_epoch]
    if run.rows:
        best = max(run.rows, key=lambda r: row_metric(r, args))
        run.saver.best_metric, run.saver.best_epoch = row_metric(best, args), best['epoch']
        run.saver.checkpoint_files = kept_checkpoints(output_dir, run.rows, args)
    if start_epoch > 0:
        complete_last_save(args, run, start_epoch - 1)
    _logger.info(f'Output: {output_dir}; task {task.kind}; epochs {start_epoch}..{optim.num_epochs - 1}; '
                 f'{optim.updates_per_epoch} updates/epoch')
    return run


def complete_last_save(args: argparse.Namespace, run: RunFolder, epoch: int) -> None:
    """On resume, finish the resumed epoch's save where a kill cut it short (the saves of an epoch are one
    transaction: the metrics row, ``last.pth.tar``, then its ``checkpoint-N`` and ``model_best`` copies). The row
    and ``last.pth.tar`` being there, the copies are made again from the resumed checkpoint; a save cut before
    ``last.pth.tar`` was replaced resumes from the epoch before, whose row is rewritten (rolled back). Temporary
    files of the cut save are removed."""
    folder = run.output_dir
    for name in sorted(os.listdir(folder)):
        if name == 'tmp.pth.tar' or name.endswith(('.tmp', '.restore', '.part')):
            os.remove(os.path.join(folder, name))
            _logger.info(f'--resume: removed {name}, a temporary file of an interrupted save')
    resumed = os.path.abspath(args.resume)
    if (os.path.abspath(run.saver.last_path) != resumed  # an earlier checkpoint: the run goes on from it as it was
            or not any(r['epoch'] == epoch for r in run.rows)):
        return
    saver = run.saver
    numbered = os.path.join(folder, f'checkpoint-{epoch}.pth.tar')
    if not os.path.exists(numbered) and len(saver.checkpoint_files) < saver.max_history:
        saver._duplicate(resumed, numbered)
        row = next(r for r in run.rows if r['epoch'] == epoch)
        saver.checkpoint_files = sorted(saver.checkpoint_files + [(numbered, row_metric(row, args))],
                                        key=lambda f: f[1], reverse=True)
        _logger.info(f'--resume: the save of epoch {epoch} was cut short; wrote its {os.path.basename(numbered)}')
    best = os.path.join(folder, 'model_best.pth.tar')
    if saver.best_epoch == epoch and _checkpoint_epoch(best) != epoch:
        saver._duplicate(resumed, best)
        _logger.info(f'--resume: the save of epoch {epoch} was cut short before model_best.pth.tar; epoch {epoch} is '
                     f'the best ({args.eval_metric} {saver.best_metric}), so model_best.pth.tar now holds it')


def _checkpoint_epoch(path: str) -> Optional[int]:
    """The epoch a checkpoint records (memory-mapped: its tensors are not read); None when missing or unreadable."""
    if not os.path.isfile(path):
        return None
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            ckpt = torch.load(path, map_location='cpu', weights_only=True, mmap=True)
        return ckpt.get('epoch') if isinstance(ckpt, dict) else None
    except Exception:  # noqa: BLE001 - a damaged model_best is replaced like a stale one
        return None


def _read_bytes(path: str) -> Optional[bytes]:
    if not os.path.isfile(path):
        return None
    with open(path, 'rb') as f:
        return f.read()


def kept_checkpoints(output_dir: str, rows: List[dict], args: argparse.Namespace) -> List[Tuple[str, float]]:
    """The saver's history on resume: the ``checkpoint-N.pth.tar`` files of the kept epochs, best first, so
    --checkpoint-hist keeps counting them (timm's saver starts with an empty history)."""
    files = []
    for r in rows:
        path = os.path.join(output_dir, f'checkpoint-{r["epoch"]}.pth.tar')
        if os.path.isfile(path):
            files.append((path, row_metric(r, args)))
    return sorted(files, key=lambda f: f[1], reverse=True)


def _compared(key: str) -> bool:
    """Whether a resume that changes record ``key`` starts a new ``args.yaml``: not for a neutral or run-folder one,
    nor for a resolved value (:data:`~timm_tgr.train.args.RESOLVED`: its flag is compared)."""
    return record_roles().get(key) not in (NEUTRAL, RUN_FOLDER) and key not in RESOLVED.values()


def write_args_yaml(args: argparse.Namespace, output_dir: str, start_epoch: int) -> None:
    """``args.yaml``: this invocation's flags. A resume whose flags change what the run computes (e.g. another
    --lr, which the resumed optimizer takes) keeps the earlier file as ``args-to-epoch<k-1>.yaml``, so the record
    says which flags trained which epochs (the per-epoch lr is also in metrics.jsonl)."""
    path = os.path.join(output_dir, 'args.yaml')
    now = yaml_safe(vars(args))
    if start_epoch > 0 and os.path.isfile(path):
        with open(path) as f:
            before = yaml.safe_load(f) or {}
        changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k) and _compared(k))
        if changed:
            kept = os.path.join(output_dir, f'args-to-epoch{start_epoch - 1}.yaml')
            os.replace(path, kept)
            _logger.info(f'--resume changes {", ".join(changed)}: the flags of epochs 0-{start_epoch - 1} are kept in '
                         f'{kept}; args.yaml holds those from epoch {start_epoch} on.')
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        yaml.safe_dump(now, f, default_flow_style=False)
    os.replace(tmp, path)
