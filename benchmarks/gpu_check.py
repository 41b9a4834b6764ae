#!/usr/bin/env python3
"""The GPU check in one prepared command: CUDA tests, throughput against dense, DeepSpeed, the study's GPU tier.

Made for a lent GPU machine with a fixed time budget (``--budget-s``, default 540 s: nine minutes on an
H100/H200). Four sections, in this order, each with its own time limit so that a slow one cannot eat the rest:

1. ``pytest``: ``python -m pytest -m gpu`` over the test files that mark a test ``gpu``, in a subprocess (the
   CUDA paths against the float64 reference, no host sync in the dropless forward); every test's outcome from
   its JUnit XML.
2. ``throughput``: one subprocess times, side by side, dense ``deit_{tiny,small}`` against ``vmoe_deit_tiny``
   E=16 / ``vmoe_deit_small`` E=8 on the capacity (``bmm``), capacity (``grouped_mm``) and dropless paths, train
   step (AdamW) and eval, eager and ``torch.compile``; the TGR step (student + teacher) against the V-MoE step and
   the teacher's forward; the upcycled model's eval; peak memory. Rows come in priority order (the goal rows
   first) and a row whose expected cost no longer fits is skipped and listed. Rows, ratios and goal verdicts are
   ``benchmarks/throughput.py``'s (:func:`run_row`, :func:`add_row`, :func:`evaluate_goals`). Where a goal
   fails, one more step of that row runs under ``torch.profiler`` and its top kernels are kept.
3. ``deepspeed``: DeepSpeed's MoE layer for comparison, only if it is installed; it is not in the device image,
   and this script has no comparison for it yet: the section records which of the two holds.
4. ``study``: ``benchmarks/reproduce.py --tier gpu-main --device-data``, with the epochs cut to what the study's
   own estimate (``--estimate-only --budget-s``) says fits in the time left.

Everything lands in ``<out>/gpu_check.json``, rewritten after every section and every throughput row (a
timeout keeps what was measured), plus the study's ``study_estimate.json``, ``study_results.json`` and
``study_results.md``: four files, within what the device tool brings back. Scratch (run folders, logs) goes
to ``--work-dir``.

``--dry-run`` runs the same code on the CPU with tiny sizes (batch 4, 32x32 images, fp32, one thread, Tiny's eager
goal rows only, no compile, the study with ``--quick`` on one seed) in about a minute; its numbers mean nothing,
and its goal verdicts are computed only to exercise the code (``goals_meaningful: false``).

    python benchmarks/gpu_check.py --out /tmp/gpu_check --fmnist-gz data/fashion-mnist-gz   # on the GPU
    python benchmarks/gpu_check.py --dry-run --out /tmp/gpu_check_dry                        # CPU, ~1 min
"""
import argparse
import datetime
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import xml.etree.ElementTree as ET
from typing import Callable, Dict, List, Optional, Sequence

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH_DIR)
for _p in (BENCH_DIR, ROOT):  # run from a checkout without installing: harness/ and timm_tgr/ importable
    if _p not in sys.path:
        sys.path.insert(0, _p)

from harness.files import read_json as _read_json, write_json  # noqa: E402
from harness.runner import child_env as _child_env  # noqa: E402

SCHEMA = 'timm_tgr.benchmarks.gpu_check/1'
SECTIONS = ('pytest', 'throughput', 'deepspeed', 'study')
OUT_JSON = 'gpu_check.json'
# the default budget and per-section limits (s), scaled alike by --budget-s; the study gets whatever is left before
# the overall budget, less RESERVE_S
LIMITS = {
    'gpu': dict(budget=540., pytest=75., throughput=255.),
    'dry': dict(budget=240., pytest=60., throughput=90.),  # limits, not targets: a loaded CPU must not skip rows
}
RESERVE_S = 10.  # for the last writes
GRACE_S = 15.  # a section subprocess is killed this long after its deadline (a row cannot stop halfway)

