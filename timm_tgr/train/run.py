"""timm-tgr's trainer: :func:`main` parses the flags, :func:`train` sets up the run (:mod:`.setup`), runs
the epochs (:mod:`.loop`), records each epoch (:mod:`.report`) and writes the run's end.

Per epoch, ``<output>/metrics.jsonl`` gets one JSON row (every loss component, top-1, and per MoE
layer: expert-utilization entropy, load, dropped fraction, and adjacent-epoch routing consistency on
a fixed probe set: the first ``--probe-samples`` validation images); ``summary.csv`` gets timm's flat
CSV row. At the end ``routing_consistency.json`` holds adjacent and to-final consistency per epoch and
``routing_consistency.png`` plots them (needs matplotlib: ``pip install timm-tgr[plot]``). With
``--visualize-every N`` the routing pictures of a fixed probe batch land in ``visualize/epoch-NNN/`` every N
epochs and after the last; ``--log-wandb`` logs every row (and the pictures) to Weights & Biases. A run
started from trained weights also logs ``consistency_pretrained``: per MoE layer, the fraction of probe
tokens whose top-1 expert is the one the starting weights chose before the first step.

Checkpoints are timm's (CheckpointSaver + task state: teacher routers, schedule, consistency
history; never the teacher). Resuming after epoch k reproduces the uninterrupted run: every epoch
re-seeds all RNGs from ``--seed`` and the epoch (deterministic on CPU).

When things go wrong nothing is lost: the first NaN / Inf loss, router or teacher-router output stops
the run (:class:`~timm_tgr.train.loop.TrainingDiverged`, naming epoch, step and terms) before anything of
that epoch is written, so ``last.pth.tar`` stays the last finite checkpoint; checkpoints are written
atomically (:class:`~timm_tgr.train.saver.RunCheckpointSaver`), and when one cannot be saved (a full disk,
non-finite weights) the epoch's metrics row is taken back, so the records match the checkpoints.
"""
import argparse
import logging
import os
import time
from functools import partial
from itertools import islice
from typing import Dict, Optional, Sequence, Tuple

import torch
from timm.utils import is_primary, random_seed, setup_default_logging

from ..task import TGRTask
from ..task.metrics import RoutingStats, record_assignments
from ..utils.cli import torch_threads
from .args import parse_args
from .loop import (
    TrainingDiverged, check_eval_finite, mean_over_processes, reduce_routing_stats, set_epoch, train_one_epoch,
    validate,
)
from .pictures import RoutingPictures, picture_epoch_dir
from .report import epoch_row, log_row, record_epoch, routing_row, row_metric, unrecord_epoch, write_consistency
from .setup import Training, setup_training
from .spec import LoopSpec, RunSpec, resolve_run
from .wandb_log import WandbLogger

__all__ = ['main', 'train']

_logger = logging.getLogger(__name__)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """Train; returns ``{'output_dir', 'best_metric', 'best_epoch', 'rows'}``."""
    if not logging.root.handlers:
        setup_default_logging()
    args = parse_args(argv)
    with torch_threads(args.threads):
        return train(args)


def train(args: argparse.Namespace) -> dict:
    """Set up the run of parsed ``args`` (:func:`~timm_tgr.train.spec.resolve_run`), train its epochs, write its
    outputs; returns as :func:`main`."""
    spec = resolve_run(args)
    t = setup_training(spec)
    if t.reference is not None:
        record_reference(t)
    observers = Observers.create(t, spec)
    saver = t.run.saver
    best_metric, best_epoch = (saver.best_metric, saver.best_epoch) if saver is not None else (None, None)
    num_updates = t.start_epoch * t.optim.updates_per_epoch
    try:
        for epoch in range(t.start_epoch, t.optim.num_epochs):
            try:
                row, num_updates = run_epoch(epoch, t, spec, num_updates)
            except TrainingDiverged as e:
                raise diverged(e, t, spec) from None
            except KeyboardInterrupt:
                raise interrupted(t, epoch) from None
            metric = row_metric(row, spec)
            if t.run.saver is not None:
                try:
                    best_metric, best_epoch = save_epoch(t, epoch, row, metric)
                except KeyboardInterrupt:
                    raise interrupted(t, epoch) from None
                log_row(row)
                observers.epoch_done(epoch, row, t, spec)
            t.optim.lr_scheduler.step(epoch + 1, metric)
        return finish(t, spec, best_metric, best_epoch)
    finally:
        observers.close()
        if t.run.lock is not None:
            t.run.lock.release()


