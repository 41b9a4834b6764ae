"""timm-tgr's trainer (``train_tgr.py``): timm's training pieces driving the V-MoE / TGR-MoE tasks.

Dense models train with timm's ``ClassificationTask``, timm_tgr MoE models with
:class:`~timm_tgr.task.tasks.VMoETask`, and with a teacher (the default for ``tgr_moe_*`` models, or
``--teacher`` for any MoE model) with :class:`~timm_tgr.task.tasks.TGRTask`. Flags are named as in timm's
``train.py`` where they mean the same; ``-c config.yaml`` sets any of them (``configs/``).

Per epoch, ``<output>/metrics.jsonl`` gets one JSON row (every loss component, top-1, and per MoE
layer: expert-utilization entropy, load, dropped fraction, and adjacent-epoch routing consistency on
a fixed probe set: the first ``--probe-samples`` validation images); ``summary.csv`` gets timm's flat
CSV row. At the end ``routing_consistency.json`` holds adjacent and to-final consistency per epoch and
``routing_consistency.png`` plots them (needs matplotlib: ``pip install timm-tgr[plot]``).

Checkpoints are timm's (CheckpointSaver + task state: teacher routers, schedule, consistency
history; never the teacher). Resuming after epoch k reproduces the uninterrupted run: every epoch
re-seeds all RNGs from ``--seed`` and the epoch (deterministic on CPU).
"""
import argparse
import json
import logging
import math
import os
import sys
import time
from contextlib import suppress
from functools import partial
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn
import yaml

import timm
from timm.data import Mixup, FastCollateMixup, create_dataset, create_loader, resolve_data_config
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.models import load_checkpoint, safe_model_name
from timm.optim import create_optimizer_v2, optimizer_kwargs
from timm.scheduler import create_scheduler_v2, scheduler_kwargs
from timm.task import ClassificationTask, resume_task_checkpoint, load_task_ema_checkpoint
from timm.utils import (
    AverageMeter, CheckpointSaver, NativeScaler, ParseKwargs, accuracy, dispatch_clip_grad, distribute_bn,
    get_outdir, init_distributed_device, is_primary, random_seed, reduce_tensor, setup_default_logging,
    unwrap_model, update_summary,
)

from ..data import FASHION_MNIST_MEAN, FASHION_MNIST_STD, prepare_fashion_mnist
from ..task.guidance import DistillSchedule, build_teacher, default_teacher
from ..task.metrics import ConsistencyTracker, RoutingStats, mean_over_layers
from ..task.stablemoe import RouterFreezeSchedule
from ..task.tasks import TGR_MODES, TGRTask, VMoETask

_logger = logging.getLogger('train_tgr')

__all__ = ['main', 'build_parser', 'parse_args']