# --- throughput: the rows, in priority order -------------------------------------------------------------------
EXPERTS = {'tiny': 16, 'small': 8}
PATHS = (('capacity', 'bmm'), ('capacity', 'grouped_mm'), ('dropless', 'bmm'))  # (moe_path, expert_impl)
THROUGHPUT = {
    'gpu': dict(device='cuda', amp_dtype='bfloat16', batch_size=256, img_size=224, steps=10, repeats=3, warmup=5,
                compile_warmup=3, eager_guess_s=20., compile_guess_s=90., max_profiles=6, threads=None),
    'dry': dict(device='cpu', amp_dtype='float32', batch_size=4, img_size=32, steps=1, repeats=1, warmup=1,
                compile_warmup=1, eager_guess_s=3., compile_guess_s=60., max_profiles=1, threads=1),
}


# what throughput.py's Bench and run_row take from its arguments (its grid flags do not apply here)
SETTINGS = ('device', 'amp_dtype', 'batch_size', 'img_size', 'num_classes', 'steps', 'warmup', 'repeats', 'teacher',
            'compile_mode', 'lr', 'fused_adamw', 'seed')


def _row(size, variant, phase, compiled, path=None, impl=None):
    moe = variant in ('vmoe', 'tgr', 'upcycled')
    return dict(size=size, variant=variant, phase=phase, num_experts=EXPERTS[size] if moe else None,
                expert_impl=impl if moe else None, moe_path=path if moe else None, compile=compiled)


def _core(size: str, compiled: bool) -> List[dict]:
    """The rows the goals are judged on: dense, the three MoE train paths, teacher + TGR, upcycled dropless eval."""
    return ([_row(size, 'dense', 'train', compiled)]
            + [_row(size, 'vmoe', 'train', compiled, p, i) for p, i in PATHS]
            + [_row(size, 'teacher', 'infer', compiled), _row(size, 'tgr', 'train', compiled, 'capacity', 'bmm'),
               _row(size, 'dense', 'infer', compiled), _row(size, 'upcycled', 'infer', compiled, 'dropless', 'bmm')])


def _rest(size: str, compiled: bool) -> List[dict]:
    return ([_row(size, 'upcycled', 'infer', compiled, p, i) for p, i in PATHS[:2]]
            + [_row(size, 'vmoe', 'infer', compiled, p, i) for p, i in PATHS]
            + [_row(size, 'tgr', 'train', compiled, p, i) for p, i in PATHS[1:]])


def plan_rows() -> List[dict]:
    """Every throughput row, most wanted first: Small's eager core (the TGR and upcycled goals), the compiled rows of
    the train goal (Small, E=8), Tiny's eager core, the other eager rows, then the remaining compiled ones."""
    goal_compiled = [r for r in _core('small', True) if r['phase'] == 'train' and r['variant'] in ('dense', 'vmoe')]
    rows = (_core('small', False) + goal_compiled + _core('tiny', False) + _rest('small', False) + _rest('tiny', False)
            + [r for r in _core('small', True) if r not in goal_compiled] + _core('tiny', True)
            + _rest('small', True) + _rest('tiny', True))
    return rows


# --- small helpers ---------------------------------------------------------------------------------------------
def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


def read_json(path: str):
    """The file's JSON, or None when it is not there (yet) or unreadable."""
    try:
        return _read_json(path)
    except (OSError, ValueError):
        return None


def child_env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """The study runs' environment (this checkout first on PYTHONPATH, unbuffered output), plus ``extra``."""
    env = _child_env()
    env.update(extra or {})
    return env


