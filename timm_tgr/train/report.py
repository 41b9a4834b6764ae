"""What a run reports: the metrics row of an epoch, its log line, ``metrics.jsonl`` and ``summary.csv``,
and at the end ``routing_consistency.json`` with its plot.

A row holds ``epoch``, ``lr``, ``train_<component>`` for every scalar loss component of the task,
``eval_loss/top1/top5`` (plus the EMA's and, in teacher_route mode, the teacher-routed top-1), and for
MoE models per MoE block (``routing``, 0-based block index): normalized routing entropy of the router's
choices (``entropy``, Table S2) and of the kept assignments (``entropy_kept``), load, dropped fraction and
adjacent-epoch routing consistency on the probe set, with their means over blocks; for
runs started from trained weights also ``consistency_pretrained`` (to the starting weights' routing).
"""
import csv
import json
import logging
import os
from typing import Dict, List, Optional

from ..task.metrics import ConsistencyTracker
from ..task.metrics import mean_over_layers
from ..utils.checkpoint import write_error
from ..utils.metrics_log import write_metrics
from .spec import RunSpec

__all__ = [
    'epoch_row', 'routing_row', 'row_metric', 'log_row', 'record_epoch', 'unrecord_epoch', 'write_rows',
    'write_summary', 'summary_row', 'write_consistency', 'plot_routing_consistency',
]

_logger = logging.getLogger(__name__)


def epoch_row(epoch: int, lr: float, train_metrics: Dict[str, float], eval_metrics: Dict[str, float]) -> dict:
    """The row's training and evaluation part: lr, ``train_loss`` and ``train_<component>``, ``eval_*``."""
    return {
        'epoch': epoch, 'lr': lr, 'train_loss': train_metrics['loss'],
        **{f'train_{k}': v for k, v in train_metrics.items() if k != 'loss'},
        'eval_loss': eval_metrics['loss'], 'eval_top1': eval_metrics['top1'], 'eval_top5': eval_metrics['top5'],
    }


def routing_row(summary: Dict[int, dict], adjacent: Optional[Dict[int, float]],
                pretrained: Optional[Dict[int, float]] = None) -> dict:
    """The row's routing part from ``RoutingStats.summary()`` and the probe set's adjacent-epoch consistency.

    ``adjacent`` is None on the first epoch (nothing to compare with) or without a probe set.
    ``pretrained`` (consistency with the starting weights' routing) adds ``consistency_pretrained``
    per block and its mean; without it the keys are absent.
    """
    routing = {
        str(i): {'entropy': s['entropy'], 'entropy_kept': s['entropy_kept'], 'load': s['load'],
                 'dropped_fraction': s['dropped_fraction'],
                 'consistency_prev': adjacent[i] if adjacent is not None else None}
        for i, s in summary.items()}
    row = {
        'routing': routing,
        'entropy': mean_over_layers({i: s['entropy'] for i, s in summary.items()}),
        'entropy_kept': mean_over_layers({i: s['entropy_kept'] for i, s in summary.items()}),
        'dropped_fraction': mean_over_layers({i: s['dropped_fraction'] for i, s in summary.items()}),
        'consistency_prev': mean_over_layers(adjacent),
    }
    if pretrained is not None:
        for i, value in pretrained.items():
            routing[str(i)]['consistency_pretrained'] = value
        row['consistency_pretrained'] = mean_over_layers(pretrained)
    return row


def row_metric(row: dict, spec: RunSpec) -> float:
    """The metric that picks model_best: the EMA's when --model-ema, else the model's."""
    metric = spec.run.eval_metric
    if spec.model.model_ema and f'eval_ema_{metric}' in row:
        return row[f'eval_ema_{metric}']
    return row[f'eval_{metric}']


def log_row(row: dict) -> None:
    """One log line per epoch: losses, top-1, routing means, time."""
    parts = [f"epoch {row['epoch']}", f"train_loss {row['train_loss']:.4f}", f"eval_top1 {row['eval_top1']:.2f}"]
    for k in ('eval_ema_top1', 'eval_top1_teacher_route', 'train_distill_loss', 'entropy', 'consistency_prev',
              'consistency_pretrained'):
        if row.get(k) is not None:
            parts.append(f'{k} {row[k]:.4f}')
    parts.append(f"{row['time_s']:.0f}s")
    _logger.info(' | '.join(parts))