# --------------------------------------------------------------------------------------------------
# arguments
# --------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='train_tgr.py',
        description='Train V-MoE / TGR-MoE (and dense teacher) models with timm. '
                    'Any flag can also be set in a YAML file given with -c/--config (keys use underscores).')
    parser.add_argument('-c', '--config', default='', type=str, metavar='FILE', help='YAML config with flag values')

    group = parser.add_argument_group('Dataset')
    group.add_argument('--data-dir', metavar='DIR', default='data', help='dataset root (default: data)')
    group.add_argument('--dataset', metavar='NAME', default='torch/fashion_mnist',
                       help='timm dataset name: "" or "folder" for an ImageFolder tree, torch/<name> for torchvision '
                            '(default: torch/fashion_mnist, prepared from Debian\'s dataset-fashion-mnist if present)')
    group.add_argument('--train-split', default='train', help='training split (default: train)')
    group.add_argument('--val-split', default='validation', help='validation split (default: validation)')
    group.add_argument('--dataset-download', action='store_true', help='allow torchvision to download the dataset')
    group.add_argument('--class-map', default='', type=str, metavar='FILE', help='class map file for folder datasets')

    group = parser.add_argument_group('Model')
    group.add_argument('--model', default='tgr_moe_deit_tiny', metavar='NAME', help='timm model name')
    group.add_argument('--pretrained', action='store_true', help='start from pretrained weights')
    group.add_argument('--initial-checkpoint', default='', metavar='PATH', help='load these weights first')
    group.add_argument('--resume', default='', metavar='PATH', help='resume training from this checkpoint')
    group.add_argument('--no-resume-opt', action='store_true', help='do not restore optimizer/scaler state')
    group.add_argument('--num-classes', type=int, default=None, metavar='N', help='number of classes')
    group.add_argument('--img-size', type=int, default=None, metavar='N', help='image size (model and data)')
    group.add_argument('--in-chans', type=int, default=None, metavar='N', help='image channels')
    group.add_argument('--crop-pct', default=None, type=float, help='eval crop fraction')
    group.add_argument('--mean', type=float, nargs='+', default=None, metavar='MEAN', help='dataset mean')
    group.add_argument('--std', type=float, nargs='+', default=None, metavar='STD', help='dataset std')
    group.add_argument('--interpolation', default='', type=str, help='resize interpolation')
    group.add_argument('-b', '--batch-size', type=int, default=128, metavar='N', help='batch size per process')
    group.add_argument('-vb', '--validation-batch-size', type=int, default=None, metavar='N',
                       help='validation batch size (default: batch size)')
    group.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs,
                       help='extra timm.create_model kwargs, e.g. num_experts=8 top_k=1 embed_dim=96')
    group.add_argument('--grad-accum-steps', type=int, default=1, metavar='N', help='micro-batches per update')
    group.add_argument('--grad-checkpointing', action='store_true', help='activation checkpointing')
    group.add_argument('--drop', type=float, default=0.0, help='dropout rate')
    group.add_argument('--drop-path', type=float, default=None, help='drop path rate')
    group.add_argument('--torchcompile', nargs='?', type=str, default=None, const='inductor',
                       help='torch.compile the task with this backend (default: inductor)')

    group = parser.add_argument_group('Teacher-guided routing')
    group.add_argument('--teacher', default=None, metavar='NAME',
                       help="dense teacher (timm name, local-dir:/hf-hub:). Default: the paper's DeiT-III for "
                            "tgr_moe_* models, none for others; 'none' trains without guidance")
    group.add_argument('--teacher-checkpoint', default='', metavar='PATH',
                       help='teacher weights (e.g. a train_tgr.py checkpoint of the dense teacher)')
    group.add_argument('--teacher-kwargs', nargs='*', default={}, action=ParseKwargs,
                       help='timm.create_model kwargs of the teacher (e.g. embed_dim=96 patch_size=7)')
    group.add_argument('--no-teacher-pretrained', action='store_true',
                       help='random teacher weights when no --teacher-checkpoint (debugging only)')
    group.add_argument('--tgr-mode', default='tgr', choices=TGR_MODES,
                       help='tgr (the method), distill_only (router learns only from the teacher), '
                            'teacher_route (upper bound: teacher router routes)')
    group.add_argument('--distill-weight', type=float, default=5.0, help='lambda_distill (paper: 5.0)')
    group.add_argument('--teacher-load-weight', type=float, default=0.005, help='lambda_load of the teacher router')
    group.add_argument('--teacher-entropy-weight', type=float, default=None,
                       help='lambda_ent of the teacher router (default 0.005; 0 in teacher_route mode)')
    group.add_argument('--distill-schedule', default='full', choices=DistillSchedule.MODES,
                       help='when distillation is on: full, first (--distill-fraction of training), off, adaptive')
    group.add_argument('--distill-fraction', type=float, default=0.5, help="fraction for --distill-schedule first")
    group.add_argument('--layer-map', default='aligned', choices=('aligned', 'last'),
                       help='teacher block per student MoE block: same depth (aligned) or the last block')
    group.add_argument('--freeze-router-at', type=float, default=None, metavar='FRACTION',
                       help='StableMoE baseline: freeze all routers after this fraction of the updates')
    group.add_argument('--probe-samples', type=int, default=1000,
                       help='validation images in the fixed routing-consistency probe set (0 disables)')

    group = parser.add_argument_group('Optimizer')
    group.add_argument('--opt', default='adamw', metavar='OPTIMIZER', help='optimizer (default: adamw)')
    group.add_argument('--opt-eps', default=None, type=float, help='optimizer epsilon')
    group.add_argument('--opt-betas', default=None, type=float, nargs='+', help='optimizer betas')
    group.add_argument('--momentum', type=float, default=0.9, help='SGD momentum')
    group.add_argument('--weight-decay', type=float, default=0.05, help='weight decay (Table S1: 0.05)')
    group.add_argument('--clip-grad', type=float, default=None, help='gradient clipping value')
    group.add_argument('--clip-mode', type=str, default='norm', help='norm, value or agc')
    group.add_argument('--layer-decay', type=float, default=None, help='layer-wise lr decay')
    group.add_argument('--opt-kwargs', nargs='*', default={}, action=ParseKwargs)

    group = parser.add_argument_group('Learning rate schedule')
    group.add_argument('--sched', type=str, default='cosine', metavar='SCHEDULER', help='lr schedule (cosine)')
    group.add_argument('--sched-on-updates', action='store_true', help='step the schedule per update')
    group.add_argument('--lr', type=float, default=5e-4, metavar='LR', help='learning rate (Table S1: 5e-4)')
    group.add_argument('--warmup-lr', type=float, default=1e-6, help='warmup start lr')
    group.add_argument('--min-lr', type=float, default=1e-5, help='lower lr bound of the schedule')
    group.add_argument('--epochs', type=int, default=300, metavar='N', help='epochs (Table S1: 300 ImageNet)')
    group.add_argument('--warmup-epochs', type=int, default=5, help='warmup epochs (Table S1: 5)')
    group.add_argument('--warmup-prefix', action='store_true', help='exclude warmup from the decay')
    group.add_argument('--cooldown-epochs', type=int, default=0, help='epochs at min lr after the schedule')
    group.add_argument('--decay-epochs', type=float, default=90, help='step schedules: epochs between decays')
    group.add_argument('--decay-rate', type=float, default=0.1, help='step schedules: decay rate')
    group.add_argument('--patience-epochs', type=int, default=10, help='plateau schedule patience')
    group.add_argument('--lr-cycle-mul', type=float, default=1.0)
    group.add_argument('--lr-cycle-decay', type=float, default=0.5)
    group.add_argument('--lr-cycle-limit', type=int, default=1)
    group.add_argument('--lr-k-decay', type=float, default=1.0)
    group.add_argument('--lr-noise', type=float, nargs='+', default=None)
    group.add_argument('--lr-noise-pct', type=float, default=0.67)
    group.add_argument('--lr-noise-std', type=float, default=1.0)

    group = parser.add_argument_group('Augmentation and regularization')
    group.add_argument('--no-aug', action='store_true', help='no training augmentation')
    group.add_argument('--scale', type=float, nargs='+', default=[0.08, 1.0], help='random-resized-crop scale')
    group.add_argument('--ratio', type=float, nargs='+', default=[3. / 4., 4. / 3.], help='crop aspect ratio')
    group.add_argument('--hflip', type=float, default=0.5, help='horizontal flip probability')
    group.add_argument('--vflip', type=float, default=0., help='vertical flip probability')
    group.add_argument('--color-jitter', type=float, default=None, help='color jitter (off by default)')
    group.add_argument('--aa', type=str, default=None, metavar='NAME',
                       help='auto augment, e.g. rand-m9-mstd0.5-inc1 (Table S1: RandAugment)')
    group.add_argument('--reprob', type=float, default=0., help='random erase probability')
    group.add_argument('--remode', type=str, default='pixel', help='random erase mode')
    group.add_argument('--recount', type=int, default=1, help='random erase count')
    group.add_argument('--mixup', type=float, default=0.0, help='mixup alpha (Table S1: 0.8)')
    group.add_argument('--cutmix', type=float, default=0.0, help='cutmix alpha (Table S1: 1.0)')
    group.add_argument('--cutmix-minmax', type=float, nargs='+', default=None)
    group.add_argument('--mixup-prob', type=float, default=1.0)
    group.add_argument('--mixup-switch-prob', type=float, default=0.5)
    group.add_argument('--mixup-mode', type=str, default='batch')
    group.add_argument('--mixup-off-epoch', default=0, type=int, help='turn mixup off at this epoch (0: never)')
    group.add_argument('--smoothing', type=float, default=0.1, help='label smoothing')
    group.add_argument('--train-interpolation', type=str, default='random')

    group = parser.add_argument_group('EMA')
    group.add_argument('--model-ema', action='store_true', help='keep an EMA of the (student) weights')
    group.add_argument('--model-ema-decay', type=float, default=0.9998)
    group.add_argument('--model-ema-warmup', action='store_true')

    group = parser.add_argument_group('Misc')
    group.add_argument('--seed', type=int, default=42, help='random seed')
    group.add_argument('--log-interval', type=int, default=50, help='batches between log lines')
    group.add_argument('--checkpoint-hist', type=int, default=2, help='checkpoints to keep')
    group.add_argument('-j', '--workers', type=int, default=2, help='data loading workers per process')
    group.add_argument('--amp', action='store_true', help='mixed precision (autocast)')
    group.add_argument('--amp-dtype', default='bfloat16', choices=('bfloat16', 'float16'))
    group.add_argument('--no-prefetcher', action='store_true', help='disable timm\'s CUDA prefetcher')
    group.add_argument('--pin-mem', action='store_true')
    group.add_argument('--output', default='output', metavar='DIR', help='output root (default: output)')
    group.add_argument('--experiment', default='', metavar='NAME', help='run sub-folder name')
    group.add_argument('--eval-metric', default='top1', help='metric that picks the best checkpoint')
    group.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    group.add_argument('--dist-backend', default=None, help='torch.distributed backend (gloo on CPU, nccl on CUDA)')
    group.add_argument('--dist-url', default=None)
    group.add_argument('--no-progress', action='store_true', help='no progress bar')
    group.add_argument('--no-plot', action='store_true', help='skip the routing-consistency plot')
    group.add_argument('--threads', type=int, default=None, help='torch CPU threads per process')
    return parser


