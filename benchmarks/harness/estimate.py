"""How long a study will take, before it trains: a few timed training steps of each model kind on the device
the runs will use, times the steps of every run, scheduled over the concurrent jobs.

Per run: ``startup + epochs_left x (train_steps x s/step + evals x eval_batches x s/eval-batch)``, with
``train_steps = N_train // batch`` (incomplete batches are dropped), ``eval_batches = ceil(N_test / batch)``,
two evaluations per epoch for the teacher-route variant, and, with ``--jobs N > 1``, the measured start-up
of one fresh trainer process (imports, device context). Not counted: data loading, checkpoint writing.
``serial_s`` runs everything one after the other; ``scheduled_s`` replays the runner's policy (at most
``jobs`` at once, students after their teacher) assuming the runs do not slow each other, which holds on
a GPU only while it has idle time between one run's kernels: the truth lies between the two.
"""
import math
import os
import subprocess
import sys
import time
from contextlib import nullcontext
from typing import Dict, List, Optional

import torch

from .env import device_name
from .runner import child_env, run_status
from .study import TWO_EVAL_VARIANTS


def kind_key(run: dict, spec: dict) -> str:
    if run['kind'] == 'teacher':
        return f"teacher {spec['model']}"
    experts = '' if run['experts'] is None else f" E={run['experts']}"
    return spec['model'] + experts + (' + teacher' if spec['teacher'] else '')


def _build_task(spec: dict, student: bool, device: torch.device):
    import timm
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
    from timm.task import ClassificationTask
    from timm_tgr.task import TGRTask, VMoETask, build_teacher
    model = timm.create_model(spec['model'], **spec['kwargs']).to(device)
    criterion = SoftTargetCrossEntropy() if spec['mixup'] else LabelSmoothingCrossEntropy(smoothing=spec['smoothing'])
    if spec['teacher']:
        name, kwargs = spec['teacher']
        teacher = build_teacher(name, checkpoint=None, pretrained=False, **kwargs).to(device)
        task = TGRTask(model, teacher_model=teacher, criterion=criterion, schedule='full', total_steps=10 ** 6,
                       mode=spec['mode'], device=device, verbose=False)
    elif student and hasattr(model, 'routing_infos'):
        task = VMoETask(model, criterion=criterion, device=device, verbose=False)
    else:
        task = ClassificationTask(model, criterion=criterion, device=device, verbose=False)
    return task, model


def _timed(fn, steps: int, device: torch.device) -> float:
    """Seconds per call of ``fn`` over ``steps`` calls, after one untimed warm-up call."""
    def sync():
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
    fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    sync()
    return (time.perf_counter() - t0) / steps


def time_kind(spec: dict, student: bool, device: torch.device, steps: int = 3) -> Dict[str, float]:
    """Seconds per training step (forward, backward, AdamW step) and per evaluation batch, on random data."""
    torch.manual_seed(0)
    task, model = _build_task(spec, student, device)
    B, kw = spec['batch_size'], spec['kwargs']
    x = torch.randn(B, kw.get('in_chans', 3), kw.get('img_size', 224), kw.get('img_size', 224), device=device)
    classes = kw.get('num_classes', 1000)
    y = torch.randint(0, classes, (B,), device=device)
    if spec['mixup']:
        y = torch.nn.functional.one_hot(y, classes).float()
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if spec['amp'] and device.type == 'cuda' else nullcontext()
    optimizer = torch.optim.AdamW([p for p in task.get_trainable_module().parameters() if p.requires_grad], lr=1e-4)

    def train_step():
        with amp:
            loss = task(x, y)['loss']
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def eval_step():
        with torch.no_grad(), amp:
            model(x)
    task.get_trainable_module().train()
    train_s = _timed(train_step, steps, device)
    model.eval()
    return {'train_s_per_step': train_s, 'eval_s_per_batch': _timed(eval_step, steps, device), 'batch_size': B}


def simulate(runs: List[dict], seconds: Dict[str, float], jobs: int) -> float:
    """Makespan of the runner's policy: in plan order, at most ``jobs`` at once, students after their teacher."""
    t, pending, active, done = 0., list(runs), {}, set()
    while pending or active:
        for r in list(pending):
            if len(active) < jobs and (r.get('teacher') is None or r['teacher'] in done):
                pending.remove(r)
                active[r['name']] = t + seconds[r['name']]
        if not active:
            raise ValueError(f"runs wait for teachers outside the plan: {[r['name'] for r in pending]}")
        name = min(active, key=active.get)
        t = active.pop(name)
        done.add(name)
    return t


def _dataset_sizes(data_dir: str) -> Dict[str, int]:
    from timm_tgr.data import read_idx_shape
    raw = os.path.join(data_dir, 'FashionMNIST', 'raw')
    return {split: read_idx_shape(os.path.join(raw, f'{name}-labels-idx1-ubyte'))[0]
            for split, name in (('train', 'train'), ('test', 't10k'))}


def startup_seconds(device: str, threads: Optional[int] = None) -> float:
    """Wall seconds of a fresh process importing the trainer and touching the device (what each run of
    ``--jobs N > 1`` pays before its first step, data loading aside)."""
    code = f'import torch, timm_tgr.train; torch.zeros(1, device={device!r}).sum().item()'
    t0 = time.perf_counter()
    subprocess.run([sys.executable, '-c', code], check=True, env=child_env(threads), capture_output=True)
    return time.perf_counter() - t0