def run_child(cmd: Sequence[str], timeout_s: float, env: Dict[str, str], log_path: str, prefix: str,
              poll: Optional[Callable[[], None]] = None, poll_s: float = 5.) -> dict:
    """Run ``cmd`` in its own process group, echo its output (prefixed) and keep it in ``log_path``; kill the
    group after ``timeout_s``. ``poll()`` runs every ``poll_s`` while it runs."""
    t0 = time.monotonic()
    if timeout_s <= 0:
        return {'returncode': None, 'timed_out': True, 'wall_s': 0., 'output_tail': '', 'command': list(cmd)}
    with open(log_path, 'w') as log:
        proc = subprocess.Popen(list(cmd), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, bufsize=1, start_new_session=True)
        _CHILDREN.add(proc)

        def pump():
            for line in proc.stdout:
                log.write(line)
                sys.stdout.write(f'[{prefix}] {line}')
            sys.stdout.flush()
        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        timed_out = False
        try:
            while True:
                try:
                    proc.wait(timeout=max(0.1, min(poll_s, t0 + timeout_s - time.monotonic())))
                    break
                except subprocess.TimeoutExpired:
                    if poll is not None:
                        poll()
                    if time.monotonic() - t0 >= timeout_s:
                        timed_out = True
                        _kill(proc)
                        break
        finally:
            _CHILDREN.discard(proc)
        reader.join(timeout=10)
    if poll is not None:
        poll()
    with open(log_path) as f:
        tail = f.read()[-4000:]
    return {'command': list(cmd), 'returncode': proc.returncode, 'timed_out': timed_out,
            'wall_s': round(time.monotonic() - t0, 2), 'output_tail': tail}


_CHILDREN: set = set()