def summary_row(row: dict) -> Dict[str, object]:
    """timm's flat ``summary.csv`` row of a metrics row, as timm's ``update_summary`` lays it out: epoch,
    train_loss, the ``eval_*`` values, lr."""
    out = {'epoch': row['epoch'], 'train_loss': row['train_loss']}
    out.update({k: v for k, v in row.items() if k.startswith('eval_')})
    out['lr'] = row['lr']
    return out


def write_summary(path: str, rows: List[dict]) -> None:
    """``summary.csv`` with one row per metrics row (header included), written atomically (a temp file, then
    ``os.replace``): rewritten whole every epoch, so a resumed run never repeats an epoch's row."""
    flat = [summary_row(r) for r in rows]
    columns = list(dict.fromkeys(k for r in flat for k in r))
    tmp = f'{path}.{os.getpid()}.tmp'
    try:
        with open(tmp, 'w', newline='') as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(flat)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_rows(output_dir: str, rows: List[dict]) -> None:
    """``metrics.jsonl`` and ``summary.csv`` of ``rows``, each written atomically; a failed write (a full disk)
    raises the error that names the file and its folder, leaving the earlier file."""
    for name, write in (('metrics.jsonl', write_metrics), ('summary.csv', write_summary)):
        path = os.path.join(output_dir, name)
        try:
            write(path, rows)
        except OSError as e:
            error = write_error(e, path, kept=f'{path} is as before.')
            raise (error or e) from e


def record_epoch(output_dir: str, rows: List[dict], row: dict) -> None:
    """Append ``row`` to ``rows``; rewrite ``metrics.jsonl`` and timm's flat ``summary.csv`` from all of them."""
    rows.append(row)
    write_rows(output_dir, rows)


def unrecord_epoch(output_dir: str, rows: List[dict], epoch: int) -> None:
    """Drop the row of ``epoch`` again (its checkpoint could not be saved): the records match the checkpoints."""
    if rows and rows[-1]['epoch'] == epoch:
        rows.pop()
    try:
        write_rows(output_dir, rows)
    except OSError as e:
        _logger.error(f'could not remove epoch {epoch} from the metrics files either ({e})')


def write_consistency(output_dir: str, tracker: ConsistencyTracker, rows: List[dict],
                      plot_title: Optional[str]) -> None:
    """``routing_consistency.json``: adjacent and to-final probe consistency per epoch, per block and mean;
    and its plot titled ``plot_title`` unless that is None (--no-plot)."""
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
    tracked = rows[-len(tracker.history):] if rows else []
    if any('consistency_pretrained' in r for r in tracked):  # runs started from trained weights
        data['pretrained'] = [{b: v.get('consistency_pretrained') for b, v in r['routing'].items()} for r in tracked]
        data['pretrained_mean'] = [r.get('consistency_pretrained') for r in tracked]
    with open(os.path.join(output_dir, 'routing_consistency.json'), 'w') as f:
        json.dump(data, f, indent=1)
    if plot_title is not None:
        plot_routing_consistency(rows, os.path.join(output_dir, 'routing_consistency.png'), title=plot_title)


def plot_routing_consistency(rows: List[dict], path: str, title: str = '') -> bool:
    """Mean adjacent-epoch and per-layer consistency per epoch (and the mean consistency with the starting
    weights when logged); False when matplotlib is missing."""
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
                'k-o', label='adjacent epochs (mean)')
        blocks = sorted({b for r in rows for b in r.get('routing', {})}, key=int)
        for b in blocks:
            pts = [(r['epoch'], r['routing'][b]['consistency_prev']) for r in rows
                   if b in r.get('routing', {}) and r['routing'][b].get('consistency_prev') is not None]
            if pts:
                ax.plot(*zip(*pts), '--', alpha=0.6, label=f'block {int(b) + 1}')
    pretrained = [(r['epoch'], r['consistency_pretrained']) for r in rows
                  if r.get('consistency_pretrained') is not None]
    if pretrained:
        ax.plot(*zip(*pretrained), 'b-s', label='to the starting weights (mean)')
    ax.set_xlabel('epoch')
    ax.set_ylabel('routing consistency' if pretrained else 'adjacent-epoch routing consistency')
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