def parse_args(argv: Optional[Sequence[str]] = None):
    """Parse flags, with ``-c FILE`` YAML values as defaults (unknown YAML keys are an error)."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument('-c', '--config', default='')
    cfg_args, _ = pre.parse_known_args(argv)
    if cfg_args.config:
        if not os.path.isfile(cfg_args.config):
            parser.error(f'config file {cfg_args.config!r} does not exist (see configs/ for the shipped recipes)')
        with open(cfg_args.config) as f:
            try:
                cfg = yaml.safe_load(f) or {}
            except yaml.YAMLError as e:
                parser.error(f'config file {cfg_args.config!r} is not valid YAML: {e}')
        if not isinstance(cfg, dict):
            parser.error(f'config file {cfg_args.config!r} must hold a mapping of flag names to values')
        known = {a.dest for a in parser._actions}
        unknown = sorted(k for k in cfg if k.replace('-', '_') not in known)
        if unknown:
            parser.error(f'config file {cfg_args.config!r} has unknown keys {unknown}: use flag names with '
                         f'underscores, e.g. batch_size, model_kwargs (see train_tgr.py --help)')
        parser.set_defaults(**{k.replace('-', '_'): v for k, v in cfg.items()})
    args = parser.parse_args(argv)
    _check_args(parser, args)
    return args


def _check_args(parser, args) -> None:
    if args.epochs < 1:
        parser.error(f'--epochs must be >= 1, got {args.epochs}')
    if args.batch_size < 1:
        parser.error(f'--batch-size must be >= 1, got {args.batch_size}')
    if args.grad_accum_steps < 1:
        parser.error(f'--grad-accum-steps must be >= 1, got {args.grad_accum_steps}')
    if args.freeze_router_at is not None and not 0. <= args.freeze_router_at <= 1.:
        parser.error(f'--freeze-router-at is a fraction of training in [0, 1], got {args.freeze_router_at}')
    if not 0. <= args.distill_fraction <= 1.:
        parser.error(f'--distill-fraction must be in [0, 1], got {args.distill_fraction}')
    if args.resume and not os.path.isfile(args.resume):
        parser.error(f'--resume {args.resume!r}: no such checkpoint file (train_tgr.py writes last.pth.tar '
                     f'in the run folder)')
    if args.teacher_checkpoint and not os.path.isfile(args.teacher_checkpoint):
        parser.error(f'--teacher-checkpoint {args.teacher_checkpoint!r}: no such file')
    if args.initial_checkpoint and not os.path.isfile(args.initial_checkpoint):
        parser.error(f'--initial-checkpoint {args.initial_checkpoint!r}: no such file')
    if not timm.is_model(args.model) and not args.model.startswith(('hf-hub:', 'local-dir:')):
        parser.error(f'--model {args.model!r} is not a timm model; see timm.list_models("*moe*") '
                     f'(timm_tgr registers vmoe_deit_*, tgr_moe_deit_*, soft_moe_deit_*, ec_moe_deit_*)')


# --------------------------------------------------------------------------------------------------
# building blocks
# --------------------------------------------------------------------------------------------------
def _is_moe(model: nn.Module) -> bool:
    return hasattr(unwrap_model(model), 'routing_infos')


def _model_kwargs(args) -> dict:
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


def _dataset_defaults(args) -> None:
    """Fashion-MNIST: 1 channel, 10 classes, 28x28, its own mean/std, no eval crop, unless given."""
    if args.dataset.lower() not in ('torch/fashion_mnist', 'torchvision/fashion_mnist'):
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


def _resolve_teacher(args, model: nn.Module) -> Optional[str]:
    teacher = args.teacher
    if teacher is not None and teacher.lower() == 'none':
        return None
    if teacher is None and args.model.startswith('tgr_'):
        teacher = default_teacher(args.model)
    if teacher is not None and not _is_moe(model):
        raise ValueError(f'--teacher {teacher!r} guides MoE routers, but {args.model!r} is a dense model: '
                         f'drop --teacher, or train a timm_tgr MoE model (e.g. tgr_moe_deit_tiny).')
    return teacher


def _build_teacher(args, device) -> nn.Module:
    """The named teacher with --teacher-kwargs; weights from --teacher-checkpoint (strict) or the hub."""
    return build_teacher(
        args.teacher_resolved, checkpoint=args.teacher_checkpoint or None,
        pretrained=not args.no_teacher_pretrained, **dict(args.teacher_kwargs)).to(device)


def _train_criterion(args, mixup_active: bool) -> nn.Module:
    if mixup_active:
        return SoftTargetCrossEntropy()
    if args.smoothing:
        return LabelSmoothingCrossEntropy(smoothing=args.smoothing)
    return nn.CrossEntropyLoss()


def _set_epoch(loader, epoch: int) -> None:
    sampler = getattr(loader, 'sampler', None)
    if hasattr(sampler, 'set_epoch'):
        sampler.set_epoch(epoch)


# --------------------------------------------------------------------------------------------------
# epoch loops
# --------------------------------------------------------------------------------------------------
def train_one_epoch(epoch, task, loader, optimizer, args, device, lr_scheduler=None, loss_scaler=None,
                    amp_autocast=suppress, mixup_fn=None, num_updates_start=0, freeze=None) -> Dict[str, float]:
    """One pass over ``loader``, as timm's train.py: task forward, accumulation, scaler, EMA, lr per update."""
    if args.mixup_off_epoch and epoch >= args.mixup_off_epoch and mixup_fn is not None:
        mixup_fn.mixup_enabled = False
    module = task.get_trainable_module()
    module.train()
    accum = args.grad_accum_steps
    updates_per_epoch = (len(loader) + accum - 1) // accum
    last_batch = len(loader) - 1
    last_accum_batches = len(loader) % accum or accum
    num_updates = num_updates_start
    sums: Dict[str, torch.Tensor] = {}
    count = 0
    optimizer.zero_grad()

    progress = None
    if is_primary(args) and not args.no_progress:
        from tqdm import tqdm
        progress = tqdm(total=len(loader), desc=f'epoch {epoch}', leave=False, dynamic_ncols=True, file=sys.stderr)

    for batch_idx, (input, target) in enumerate(loader):
        last = batch_idx == last_batch
        need_update = last or (batch_idx + 1) % accum == 0
        accum_steps = last_accum_batches if batch_idx >= len(loader) - last_accum_batches else accum
        if freeze is not None:
            frozen = freeze.maybe_freeze(task.get_trainable_module(), num_updates)
            if frozen and is_primary(args):
                _logger.info(f'StableMoE: routers frozen at update {num_updates} ({len(frozen)} tensors)')
        input, target = input.to(device), target.to(device)
        if mixup_fn is not None:
            input, target = mixup_fn(input, target)

        def _forward_backward():
            with amp_autocast():
                result = task(input, target)
            loss = result['loss']
            if accum_steps > 1:
                loss = loss / accum_steps
            if loss_scaler is not None:
                loss_scaler(
                    loss, optimizer, clip_grad=args.clip_grad, clip_mode=args.clip_mode,
                    parameters=task.get_clip_parameters(exclude_head='agc' in args.clip_mode),
                    create_graph=False, need_update=need_update)
            else:
                loss.backward()
                if need_update:
                    if args.clip_grad is not None:
                        dispatch_clip_grad(
                            task.get_clip_parameters(exclude_head='agc' in args.clip_mode),
                            value=args.clip_grad, mode=args.clip_mode)
                    optimizer.step()
            return result

        if args.distributed and not need_update:
            with task.no_sync():
                result = _forward_backward()
        else:
            result = _forward_backward()

        n = input.shape[0]
        count += n
        for k, v in result.items():
            if k != 'output' and torch.is_tensor(v) and v.ndim == 0:
                v = v.detach().float()
                sums[k] = sums[k] + v * n if k in sums else v * n

        if need_update:
            optimizer.zero_grad()
            num_updates += 1
            task.update_ema(step=num_updates)
            if lr_scheduler is not None:
                lr_scheduler.step_update(num_updates=num_updates)
        if progress is not None:
            progress.update(1)
            if batch_idx % args.log_interval == 0 or last:
                lr = optimizer.param_groups[0]['lr']
                progress.set_postfix(loss=f"{float(sums['loss']) / count:.4f}", lr=f'{lr:.2e}')
    if progress is not None:
        progress.close()

    out = {}
    for k, v in sums.items():
        v = v / count
        if args.distributed:
            v = reduce_tensor(v.to(device), args.world_size)
        out['loss' if k == 'loss' else k] = float(v)
    out['num_updates'] = num_updates
    assert num_updates - num_updates_start == updates_per_epoch
    return out