def _kill(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL, to the process group this script started for ``proc`` (its own session)."""
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


# --- section 1: pytest -m gpu ----------------------------------------------------------------------------------
def parse_junit(path: str) -> dict:
    """Every test case of a JUnit XML file with its outcome, and the counts."""
    tests = []
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as e:
        return {'tests': [], 'counts': {}, 'error': f'{type(e).__name__}: {e}'}
    for case in root.iter('testcase'):
        outcome, message = 'passed', None
        for child in case:
            if child.tag in ('failure', 'error', 'skipped'):
                outcome = {'failure': 'failed', 'error': 'error', 'skipped': 'skipped'}[child.tag]
                message = (child.get('message') or child.text or '')[:500]
                break
        tests.append({'id': f"{case.get('classname')}::{case.get('name')}", 'outcome': outcome,
                      'time_s': float(case.get('time') or 0.), 'message': message})
    counts = {k: sum(t['outcome'] == k for t in tests) for k in ('passed', 'failed', 'error', 'skipped')}
    return {'tests': tests, 'counts': counts}


def gpu_test_files(tests_dir: str = os.path.join(ROOT, 'tests')) -> List[str]:
    """The test files that mark a test ``gpu`` (only they are collected: the others would be deselected anyway)."""
    found = []
    for folder, _, names in os.walk(tests_dir):
        for name in sorted(names):
            if name.startswith('test_') and name.endswith('.py'):
                path = os.path.join(folder, name)
                with open(path) as f:
                    if 'mark.gpu' in f.read():
                        found.append(os.path.relpath(path, ROOT))
    return sorted(found)


def section_pytest(ctx: 'Context', deadline: float) -> dict:
    xml = os.path.join(ctx.work, 'pytest-gpu.xml')
    cmd = [sys.executable, '-m', 'pytest', '-m', 'gpu', '-q', '-p', 'no:cacheprovider', '-rfEs',
           f'--junitxml={xml}'] + gpu_test_files()
    res = run_child(cmd, deadline - time.monotonic(), child_env(), os.path.join(ctx.work, 'pytest.log'), 'pytest')
    junit = parse_junit(xml)
    counts = junit['counts']
    ran = counts.get('passed', 0) + counts.get('failed', 0) + counts.get('error', 0)
    if res['timed_out']:
        status = 'timeout'
    elif res['returncode'] == 0:
        status = 'passed' if ran else 'nothing ran (no CUDA device: every gpu test skipped)'
    else:
        status = 'failed'
    return dict(status=status, **res, **junit, cuda_tests_ran=ran > 0)


# --- section 2: throughput (a subprocess: --section throughput) ------------------------------------------------
def profile_step(step: Callable[[], None], cuda: bool, top: int = 10) -> dict:
    """One step under ``torch.profiler``: the ``top`` CUDA kernels by their own device time (on CPU: the ops by
    their own CPU time), with their share of the total."""
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        step()
        if cuda:
            torch.cuda.synchronize()
    events = list(prof.key_averages())
    if cuda:
        kernels = [e for e in events if getattr(e, 'device_type', None) == DeviceType.CUDA]
        events = kernels or events

        def own(e):
            return float(getattr(e, 'self_device_time_total', 0.) or getattr(e, 'self_cuda_time_total', 0.))
    else:
        def own(e):
            return float(e.self_cpu_time_total)
    total = sum(own(e) for e in events)
    ranked = sorted(events, key=own, reverse=True)[:top]
    return {'what': 'CUDA kernels, own device time' if cuda else 'CPU ops, own CPU time', 'total_us': total,
            'top': [{'name': e.key, 'own_us': own(e), 'count': e.count,
                     'share': own(e) / total if total else None} for e in ranked]}


class ThroughputRun:
    """The throughput section inside its subprocess: rows in priority order, within the deadline."""

    def __init__(self, dry_run: bool, deadline_ts: float, out_path: str):
        import throughput as tp
        self.tp, self.dry_run, self.deadline_ts, self.out_path = tp, dry_run, deadline_ts, out_path
        self.cfg = THROUGHPUT['dry' if dry_run else 'gpu']
        c = self.cfg
        self.args = tp.parse_args(['--device', c['device'], '--amp-dtype', c['amp_dtype'], '--batch-size',
                                   str(c['batch_size']), '--img-size', str(c['img_size']), '--steps', str(c['steps']),
                                   '--repeats', str(c['repeats']), '--warmup', str(c['warmup'])])
        self.device = tp._setup_device(self.args)
        self.bench = tp.Bench(self.args)
        self.rows: List[dict] = []
        self.walls: Dict[str, List[float]] = {'eager': [], 'compile': []}
        self.section = {
            'status': 'running', 'started': _now(), 'environment': tp.environment(self.device),
            'settings': dict({k: getattr(self.args, k) for k in SETTINGS}, compile_warmup=c['compile_warmup']),
            'memory_metric': self.bench.memory_metric,
            'goals_meaningful': not dry_run and self.bench.cuda,
            'rows': self.rows, 'skipped': [], 'errors': [], 'profiles': [],
            'tgr_overhead': [], 'dropless': [], 'goals': [],
        }

    def left(self) -> float:
        return self.deadline_ts - time.time()

    def expected_s(self, kind: str) -> float:
        seen = self.walls[kind]
        return 1.25 * max(seen) if seen else self.cfg[f'{kind}_guess_s']

    def judge(self, rows: List[dict]) -> tuple:
        tp = self.tp
        overheads = tp.tgr_overhead(rows)
        comparisons = tp.dropless_comparisons(rows)
        # the dry run judges too (on the CPU, where throughput.py judges only the dropless targets), to exercise
        # the verdicts and the profiler; goals_meaningful says whether a verdict means anything
        goals = tp.evaluate_goals(rows, overheads, self.bench.cuda or self.dry_run, comparisons)
        return overheads, comparisons, goals

    def after(self, row: dict, step: Callable[[], None]) -> None:
        """Profile one more step of a row that just failed a goal (the dry run: the first goal row, whatever its
        verdict), while its model and compiled code still exist."""
        if len(self.section['profiles']) >= self.cfg['max_profiles'] or self.left() < 10:
            return
        trial = list(self.rows)
        self.tp.add_row(trial, dict(row))
        key = self.tp.row_key(row)
        goals = [g for g in self.judge(trial)[2] if g['row'] == key]
        failed = [g['goal'] for g in goals if g['pass'] is False]
        if failed:
            reason = 'goal failed'
        elif self.dry_run and goals and not self.section['profiles']:
            reason = 'dry run: the first goal row is profiled whatever its verdict'
        else:
            return
        try:
            prof = profile_step(step, self.bench.cuda)
        except Exception as e:  # a profiler problem must not lose the row
            prof = {'error': f'{type(e).__name__}: {e}'}
        self.section['profiles'].append(dict(row=key, reason=reason, goals=failed or [g['goal'] for g in goals],
                                             **prof))

    def write(self) -> None:
        overheads, comparisons, goals = self.judge(self.rows)
        self.section.update(tgr_overhead=overheads, dropless=comparisons, goals=goals)
        write_json(self.out_path, self.section)

    def run(self) -> dict:
        tp, bench = self.tp, self.bench
        self.write()
        dry_rows = _core('tiny', False)
        for spec in plan_rows():
            kind = 'compile' if spec['compile'] else 'eager'
            if self.dry_run and spec not in dry_rows:
                self.section['skipped'].append(dict(spec, reason='dry run: only the eager Tiny rows the goals are '
                                                                 'judged on (the others run the same code)'))
                continue
            need = self.expected_s(kind)
            if need > self.left():
                self.section['skipped'].append(dict(spec, reason=f'budget: ~{need:.0f} s expected, '
                                                                 f'{max(0., self.left()):.0f} s left'))
                continue
            self.args.warmup = self.cfg['compile_warmup'] if spec['compile'] else self.cfg['warmup']
            t0 = time.monotonic()
            row = None
            try:
                row = tp.run_row(bench, spec['size'], spec['variant'], spec['phase'], spec['compile'],
                                 spec['num_experts'], spec['expert_impl'], spec['moe_path'], after=self.after)
            except Exception as e:  # e.g. out of memory, or a path torch.compile rejects: the next rows still run
                self.section['errors'].append(dict(spec, error=f'{type(e).__name__}: {e}',
                                                   traceback=traceback.format_exc()[-2000:]))
                print(f"  row failed: {spec}: {type(e).__name__}: {e}", flush=True)
            if row is None:
                bench.clear()  # out of the except block: its traceback no longer holds the row's tensors
            else:
                row['wall_s'] = round(time.monotonic() - t0, 2)
                tp.print_row(tp.add_row(self.rows, row))
            self.walls[kind].append(time.monotonic() - t0)
            self.write()
        self.section['status'] = 'done'
        self.write()
        return self.section


def throughput_child(dry_run: bool, deadline_ts: float, out_path: str) -> int:
    threads = THROUGHPUT['dry' if dry_run else 'gpu']['threads']
    if threads:  # CPU: one thread, as two OpenMP threads collapse as soon as anything else uses a core
        import torch
        torch.set_num_threads(threads)
    ThroughputRun(dry_run, deadline_ts, out_path).run()
    return 0


def section_throughput(ctx: 'Context', deadline: float) -> dict:
    part = os.path.join(ctx.work, 'throughput.json')
    deadline_ts = time.time() + (deadline - time.monotonic())
    cmd = [sys.executable, os.path.abspath(__file__), '--section', 'throughput', '--deadline-ts', f'{deadline_ts:.1f}',
           '--section-out', part] + (['--dry-run'] if ctx.dry_run else [])

    def poll():  # merge the rows so far, so that a kill of the whole command keeps them
        data = read_json(part)
        if data is not None:
            ctx.report['sections']['throughput'] = dict(data, status=data.get('status', 'running'))
            ctx.write()
    res = run_child(cmd, deadline - time.monotonic() + GRACE_S, child_env(), os.path.join(ctx.work, 'throughput.log'),
                    'throughput', poll=poll, poll_s=2. if ctx.dry_run else 5.)
    data = read_json(part) or {}
    status = data.get('status', 'no output')
    if res['timed_out']:
        status = 'timeout (rows measured until then are kept)'
    elif res['returncode'] != 0:
        status = f"exit {res['returncode']}"
    return dict(data, status=status, process=res)


# --- section 3: DeepSpeed --------------------------------------------------------------------------------------
def section_deepspeed(ctx: 'Context', deadline: float) -> dict:
    if importlib.util.find_spec('deepspeed') is None:
        return {'status': 'skipped', 'reason': 'deepspeed is not installed in this Python (it is not in the device '
                                               'image, and no wheel of it travels with the tree)'}
    return {'status': 'skipped', 'reason': 'deepspeed is installed, but this script has no comparison with its MoE '
                                           'layer yet: nothing was measured'}


# --- section 4: the study's GPU tier ---------------------------------------------------------------------------
STUDY_OVERHEAD_S = {'gpu': 60., 'dry': 20.}  # the estimate timed again at the start of the real run, export, report
REPORT_RESERVE_S = {'gpu': 20., 'dry': 10.}  # kept back from a study that runs late, for --report-only


def study_argv(ctx: 'Context', output: str) -> List[str]:
    argv = [sys.executable, os.path.join(BENCH_DIR, 'reproduce.py'), '--tier', 'gpu-main', '--device-data',
            '--output', output]
    if ctx.dry_run:
        return argv + ['--quick', '--device', 'cpu', '--seeds', '0', '--variants', 'tgr', '--jobs', '1']
    return argv + ['--device', 'cuda', '--data-dir', ctx.data_dir]


def summarize_study(results: Optional[dict]) -> Optional[dict]:
    if not results:
        return None
    return {
        'aggregates': [{k: a.get(k) for k in ('variant', 'label', 'experts', 'seeds', 'epochs', 'top1_final',
                                              'top1_best')} for a in results.get('aggregates', [])],
        'claims': results.get('claims'), 'export': results.get('export'), 'timing': results.get('timing'),
        'incomplete_runs': results.get('incomplete_runs'),
    }


def section_study(ctx: 'Context', deadline: float) -> dict:
    output = os.path.join(ctx.work, 'study')
    base = study_argv(ctx, output)
    env = child_env({'TIMM_TGR_FASHION_MNIST': os.path.abspath(ctx.fmnist_gz)} if ctx.fmnist_gz else None)
    out = {'status': 'running', 'output': output}
    left = deadline - time.monotonic()
    budget = round(0.85 * (left - STUDY_OVERHEAD_S[ctx.mode]), 1)
    if budget <= 0:
        return dict(out, status='skipped', reason=f'{left:.0f} s left: too little for the study')
    # 1. the estimate decides the epochs (never an older one left in a reused --work-dir)
    if os.path.isfile(os.path.join(output, 'estimate.json')):
        os.remove(os.path.join(output, 'estimate.json'))
    steps = ['--estimate-steps', '1'] if ctx.dry_run else []
    est_run = run_child(base + ['--estimate-only', '--budget-s', str(budget)] + steps, left,
                        env, os.path.join(ctx.work, 'study-estimate.log'), 'study')
    est = read_json(os.path.join(output, 'estimate.json'))
    out.update(training_budget_s=budget, estimate_process=est_run)
    if est is None:
        return dict(out, status='failed: no estimate' + (' (timeout)' if est_run['timed_out'] else ''))
    shutil.copyfile(os.path.join(output, 'estimate.json'), os.path.join(ctx.out, 'study_estimate.json'))
    out['estimate'] = {k: est.get(k) for k in ('device_name', 'jobs', 'step_times', 'startup_s_per_run',
                                               'epochs_left', 'serial_s', 'scheduled_s', 'budget_s', 'fits',
                                               'suggested')}
    cut = []
    if not est.get('fits'):
        sug = est.get('suggested')
        if not sug:
            return dict(out, status='skipped', reason=f'not even 1 epoch fits in {budget:.0f} s, by the estimate')
        cut = ['--epochs', str(sug['epochs']), '--teacher-epochs', str(sug['teacher_epochs'])]
    out['epochs'] = ({'from': 'the tier (it fits)'} if not cut else
                     {'from': 'the estimate\'s suggestion', 'epochs': int(cut[1]), 'teacher_epochs': int(cut[3])})
    # 2. the study itself (its own estimate again, at one step per model kind)
    left = deadline - time.monotonic() - REPORT_RESERVE_S[ctx.mode]
    train = run_child(base + cut + ['--estimate-steps', '1'], left, env, os.path.join(ctx.work, 'study.log'), 'study')
    out['process'] = train
    status = 'done' if train['returncode'] == 0 else (
        'timeout' if train['timed_out'] else f"exit {train['returncode']}")
    if train['timed_out'] and deadline - time.monotonic() > 5:  # tables from the runs that finished
        out['report_process'] = run_child([base[0], base[1], '--output', output, '--report-only'],
                                          deadline - time.monotonic(), env, os.path.join(ctx.work, 'report.log'),
                                          'study')
    for name in ('results.json', 'results.md'):
        if os.path.isfile(os.path.join(output, name)):
            shutil.copyfile(os.path.join(output, name), os.path.join(ctx.out, f'study_{name}'))
    out['results'] = summarize_study(read_json(os.path.join(output, 'results.json')))
    return dict(out, status=status)


# --- the orchestration -----------------------------------------------------------------------------------------
class Context:
    def __init__(self, args):
        self.dry_run = args.dry_run
        self.mode = 'dry' if args.dry_run else 'gpu'
        self.out = os.path.abspath(args.out)
        self.work = os.path.abspath(args.work_dir or tempfile.mkdtemp(prefix='gpu_check-'))
        self.data_dir = os.path.abspath(args.data_dir)
        self.fmnist_gz = args.fmnist_gz
        self.report: dict = {}

    def write(self) -> None:
        write_json(os.path.join(self.out, OUT_JSON), self.report)


SECTION_FNS = {'pytest': section_pytest, 'throughput': section_throughput, 'deepspeed': section_deepspeed,
               'study': section_study}


def environment() -> dict:
    import platform

    import torch
    env = {'python': platform.python_version(), 'platform': platform.platform(), 'torch': torch.__version__,
           'cuda_available': torch.cuda.is_available(), 'cpu_count': os.cpu_count()}
    if torch.cuda.is_available():
        env.update(device_name=torch.cuda.get_device_name(), cuda=torch.version.cuda,
                   capability=list(torch.cuda.get_device_capability()))
    for name in ('timm', 'triton'):
        spec = importlib.util.find_spec(name)
        env[name] = None
        if spec is not None:
            try:
                env[name] = __import__(name).__version__
            except Exception:
                pass
    from harness.env import git_revision
    env['git'] = git_revision(ROOT)
    return env


def print_summary(report: dict) -> None:
    print('\n=== gpu_check summary ' + ('(DRY RUN on the CPU: the numbers mean nothing) ' if report['dry_run'] else '')
          + '===')
    for name, sec in report['sections'].items():
        print(f"{name:>10}: {sec.get('status')}  ({sec.get('wall_s', '-')} s)")
    tp = report['sections'].get('throughput') or {}
    for g in tp.get('goals', []):
        verdict = {True: 'PASS', False: 'FAIL', None: 'n/a '}[g['pass']]
        val = '-' if g['value'] is None else f"{g['value']:.3f}"
        print(f"  [{verdict}] {g['goal']}: {val} (goal {g['direction']} {g['threshold']})")
    pt = report['sections'].get('pytest') or {}
    if pt.get('counts'):
        print(f"  pytest -m gpu: {pt['counts']}")
    st = report['sections'].get('study') or {}
    for a in (st.get('results') or {}).get('aggregates', []):
        t = a.get('top1_final') or {}
        print(f"  study {a['variant']:<14} E={a['experts']} top-1 {t.get('mean')} ± {t.get('std')} (n={t.get('n')})")
    print(f"wall {report.get('wall_s')} s of a {report['budget_s']:.0f} s budget; JSON: {report['out_json']}",
          flush=True)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--out', help='folder for gpu_check.json and the study_* files (on the device: $OUT)')
    p.add_argument('--dry-run', action='store_true', help='the same code on the CPU at tiny sizes (< 1 min)')
    p.add_argument('--budget-s', type=float, default=None,
                   help=f"overall wall seconds (default {LIMITS['gpu']['budget']:.0f}; dry run "
                        f"{LIMITS['dry']['budget']:.0f}); the sections' limits scale with it")
    p.add_argument('--sections', default=','.join(SECTIONS), help=f'comma list from {SECTIONS} (default: all)')
    p.add_argument('--work-dir', default=None, help='scratch: study runs, logs (default: a new temporary folder)')
    p.add_argument('--data-dir', default='data', help='Fashion-MNIST root of the study (default: data)')
    p.add_argument('--fmnist-gz', default=None,
                   help='folder of the four Fashion-MNIST .gz files (sets TIMM_TGR_FASHION_MNIST for the study)')
    # internal: one section inside its own process
    p.add_argument('--section', choices=('throughput',), help=argparse.SUPPRESS)
    p.add_argument('--deadline-ts', type=float, help=argparse.SUPPRESS)
    p.add_argument('--section-out', help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.section is None and not args.out:
        p.error('--out is required')
    args.sections = [s.strip() for s in args.sections.split(',') if s.strip()]
    bad = [s for s in args.sections if s not in SECTIONS]
    if bad:
        p.error(f'--sections: unknown {bad}; choose from {SECTIONS}')
    return args


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = parse_args(argv)
    if args.section == 'throughput':
        sys.exit(throughput_child(args.dry_run, args.deadline_ts, args.section_out))
    import torch
    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit('gpu_check: no CUDA device here; --dry-run runs the same code on the CPU.')
    ctx = Context(args)
    limits = LIMITS[ctx.mode]
    budget = args.budget_s or limits['budget']
    t0 = time.monotonic()
    end = t0 + budget - RESERVE_S
    os.makedirs(ctx.out, exist_ok=True)
    os.makedirs(ctx.work, exist_ok=True)
    ctx.report = {
        'schema': SCHEMA, 'dry_run': ctx.dry_run, 'status': 'running', 'started': _now(), 'budget_s': budget,
        'command': 'python benchmarks/gpu_check.py ' + ' '.join(sys.argv[1:] if argv is None else argv),
        'out_json': os.path.join(ctx.out, OUT_JSON), 'work_dir': ctx.work, 'environment': environment(),
        'note': ('DRY RUN on the CPU at tiny sizes: it checks that every section runs and writes what it promises; '
                 'its numbers say nothing about any GPU') if ctx.dry_run else None,
        'sections': {name: {'status': 'pending'} for name in args.sections},
    }
    ctx.write()

    def on_term(signum, frame):  # the device's limit: keep what is there, stop the section's processes
        for proc in list(_CHILDREN):
            _kill(proc)
        ctx.report['status'] = f'killed by signal {signum}'
        ctx.write()
        sys.exit(128 + signum)
    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        run_sections(ctx, args.sections, limits, end, budget / limits['budget'])
    finally:
        signal.signal(signal.SIGTERM, previous)  # main() may run inside another program (the tests)
    ctx.report.update(status='complete', finished=_now(), wall_s=round(time.monotonic() - t0, 2))
    ctx.write()
    print_summary(ctx.report)
    return ctx.report


def run_sections(ctx: Context, sections: Sequence[str], limits: dict, end: float, scale: float = 1.) -> None:
    """Each section in turn, up to its own limit (times ``scale``) and never past ``end``; its result lands in the
    JSON at once."""
    for name in sections:
        start = time.monotonic()
        deadline = min(end, start + limits[name] * scale) if name in limits else end
        print(f'\n=== {name} (limit {deadline - start:.0f} s) ===', flush=True)
        ctx.report['sections'][name] = {'status': 'running'}
        ctx.write()
        try:
            result = SECTION_FNS[name](ctx, deadline)
        except Exception as e:
            result = {'status': f'error: {type(e).__name__}: {e}', 'traceback': traceback.format_exc()[-3000:]}
        result['limit_s'] = round(deadline - start, 1)
        result['wall_s'] = round(time.monotonic() - start, 2)
        ctx.report['sections'][name] = result
        ctx.write()


if __name__ == '__main__':
    main()
