"""Flags of timm-tgr's trainer: the parser (one function per flag group), ``-c`` YAML configs, checks.

Flags are named as in timm's ``train.py`` where they mean the same; any of them can be set in a YAML
file given with ``-c/--config`` (keys use underscores, see ``timm_tgr/configs/``).
"""
import argparse
import logging
import math
import os
import sys
from typing import List, Optional, Sequence

import torch
import yaml

import timm

from ..task.options import (
    MODEL, NEUTRAL, RECIPE, RECORDED, ROLES, RUN, RUN_FOLDER, GuidanceConfig, guidance_options, no_teacher,
    option_help, option_types,
)
from ..utils.checkpoint import run_outputs
from ..utils.cli import ArgumentParser, ParseKwargs

__all__ = ['build_parser', 'parse_args', 'guidance_flag', 'guidance_from_flags', 'earlier_run']

_logger = logging.getLogger(__name__)


class _Roles:
    """Flags that each declare their role in the run's record (:data:`~timm_tgr.task.options.ROLES`)."""

    def add_argument(self, *args, role: Optional[str] = None, **kwargs) -> argparse.Action:
        if role not in ROLES and kwargs.get('action') != 'help':
            raise ValueError(f'the role of {args} must be one of {ROLES}, got {role!r}')
        action = super().add_argument(*args, **kwargs)
        action.role = role
        return action


class _RoleGroup(_Roles, argparse._ArgumentGroup):
    pass


class _Parser(_Roles, ArgumentParser):
    """train_tgr.py's parser: its flags, and those of its groups, take a ``role``."""

    def add_argument_group(self, *args, **kwargs) -> _RoleGroup:
        group = _RoleGroup(self, *args, **kwargs)
        self._action_groups.append(group)
        return group


def build_parser() -> argparse.ArgumentParser:
    """The trainer's argparse parser (``train_tgr.py --help``)."""
    parser = _Parser(
        prog='train_tgr.py',
        description='Train V-MoE / TGR-MoE (and dense teacher) models with timm. '
                    'Any flag can also be set in a YAML file given with -c/--config (keys use underscores).')
    parser.add_argument('-c', '--config', default='', type=str, metavar='FILE', help='YAML config with flag values',
                        role=NEUTRAL)
    for add_group in (
            _add_dataset_args, _add_model_args, _add_guidance_args, _add_optimizer_args, _add_schedule_args,
            _add_augmentation_args, _add_ema_args, _add_misc_args, _add_observation_args):
        add_group(parser)
    return parser


