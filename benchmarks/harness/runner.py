"""Running a study's runs: skip completed ones, resume partial ones, refuse mixed budgets, N at once.

With ``jobs == 1`` every run trains in this process through ``timm_tgr.train.main`` (one after the
other). With ``jobs > 1`` each run is its own ``python -m timm_tgr.train ...`` process, at most ``jobs``
at a time, a student only after its teacher has finished; each writes its run folder as usual and its
log to ``<run folder>/train.log``, with the CPU threads divided among the jobs.
"""
import logging
import os
import shlex
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from .files import read_json, read_metrics, write_json

_logger = logging.getLogger('reproduce')

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout
LOG_NAME = 'train.log'
DONE = ('skipped', 'trained', 'resumed')
# flags whose value does not change what a run computes (paths, device, threads): ignored when a later
# invocation checks that an existing run was trained with the same flags
NEUTRAL_FLAGS = {'--data-dir': 1, '--output': 1, '--teacher-checkpoint': 1, '--device': 1, '--threads': 1,
                 '-j': 1, '--workers': 1, '--no-progress': 0}
_RECORD_KEYS = ('name', 'kind', 'variant', 'label', 'experts', 'seed', 'epochs', 'argv')


def child_env(threads: Optional[int] = None) -> dict:
    """The environment of a run's process: this checkout first on PYTHONPATH, unbuffered output, its threads."""
    env = dict(os.environ)
    env['PYTHONPATH'] = ROOT + (os.pathsep + env['PYTHONPATH'] if env.get('PYTHONPATH') else '')
    env['PYTHONUNBUFFERED'] = '1'
    if threads:
        for key in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS'):
            env[key] = str(threads)
    return env


def strip_neutral(argv: Sequence[str]) -> List[str]:
    """``argv`` without the neutral flags, config files by name (the same recipe from another checkout)."""
    out, skip = [], 0
    for i, a in enumerate(argv):
        if skip:
            skip -= 1
            continue
        if a in NEUTRAL_FLAGS:
            skip = NEUTRAL_FLAGS[a]
            continue
        out.append(os.path.basename(a) if i and argv[i - 1] in ('-c', '--config') else a)
    return out


def run_status(run: dict, runs_dir: str) -> dict:
    """The run folder's metrics rows, how many leading epochs are done, and whether the run is complete."""
    d = os.path.join(runs_dir, run['name'])
    rows = read_metrics(os.path.join(d, 'metrics.jsonl'))
    epochs = {r['epoch'] for r in rows}
    contiguous = 0
    while contiguous in epochs:
        contiguous += 1
    complete = contiguous >= run['epochs'] and os.path.isfile(os.path.join(d, 'model_best.pth.tar'))
    if run['kind'] == 'student' and run.get('experts') is not None:  # an MoE student (a dense one has no routing)
        complete = complete and os.path.isfile(os.path.join(d, 'routing_consistency.json'))
    return {'dir': d, 'rows': rows, 'contiguous': contiguous, 'complete': complete}


def _checkpoint_epoch(path: str) -> Optional[int]:
    from timm_tgr.utils.checkpoint import read_checkpoint
    try:
        return int(read_checkpoint(path).get('epoch'))
    except Exception:
        return None


def _resume_checkpoint(d: str, contiguous: int) -> Optional[str]:
    """The checkpoint of the latest epoch before ``contiguous`` (the first epoch without a metrics row), if any:
    ``last.pth.tar`` or a ``checkpoint-N.pth.tar``. The trainer takes the later rows back when it resumes."""
    if contiguous == 0:
        return None
    candidates = [('last.pth.tar', None)] + [
        (f'checkpoint-{e}.pth.tar', e) for e in range(contiguous - 1, -1, -1)]
    best = None
    for name, named_epoch in candidates:
        path = os.path.join(d, name)
        if not os.path.isfile(path) or (named_epoch is not None and best is not None and named_epoch <= best[1]):
            continue
        epoch = _checkpoint_epoch(path)
        if epoch is not None and epoch < contiguous and (best is None or epoch > best[1]):
            best = (path, epoch)
    return best[0] if best is not None else None