@torch.no_grad()
def validate(model, loader, args, device, amp_autocast=suppress, route_fn=None, routing_stats=None,
             probe_batches: int = 0):
    """Top-1/top-5 and loss; optionally routing stats and the probe set's top-1 experts (from the same pass).

    ``route_fn(input)`` replaces ``model(input)`` (teacher-route evaluation).
    """
    criterion = nn.CrossEntropyLoss()
    model.eval()
    base = unwrap_model(model)
    loss_m, top1_m, top5_m = AverageMeter(), AverageMeter(), AverageMeter()
    probe: Dict[int, List[torch.Tensor]] = {}
    for batch_idx, (input, target) in enumerate(loader):
        input, target = input.to(device), target.to(device)
        with amp_autocast():
            output = route_fn(input) if route_fn is not None else model(input)
        if isinstance(output, (tuple, list)):
            output = output[0]
        loss = criterion(output.float(), target)
        num_classes = output.shape[-1]
        acc1, acc5 = accuracy(output, target, topk=(1, min(5, num_classes)))
        if args.distributed:
            loss = reduce_tensor(loss, args.world_size)
            acc1 = reduce_tensor(acc1, args.world_size)
            acc5 = reduce_tensor(acc5, args.world_size)
        n = input.shape[0]
        loss_m.update(float(loss), n)
        top1_m.update(float(acc1), n)
        top5_m.update(float(acc5), n)
        if routing_stats is not None and hasattr(base, 'routing_infos'):
            infos = base.routing_infos()
            routing_stats.update(infos)
            if batch_idx < probe_batches:
                for i, info in infos.items():
                    probe.setdefault(i, []).append(info.expert_index[..., 0].reshape(-1).cpu())
    out = {'loss': loss_m.avg, 'top1': top1_m.avg, 'top5': top5_m.avg}
    return out, {i: torch.cat(v) for i, v in probe.items()}