def _add_dataset_args(parser: argparse.ArgumentParser) -> None:
    """Where the images come from."""
    group = parser.add_argument_group('Dataset')
    group.add_argument('--data-dir', metavar='DIR', default='data', help='dataset root (default: data)', role=NEUTRAL)
    group.add_argument('--dataset', metavar='NAME', default='torch/fashion_mnist',
                       help='timm dataset name: "" or "folder" for an ImageFolder tree, torch/<name> for torchvision '
                            '(default: torch/fashion_mnist, prepared from Debian\'s dataset-fashion-mnist if present)',
                       role=RECIPE)
    group.add_argument('--train-split', default='train', help='training split (default: train)', role=RECIPE)
    group.add_argument('--val-split', default='validation', help='validation split (default: validation)', role=RECIPE)
    group.add_argument('--dataset-download', action='store_true', help='allow torchvision to download the dataset',
                       role=RECORDED)
    group.add_argument('--class-map', default='', type=str, metavar='FILE', help='class map file for folder datasets',
                       role=RECORDED)
    group.add_argument('--device-data', action='store_true',
                       help='keep the dataset on the device (torchvision MNIST family, CIFAR): pad-4 random crop, '
                            'flip and mixup there, no loader workers (timm_tgr.data.DeviceDataLoader)', role=RECORDED)


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    """The student: timm model name, its create_model kwargs, batch sizes, weights to start from."""
    group = parser.add_argument_group('Model')
    group.add_argument('--model', default='tgr_moe_deit_tiny', metavar='NAME', help='timm model name', role=MODEL)
    group.add_argument('--pretrained', action='store_true', help='start from pretrained weights', role=RECIPE)
    group.add_argument('--initial-checkpoint', default='', metavar='PATH', help='load these weights first',
                       role=RECORDED)
    group.add_argument('--upcycle-from', default='', metavar='FILE_OR_MODEL',
                       help='sparse upcycling: start the MoE from a dense ViT/DeiT checkpoint (file, folder, timm '
                            'name, hf-hub:/local-dir:): every expert a copy of the dense MLP, a near-uniform router',
                       role=RECORDED)
    group.add_argument('--resume', default='', metavar='PATH',
                       help="resume training from this checkpoint (e.g. RUN/last.pth.tar) with the run's own flags; "
                            'the optimizer state comes from the checkpoint, its settings (--lr, --weight-decay, ...) '
                            'from this command', role=RUN_FOLDER)
    group.add_argument('--no-resume-opt', action='store_true', help='do not restore optimizer/scaler state',
                       role=NEUTRAL)
    group.add_argument('--trust-checkpoint', action='store_true',
                       help='read --resume / --initial-checkpoint / --upcycle-from / --teacher-checkpoint / '
                            '--teacher-routers-from with torch.load(weights_only=False), which can run code stored '
                            'in the file: only for checkpoints you made yourself', role=NEUTRAL)
    group.add_argument('--num-classes', type=int, default=None, metavar='N', help='number of classes', role=RECIPE)
    group.add_argument('--reset-classifier', action='store_true',
                       help='fresh classifier after loading --pretrained / --initial-checkpoint weights even when '
                            'the class count is the same (new classes); for another class count it is always fresh; '
                            'without loaded weights nothing to reset', role=RECORDED)
    group.add_argument('--img-size', type=int, default=None, metavar='N', help='image size (model and data)',
                       role=RECIPE)
    group.add_argument('--in-chans', type=int, default=None, metavar='N', help='image channels', role=RECIPE)
    group.add_argument('--crop-pct', default=None, type=float, help='eval crop fraction', role=RECIPE)
    group.add_argument('--mean', type=float, nargs='+', default=None, metavar='MEAN', help='dataset mean', role=RECIPE)
    group.add_argument('--std', type=float, nargs='+', default=None, metavar='STD', help='dataset std', role=RECIPE)
    group.add_argument('--interpolation', default='', type=str, help='resize interpolation', role=RECORDED)
    group.add_argument('-b', '--batch-size', type=int, default=128, metavar='N', help='batch size per process',
                       role=RECIPE)
    group.add_argument('-vb', '--validation-batch-size', type=int, default=None, metavar='N',
                       help='validation batch size (default: batch size)', role=RECORDED)
    group.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs,
                       help='extra timm.create_model kwargs, e.g. num_experts=8 top_k=1 embed_dim=96', role=MODEL)
    group.add_argument('--grad-accum-steps', type=int, default=1, metavar='N', help='micro-batches per update',
                       role=RECIPE)
    group.add_argument('--grad-checkpointing', action='store_true', help='activation checkpointing', role=RECORDED)
    group.add_argument('--drop', type=float, default=0.0, help='dropout rate', role=RECIPE)
    group.add_argument('--drop-path', type=float, default=None, help='drop path rate', role=RECIPE)
    group.add_argument('--torchcompile', nargs='?', type=str, default=None, const='inductor',
                       help='torch.compile the task with this backend (default: inductor)', role=RECORDED)


def _add_guidance_args(parser: argparse.ArgumentParser) -> None:
    """TGR (paper Sec. 3): GuidanceConfig's options, the StableMoE baseline, the probe set."""
    group = parser.add_argument_group('Teacher-guided routing')
    for name in guidance_options():
        if name == 'teacher_routers':  # the trainer's own flags stand before it, as they always have
            _add_probe_args(group)
        _add_guidance_flag(group, name)
    group.add_argument('--consistency-pretrained', default='auto', choices=('auto', 'on', 'off'),
                       help='log consistency_pretrained: per MoE layer, the fraction of probe tokens whose top-1 '
                            'expert is the one the starting weights chose (before the first step). auto: on when '
                            'starting from trained weights (--pretrained, --initial-checkpoint)', role=RECORDED)


