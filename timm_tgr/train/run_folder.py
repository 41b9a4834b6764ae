"""The run folder: which one a run writes (never an earlier run's without --resume; locked while it runs), its
``args.yaml``, and on resume the saver's history and the completion of a save a kill cut short."""
import argparse
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import yaml
from timm.models import safe_model_name
from timm.utils import is_primary

from ..task.options import NEUTRAL, RUN_FOLDER
from ..utils.checkpoint import run_outputs
from .args import earlier_run
from .lock import RunFolderBusy, RunLock
from .record import RESOLVED, record_roles, yaml_safe
from .report import row_metric
from .saver import RunCheckpointSaver
from .spec import RunSpec

__all__ = ['RunFolder', 'setup_output_dir', 'complete_last_save', 'kept_checkpoints', 'write_args_yaml',
           'read_bytes']

_logger = logging.getLogger(__name__)


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


def setup_output_dir(spec: RunSpec) -> Tuple[str, Optional[RunLock]]:
    """``<output>/<experiment or time-model>`` and its lock (:class:`~timm_tgr.train.lock.RunLock`, held for the
    whole run; None on the other processes); resuming without --experiment continues the checkpoint's folder.

    Never an earlier run's folder without --resume: a named --experiment holding a run was refused with the
    flags (``args._check_run_folder``) and is checked again once the folder is locked (a run may have finished
    there since); a time-stamped name already taken (or in use) gets a numeric suffix (``-1``, ``-2``), as timm's
    train.py does. A folder another run holds stops this one, naming the running one.
    """
    folder = spec.run
    if folder.resume and not folder.experiment:
        out = os.path.dirname(os.path.abspath(folder.resume))  # continue the run in its own folder
    elif folder.experiment:
        out = os.path.join(folder.output, folder.experiment)
    else:
        base = os.path.join(folder.output, '-'.join([time.strftime('%Y%m%d-%H%M%S'),
                                                     safe_model_name(spec.model.model)]))
        for n in range(1000):
            out = base if n == 0 else f'{base}-{n}'
            if run_outputs(out):
                continue
            if not is_primary(spec):
                return out, None
            os.makedirs(out, exist_ok=True)
            try:
                lock = RunLock(out).acquire()
            except RunFolderBusy:
                continue
            if not run_outputs(out):
                return out, lock
            lock.release()
        raise RuntimeError(f'no free run folder named {base}[-N] in --output {folder.output}: give --experiment NAME.')
    if not is_primary(spec):
        return out, None
    os.makedirs(out, exist_ok=True)
    lock = RunLock(out).acquire()
    message = earlier_run(out, folder.resume, folder.experiment, log=False)
    if message:  # a run finished there after the flags were checked
        lock.release()
        raise FileExistsError(message)
    return out, lock


def complete_last_save(spec: RunSpec, run: RunFolder, epoch: int) -> None:
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
    resumed = os.path.abspath(spec.run.resume)
    if (os.path.abspath(run.saver.last_path) != resumed  # an earlier checkpoint: the run goes on from it as it was
            or not any(r['epoch'] == epoch for r in run.rows)):
        return
    saver = run.saver
    numbered = os.path.join(folder, f'checkpoint-{epoch}.pth.tar')
    if not os.path.exists(numbered) and len(saver.checkpoint_files) < saver.max_history:
        saver._duplicate(resumed, numbered)
        row = next(r for r in run.rows if r['epoch'] == epoch)
        saver.checkpoint_files = sorted(saver.checkpoint_files + [(numbered, row_metric(row, spec))],
                                        key=lambda f: f[1], reverse=True)
        _logger.info(f'--resume: the save of epoch {epoch} was cut short; wrote its {os.path.basename(numbered)}')
    best = os.path.join(folder, 'model_best.pth.tar')
    if saver.best_epoch == epoch and _checkpoint_epoch(best) != epoch:
        saver._duplicate(resumed, best)
        _logger.info(f'--resume: the save of epoch {epoch} was cut short before model_best.pth.tar; epoch {epoch} is '
                     f'the best ({spec.run.eval_metric} {saver.best_metric}), so model_best.pth.tar now holds it')


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


def read_bytes(path: str) -> Optional[bytes]:
    if not os.path.isfile(path):
        return None
    with open(path, 'rb') as f:
        return f.read()


def kept_checkpoints(output_dir: str, rows: List[dict], spec: RunSpec) -> List[Tuple[str, float]]:
    """The saver's history on resume: the ``checkpoint-N.pth.tar`` files of the kept epochs, best first, so
    --checkpoint-hist keeps counting them (timm's saver starts with an empty history)."""
    files = []
    for r in rows:
        path = os.path.join(output_dir, f'checkpoint-{r["epoch"]}.pth.tar')
        if os.path.isfile(path):
            files.append((path, row_metric(r, spec)))
    return sorted(files, key=lambda f: f[1], reverse=True)


def _compared(key: str) -> bool:
    """Whether a resume that changes record ``key`` starts a new ``args.yaml``: not for a neutral or run-folder one,
    nor for a resolved value (:data:`~timm_tgr.train.args.RESOLVED`: its flag is compared)."""
    return record_roles().get(key) not in (NEUTRAL, RUN_FOLDER) and key not in RESOLVED.values()


def write_args_yaml(record: Dict[str, Any], output_dir: str, start_epoch: int) -> None:
    """``args.yaml``: this invocation's record (:meth:`~timm_tgr.train.spec.RunSpec.record`). A resume whose
    flags change what the run computes (e.g. another --lr, which the resumed optimizer takes) keeps the earlier
    file as ``args-to-epoch<k-1>.yaml``, so the record says which flags trained which epochs (the per-epoch lr is
    also in metrics.jsonl)."""
    path = os.path.join(output_dir, 'args.yaml')
    now = yaml_safe(record)
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