def _reduce_routing_stats(stats: RoutingStats, args) -> None:
    if not args.distributed:
        return
    import torch.distributed as dist
    for i in sorted(stats.counts):
        for table in (stats.counts, stats.dropped):
            t = table[i].clone()
            dist.all_reduce(t)
            table[i] = t
        c = torch.tensor(float(stats.choices[i]), dtype=torch.float64)
        dist.all_reduce(c)
        stats.choices[i] = int(c)


# --------------------------------------------------------------------------------------------------
# outputs
# --------------------------------------------------------------------------------------------------
def _write_rows(path: str, rows: List[dict]) -> None:
    tmp = path + '.part'
    with open(tmp, 'w') as f:
        for row in rows:
            f.write(json.dumps(row) + '\n')
    os.replace(tmp, path)


def read_metrics(path: str) -> List[dict]:
    """Rows of a run's ``metrics.jsonl``."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_routing_consistency(rows: List[dict], path: str, title: str = '') -> bool:
    """Mean adjacent-epoch and per-layer consistency per epoch; False when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        _logger.info('matplotlib not installed: no plot (pip install "timm-tgr[plot]")')
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [r['epoch'] for r in rows if r.get('consistency_prev') is not None]
    if epochs:
        ax.plot(epochs, [r['consistency_prev'] for r in rows if r.get('consistency_prev') is not None],
                'k-o', label='mean')
        blocks = sorted({b for r in rows for b in r.get('routing', {})}, key=int)
        for b in blocks:
            pts = [(r['epoch'], r['routing'][b]['consistency_prev']) for r in rows
                   if b in r.get('routing', {}) and r['routing'][b].get('consistency_prev') is not None]
            if pts:
                ax.plot(*zip(*pts), '--', alpha=0.6, label=f'block {int(b) + 1}')
    ax.set_xlabel('epoch')
    ax.set_ylabel('adjacent-epoch routing consistency')
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