def _add_probe_args(group) -> None:
    group.add_argument('--freeze-router-at', type=float, default=None, metavar='FRACTION',
                       help='StableMoE baseline: freeze all routers after this fraction of the updates', role=RECIPE)
    group.add_argument('--probe-samples', type=int, default=1000,
                       help='validation images in the fixed routing-consistency probe set (0 disables)', role=RECORDED)


# the flag of an option where it is not --<option> (the names train_tgr.py has always had); None: not in the
# guidance group (--trust-checkpoint is the model group's, for every checkpoint; total_steps is counted)
_GUIDANCE_FLAGS = {'mode': '--tgr-mode', 'schedule': '--distill-schedule', 'teacher_routers': '--teacher-routers-from',
                   'trust_checkpoint': None, 'total_steps': None}


def guidance_flag(name: str) -> Optional[str]:
    """train_tgr.py's flag of GuidanceConfig option ``name``: ``--<name>``, ``--no-<name>`` for a bool that is on
    by default, or its older name."""
    if name in _GUIDANCE_FLAGS:
        return _GUIDANCE_FLAGS[name]
    return ('--no-' if guidance_options()[name][1] is True else '--') + name.replace('_', '-')


def _dest(flag: str) -> str:
    return flag.lstrip('-').replace('-', '_')


def _add_guidance_flag(group, name: str) -> None:
    """The flag of option ``name``: its help, type, default, choices; a path's default is '' (None in the config)."""
    flag = guidance_flag(name)
    if flag is None:
        return
    _, default, meaning = guidance_options()[name]
    types = option_types(name)
    kw = dict(help=option_help(name, guidance_flag))
    if bool in types:
        kw.update(action='store_true')
    elif dict in types and not meaning.choices:
        kw.update(nargs='*', default={}, action=ParseKwargs)
    else:
        kw.update(type=float if float in types else types[0], default='' if meaning.path else default,
                  choices=meaning.choices or None, metavar=meaning.metavar or ('PATH' if meaning.path else None))
    group.add_argument(flag, role=meaning.role, **kw)


def guidance_from_flags(args: argparse.Namespace, **given) -> GuidanceConfig:
    """The GuidanceConfig of the flags; ``given`` sets the options without a flag of their own (and wins)."""
    values = {}
    for name, (_, _, meaning) in guidance_options().items():
        flag = guidance_flag(name)
        if flag is None:
            continue
        value = getattr(args, _dest(flag))
        values[name] = (not value if flag.startswith('--no-') else value or None if meaning.path
                        else dict(value) if isinstance(value, dict) else value)
    return GuidanceConfig(**{**values, **given})


def _add_optimizer_args(parser: argparse.ArgumentParser) -> None:
    """timm's optimizer flags (Table S1 defaults)."""
    group = parser.add_argument_group('Optimizer')
    group.add_argument('--opt', default='adamw', metavar='OPTIMIZER', help='optimizer (default: adamw)', role=RUN)
    group.add_argument('--opt-eps', default=None, type=float, help='optimizer epsilon', role=RECIPE)
    group.add_argument('--opt-betas', default=None, type=float, nargs='+', help='optimizer betas', role=RECIPE)
    group.add_argument('--momentum', type=float, default=0.9, help='SGD momentum', role=RECIPE)
    group.add_argument('--weight-decay', type=float, default=0.05, help='weight decay (Table S1: 0.05)', role=RECIPE)
    group.add_argument('--clip-grad', type=float, default=None, help='gradient clipping value', role=RECIPE)
    group.add_argument('--clip-mode', type=str, default='norm', help='norm, value or agc', role=RECIPE)
    group.add_argument('--layer-decay', type=float, default=None, help='layer-wise lr decay', role=RECIPE)
    group.add_argument('--opt-kwargs', nargs='*', default={}, action=ParseKwargs, role=RECORDED)