def _set_aside(d: str) -> None:
    """A run to train from scratch in ``d`` while ``d`` holds outputs of an earlier attempt without a checkpoint
    to resume from: those go to ``d/stale-<time>/`` (the trainer never writes into an earlier run)."""
    from timm_tgr.utils.checkpoint import run_outputs
    found = run_outputs(d)
    if not found:
        return
    stale = os.path.join(d, time.strftime('stale-%Y%m%d-%H%M%S'))
    os.makedirs(stale, exist_ok=True)
    for name in found + [n for n in ('args.yaml',) if os.path.isfile(os.path.join(d, n))]:
        os.replace(os.path.join(d, name), os.path.join(stale, name))
    _logger.warning(f'{d}: no checkpoint to resume from; the earlier attempt\'s outputs are kept in {stale}')


def check_record(run: dict, runs_dir: str) -> None:
    """Stop if ``run`` exists on disk with other flags (a different budget must not be mixed in)."""
    d = os.path.join(runs_dir, run['name'])
    record_path = os.path.join(d, 'reproduce_run.json')
    if os.path.isfile(record_path):
        old = read_json(record_path)
        if strip_neutral(old['argv']) != strip_neutral(run['argv']) or old.get('teacher') != run.get('teacher'):
            raise SystemExit(
                f"run {run['name']} in {d} was trained with other flags (or teacher {old.get('teacher')}):\n  "
                f"{shlex.join(strip_neutral(old['argv']))}"
                f"\nnow:\n  {shlex.join(strip_neutral(run['argv']))}\nUse another --output, or delete {d} to retrain "
                f"it (every run of one output folder must have the same budget).")


def prepare_run(run: dict, runs_dir: str) -> Optional[Tuple[List[str], bool]]:
    """None when ``run`` is complete; else write its record and return (train_tgr.py argv, resuming)."""
    check_record(run, runs_dir)
    status = run_status(run, runs_dir)
    d = status['dir']
    if status['complete']:
        _logger.info(f"{run['name']}: complete ({status['contiguous']} epochs), skipped")
        return None
    os.makedirs(d, exist_ok=True)
    write_json(os.path.join(d, 'reproduce_run.json'),
               {k: run[k] for k in _RECORD_KEYS} | {'teacher': run.get('teacher')})
    resume = _resume_checkpoint(d, status['contiguous'])
    if resume is None:
        _set_aside(d)
    argv = list(run['argv']) + (['--resume', resume] if resume else [])
    how = 'resuming from ' + resume if resume else 'training'
    _logger.info(f"{run['name']}: {how}: train_tgr.py {shlex.join(argv)}")
    return argv, resume is not None


def _finished(run: dict, runs_dir: str, resumed: bool) -> str:
    if not run_status(run, runs_dir)['complete']:
        log = os.path.join(runs_dir, run['name'], LOG_NAME)
        raise RuntimeError(f"run {run['name']} did not complete: see {log}")
    return 'resumed' if resumed else 'trained'


def ensure_run(run: dict, runs_dir: str) -> str:
    """Train ``run`` in this process unless complete; returns 'skipped', 'resumed' or 'trained'."""
    from timm_tgr.train import main as train_main
    prepared = prepare_run(run, runs_dir)
    if prepared is None:
        return 'skipped'
    argv, resumed = prepared
    handler = logging.FileHandler(os.path.join(runs_dir, run['name'], LOG_NAME))
    handler.setFormatter(logging.Formatter('%(asctime)s %(levelname)s %(name)s: %(message)s'))
    logging.getLogger().addHandler(handler)
    try:
        train_main(argv)
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    return _finished(run, runs_dir, resumed)


