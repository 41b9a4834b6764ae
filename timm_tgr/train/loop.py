"""The epoch loops: :func:`train_one_epoch` (as timm's train.py: task forward, gradient accumulation,
loss scaler, clipping, EMA, lr per update) and :func:`validate` (loss, top-1/5, routing statistics and
the probe set's expert assignments from the same pass).

Divergence (:class:`FiniteGuard`): after every forward, each scalar the task returns (the loss and
its terms), every MoE layer's router logits and, with a teacher, every teacher router's output are
checked for NaN / Inf on the device, with no host sync: a small tensor keeps the step at which each
first went non-finite. It is read on the host every batch on the CPU and every ``--log-interval``
batches and at the epoch's end elsewhere (one sync each), and the first non-finite value stops the run
with :class:`TrainingDiverged` naming the epoch, the step and the terms. No checkpoint is written after
that, so the last checkpoint stays the last finite one. With a float16 ``GradScaler`` an update whose
gradients overflow is skipped by the scaler and is not divergence: only the forward's values are checked.

The loops read their settings from ``args``: a :class:`~timm_tgr.train.spec.LoopSpec` (``RunSpec.loop``), or
anything with its attributes, such as train_tgr.py's parsed flags after timm's ``init_distributed_device``.
"""
import logging
import math
import sys
from contextlib import nullcontext, suppress
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from timm.utils import AverageMeter, accuracy, dispatch_clip_grad, is_primary, reduce_tensor, unwrap_model

from ..models import moe_model
from ..task.metrics import RoutingStats
from .spec import LoopSpec

__all__ = ['train_one_epoch', 'validate', 'reduce_routing_stats', 'set_epoch', 'FiniteGuard', 'TrainingDiverged',
           'check_eval_finite']

_logger = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """A loss term, router or teacher-router output became NaN or Inf; ``epoch``, ``step`` and ``terms`` say where."""

    def __init__(self, message: str, epoch: int, step: int, terms: List[str]):
        super().__init__(message)
        self.epoch, self.step, self.terms = epoch, step, terms


_NEVER = torch.iinfo(torch.int64).max


class FiniteGuard:
    """Watches the values of every training forward for NaN / Inf without a host sync per step (module docstring).

    ``observe(result, step)`` records, on the device, the first step at which each value went non-finite;
    ``check()`` reads that on the host and raises :class:`TrainingDiverged` if any did.
    """

    def __init__(self, task: nn.Module, epoch: int, num_batches: int, device: torch.device, distributed: bool = False):
        self.task, self.epoch, self.num_batches = task, epoch, num_batches
        self.device, self.distributed = device, distributed
        self.names: List[str] = []
        self.first: Optional[torch.Tensor] = None  # int64 per name: first non-finite step, _NEVER if none
        self.values: Optional[torch.Tensor] = None  # the first non-finite value of each scalar

    def _watched(self, result: dict) -> Dict[str, torch.Tensor]:
        values = {}
        trainable = unwrap_model(self.task.get_trainable_module())
        student = moe_model(getattr(trainable, 'student', trainable))
        if student is not None:
            for i, moe in student.get_moe_layers().items():
                if getattr(moe, 'routing', None) is not None:
                    values[f'router logits of MoE block {i}'] = moe.routing.logits
        for k, p in (getattr(self.task, 'last_teacher_probs', None) or {}).items():
            values[f'teacher router output of MoE block {k}'] = p
        for k, v in result.items():
            if k != 'output' and torch.is_tensor(v) and v.ndim == 0 and v.is_floating_point():
                values[k] = v
        return values

    def observe(self, result: dict, step: int) -> None:
        watched = self._watched(result)
        if self.first is None:
            self.names = list(watched)
            self.first = torch.full((len(self.names),), _NEVER, dtype=torch.int64, device=self.device)
            self.values = torch.zeros(len(self.names), device=self.device)
        tensors = [watched.get(n) for n in self.names]
        finite = torch.stack([torch.isfinite(t.detach()).all() if t is not None else torch.ones((), dtype=torch.bool,
                              device=self.device) for t in tensors]).to(self.device)
        scalars = torch.stack([t.detach().float().reshape(()) if t is not None and t.ndim == 0 else
                               torch.full((), float('nan'), device=t.device if t is not None else self.device)
                               for t in tensors]).to(self.device)
        new = (~finite) & (self.first == _NEVER)
        self.first = torch.where(new, torch.full_like(self.first, step), self.first)
        self.values = torch.where(new, scalars, self.values)

    def check(self) -> None:
        if self.first is None:
            return
        first = self.first
        if self.distributed:
            import torch.distributed as dist
            first = first.clone()
            dist.all_reduce(first, op=dist.ReduceOp.MIN)
        first = first.tolist()
        bad = [i for i, f in enumerate(first) if f != _NEVER]
        if not bad:
            return
        step = min(first[i] for i in bad)
        at_step = [i for i in bad if first[i] == step]
        values = self.values.tolist()
        terms = [self.names[i] + (f' = {values[i]}' if not self.names[i].startswith(('router', 'teacher router '))
                                  else ' (NaN/Inf)') for i in at_step]
        later = [self.names[i] for i in bad if first[i] != step]
        message = (f'training diverged in epoch {self.epoch}, step {step} of {self.num_batches}: first non-finite '
                   f'values: {", ".join(terms)}'
                   + (f' (later also {", ".join(later)})' if later else '') + '.')
        raise TrainingDiverged(message, self.epoch, step, [self.names[i] for i in at_step])