def _add_schedule_args(parser: argparse.ArgumentParser) -> None:
    """timm's scheduler flags (Table S1 defaults)."""
    group = parser.add_argument_group('Learning rate schedule')
    group.add_argument('--sched', type=str, default='cosine', metavar='SCHEDULER', help='lr schedule (cosine)',
                       role=RECIPE)
    group.add_argument('--sched-on-updates', action='store_true', help='step the schedule per update', role=RECORDED)
    group.add_argument('--lr', type=float, default=5e-4, metavar='LR', help='learning rate (Table S1: 5e-4)',
                       role=RECIPE)
    group.add_argument('--warmup-lr', type=float, default=1e-6, help='warmup start lr', role=RECIPE)
    group.add_argument('--min-lr', type=float, default=1e-5, help='lower lr bound of the schedule', role=RECIPE)
    group.add_argument('--epochs', type=int, default=300, metavar='N', help='epochs (Table S1: 300 ImageNet)',
                       role=RECIPE)
    group.add_argument('--warmup-epochs', type=int, default=5, help='warmup epochs (Table S1: 5)', role=RECIPE)
    group.add_argument('--warmup-prefix', action='store_true', help='exclude warmup from the decay', role=RECORDED)
    group.add_argument('--cooldown-epochs', type=int, default=0, help='epochs at min lr after the schedule',
                       role=RECIPE)
    group.add_argument('--decay-epochs', type=float, default=90, help='step schedules: epochs between decays',
                       role=RECORDED)
    group.add_argument('--decay-rate', type=float, default=0.1, help='step schedules: decay rate', role=RECIPE)
    group.add_argument('--patience-epochs', type=int, default=10, help='plateau schedule patience', role=RECORDED)
    group.add_argument('--lr-cycle-mul', type=float, default=1.0, role=RECORDED)
    group.add_argument('--lr-cycle-decay', type=float, default=0.5, role=RECORDED)
    group.add_argument('--lr-cycle-limit', type=int, default=1, role=RECORDED)
    group.add_argument('--lr-k-decay', type=float, default=1.0, role=RECORDED)
    group.add_argument('--lr-noise', type=float, nargs='+', default=None, role=RECORDED)
    group.add_argument('--lr-noise-pct', type=float, default=0.67, role=RECORDED)
    group.add_argument('--lr-noise-std', type=float, default=1.0, role=RECORDED)


def _add_augmentation_args(parser: argparse.ArgumentParser) -> None:
    """timm's augmentation, mixup/cutmix and label-smoothing flags."""
    group = parser.add_argument_group('Augmentation and regularization')
    group.add_argument('--no-aug', action='store_true', help='no training augmentation', role=RECIPE)
    group.add_argument('--scale', type=float, nargs='+', default=[0.08, 1.0], help='random-resized-crop scale',
                       role=RECIPE)
    group.add_argument('--ratio', type=float, nargs='+', default=[3. / 4., 4. / 3.], help='crop aspect ratio',
                       role=RECIPE)
    group.add_argument('--hflip', type=float, default=0.5, help='horizontal flip probability', role=RECIPE)
    group.add_argument('--vflip', type=float, default=0., help='vertical flip probability', role=RECIPE)
    group.add_argument('--color-jitter', type=float, default=None, help='color jitter (off by default)', role=RECIPE)
    group.add_argument('--aa', type=str, default=None, metavar='NAME',
                       help='auto augment, e.g. rand-m9-mstd0.5-inc1 (Table S1: RandAugment)', role=RECIPE)
    group.add_argument('--reprob', type=float, default=0., help='random erase probability', role=RECIPE)
    group.add_argument('--remode', type=str, default='pixel', help='random erase mode', role=RECORDED)
    group.add_argument('--recount', type=int, default=1, help='random erase count', role=RECORDED)
    group.add_argument('--mixup', type=float, default=0.0, help='mixup alpha (Table S1: 0.8)', role=RECIPE)
    group.add_argument('--cutmix', type=float, default=0.0, help='cutmix alpha (Table S1: 1.0)', role=RECIPE)
    group.add_argument('--cutmix-minmax', type=float, nargs='+', default=None, role=RECORDED)
    group.add_argument('--mixup-prob', type=float, default=1.0, role=RECIPE)
    group.add_argument('--mixup-switch-prob', type=float, default=0.5, role=RECORDED)
    group.add_argument('--mixup-mode', type=str, default='batch', role=RECORDED)
    group.add_argument('--mixup-off-epoch', default=0, type=int, help='turn mixup off at this epoch (0: never)',
                       role=RECORDED)
    group.add_argument('--smoothing', type=float, default=0.1, help='label smoothing', role=RECIPE)
    group.add_argument('--train-interpolation', type=str, default='random', role=RECORDED)