def save_epoch(t: Training, epoch: int, row: dict, metric: float) -> Tuple[Optional[float], Optional[int]]:
    """Record the epoch's row, then save its checkpoint; when the save fails the row is taken back (the records
    never claim an epoch whose checkpoint is missing; a resumed run's files are put back as they were) and the
    error, which names the cause, propagates."""
    record_epoch(t.run.output_dir, t.run.rows, row)
    try:
        result = t.run.saver.save_checkpoint(epoch, metric=metric)
    except BaseException:
        if t.run.saver.last_epoch == epoch:  # last.pth.tar holds the epoch (a later copy failed): keep its row
            if t.run.pending is not None:
                t.run.pending()
                t.run.pending = None
            raise
        if t.run.pending is not None:
            restore_files(t.run.output_dir, t.run.originals)
            t.run.rows.pop()
        else:
            unrecord_epoch(t.run.output_dir, t.run.rows, epoch)
        raise
    if t.run.pending is not None:
        t.run.pending()
        t.run.pending = None
    return result


def interrupted(t: Training, epoch: int) -> KeyboardInterrupt:
    """Ctrl-C: which checkpoint to continue from (the epoch in progress is not saved)."""
    point = t.run.saver.resume_point() if t.run.saver is not None else None
    if point is not None:
        where = (f'stopped in epoch {epoch}; {point[0]} (epoch {point[1]}) is the last checkpoint: continue with '
                 f'--resume {point[0]}')
    else:
        where = f'stopped in epoch {epoch}, before the first checkpoint: run the same command again to start over'
    _logger.error(f'interrupted: {where}')
    return KeyboardInterrupt(where)


def restore_files(output_dir: str, originals: Dict[str, Optional[bytes]]) -> None:
    """Put files back as they were (None: the file did not exist)."""
    for name, data in originals.items():
        path = os.path.join(output_dir, name)
        try:
            if data is None:
                if os.path.exists(path):
                    os.remove(path)
                continue
            with open(path + '.restore', 'wb') as f:
                f.write(data)
            os.replace(path + '.restore', path)
        except OSError as e:
            _logger.error(f'could not put {path} back as it was ({e})')


def diverged(e: TrainingDiverged, t: Training, spec: RunSpec) -> TrainingDiverged:
    """The divergence error with what to do: where the last finite checkpoint is, and what to change."""
    point = t.run.saver.resume_point() if t.run.saver is not None else None
    if point is not None:
        where = (f'Nothing of epoch {e.epoch} was saved: {point[0]} (epoch {point[1]}) is the last finite checkpoint; '
                 f'continue from it with --resume {point[0]} and a lower --lr (this run: {spec.optim.lr:g})')
    else:
        where = (f'No checkpoint of this run was written; start it again (another --experiment) with a lower --lr '
                 f'(this run: {spec.optim.lr:g})')
    clip = ' or gradient clipping (--clip-grad 1.0)' if spec.optim.clip_grad is None else ''
    error = TrainingDiverged(f'{e} {where}{clip}.', e.epoch, e.step, e.terms)
    if is_primary(spec):
        _logger.error(str(error))
    return error


class Observers:
    """What watches a run from the primary process besides metrics.jsonl: the routing pictures
    (``--visualize-every``) and the wandb run (``--log-wandb``)."""

    def __init__(self, pictures: Optional[RoutingPictures] = None, wandb: Optional[WandbLogger] = None,
                 run_args: Optional[dict] = None):
        self.pictures, self.wandb, self.run_args = pictures, wandb, run_args or {}

    @classmethod
    def create(cls, t: Training, spec: RunSpec) -> 'Observers':
        if t.run.saver is None:  # not the primary process
            return cls()
        wandb = WandbLogger.create(spec.run, spec.record(), t.run.output_dir) if spec.run.log_wandb else None
        return cls(pictures=RoutingPictures.create(spec.run, t.model, t.optim.num_epochs), wandb=wandb,
                   run_args=spec.record())

    def epoch_done(self, epoch: int, row: dict, t: Training, spec: RunSpec) -> None:
        """After the epoch's row is recorded: draw its pictures if due, log the row (and pictures) to wandb."""
        pictures, picture_dir = None, ''
        if self.pictures is not None and self.pictures.due(epoch):
            picture_dir = picture_epoch_dir(t.run.output_dir, epoch)
            pictures = self.pictures.write(epoch, t.run.output_dir, t.task.get_eval_model(), t.task, t.loaders.eval,
                                           t.loaders.probe_batches, self.run_args, t.device)
        if self.wandb is not None:
            self.wandb.log(row, pictures, picture_dir)

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()