# --------------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------------
def main(argv: Optional[Sequence[str]] = None) -> dict:
    """Train; returns ``{'output_dir', 'best_metric', 'best_epoch', 'rows'}``."""
    if not logging.root.handlers:
        setup_default_logging()
    args = parse_args(argv)
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _main(args)
    finally:
        torch.set_num_threads(threads)  # in-process callers (quickstart, reproduce) get theirs back


def _main(args) -> dict:
    device = init_distributed_device(args)
    args.prefetcher = device.type == 'cuda' and not args.no_prefetcher
    random_seed(args.seed, 0)  # same initial weights on every rank

    # ---- data prerequisites (before the model: Fashion-MNIST sets channel/class/size defaults)
    _dataset_defaults(args)
    if args.dataset.lower() in ('torch/fashion_mnist', 'torchvision/fashion_mnist') and is_primary(args):
        src = prepare_fashion_mnist(args.data_dir, download=args.dataset_download)
        _logger.info(f'Fashion-MNIST in {args.data_dir} (source: {src})')
    if args.distributed:
        torch.distributed.barrier()

    # ---- model
    args.model_kwargs_resolved = _model_kwargs(args)
    model = timm.create_model(args.model, pretrained=args.pretrained, **args.model_kwargs_resolved)
    if args.initial_checkpoint:
        load_checkpoint(model, args.initial_checkpoint, strict=True)
    if args.grad_checkpointing:
        model.set_grad_checkpointing(True)
    model.to(device)
    args.teacher_resolved = _resolve_teacher(args, model)  # before any data work: a bad combination fails fast
    data_config = resolve_data_config(vars(args), model=model, verbose=is_primary(args))
    if is_primary(args):
        _logger.info(f'Model {args.model} created, {sum(p.numel() for p in model.parameters()):,} parameters')

    # ---- data
    img_mode = 'RGB' if data_config['input_size'][0] == 3 else 'L'
    if data_config['input_size'][0] not in (1, 3):
        raise ValueError(f"train_tgr.py reads 1- or 3-channel images; the model wants {data_config['input_size'][0]}")
    dataset_train = create_dataset(
        args.dataset, root=args.data_dir, split=args.train_split, is_training=True, class_map=args.class_map,
        download=args.dataset_download, batch_size=args.batch_size, seed=args.seed, input_img_mode=img_mode)
    dataset_eval = create_dataset(
        args.dataset, root=args.data_dir, split=args.val_split, is_training=False, class_map=args.class_map,
        download=args.dataset_download, batch_size=args.validation_batch_size or args.batch_size,
        input_img_mode=img_mode)
    mixup_active = args.mixup > 0 or args.cutmix > 0. or args.cutmix_minmax is not None
    mixup_fn, collate_fn = None, None
    if mixup_active:
        mixup_args = dict(
            mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax,
            prob=args.mixup_prob, switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
            label_smoothing=args.smoothing, num_classes=unwrap_model(model).num_classes)
        if args.prefetcher:
            collate_fn = FastCollateMixup(**mixup_args)
        else:
            mixup_fn = Mixup(**mixup_args)
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
    if len(loader_train) == 0:
        raise ValueError(f'the training split has fewer images ({len(dataset_train)}) than one batch '
                         f'({args.batch_size}, incomplete batches are dropped): lower --batch-size.')
    probe_batches = math.ceil(args.probe_samples / eval_batch) if args.probe_samples > 0 else 0

    # ---- task
    train_loss_fn = _train_criterion(args, mixup_active).to(device)
    updates_per_epoch = (len(loader_train) + args.grad_accum_steps - 1) // args.grad_accum_steps
    tracker = ConsistencyTracker() if _is_moe(model) else None
    if args.teacher_resolved is not None:
        if args.distill_schedule == 'adaptive' and args.probe_samples <= 0:
            raise ValueError('--distill-schedule adaptive watches probe-set consistency: set --probe-samples > 0')
        teacher = _build_teacher(args, device)
        task = TGRTask(
            model, teacher_model=teacher, criterion=train_loss_fn, layer_map=None if args.layer_map == 'aligned'
            else args.layer_map, distill_weight=args.distill_weight, teacher_load_weight=args.teacher_load_weight,
            teacher_entropy_weight=args.teacher_entropy_weight, schedule=args.distill_schedule,
            total_steps=args.epochs * len(loader_train), distill_fraction=args.distill_fraction,
            mode=args.tgr_mode, device=device, verbose=is_primary(args))
        kind = f'TGR ({args.tgr_mode}, teacher {args.teacher_resolved}, schedule {args.distill_schedule})'
    elif _is_moe(model):
        task = VMoETask(model, criterion=train_loss_fn, device=device, verbose=is_primary(args))
        kind = 'V-MoE (no teacher)'
    else:
        task = ClassificationTask(model, criterion=train_loss_fn, device=device, verbose=is_primary(args))
        kind = 'dense classification'
    if tracker is not None:
        task.register_trainer_state('consistency', tracker)
    if is_primary(args):
        _logger.info(f'Task: {kind}')
    freeze = None
    if args.freeze_router_at is not None:
        if not _is_moe(model):
            raise ValueError('--freeze-router-at freezes MoE routers: the model has none')
        freeze = RouterFreezeSchedule(fraction=args.freeze_router_at, total_steps=args.epochs * updates_per_epoch)

    trainable = task.get_trainable_module()
    optimizer = create_optimizer_v2(trainable, **optimizer_kwargs(cfg=args), **args.opt_kwargs)
    amp_autocast, loss_scaler = suppress, None
    if args.amp:
        amp_dtype = torch.bfloat16 if args.amp_dtype == 'bfloat16' else torch.float16
        amp_autocast = partial(torch.autocast, device_type=device.type, dtype=amp_dtype)
        if amp_dtype == torch.float16:
            loss_scaler = NativeScaler(device=device.type)

    output_dir = _output_dir(args)
    start_epoch = 0
    if args.resume:
        start_epoch = resume_task_checkpoint(
            task, args.resume, optimizer=None if args.no_resume_opt else optimizer,
            loss_scaler=None if args.no_resume_opt else loss_scaler, log_info=is_primary(args)) or 0
    if args.model_ema:
        task.setup_ema(decay=args.model_ema_decay, use_warmup=args.model_ema_warmup)
        if args.resume:
            load_task_ema_checkpoint(task, args.resume)
    if args.torchcompile:
        task.compile(backend=args.torchcompile)
    if args.distributed:
        ddp_kwargs = dict(find_unused_parameters=True) if freeze is not None else {}
        task.prepare_distributed(device_ids=[device] if device.type == 'cuda' else None, **ddp_kwargs)

    lr_scheduler, num_epochs = create_scheduler_v2(
        optimizer, **scheduler_kwargs(args, decreasing_metric=False), updates_per_epoch=updates_per_epoch)
    if start_epoch > 0:
        if args.sched_on_updates:
            lr_scheduler.step_update(start_epoch * updates_per_epoch)
        else:
            lr_scheduler.step(start_epoch)

    # ---- outputs
    saver, rows = None, []
    metrics_path = os.path.join(output_dir, 'metrics.jsonl')
    if is_primary(args):
        saver = CheckpointSaver(
            model=model, optimizer=optimizer, args=_checkpoint_args(args), model_ema=None,
            amp_scaler=loss_scaler, checkpoint_dir=output_dir, recovery_dir=output_dir, decreasing=False,
            max_history=args.checkpoint_hist, task=task)
        with open(os.path.join(output_dir, 'args.yaml'), 'w') as f:
            yaml.safe_dump(_yaml_safe(vars(args)), f, default_flow_style=False)
        if os.path.isfile(metrics_path):
            rows = [r for r in read_metrics(metrics_path) if r['epoch'] < start_epoch]
            _write_rows(metrics_path, rows)
        if rows:  # resuming in the run's folder: model_best.pth.tar stays the best of all epochs
            best = max(rows, key=lambda r: _row_metric(r, args))
            saver.best_metric, saver.best_epoch = _row_metric(best, args), best['epoch']
        _logger.info(f'Output: {output_dir}; task {kind}; epochs {start_epoch}..{num_epochs - 1}; '
                     f'{updates_per_epoch} updates/epoch')

    best_metric, best_epoch = None, None
    num_updates = start_epoch * updates_per_epoch
    for epoch in range(start_epoch, num_epochs):
        t0 = time.time()
        random_seed(args.seed + epoch, args.rank)  # every epoch re-seeds: resume reproduces the run
        _set_epoch(loader_train, epoch)
        train_metrics = train_one_epoch(
            epoch, task, loader_train, optimizer, args, device, lr_scheduler=lr_scheduler,
            loss_scaler=loss_scaler, amp_autocast=amp_autocast, mixup_fn=mixup_fn,
            num_updates_start=num_updates, freeze=freeze)
        num_updates = train_metrics.pop('num_updates')

        eval_model = task.get_eval_model()
        stats = RoutingStats() if tracker is not None else None
        eval_metrics, probe = validate(eval_model, loader_eval, args, device, amp_autocast, routing_stats=stats,
                                       probe_batches=probe_batches)
        row = {'epoch': epoch, 'lr': optimizer.param_groups[0]['lr'],
               'train_loss': train_metrics['loss'],
               **{f'train_{k}': v for k, v in train_metrics.items() if k != 'loss'},
               'eval_loss': eval_metrics['loss'], 'eval_top1': eval_metrics['top1'], 'eval_top5': eval_metrics['top5']}
        if isinstance(task, TGRTask) and task.mode == 'teacher_route':
            tr, _ = validate(eval_model, loader_eval, args, device, amp_autocast, route_fn=task.forward_teacher_route)
            row['eval_top1_teacher_route'] = tr['top1']
        if task.has_ema():
            ema_metrics, _ = validate(task.get_eval_model(ema=True), loader_eval, args, device, amp_autocast)
            row['eval_ema_top1'] = ema_metrics['top1']
            row['eval_ema_loss'] = ema_metrics['loss']
        if tracker is not None:
            _reduce_routing_stats(stats, args)
            summary = stats.summary()
            adjacent = tracker.add(probe) if probe else None
            routing = {}
            for i, s in summary.items():
                routing[str(i)] = {
                    'entropy': s['entropy'], 'load': s['load'], 'dropped_fraction': s['dropped_fraction'],
                    'consistency_prev': adjacent[i] if adjacent is not None else None}
            row['routing'] = routing
            row['entropy'] = mean_over_layers({i: s['entropy'] for i, s in summary.items()})
            row['consistency_prev'] = mean_over_layers(adjacent)
            if isinstance(task, TGRTask) and row['consistency_prev'] is not None:
                task.schedule.observe_consistency(row['consistency_prev'])
        row['time_s'] = round(time.time() - t0, 2)

        metric = _row_metric(row, args)
        if saver is not None:
            rows.append(row)
            _write_rows(metrics_path, rows)
            update_summary(
                epoch, {'loss': row['train_loss']}, {k[5:]: v for k, v in row.items() if k.startswith('eval_')},
                filename=os.path.join(output_dir, 'summary.csv'), lr=row['lr'], write_header=epoch == 0)
            best_metric, best_epoch = saver.save_checkpoint(epoch, metric=metric)
            _log_row(row)
        lr_scheduler.step(epoch + 1, metric)

    result = {'output_dir': output_dir, 'best_metric': best_metric, 'best_epoch': best_epoch, 'rows': rows}
    if is_primary(args) and tracker is not None and tracker.history:
        _write_consistency(output_dir, tracker, rows, args)
    if is_primary(args):
        _logger.info(f'Done: best {args.eval_metric} {best_metric} at epoch {best_epoch}; outputs in {output_dir}')
    if args.distributed:
        torch.distributed.barrier()
    return result