def _add_ema_args(parser: argparse.ArgumentParser) -> None:
    """An EMA of the student weights, evaluated every epoch beside the model."""
    group = parser.add_argument_group('EMA')
    group.add_argument('--model-ema', action='store_true', help='keep an EMA of the (student) weights', role=RECIPE)
    group.add_argument('--model-ema-decay', type=float, default=0.9998, role=RECIPE)
    group.add_argument('--model-ema-warmup', action='store_true', role=RECIPE)


def _add_misc_args(parser: argparse.ArgumentParser) -> None:
    """Seed, logging, checkpoints, outputs, device, distributed, threads."""
    group = parser.add_argument_group('Misc')
    group.add_argument('--seed', type=int, default=42, help='random seed', role=RECIPE)
    group.add_argument('--log-interval', type=int, default=50, help='batches between log lines', role=NEUTRAL)
    group.add_argument('--checkpoint-hist', type=int, default=2, help='checkpoints to keep', role=RECORDED)
    group.add_argument('-j', '--workers', type=int, default=2, help='data loading workers per process', role=NEUTRAL)
    group.add_argument('--amp', action='store_true', help='mixed precision (autocast)', role=RECIPE)
    group.add_argument('--amp-dtype', default='bfloat16', choices=('bfloat16', 'float16'), role=RECIPE)
    group.add_argument('--no-prefetcher', action='store_true', help='disable timm\'s CUDA prefetcher', role=RECORDED)
    group.add_argument('--pin-mem', action='store_true', role=NEUTRAL)
    group.add_argument('--output', default='output', metavar='DIR', help='output root (default: output)',
                       role=RUN_FOLDER)
    group.add_argument('--experiment', default='', metavar='NAME', help='run sub-folder name', role=RUN_FOLDER)
    group.add_argument('--eval-metric', default='top1', help='metric that picks the best checkpoint', role=RECIPE)
    group.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu', role=NEUTRAL)
    group.add_argument('--dist-backend', default=None, help='torch.distributed backend (gloo on CPU, nccl on CUDA)',
                       role=NEUTRAL)
    group.add_argument('--dist-url', default=None, role=NEUTRAL)
    group.add_argument('--no-progress', action='store_true', help='no progress bar', role=NEUTRAL)
    group.add_argument('--no-plot', action='store_true', help='skip the routing-consistency plot', role=NEUTRAL)
    group.add_argument('--threads', type=int, default=None, help='torch CPU threads per process', role=NEUTRAL)


def _add_observation_args(parser: argparse.ArgumentParser) -> None:
    """Routing pictures during training, and experiment logging to Weights & Biases as in timm's train.py."""
    group = parser.add_argument_group('Routing pictures and experiment logging')
    group.add_argument('--visualize-every', type=int, default=0, metavar='N',
                       help='every N epochs and after the last, draw the routing pictures of a fixed validation '
                            'batch into <run>/visualize/epoch-NNN/ (python -m timm_tgr.visualize\'s sheets; 0: off)',
                       role=RECORDED)
    group.add_argument('--visualize-images', type=int, default=8, metavar='N',
                       help='validation images with a sheet each in --visualize-every pictures (default: 8)',
                       role=RECORDED)
    group.add_argument('--log-wandb', action='store_true',
                       help='log metrics, routing per MoE block and the pictures to Weights & Biases '
                            '(pip install "timm-tgr[wandb]"; WANDB_MODE=offline works without network)', role=RECORDED)
    group.add_argument('--wandb-project', default=None, type=str, help='wandb project name', role=RECORDED)
    group.add_argument('--wandb-tags', default=[], type=str, nargs='+', help='wandb tags', role=RECORDED)
    group.add_argument('--wandb-resume-id', default='', type=str, metavar='ID',
                       help='continue this wandb run (with --resume)', role=RECORDED)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse flags, with ``-c FILE`` YAML values as defaults (unknown YAML keys are an error)."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = ArgumentParser(prog='train_tgr.py', add_help=False)
    pre.add_argument('-c', '--config', default='')
    cfg_args, _ = pre.parse_known_args(argv)
    if cfg_args.config:
        parser.set_defaults(**_read_config(parser, cfg_args.config))
    args = parser.parse_args(argv)
    _check_args(parser, args)
    return args