def record_reference(t: Training) -> None:
    """Before the first training step: the starting model's top-1 expert per probe token and MoE layer
    (eval mode), the reference of ``consistency_pretrained``. A resumed run keeps the checkpoint's."""
    if t.reference.assignments is not None:
        return
    if t.start_epoch > 0:
        _logger.warning('the resumed checkpoint holds no routing of the starting weights: consistency_pretrained '
                        'is not logged (start the run again to measure it).')
        t.reference = None
        return
    batches = islice(t.loaders.eval, t.loaders.probe_batches)
    t.reference.set(record_assignments(
        t.task.get_eval_model(), batches, device=t.device, amp_autocast=t.optim.amp_autocast))


def run_epoch(epoch: int, t: Training, spec: RunSpec, num_updates: int) -> Tuple[dict, int]:
    """Train and evaluate one epoch; its metrics row and the update count after it."""
    t0 = time.time()
    random_seed(spec.runtime.seed + epoch, spec.runtime.rank)  # every epoch re-seeds: resume reproduces the run
    set_epoch(t.loaders.train, epoch)
    train_metrics = train_one_epoch(
        epoch, t.task, t.loaders.train, t.optim.optimizer, spec.loop, t.device, lr_scheduler=t.optim.lr_scheduler,
        loss_scaler=t.optim.loss_scaler, amp_autocast=t.optim.amp_autocast, mixup_fn=t.loaders.mixup_fn,
        num_updates_start=num_updates, freeze=t.optim.freeze)
    num_updates = train_metrics.pop('num_updates')
    row = evaluate_epoch(epoch, t, spec.loop, train_metrics)
    row['time_s'] = round(time.time() - t0, 2)
    return row, num_updates


def evaluate_epoch(epoch: int, t: Training, loop: LoopSpec, train_metrics: Dict[str, float]) -> dict:
    """Validate the model (and the EMA, and teacher-routed in teacher_route mode); routing stats and
    probe-set consistency for MoE models, which also feed the adaptive distillation schedule."""
    eval_model = t.task.get_eval_model()
    stats = RoutingStats() if t.tracker is not None else None
    validate_ = partial(validate, loader=t.loaders.eval, args=loop, device=t.device, amp_autocast=t.optim.amp_autocast)
    num_batches = len(t.loaders.eval)
    eval_metrics, probe = validate_(eval_model, routing_stats=stats, probe_batches=t.loaders.probe_batches)
    check_eval_finite(eval_metrics, epoch, 'the model', num_batches)
    row = epoch_row(epoch, t.optim.optimizer.param_groups[0]['lr'], train_metrics, eval_metrics)
    if isinstance(t.task, TGRTask) and t.task.mode == 'teacher_route':
        routed = validate_(eval_model, route_fn=t.task.forward_teacher_route)[0]
        check_eval_finite(routed, epoch, 'the model routed by the teacher', num_batches)
        row['eval_top1_teacher_route'] = routed['top1']
    if t.task.has_ema():
        ema_metrics, _ = validate_(t.task.get_eval_model(ema=True))
        check_eval_finite(ema_metrics, epoch, 'the EMA', num_batches)
        row['eval_ema_top1'] = ema_metrics['top1']
        row['eval_ema_loss'] = ema_metrics['loss']
    if t.tracker is not None:
        reduce_routing_stats(stats, loop)
        pretrained = t.reference.consistency(probe) if t.reference is not None and probe else None
        row.update(routing_row(stats.summary(), t.tracker.add(probe) if probe else None, pretrained))
        if isinstance(t.task, TGRTask) and row['consistency_prev'] is not None:  # one decision for all ranks
            t.task.schedule.observe_consistency(mean_over_processes(row['consistency_prev'], loop, t.device))
    return row


def finish(t: Training, spec: RunSpec, best_metric, best_epoch) -> dict:
    """Write routing_consistency.json (+ plot), log the best epoch, wait for all processes."""
    result = {'output_dir': t.run.output_dir, 'best_metric': best_metric, 'best_epoch': best_epoch,
              'rows': t.run.rows}
    if is_primary(spec) and t.tracker is not None and t.tracker.history:
        write_consistency(t.run.output_dir, t.tracker, t.run.rows, None if spec.run.no_plot else spec.model.model)
    if is_primary(spec):
        if t.start_epoch >= t.optim.num_epochs:
            _logger.info(f'Nothing left to do: the run in {t.run.output_dir} has done all its {t.optim.num_epochs} '
                         f'epochs (raise --epochs to train more). Best {spec.run.eval_metric} {best_metric} at epoch '
                         f'{best_epoch}.')
        else:
            _logger.info(f'Done: best {spec.run.eval_metric} {best_metric} at epoch {best_epoch}; '
                         f'outputs in {t.run.output_dir}')
    if spec.runtime.distributed:
        torch.distributed.barrier()
    return result