def _row_metric(row: dict, args) -> float:
    """The metric that picks model_best: the EMA's when --model-ema, else the model's."""
    if args.model_ema and f'eval_ema_{args.eval_metric}' in row:
        return row[f'eval_ema_{args.eval_metric}']
    return row[f'eval_{args.eval_metric}']


def _output_dir(args) -> str:
    if args.resume and not args.experiment:
        out = os.path.dirname(os.path.abspath(args.resume))  # continue the run in its own folder
    else:
        name = args.experiment or '-'.join([time.strftime('%Y%m%d-%H%M%S'), safe_model_name(args.model)])
        out = os.path.join(args.output, name)
    if is_primary(args):
        os.makedirs(out, exist_ok=True)
    return out


def _yaml_safe(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, (str, int, float, bool, type(None))):
            out[k] = v
        elif isinstance(v, (list, tuple)):
            out[k] = list(v)
        elif isinstance(v, dict):
            out[k] = _yaml_safe(v)
        else:
            out[k] = str(v)
    return out


def _checkpoint_args(args) -> argparse.Namespace:
    """The args saved in checkpoints: plain values (loadable with weights_only), ``model`` and the exact
    ``model_kwargs`` that rebuild the model."""
    d = _yaml_safe(vars(args))
    d['model_kwargs'] = dict(args.model_kwargs_resolved)
    return argparse.Namespace(**d)