def _read_config(parser: argparse.ArgumentParser, path: str) -> dict:
    """Flag values of the YAML file ``path``, keyed by argparse dest; parser errors for a bad file."""
    if not os.path.isfile(path):
        parser.error(f'config file {path!r} does not exist (see configs/ for the shipped recipes)')
    with open(path) as f:
        try:
            cfg = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            parser.error(f'config file {path!r} is not valid YAML: {e}')
    if not isinstance(cfg, dict):
        parser.error(f'config file {path!r} must hold a mapping of flag names to values')
    known = {a.dest for a in parser._actions}
    unknown = sorted(k for k in cfg if k.replace('-', '_') not in known)
    if unknown:
        parser.error(f'config file {path!r} has unknown keys {unknown}: use flag names with '
                     f'underscores, e.g. batch_size, model_kwargs (see train_tgr.py --help)')
    cfg = {k.replace('-', '_'): v for k, v in cfg.items()}
    for action in parser._actions:
        if isinstance(action, ParseKwargs) and action.dest in cfg and not isinstance(cfg[action.dest], dict):
            parser.error(f'config file {path!r}: {action.dest} must be a mapping of keyword to value (e.g. '
                         f'{action.dest}: {{num_experts: 8}}), got {cfg[action.dest]!r}')
    return cfg


# numeric flags: (dest, lowest, highest, whether the bounds are included); None for no bound
_RANGES = (
    ('epochs', 1, None, True), ('batch_size', 1, None, True), ('validation_batch_size', 1, None, True),
    ('grad_accum_steps', 1, None, True), ('num_classes', 1, None, True), ('img_size', 1, None, True),
    ('in_chans', 1, None, True), ('workers', 0, None, True), ('threads', 1, None, True),
    ('log_interval', 1, None, True), ('checkpoint_hist', 1, None, True), ('probe_samples', 0, None, True),
    ('warmup_epochs', 0, None, True), ('cooldown_epochs', 0, None, True), ('visualize_every', 0, None, True),
    ('visualize_images', 1, None, True),
    ('lr', 0., None, True), ('warmup_lr', 0., None, True), ('min_lr', 0., None, True),
    ('weight_decay', 0., None, True), ('momentum', 0., None, True), ('clip_grad', 0., None, False),
    ('layer_decay', 0., None, False), ('drop', 0., 1., True), ('drop_path', 0., 1., True),
    ('smoothing', 0., 1., True), ('mixup', 0., None, True), ('cutmix', 0., None, True),
    ('mixup_prob', 0., 1., True), ('reprob', 0., 1., True), ('hflip', 0., 1., True), ('vflip', 0., 1., True),
    ('model_ema_decay', 0., 1., True),
)


def _ranges():
    """_RANGES and those of the guidance flags (GuidanceConfig's)."""
    yield from _RANGES
    for name, (_, _, meaning) in guidance_options().items():
        flag = guidance_flag(name)
        if flag is not None and (meaning.low is not None or meaning.high is not None):
            yield _dest(flag), meaning.low, meaning.high, True