def run_seconds(run: dict, times: dict, sizes: Dict[str, int], epochs_left: int) -> float:
    B = times['batch_size']
    evals = 2 if run['variant'] in TWO_EVAL_VARIANTS else 1
    per_epoch = (sizes['train'] // B) * times['train_s_per_step'] \
        + evals * math.ceil(sizes['test'] / B) * times['eval_s_per_batch']
    return epochs_left * per_epoch


def _time_kinds(plan, runs: List[dict], left: Dict[str, int], device: str, steps: int) -> tuple:
    """({kind: step times}, {run name: kind}, the device's name) at the CPU threads each run will have."""
    kinds, run_kind = {}, {}
    threads = torch.get_num_threads()
    if plan.threads:
        torch.set_num_threads(plan.threads)
    try:
        name = device_name(device)
        for run in runs:
            spec = plan.model_spec(run)
            run_kind[run['name']] = key = kind_key(run, spec)
            if key not in kinds and left[run['name']] > 0:
                kinds[key] = time_kind(spec, run['kind'] == 'student', torch.device(device), steps)
    finally:
        torch.set_num_threads(threads)
    return kinds, run_kind, name


def fit_epochs(runs: List[dict], per_epoch: Dict[str, float], done: Dict[str, int], startup: float, jobs: int,
               budget_s: float, epochs: int, teacher_epochs: int) -> Optional[dict]:
    """The most student epochs below ``epochs`` (teacher epochs scaled alike, at least 1) whose schedule
    (:func:`simulate`, each run ``startup + epochs still to train x per_epoch``) fits ``budget_s``:
    ``{'epochs', 'teacher_epochs', 'scheduled_s'}``, or None when not even 1 epoch does."""
    for e in range(epochs - 1, 0, -1):
        te = max(1, round(teacher_epochs * e / epochs))
        seconds = {}
        for r in runs:
            n = max(0, (te if r['kind'] == 'teacher' else e) - done[r['name']])
            seconds[r['name']] = startup + n * per_epoch[r['name']] if n else 0.
        scheduled = simulate(runs, seconds, jobs)
        if scheduled <= budget_s:
            return {'epochs': e, 'teacher_epochs': te, 'scheduled_s': scheduled}
    return None


def estimate_study(plan, runs: List[dict], device: str, steps: int = 3, budget_s=None) -> dict:
    """Time each model kind, then the study's serial and scheduled seconds (see the module docstring)."""
    sizes = _dataset_sizes(plan.args.data_dir)
    left = {}
    for run in runs:
        st = run_status(run, plan.runs_dir)
        left[run['name']] = 0 if st['complete'] else run['epochs'] - min(st['contiguous'], run['epochs'])
    kinds, run_kind, name = _time_kinds(plan, runs, left, device, steps)
    startup = startup_seconds(device, plan.threads) if plan.jobs > 1 and any(left.values()) else 0.
    per_epoch = {r['name']: run_seconds(r, kinds[run_kind[r['name']]], sizes, 1) if left[r['name']] else 0.
                 for r in runs}
    seconds = {r['name']: startup + left[r['name']] * per_epoch[r['name']] if left[r['name']] else 0. for r in runs}
    scheduled = simulate(runs, seconds, plan.jobs)
    est = {'device': device, 'device_name': name, 'jobs': plan.jobs, 'threads_per_job': plan.threads,
           'steps_timed': steps, 'dataset_sizes': sizes, 'step_times': kinds, 'startup_s_per_run': startup,
           'epochs_left': left,
           'run_seconds': seconds, 'serial_s': sum(seconds.values()), 'scheduled_s': scheduled, 'budget_s': budget_s,
           'fits': None if budget_s is None else scheduled <= budget_s,
           'not_counted': 'data loading, checkpoint writing' + ('' if startup else ', process start-up')}
    if budget_s and scheduled > budget_s:  # fewer epochs: the same per-epoch times and start-up, scheduled again
        done = {r['name']: r['epochs'] - left[r['name']] for r in runs}
        est['suggested'] = fit_epochs(runs, per_epoch, done, startup, plan.jobs, budget_s, plan.epochs,
                                      plan.teacher_epochs)
    return est


def format_estimate(est: dict, tier=None) -> str:
    """The estimate as printed before training."""
    lines = [f"Estimate on {est['device']} ({est['device_name']}): {est['jobs']} job(s)"
             + (f" x {est['threads_per_job']} CPU thread(s)" if est['threads_per_job'] else '')
             + f", {est['steps_timed']} timed steps per model kind after one warm-up step:"]
    for key, t in est['step_times'].items():
        lines.append(f"  {key:<42} {t['train_s_per_step'] * 1e3:9.1f} ms/train step  "
                     f"{t['eval_s_per_batch'] * 1e3:8.1f} ms/eval batch  (batch {t['batch_size']})")
    if est['startup_s_per_run']:
        lines.append(f"  {'process start-up (imports, device context)':<42} {est['startup_s_per_run']:9.1f} s/run")
    todo = sum(1 for v in est['epochs_left'].values() if v)
    lines.append(f"  {todo} of {len(est['epochs_left'])} runs to train ({est['dataset_sizes']['train']} train / "
                 f"{est['dataset_sizes']['test']} test images); not counted: {est['not_counted']}")
    verdict = ''
    if est['budget_s']:
        verdict = f"; budget {est['budget_s']:.0f} s: " + ('fits' if est['fits'] else 'DOES NOT FIT, ' + (
            'about --epochs {epochs} --teacher-epochs {teacher_epochs} would'.format(**est['suggested'])
            if est.get('suggested') else 'not even at 1 epoch on this device'))
    lines.append(f"  estimate: {est['serial_s']:.0f} s one run after the other, {est['scheduled_s']:.0f} s with "
                 f"{est['jobs']} at once if they do not slow each other{verdict}")
    if tier is not None:
        lines.append(f"  tier {tier.name}: {tier.summary}. Why: {tier.why}")
    return '\n'.join(lines)