def run_all(runs: List[dict], runs_dir: str, jobs: int, threads: Optional[int]) -> Tuple[Dict[str, str], dict]:
    """Every run (teachers before the students they guide); returns ({name: status}, {name: [start, end]}
    in seconds since the call, for the runs that trained)."""
    for run in runs:  # every conflict before any training
        check_record(run, runs_dir)
    if jobs > 1:
        return ConcurrentRunner(runs_dir, jobs, threads).run(runs)
    status, spans, origin = {}, {}, time.time()
    threads_before = torch.get_num_threads()
    try:  # in this process: its torch threads for the runs, then back to what they were
        if threads:
            torch.set_num_threads(threads)
        for run in runs:
            t0 = time.time() - origin
            status[run['name']] = ensure_run(run, runs_dir)
            if status[run['name']] != 'skipped':
                spans[run['name']] = [round(t0, 2), round(time.time() - origin, 2)]
    finally:
        torch.set_num_threads(threads_before)
    return status, spans


class ConcurrentRunner:
    """Up to ``jobs`` runs at once, each a ``python -m timm_tgr.train`` process with ``threads`` CPU threads."""

    def __init__(self, runs_dir: str, jobs: int, threads: Optional[int], poll_s: float = 0.2):
        self.runs_dir, self.jobs, self.threads, self.poll_s = runs_dir, jobs, threads, poll_s
        self.status: Dict[str, str] = {}
        self.spans: Dict[str, List[float]] = {}
        self.origin = time.time()
        self.active: Dict[str, tuple] = {}  # name -> (process, run, resumed, start time, log file)

    def _ready(self, run: dict) -> Optional[bool]:
        """True: can start; False: its teacher is still to finish; None: its teacher failed."""
        teacher = run.get('teacher')
        if teacher is None or self.status.get(teacher) in DONE:
            return True
        return None if teacher in self.status else False

    def _start(self, run: dict) -> None:
        prepared = prepare_run(run, self.runs_dir)
        if prepared is None:
            self.status[run['name']] = 'skipped'
            return
        argv, resumed = prepared
        log = open(os.path.join(self.runs_dir, run['name'], LOG_NAME), 'a')
        cmd = [sys.executable, '-m', 'timm_tgr.train', *argv]
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=child_env(self.threads))
        self.active[run['name']] = (proc, run, resumed, time.time(), log)

    def _reap(self) -> None:
        for name, (proc, run, resumed, t0, log) in list(self.active.items()):
            if proc.poll() is None:
                continue
            log.close()
            del self.active[name]
            self.spans[name] = [round(t0 - self.origin, 2), round(time.time() - self.origin, 2)]
            try:
                self.status[name] = _finished(run, self.runs_dir, resumed)
                _logger.info(f'{name}: {self.status[name]} in {time.time() - t0:.0f} s')
            except RuntimeError as e:
                self.status[name] = 'failed'
                _logger.error(f'{e} (exit code {proc.returncode})')

    def run(self, runs: List[dict]) -> Tuple[Dict[str, str], dict]:
        pending = list(runs)
        try:
            while pending or self.active:
                for run in list(pending):
                    ready = self._ready(run)
                    if ready is None:
                        self.status[run['name']] = 'failed'  # its teacher failed
                        pending.remove(run)
                    elif ready and len(self.active) < self.jobs:
                        pending.remove(run)
                        self._start(run)
                self._reap()
                if pending and not self.active and all(self._ready(r) is False for r in pending):
                    waiting = [r['name'] for r in pending]
                    raise RuntimeError(f'runs wait for teachers that are not in the plan: {waiting}')
                time.sleep(self.poll_s if self.active else 0)
        finally:
            for proc, *_ in self.active.values():  # interrupted: stop the runs this process started
                proc.terminate()
        failed = [n for n, s in self.status.items() if s == 'failed']
        if failed:
            raise RuntimeError(f'runs failed: {failed}; their logs: <run folder>/{LOG_NAME} in {self.runs_dir}')
        return self.status, self.spans