def _check_ranges(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Every numeric flag finite and inside its range (a flag left at None is not checked)."""
    for dest, low, high, closed in _ranges():
        value = getattr(args, dest, None)
        if value is None:
            continue
        flag = '--' + dest.replace('_', '-')
        below = value < low if closed else value <= low
        above = high is not None and (value > high if closed else value >= high)
        if not math.isfinite(value) or below or above:
            lo, hi = ('[', ']') if closed else ('(', ')')
            bounds = f'in {lo}{low}, {high}{hi}' if high is not None else f'{">=" if closed else ">"} {low}'
            parser.error(f'{flag} must be {bounds} (a finite number), got {value}')


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    _check_ranges(parser, args)
    if args.wandb_resume_id and not args.resume:
        parser.error('--wandb-resume-id continues a wandb run: resume the training run too (--resume CHECKPOINT)')
    if args.freeze_router_at is not None and not 0. <= args.freeze_router_at <= 1.:
        parser.error(f'--freeze-router-at is a fraction of training in [0, 1], got {args.freeze_router_at}')
    if args.resume and not os.path.isfile(args.resume):
        parser.error(f'--resume {args.resume!r}: no such checkpoint file (train_tgr.py writes last.pth.tar '
                     f'in the run folder)')
    if args.teacher_checkpoint and not os.path.isfile(args.teacher_checkpoint):
        parser.error(f'--teacher-checkpoint {args.teacher_checkpoint!r}: no such file')
    if args.initial_checkpoint and not os.path.isfile(args.initial_checkpoint):
        parser.error(f'--initial-checkpoint {args.initial_checkpoint!r}: no such file')
    if args.teacher_routers_from and not os.path.isfile(args.teacher_routers_from):
        parser.error(f'--teacher-routers-from {args.teacher_routers_from!r}: no such file (give the pre-training '
                     f"run's checkpoint, e.g. its last.pth.tar)")
    if args.teacher_routers_from and no_teacher(args.teacher):
        parser.error('--teacher-routers-from needs a teacher to guide the routers: drop --teacher none')
    if not timm.is_model(args.model) and not args.model.startswith(('hf-hub:', 'local-dir:')):
        parser.error(f'--model {args.model!r} is not a timm model; see timm.list_models("*moe*") '
                     f'(timm_tgr registers vmoe_deit_*, tgr_moe_deit_*, soft_moe_deit_*, ec_moe_deit_*)')
    other = [flag for flag, on in (('--pretrained', args.pretrained), ('--initial-checkpoint', args.initial_checkpoint))
             if on]
    if args.upcycle_from and other:
        parser.error(f'--upcycle-from {args.upcycle_from!r} and {" / ".join(other)} both give the model its starting '
                     f'weights: keep one.')
    _check_run_folder(parser, args)


def _check_run_folder(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """train_tgr.py never writes into an earlier run: a named --experiment folder that holds one is refused
    without --resume (or when --resume continues another folder's run), naming the two ways out."""
    if not args.experiment:
        return  # the checkpoint's own folder (--resume), or a new time-stamped one (setup_output_dir)
    message = earlier_run(os.path.join(args.output, args.experiment), args.resume, args.experiment)
    if message:
        parser.error(message)


def _checkpoints(folder: str, found: Sequence[str]) -> List[str]:
    """The checkpoints among ``found`` (run_outputs of ``folder``), newest first: last.pth.tar, then by epoch."""
    numbered = sorted((n for n in found if n.startswith('checkpoint-')),
                      key=lambda n: int(n[len('checkpoint-'):-len('.pth.tar')]) if
                      n[len('checkpoint-'):-len('.pth.tar')].isdigit() else -1, reverse=True)
    return [n for n in ('last.pth.tar',) if n in found] + numbered + [n for n in ('model_best.pth.tar',) if n in found]


def earlier_run(folder: str, resume: str, experiment: str, log: bool = True) -> Optional[str]:
    """Why this command (its ``--resume`` and ``--experiment``) may not write into ``folder`` (None when it may):
    it holds a run's checkpoint and the command does not resume that run. A folder with a run's records but no
    checkpoint (a run stopped before its first checkpoint was saved) is started again: nothing in it can be
    continued, and the log says so."""
    found = run_outputs(folder)
    if not found:
        return None
    if resume and os.path.abspath(os.path.dirname(resume)) == os.path.abspath(folder):
        return None  # continuing the run in its own folder
    checkpoints = _checkpoints(folder, found)
    held = ', '.join(found[:4]) + (' ...' if len(found) > 4 else '')
    if not checkpoints:
        if log:
            _logger.warning(f'{folder} holds {held} but no checkpoint (a run stopped before its first checkpoint was '
                            f'saved): nothing there can be continued, so this run starts there again and replaces '
                            f'them.')
        return None
    name = f'--experiment {experiment} ({folder})' if experiment else folder
    point = os.path.join(folder, checkpoints[0])
    if resume:
        return (f'{name} holds another run ({held}), and train_tgr.py never writes into an earlier run: resume '
                f'{resume} into a new folder (another --experiment), or continue the run in {folder} with '
                f'--resume {point}.')
    return (f'{name} holds an earlier run ({held}), and train_tgr.py never writes into an earlier run: continue it '
            f'with --resume {point}, or start a new run with another --experiment (or --output).')