def set_epoch(loader, epoch: int) -> None:
    """Tell the loader (DeviceDataLoader) or its distributed sampler the epoch (it reshuffles per epoch)."""
    if hasattr(loader, 'set_epoch'):
        loader.set_epoch(epoch)
        return
    sampler = getattr(loader, 'sampler', None)
    if hasattr(sampler, 'set_epoch'):
        sampler.set_epoch(epoch)


def train_one_epoch(
        epoch: int, task: nn.Module, loader, optimizer: torch.optim.Optimizer, args: LoopSpec,
        device: torch.device, lr_scheduler=None, loss_scaler=None, amp_autocast: Callable = suppress,
        mixup_fn: Optional[Callable] = None, num_updates_start: int = 0, freeze=None,
) -> Dict[str, float]:
    """One pass over ``loader``; returns the epoch's sample-weighted mean of every scalar the task
    returns (``loss`` and its components) and ``num_updates`` after it."""
    if args.mixup_off_epoch and epoch >= args.mixup_off_epoch and mixup_fn is not None:
        mixup_fn.mixup_enabled = False
    task.get_trainable_module().train()
    accum, num_batches = args.grad_accum_steps, len(loader)
    last_accum_batches = num_batches % accum or accum  # the last update may average fewer micro-batches
    num_updates = num_updates_start
    sums: Dict[str, torch.Tensor] = {}
    count = 0
    optimizer.zero_grad()
    progress = _progress_bar(args, num_batches, epoch)
    guard = FiniteGuard(task, epoch, num_batches, device, distributed=args.distributed)
    check_every = 1 if device.type == 'cpu' else max(1, args.log_interval)  # a host sync per check elsewhere
    for batch_idx, (input, target) in enumerate(loader):
        last = batch_idx == num_batches - 1
        need_update = last or (batch_idx + 1) % accum == 0
        accum_steps = last_accum_batches if batch_idx >= num_batches - last_accum_batches else accum
        _maybe_freeze_routers(freeze, task, num_updates, args)
        input, target = input.to(device), target.to(device)
        if mixup_fn is not None:
            input, target = mixup_fn(input, target)
        with task.no_sync() if args.distributed and not need_update else nullcontext():
            result = _forward_backward(
                task, input, target, optimizer, args, amp_autocast, loss_scaler, accum_steps, need_update)
        count += _accumulate(sums, result, input.shape[0])
        guard.observe(result, batch_idx)
        if batch_idx % check_every == 0 or last:
            guard.check()
        if need_update:
            optimizer.zero_grad()
            num_updates += 1
            task.update_ema(step=num_updates)
            if lr_scheduler is not None:
                lr_scheduler.step_update(num_updates=num_updates)
        if progress is not None:
            _show_progress(progress, args, batch_idx, last, sums, count, optimizer)
    if progress is not None:
        progress.close()
    assert num_updates - num_updates_start == (num_batches + accum - 1) // accum
    out = _epoch_means(sums, count, args, device)
    out['num_updates'] = num_updates
    return out


def _forward_backward(task, input, target, optimizer, args, amp_autocast, loss_scaler, accum_steps: int,
                      need_update: bool) -> dict:
    """Task forward and backward of one micro-batch (loss / ``accum_steps``); the optimizer step on updates."""
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


def _maybe_freeze_routers(freeze, task, num_updates: int, args: LoopSpec) -> None:
    """StableMoE baseline: freeze the routers once ``num_updates`` reaches the schedule's step."""
    if freeze is None:
        return
    frozen = freeze.maybe_freeze(task.get_trainable_module(), num_updates)
    if frozen and is_primary(args):
        _logger.info(f'StableMoE: routers frozen at update {num_updates} ({len(frozen)} tensors)')


def _accumulate(sums: Dict[str, torch.Tensor], result: dict, n: int) -> int:
    """Add ``n`` times every scalar tensor of the task's result (not the logits) to ``sums``; returns ``n``."""
    for k, v in result.items():
        if k != 'output' and torch.is_tensor(v) and v.ndim == 0:
            v = v.detach().float()
            sums[k] = sums[k] + v * n if k in sums else v * n
    return n


def _epoch_means(sums: Dict[str, torch.Tensor], count: int, args: LoopSpec,
                 device: torch.device) -> Dict[str, float]:
    """Per-sample means of ``sums``, averaged over processes when distributed."""
    out = {}
    for k, v in sums.items():
        v = v / count
        if args.distributed:
            v = reduce_tensor(v.to(device), args.world_size)
        out[k] = float(v)
    return out