def _log_row(row: dict) -> None:
    parts = [f"epoch {row['epoch']}", f"train_loss {row['train_loss']:.4f}", f"eval_top1 {row['eval_top1']:.2f}"]
    for k in ('eval_ema_top1', 'eval_top1_teacher_route', 'train_distill_loss', 'entropy', 'consistency_prev'):
        if row.get(k) is not None:
            parts.append(f'{k} {row[k]:.4f}')
    parts.append(f"{row['time_s']:.0f}s")
    _logger.info(' | '.join(parts))


def _write_consistency(output_dir: str, tracker: ConsistencyTracker, rows: List[dict], args) -> None:
    adjacent = tracker.adjacent()
    to_final = tracker.to_final()
    epochs = [r['epoch'] for r in rows][-len(tracker.history):] if rows else list(range(len(tracker.history)))
    data = {
        'epochs': epochs,
        'adjacent': [{str(k): v for k, v in a.items()} if a else None for a in adjacent],
        'adjacent_mean': [mean_over_layers(a) for a in adjacent],
        'to_final': [{str(k): v for k, v in a.items()} for a in to_final],
        'to_final_mean': [mean_over_layers(a) for a in to_final],
    }
    with open(os.path.join(output_dir, 'routing_consistency.json'), 'w') as f:
        json.dump(data, f, indent=1)
    if not args.no_plot:
        plot_routing_consistency(rows, os.path.join(output_dir, 'routing_consistency.png'), title=args.model)


if __name__ == '__main__':
    main()