def _progress_bar(args: LoopSpec, total: int, epoch: int):
    """A tqdm bar on the primary process unless --no-progress; else None."""
    if not is_primary(args) or args.no_progress:
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc=f'epoch {epoch}', leave=False, dynamic_ncols=True, file=sys.stderr)


def _show_progress(progress, args: LoopSpec, batch_idx: int, last: bool, sums: Dict[str, torch.Tensor],
                   count: int, optimizer: torch.optim.Optimizer) -> None:
    """Advance the bar; every --log-interval batches show the running loss (a device sync) and the lr."""
    progress.update(1)
    if batch_idx % args.log_interval == 0 or last:
        lr = optimizer.param_groups[0]['lr']
        progress.set_postfix(loss=f"{float(sums['loss']) / count:.4f}", lr=f'{lr:.2e}')


@torch.no_grad()
def validate(
        model: nn.Module, loader, args: LoopSpec, device: torch.device, amp_autocast: Callable = suppress,
        route_fn: Optional[Callable] = None, routing_stats: Optional[RoutingStats] = None, probe_batches: int = 0,
) -> Tuple[Dict[str, float], Dict[int, torch.Tensor]]:
    """Top-1/top-5 and loss; optionally routing stats and the probe set's top-1 experts (from the same pass).

    ``route_fn(input)`` replaces ``model(input)`` (teacher-route evaluation). The probe set is the first
    ``probe_batches`` batches; its assignments come back per MoE block as one flat tensor of expert ids.
    """
    criterion = nn.CrossEntropyLoss()
    model.eval()
    base = unwrap_model(model)
    loss_m, top1_m, top5_m = AverageMeter(), AverageMeter(), AverageMeter()
    probe: Dict[int, List[torch.Tensor]] = {}
    non_finite = torch.zeros((), dtype=torch.int64, device=device)  # batches whose logits hold NaN / Inf
    for batch_idx, (input, target) in enumerate(loader):
        input, target = input.to(device), target.to(device)
        with amp_autocast():
            output = route_fn(input) if route_fn is not None else model(input)
        if isinstance(output, (tuple, list)):
            output = output[0]
        loss = criterion(output.float(), target)
        non_finite += (~torch.isfinite(output).all()).long()
        acc1, acc5 = accuracy(output, target, topk=(1, min(5, output.shape[-1])))
        if args.distributed:
            loss, acc1, acc5 = (reduce_tensor(t, args.world_size) for t in (loss, acc1, acc5))
        n = input.shape[0]
        loss_m.update(float(loss), n)
        top1_m.update(float(acc1), n)
        top5_m.update(float(acc5), n)
        if routing_stats is not None and moe_model(base) is not None:
            infos = base.routing_infos()
            routing_stats.update(infos)
            if batch_idx < probe_batches:
                for i, info in infos.items():
                    probe.setdefault(i, []).append(info.expert_index[..., 0].reshape(-1).cpu())
    if args.distributed:
        non_finite = reduce_tensor(non_finite.float(), 1)
    out = {'loss': loss_m.avg, 'top1': top1_m.avg, 'top5': top5_m.avg, 'non_finite_batches': int(non_finite)}
    return out, {i: torch.cat(v) for i, v in probe.items()}


def mean_over_processes(value: float, args: LoopSpec, device=None) -> float:
    """``value`` averaged over all processes (itself when not distributed), so that a decision taken from it (the
    adaptive distillation switch) is the same on every rank."""
    if not args.distributed:
        return value
    import torch.distributed as dist
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / dist.get_world_size()


def check_eval_finite(metrics: Dict[str, float], epoch: int, what: str, num_batches: int) -> None:
    """Raise :class:`TrainingDiverged` when an evaluation's logits or loss hold NaN / Inf: its top-1 (argmax of NaN)
    means nothing, and the epoch must not become ``model_best``."""
    bad = metrics.get('non_finite_batches', 0)
    if not bad and math.isfinite(metrics['loss']):
        return
    raise TrainingDiverged(
        f'evaluation of {what} after epoch {epoch} diverged: the validation logits hold NaN / Inf in {bad} of '
        f'{num_batches} batches (eval_loss = {metrics["loss"]}) although the weights are finite, so its top-1 '
        f'means nothing.', epoch, num_batches, ['eval_loss'])


def reduce_routing_stats(stats: RoutingStats, args: LoopSpec) -> None:
    """Sum the choice and kept counts, drops and choices of all processes (in place; nothing when not distributed)."""
    if not args.distributed:
        return
    import torch.distributed as dist
    for i in sorted(stats.counts):
        for table in (stats.choice_counts, stats.counts, stats.dropped):
            t = table[i].clone()
            dist.all_reduce(t)
            table[i] = t
        c = torch.tensor(float(stats.choices[i]), dtype=torch.float64)
        dist.all_reduce(c)
        stats.choices[i] = int(c)
