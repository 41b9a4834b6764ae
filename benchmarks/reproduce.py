#!/usr/bin/env python
"""Reproduce the TGR-MoE paper's findings at small scale on Fashion-MNIST (issue 7).

One command trains, for every seed and with identical budgets, through ``train_tgr.py``'s
``timm_tgr.train.main`` (in-process, no training loop of its own):

- the dense DeiT-III-style teacher (``configs/fmnist_<recipe>_teacher.yaml``);
- at E = ``--main-experts`` (default 8, the paper's ablation setting): V-MoE, TGR (full schedule),
  TGR (distillation in the first half), TGR (adaptive switch), distillation only, StableMoE-style
  frozen router, and the teacher-route upper bound (whose plain ``eval_top1`` is the student-route
  inference of the same model);
- the expert sweep: V-MoE vs TGR (full schedule, as the paper's sweep) for E in ``--experts``.

Then it writes ``results.md`` (mean ± std over seeds), ``results.csv`` / ``results.json`` (every
per-epoch metric of every run), ``consistency.png`` and ``accuracy_vs_experts.png``, exports the best
TGR student with ``timm_tgr.export`` and checks that ``timm.create_model('local-dir:...')`` reproduces
its training-time evaluation without any teacher.

    # the full reproduction (meant for a GPU: 3 seeds x 11 student runs + teachers, 100 epochs each)
    python benchmarks/reproduce.py --data-dir data --output output/reproduce
    # continue an interrupted run: the same command (completed runs are skipped, partial ones resumed)
    # rebuild tables and plots from the runs on disk
    python benchmarks/reproduce.py --output output/reproduce --report-only
    # CI smoke test (tiny model, synthetic Fashion-MNIST-format data, CPU, well under a minute)
    python benchmarks/reproduce.py --quick --output /tmp/repro --variants vmoe tgr --experts 4 --main-experts 4

Run folders: ``<output>/runs/<variant>-E<E>-s<seed>`` and ``<output>/runs/teacher-s<seed>``, each a
normal ``train_tgr.py`` output folder plus ``reproduce_run.json`` (the exact flags it was trained with;
a later invocation that would train the same run with other flags stops with an error instead of
mixing budgets).
"""
import argparse
import csv
import datetime
import json
import logging
import math
import os
import platform
import shlex
import shutil
import struct
import subprocess
import sys
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _env import cpu_model_name  # noqa: E402

_logger = logging.getLogger('reproduce')

SCHEMA = 'timm_tgr.reproduce/1'
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# StableMoE freeze point (fraction of the updates). Supplement C.3 says only that the router is "copied"
# and then frozen without distillation; it gives no switch point. We freeze at half of training, the
# boundary at which the paper's best TGR schedule (distillation in the first half) hands the router
# over to the task loss alone, so the two differ only in what the router does in the second half
# (frozen vs. still learning). Override with --stablemoe-freeze-at.
STABLEMOE_FREEZE_AT = 0.5

# variant -> label, model, whether a teacher guides it, train_tgr.py flags
VARIANTS = {
    'vmoe': dict(label='V-MoE', model='vmoe_deit_tiny', teacher=False, argv=['--teacher', 'none']),
    'tgr': dict(label='TGR (full)', model='tgr_moe_deit_tiny', teacher=True, argv=['--distill-schedule', 'full']),
    'tgr_first': dict(label='TGR (first half)', model='tgr_moe_deit_tiny', teacher=True,
                      argv=['--distill-schedule', 'first', '--distill-fraction', '0.5']),
    'tgr_adaptive': dict(label='TGR (adaptive switch)', model='tgr_moe_deit_tiny', teacher=True,
                         argv=['--distill-schedule', 'adaptive']),
    'distill_only': dict(label='distillation only', model='tgr_moe_deit_tiny', teacher=True,
                         argv=['--tgr-mode', 'distill_only', '--distill-schedule', 'full']),
    'stablemoe': dict(label='StableMoE (frozen router)', model='vmoe_deit_tiny', teacher=False,
                      argv=['--teacher', 'none', '--freeze-router-at', None]),  # None: filled from the flag
    'teacher_route': dict(label='teacher route', model='tgr_moe_deit_tiny', teacher=True,
                          argv=['--tgr-mode', 'teacher_route', '--distill-schedule', 'full']),
}
SWEEP_VARIANTS = ('vmoe', 'tgr')
# TGR students that route with their own router at inference (candidates for the export check)
EXPORT_CANDIDATES = ('tgr', 'tgr_first', 'tgr_adaptive', 'distill_only')

# The paper's numbers (ImageNet-1K, DeiT-Tiny, K=1; Table 5 / ablations at E=8, supplement C.3).
PAPER = {
    'dataset': 'ImageNet-1K, DeiT-Tiny, K=1 (TGR-MoE, CVPR 2026, arXiv 2604.21330)',
    'top1_e8': {'vmoe': 77.39, 'tgr': 77.81, 'tgr_first': 78.13, 'distill_only': 77.83, 'stablemoe': 77.19,
                'teacher_route': 80.19, 'student_route': 74.84},
    'sweep': {'experts': [4, 8, 16, 32, 64, 128],
              'vmoe': [76.18, 77.39, 77.85, 78.41, 78.74, 79.38],
              'tgr': [76.59, 77.81, 78.78, 79.35, 79.95, 80.36]},
    'routing': {'adjacent_consistency_tgr': '~0.8', 'adjacent_consistency_vmoe': '0.5-0.6',
                'to_final_tgr_first_sixth': '>0.70 within 50 of 300 epochs'},
    'entropy_table_s2': {'vmoe_tiny': [0.9098, 0.7776, 0.9489], 'tgr_tiny': [0.9701, 0.9627, 0.9420]},
}

# tiny dims for --quick (CI): every model 28x28, patch 7 (16 tokens), width 32
QUICK_MODEL = {'embed_dim': 32, 'num_heads': 2, 'patch_size': 7}
QUICK_TRAIN = ['-b', '16', '--warmup-epochs', '0', '--probe-samples', '16', '--no-plot', '--log-interval', '1000']
# flags whose value does not change what a run computes (paths, device, threads): ignored when a later
# invocation checks that an existing run was trained with the same flags
_NEUTRAL_FLAGS = {'--data-dir': 1, '--output': 1, '--teacher-checkpoint': 1, '--device': 1, '--threads': 1,
                  '-j': 1, '--workers': 1, '--no-progress': 0}


# --------------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog='python benchmarks/reproduce.py', description=__doc__.split('\n\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data-dir', default=None,
                   help='Fashion-MNIST root (prepared from Debian\'s dataset-fashion-mnist if needed; default: data, '
                        'or with --quick a synthetic Fashion-MNIST-format set written under --output)')
    p.add_argument('--output', default='output/reproduce', help='runs, tables and plots go here')
    p.add_argument('--recipe', default='full', choices=('quick', 'full'),
                   help='base configs configs/fmnist_<recipe>_{teacher,tgr}.yaml (default: full, 100 epochs, GPU)')
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2], help='seeds (default: 0 1 2)')
    p.add_argument('--variants', nargs='+', default=list(VARIANTS), choices=list(VARIANTS),
                   help='main comparison variants at --main-experts (default: all)')
    p.add_argument('--main-experts', type=int, default=8, help='E of the main comparison (paper ablation: 8)')
    p.add_argument('--experts', type=int, nargs='*', default=[4, 8, 16, 32],
                   help='expert sweep, V-MoE vs TGR (default: 4 8 16 32; give no value to skip the sweep)')
    p.add_argument('--epochs', type=int, default=None, help="student epochs (default: the recipe's)")
    p.add_argument('--teacher-epochs', type=int, default=None, help="teacher epochs (default: the recipe's)")
    p.add_argument('--teacher-per-seed', action='store_true',
                   help='train one teacher per seed (default: one teacher, trained with the first seed, guides '
                        'every student, as the paper uses one fixed pretrained teacher)')
    p.add_argument('--stablemoe-freeze-at', type=float, default=STABLEMOE_FREEZE_AT,
                   help='StableMoE baseline: freeze the routers after this fraction of the updates (default 0.5)')
    p.add_argument('--device', default=None, help='cuda / cpu (default: train_tgr.py\'s: cuda if available)')
    p.add_argument('--threads', type=int, default=None, help='torch CPU threads (default: torch\'s; --quick: 1)')
    p.add_argument('--workers', type=int, default=None, help="data loader workers (default: the recipe's; --quick: 0)")
    p.add_argument('--quick', action='store_true',
                   help='CI mode on CPU: quick recipe with tiny model dims (width 32, patch 7), 2 student / 1 teacher '
                        'epochs, batch 16, and without --data-dir a synthetic Fashion-MNIST-format set (64 train / '
                        '32 test images): checks the pipeline, the numbers mean nothing')
    p.add_argument('--report-only', action='store_true',
                   help='train nothing: rebuild results.md/csv/json and the plots from the runs in --output')
    p.add_argument('--no-export', action='store_true', help='skip exporting and re-evaluating the best TGR student')
    p.add_argument('--extra', nargs=argparse.REMAINDER, default=[],
                   help='further train_tgr.py flags for every run (everything after --extra)')
    return p


# --------------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------------
def _config_path(name: str) -> str:
    from timm_tgr.quickstart import config_path
    return config_path(name)


def _read_yaml(path: str) -> dict:
    with open(path) as f:
        return yaml.safe_load(f) or {}


def _kv(d: dict) -> List[str]:
    return [f'{k}={v}' for k, v in d.items()]


def _read_json(path: str):
    with open(path) as f:
        return json.load(f)


def _write_json(path: str, data) -> None:
    tmp = path + '.part'
    with open(tmp, 'w') as f:
        json.dump(data, f, indent=1, allow_nan=False)
    os.replace(tmp, path)


def _read_metrics(path: str) -> List[dict]:
    if not os.path.isfile(path):
        return []
    from timm_tgr.train import read_metrics
    return read_metrics(path)


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _mean_std(values: Sequence[Optional[float]]) -> dict:
    vals = [float(v) for v in values if _finite(v)]
    if not vals:
        return {'mean': None, 'std': None, 'n': 0, 'values': []}
    std = float(np.std(vals, ddof=1)) if len(vals) > 1 else None
    return {'mean': float(np.mean(vals)), 'std': std, 'n': len(vals), 'values': vals}


def _fmt(stat: Optional[dict], digits: int = 2) -> str:
    if not stat or stat.get('mean') is None:
        return 'n/a'
    s = f"{stat['mean']:.{digits}f}"
    if stat.get('std') is not None:
        s += f" ± {stat['std']:.{digits}f}"
    return s


def _strip_neutral(argv: Sequence[str]) -> List[str]:
    out, skip = [], 0
    for a in argv:
        if skip:
            skip -= 1
            continue
        if a in _NEUTRAL_FLAGS:
            skip = _NEUTRAL_FLAGS[a]
            continue
        out.append(a)
    return out


def _frac_epoch(epochs: int, fraction: float) -> int:
    """0-based index of the epoch that ends ``fraction`` of training (at least 0)."""
    return max(0, math.ceil(round(fraction * epochs, 9)) - 1)


def _git_revision() -> Optional[str]:
    try:
        rev = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=ROOT, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (rev + ('+uncommitted changes' if dirty else '')) if rev else None
    except Exception:
        return None


def _device_name(device: str) -> str:
    if device.startswith('cuda') and torch.cuda.is_available():
        return f'{torch.cuda.get_device_name(torch.device(device))} (CUDA {torch.version.cuda})'
    return f'CPU: {cpu_model_name()}, {os.cpu_count()} logical cores, torch threads {torch.get_num_threads()}'


def _environment(argv: Sequence[str], device: str) -> dict:
    import timm
    import timm_tgr
    return {
        'date': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
        'command': 'python benchmarks/reproduce.py ' + shlex.join(list(argv)),
        'device': device, 'device_name': _device_name(device),
        'torch': torch.__version__, 'timm': timm.__version__,
        'timm_tgr': getattr(timm_tgr, '__version__', None) or _timm_tgr_version(),
        'python': platform.python_version(), 'platform': platform.platform(), 'git': _git_revision(),
    }


def _timm_tgr_version() -> str:
    from timm_tgr.version import __version__
    return __version__


# --------------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------------
def write_synthetic_fashion_mnist(root: str, n_train: int = 64, n_test: int = 32, seed: int = 0) -> str:
    """A tiny Fashion-MNIST-format set (idx files in ``<root>/FashionMNIST/raw``) whose classes differ in
    brightness, for the CI smoke run. ``timm``'s ``torch/fashion_mnist`` reads it like the real one."""
    from timm_tgr.data import FASHION_MNIST_FILES
    raw = os.path.join(root, 'FashionMNIST', 'raw')
    if all(os.path.isfile(os.path.join(raw, f)) for f in FASHION_MNIST_FILES):
        return root
    os.makedirs(raw, exist_ok=True)
    rng = np.random.default_rng(seed)

    def write(name, array):
        header = struct.pack('>HBB', 0, 0x08, array.ndim) + b''.join(struct.pack('>I', d) for d in array.shape)
        with open(os.path.join(raw, name), 'wb') as f:
            f.write(header + array.astype(np.uint8).tobytes())

    for split, n in (('train', n_train), ('t10k', n_test)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 50, (n, 28, 28)) + labels[:, None, None] * 20
        write(f'{split}-images-idx3-ubyte', images)
        write(f'{split}-labels-idx1-ubyte', labels)
    return root


# --------------------------------------------------------------------------------------------------
# the plan: which runs, with which train_tgr.py flags
# --------------------------------------------------------------------------------------------------
class Plan:
    def __init__(self, args):
        self.args = args
        recipe = 'quick' if args.quick else args.recipe
        self.recipe = recipe
        self.teacher_cfg = _config_path(f'fmnist_{recipe}_teacher.yaml')
        self.student_cfg = _config_path(f'fmnist_{recipe}_tgr.yaml')
        t, s = _read_yaml(self.teacher_cfg), _read_yaml(self.student_cfg)
        self.teacher_model_kwargs = dict(t.get('model_kwargs', {}))
        self.student_model_kwargs = dict(s.get('model_kwargs', {}))
        self.teacher_kwargs = dict(s.get('teacher_kwargs', {}))
        self.teacher_name = s.get('teacher', 'deit3_small_patch16_224')
        if args.quick:
            self.teacher_model_kwargs.update(QUICK_MODEL)
            self.student_model_kwargs.update(QUICK_MODEL)
            self.teacher_kwargs.update(QUICK_MODEL)
        self.epochs = args.epochs or (2 if args.quick else int(s['epochs']))
        self.teacher_epochs = args.teacher_epochs or (1 if args.quick else int(t['epochs']))
        self.threads = args.threads if args.threads is not None else (1 if args.quick else None)
        self.workers = args.workers if args.workers is not None else (0 if args.quick else None)
        self.runs_dir = os.path.join(args.output, 'runs')

    def common(self) -> List[str]:
        a = self.args
        argv = ['--data-dir', a.data_dir, '--output', self.runs_dir, '--no-progress']
        if a.device:
            argv += ['--device', a.device]
        if self.threads is not None:
            argv += ['--threads', str(self.threads)]
        if self.workers is not None:
            argv += ['-j', str(self.workers)]
        if a.quick:
            argv += QUICK_TRAIN
        return argv

    def teacher_seeds(self) -> List[int]:
        return list(self.args.seeds) if self.args.teacher_per_seed else [self.args.seeds[0]]

    def teacher_for(self, seed: int) -> int:
        return seed if self.args.teacher_per_seed else self.args.seeds[0]

    def teacher_run(self, seed: int) -> dict:
        name = f'teacher-s{seed}'
        argv = ['-c', self.teacher_cfg, '--experiment', name, '--seed', str(seed),
                '--model-kwargs', *_kv(self.teacher_model_kwargs), '--epochs', str(self.teacher_epochs)]
        return dict(name=name, kind='teacher', variant='teacher', label='dense teacher', experts=None, seed=seed,
                    epochs=self.teacher_epochs, argv=argv + self.common() + list(self.args.extra))

    def student_runs(self) -> List[dict]:
        a = self.args
        wanted = [(v, a.main_experts) for v in a.variants] + [(v, e) for e in a.experts for v in SWEEP_VARIANTS]
        seen, runs = set(), []
        for seed in a.seeds:
            for variant, experts in wanted:
                if (variant, experts, seed) in seen:
                    continue
                seen.add((variant, experts, seed))
                runs.append(self.student_run(variant, experts, seed))
        return runs

    def student_run(self, variant: str, experts: int, seed: int) -> dict:
        spec = VARIANTS[variant]
        name = f'{variant}-E{experts}-s{seed}'
        kwargs = dict(self.student_model_kwargs, num_experts=experts)
        argv = ['-c', self.student_cfg, '--experiment', name, '--seed', str(seed), '--model', spec['model'],
                '--model-kwargs', *_kv(kwargs), '--epochs', str(self.epochs)]
        if spec['teacher']:
            teacher = self.teacher_run(self.teacher_for(seed))
            argv += ['--teacher', self.teacher_name, '--teacher-kwargs', *_kv(self.teacher_kwargs),
                     '--teacher-checkpoint', os.path.join(self.runs_dir, teacher['name'], 'model_best.pth.tar')]
        argv += [str(self.args.stablemoe_freeze_at) if x is None else x for x in spec['argv']]
        return dict(name=name, kind='student', variant=variant, label=spec['label'], experts=experts, seed=seed,
                    epochs=self.epochs, teacher=self.teacher_run(self.teacher_for(seed))['name']
                    if spec['teacher'] else None, argv=argv + self.common() + list(self.args.extra))


# --------------------------------------------------------------------------------------------------
# running (skip completed runs, resume partial ones)
# --------------------------------------------------------------------------------------------------
def _run_status(run: dict, runs_dir: str) -> dict:
    d = os.path.join(runs_dir, run['name'])
    rows = _read_metrics(os.path.join(d, 'metrics.jsonl'))
    epochs = {r['epoch'] for r in rows}
    contiguous = 0
    while contiguous in epochs:
        contiguous += 1
    complete = contiguous >= run['epochs'] and os.path.isfile(os.path.join(d, 'model_best.pth.tar'))
    if run['kind'] == 'student':
        complete = complete and os.path.isfile(os.path.join(d, 'routing_consistency.json'))
    return {'dir': d, 'rows': rows, 'contiguous': contiguous, 'complete': complete}


def _checkpoint_epoch(path: str) -> Optional[int]:
    from timm_tgr.export import load_checkpoint_file
    try:
        return int(load_checkpoint_file(path).get('epoch'))
    except Exception:
        return None


def _resume_checkpoint(d: str, contiguous: int) -> Optional[str]:
    """A checkpoint of epoch ``contiguous - 1`` (the last epoch whose metrics row exists), if any."""
    if contiguous == 0:
        return None
    for name in ('last.pth.tar', f'checkpoint-{contiguous - 1}.pth.tar'):
        path = os.path.join(d, name)
        if os.path.isfile(path) and _checkpoint_epoch(path) == contiguous - 1:
            return path
    return None


def check_record(run: dict, runs_dir: str) -> None:
    """Stop if ``run`` exists on disk with other flags (a different budget must not be mixed in)."""
    d = os.path.join(runs_dir, run['name'])
    record_path = os.path.join(d, 'reproduce_run.json')
    if os.path.isfile(record_path):
        old = _read_json(record_path)
        if _strip_neutral(old['argv']) != _strip_neutral(run['argv']) or old.get('teacher') != run.get('teacher'):
            raise SystemExit(
                f"run {run['name']} in {d} was trained with other flags (or teacher {old.get('teacher')}):\n  "
                f"{shlex.join(_strip_neutral(old['argv']))}"
                f"\nnow:\n  {shlex.join(_strip_neutral(run['argv']))}\nUse another --output, or delete {d} to retrain "
                f"it (every run of one output folder must have the same budget).")


def ensure_run(run: dict, runs_dir: str) -> str:
    """Train ``run`` unless complete; returns 'skipped', 'resumed' or 'trained'."""
    from timm_tgr.train import main as train_main
    check_record(run, runs_dir)
    status = _run_status(run, runs_dir)
    d = status['dir']
    record_path = os.path.join(d, 'reproduce_run.json')
    if status['complete']:
        _logger.info(f"{run['name']}: complete ({status['contiguous']} epochs), skipped")
        return 'skipped'
    os.makedirs(d, exist_ok=True)
    _write_json(record_path, {k: run[k] for k in ('name', 'kind', 'variant', 'label', 'experts', 'seed', 'epochs',
                                                   'argv')} | {'teacher': run.get('teacher')})
    resume = _resume_checkpoint(d, status['contiguous'])
    argv = list(run['argv']) + (['--resume', resume] if resume else [])
    how = 'resuming from ' + resume if resume else 'training'
    _logger.info(f"{run['name']}: {how}: train_tgr.py {shlex.join(argv)}")
    train_main(argv)
    if not _run_status(run, runs_dir)['complete']:
        raise RuntimeError(f"run {run['name']} did not complete: see {d}")
    return 'resumed' if resume else 'trained'


# --------------------------------------------------------------------------------------------------
# collecting results
# --------------------------------------------------------------------------------------------------
def _block_label(b: str) -> str:
    return f'L{int(b) + 1}'  # timm's 0-based block index -> the paper's 1-based layer name


def summarize_run(record: dict, runs_dir: str) -> dict:
    d = os.path.join(runs_dir, record['name'])
    rows = _read_metrics(os.path.join(d, 'metrics.jsonl'))
    rows = sorted({r['epoch']: r for r in rows}.values(), key=lambda r: r['epoch'])
    epochs = record['epochs']
    s = {'name': record['name'], 'kind': record['kind'], 'variant': record['variant'], 'label': record['label'],
         'experts': record['experts'], 'seed': record['seed'], 'epochs': epochs, 'teacher': record.get('teacher'),
         'epochs_done': len(rows), 'complete': len(rows) >= epochs}
    if not rows:
        return {**s, 'rows': [], 'routing_consistency': None}
    last = rows[-1]
    top1 = [r['eval_top1'] for r in rows]
    s['top1_final'] = last['eval_top1']
    s['top1_best'] = max(top1)
    s['best_epoch'] = rows[int(np.argmax(top1))]['epoch']
    if any('eval_ema_top1' in r for r in rows):
        s['ema_top1_final'] = last.get('eval_ema_top1')
        s['ema_top1_best'] = max(r['eval_ema_top1'] for r in rows if 'eval_ema_top1' in r)
    if 'eval_top1_teacher_route' in last:
        s['teacher_route_top1_final'] = last['eval_top1_teacher_route']
        s['teacher_route_top1_best'] = max(r['eval_top1_teacher_route'] for r in rows)
    if 'train_distill_active' in last:
        active = [r.get('train_distill_active', 0.) for r in rows]
        s['distill_epochs'] = float(sum(active))
        off = [r['epoch'] for r in rows if r.get('train_distill_active', 0.) == 0.]
        s['distill_off_from_epoch'] = off[0] if off else None
    cons = None
    cpath = os.path.join(d, 'routing_consistency.json')
    if record['kind'] == 'student':
        adj = [r.get('consistency_prev') for r in rows]
        s['adjacent_last'] = last.get('consistency_prev')
        vals = [v for v in adj if _finite(v)]
        s['adjacent_mean'] = float(np.mean(vals)) if vals else None
        s['entropy'] = last.get('entropy')
        s['entropy_per_layer'] = {_block_label(b): v['entropy'] for b, v in sorted(
            last.get('routing', {}).items(), key=lambda kv: int(kv[0]))}
        s['dropped_fraction_per_layer'] = {_block_label(b): v['dropped_fraction'] for b, v in sorted(
            last.get('routing', {}).items(), key=lambda kv: int(kv[0]))}
        if os.path.isfile(cpath):
            cons = _read_json(cpath)
            to_final = dict(zip(cons['epochs'], cons['to_final_mean']))
            for key, frac in (('to_final_25pct', 0.25), ('to_final_sixth', 1 / 6)):
                e = _frac_epoch(epochs, frac)
                s[key] = to_final.get(e)
                s[key + '_epoch'] = e
    return {**s, 'rows': rows, 'routing_consistency': cons}


def discover_runs(runs_dir: str) -> List[dict]:
    records = []
    if not os.path.isdir(runs_dir):
        return records
    for name in sorted(os.listdir(runs_dir)):
        path = os.path.join(runs_dir, name, 'reproduce_run.json')
        if os.path.isfile(path):
            records.append(_read_json(path))
    return records


_STAT_KEYS = ('top1_final', 'top1_best', 'ema_top1_final', 'ema_top1_best', 'teacher_route_top1_final',
              'teacher_route_top1_best', 'adjacent_last', 'adjacent_mean', 'to_final_25pct', 'to_final_sixth',
              'entropy', 'distill_epochs')


def aggregate(summaries: List[dict]) -> List[dict]:
    groups: Dict[tuple, List[dict]] = {}
    for s in summaries:
        if s['complete']:
            groups.setdefault((s['variant'], s['experts']), []).append(s)
    order = ['teacher'] + list(VARIANTS)
    out = []
    for (variant, experts), runs in sorted(groups.items(), key=lambda kv: (kv[0][1] or 0, order.index(kv[0][0]))):
        g = {'variant': variant, 'label': runs[0]['label'], 'experts': experts,
             'seeds': sorted(r['seed'] for r in runs), 'epochs': runs[0]['epochs']}
        for k in _STAT_KEYS:
            if any(k in r for r in runs):
                g[k] = _mean_std([r.get(k) for r in runs])
        layers = sorted({layer for r in runs for layer in r.get('entropy_per_layer', {})}, key=lambda x: int(x[1:]))
        if layers:
            g['entropy_per_layer'] = {layer: _mean_std([r.get('entropy_per_layer', {}).get(layer) for r in runs])
                                      for layer in layers}
        for k in ('to_final_25pct_epoch', 'to_final_sixth_epoch'):
            if k in runs[0]:
                g[k] = runs[0][k]
        if 'distill_off_from_epoch' in runs[0]:
            g['distill_off_from_epoch'] = [r.get('distill_off_from_epoch') for r in runs]
        # per-epoch curves over seeds (for the plots)
        epochs = sorted({r['epoch'] for s_ in runs for r in s_['rows']})
        curves = {}
        for key in ('consistency_prev', 'eval_top1'):
            curves[key] = [_mean_std([next((r.get(key) for r in s_['rows'] if r['epoch'] == e), None) for s_ in runs])
                           for e in epochs]
        if all(s_.get('routing_consistency') for s_ in runs):
            curves['to_final_mean'] = [
                _mean_std([dict(zip(s_['routing_consistency']['epochs'], s_['routing_consistency']['to_final_mean']))
                           .get(e) for s_ in runs]) for e in epochs]
        g['curve_epochs'] = epochs
        g['curves'] = curves
        out.append(g)
    return out


def _find(groups: List[dict], variant: str, experts) -> Optional[dict]:
    return next((g for g in groups if g['variant'] == variant and g['experts'] == experts), None)


def _diff(a: Optional[dict], b: Optional[dict]) -> Optional[dict]:
    """a - b of two mean/std stats, with the standard error of the difference of means."""
    if not a or not b or a.get('mean') is None or b.get('mean') is None:
        return None
    se = None
    if a.get('std') is not None and b.get('std') is not None:
        se = math.sqrt(a['std'] ** 2 / a['n'] + b['std'] ** 2 / b['n'])
    return {'diff': a['mean'] - b['mean'], 'se': se}


def claims(groups: List[dict], main_e: int) -> List[dict]:
    """The paper's findings, each with this run's counterpart (difference of seed means, its standard error)."""
    g = {v: _find(groups, v, main_e) for v in VARIANTS}

    def st(variant, key='top1_final'):
        return (g.get(variant) or {}).get(key)

    out = []

    def add(claim, paper_value, ours, direction=None):
        item = {'claim': claim, 'paper': paper_value, 'ours': ours}
        if ours is not None and direction is not None:
            item['same_direction'] = (ours['diff'] > 0) == (direction > 0) if ours['diff'] != 0 else False
            item['beyond_2se'] = ours['se'] is not None and abs(ours['diff']) > 2 * ours['se']
        out.append(item)

    p = PAPER['top1_e8']
    add(f'TGR (full) - V-MoE, top-1 at E={main_e}', round(p['tgr'] - p['vmoe'], 2),
        _diff(st('tgr'), st('vmoe')), +1)
    add(f'TGR (first half) - TGR (full), top-1 at E={main_e}', round(p['tgr_first'] - p['tgr'], 2),
        _diff(st('tgr_first'), st('tgr')), +1)
    add(f'TGR (first half) - V-MoE, top-1 at E={main_e}', round(p['tgr_first'] - p['vmoe'], 2),
        _diff(st('tgr_first'), st('vmoe')), +1)
    add(f'distillation only - V-MoE, top-1 at E={main_e}', round(p['distill_only'] - p['vmoe'], 2),
        _diff(st('distill_only'), st('vmoe')), +1)
    add(f'teacher route - student route (same model), top-1 at E={main_e}',
        round(p['teacher_route'] - p['student_route'], 2),
        _diff(st('teacher_route', 'teacher_route_top1_final'), st('teacher_route')), +1)
    add(f'StableMoE - V-MoE, top-1 at E={main_e}', round(p['stablemoe'] - p['vmoe'], 2),
        _diff(st('stablemoe'), st('vmoe')), -1)
    add(f'TGR (full) - StableMoE, top-1 at E={main_e}', round(p['tgr'] - p['stablemoe'], 2),
        _diff(st('tgr'), st('stablemoe')), +1)
    add(f'TGR (full) - V-MoE, adjacent-epoch consistency (mean over epochs) at E={main_e}',
        'about 0.8 vs 0.5-0.6', _diff(st('tgr', 'adjacent_mean'), st('vmoe', 'adjacent_mean')), +1)
    add(f'TGR (full) - V-MoE, to-final consistency after 1/6 of training at E={main_e}',
        'TGR > 0.70 within the first sixth', _diff(st('tgr', 'to_final_sixth'), st('vmoe', 'to_final_sixth')), +1)
    sweep_e = sorted({x['experts'] for x in groups if x['variant'] in SWEEP_VARIANTS and x['experts'] is not None})
    gains = {e: _diff((_find(groups, 'tgr', e) or {}).get('top1_final'), (_find(groups, 'vmoe', e) or {}).get(
        'top1_final')) for e in sweep_e}
    gains = {e: v for e, v in gains.items() if v is not None}
    if len(gains) >= 2:
        es = sorted(gains)
        slope = float(np.polyfit(np.log2(es), [gains[e]['diff'] for e in es], 1)[0])
        pe = PAPER['sweep']
        pes = [e for e in es if e in pe['experts']]
        paper_slope = None
        if len(pes) >= 2:
            idx = [pe['experts'].index(e) for e in pes]
            paper_slope = round(float(np.polyfit(np.log2(pes), [pe['tgr'][i] - pe['vmoe'][i] for i in idx], 1)[0]), 3)
        out.append({'claim': f'TGR gain over V-MoE grows with E: slope of the gain vs log2 E over E={es} '
                             '(top-1 points per doubling)',
                    'paper': paper_slope,
                    'ours': {'diff': slope, 'se': None}, 'same_direction': slope > 0, 'beyond_2se': None,
                    'gains': {str(e): gains[e] for e in es}})
    return out


# --------------------------------------------------------------------------------------------------
# report: markdown, csv, json, plots
# --------------------------------------------------------------------------------------------------
def _flat_rows(summaries: List[dict]) -> List[dict]:
    out = []
    for s in summaries:
        cons = s.get('routing_consistency') or {}
        to_final = dict(zip(cons.get('epochs', []), cons.get('to_final', [])))
        to_final_mean = dict(zip(cons.get('epochs', []), cons.get('to_final_mean', [])))
        for r in s['rows']:
            flat = {'run': s['name'], 'variant': s['variant'], 'label': s['label'], 'experts': s['experts'],
                    'seed': s['seed']}
            for k, v in r.items():
                if k == 'routing':
                    for b, info in sorted(v.items(), key=lambda kv: int(kv[0])):
                        for m, mv in info.items():
                            flat[f'routing_{_block_label(b)}_{m}'] = (
                                ' '.join(f'{x:.6g}' for x in mv) if isinstance(mv, list) else mv)
                else:
                    flat[k] = v
            if r['epoch'] in to_final_mean:
                flat['to_final_mean'] = to_final_mean[r['epoch']]
                for b, v in sorted(to_final[r['epoch']].items(), key=lambda kv: int(kv[0])):
                    flat[f'routing_{_block_label(b)}_to_final'] = v
            out.append(flat)
    return out


def write_csv(path: str, summaries: List[dict]) -> None:
    rows = _flat_rows(summaries)
    head = ['run', 'variant', 'label', 'experts', 'seed', 'epoch']
    keys = head + sorted({k for r in rows for k in r} - set(head))
    with open(path, 'w', newline='') as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: ('' if r.get(k) is None else r.get(k)) for k in keys})


def _md_table(header: List[str], rows: List[List[str]]) -> List[str]:
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '|'.join('---' for _ in header) + '|']
    lines += ['| ' + ' | '.join(r) + ' |' for r in rows]
    return lines


def render_markdown(report: dict) -> str:
    groups, settings = report['aggregates'], report['settings']
    main_e = settings['main_experts']
    L = ['# TGR-MoE findings on Fashion-MNIST: results', '']
    if settings.get('quick'):
        L += ['**CI smoke run (`--quick`): tiny model, 1-2 epochs, '
              + ('synthetic Fashion-MNIST-format data' if settings.get('synthetic_data') else 'the given data')
              + '. It checks the pipeline; the numbers say nothing about the method.**', '']
    L += [f"Recipe `{settings['recipe']}` (configs/fmnist_{settings['recipe']}_*.yaml"
          + (', tiny dims' if settings.get('quick') else '') + f"); student epochs {settings['epochs']}, teacher "
          f"epochs {settings['teacher_epochs']}; seeds {settings.get('seeds_in_runs', settings['seeds'])}; teacher: "
          + ('one per seed' if settings['teacher_per_seed'] else f"one, trained with seed {settings['seeds'][0]}, "
             'guides every student') + f"; StableMoE routers frozen after {settings['stablemoe_freeze_at']:g} of the "
          'updates. Mean ± sample std over seeds (a single value where one seed ran). Top-1 in %, on the test '
          'split.', '']

    if report.get('incomplete_runs'):
        L += ['Incomplete runs, left out of every table (run the training command again to finish them): '
              + ', '.join(f'`{n}`' for n in report['incomplete_runs']) + '.', '']
    L += [f'## Main comparison (E = {main_e})', '']
    header = ['variant', 'paper (IN-1K)', 'seeds', 'top-1 final', 'top-1 best', 'adj. cons. last',
              'adj. cons. mean', 'to-final @25%', 'to-final @1/6', 'entropy L8 / L10 / L12', 'distill epochs']
    rows = []
    paper = PAPER['top1_e8']
    teacher_groups = [g for g in groups if g['variant'] == 'teacher']
    for g in teacher_groups:
        rows.append([g['label'], '(DeiT-III, pretrained)', str(len(g['seeds'])), _fmt(g.get('top1_final')),
                     _fmt(g.get('top1_best'))] + ['–'] * 6)
    for variant in VARIANTS:
        g = _find(groups, variant, main_e)
        if g is None:
            continue
        ent = g.get('entropy_per_layer', {})
        common = [_fmt(g.get('adjacent_last'), 3), _fmt(g.get('adjacent_mean'), 3),
                  _fmt(g.get('to_final_25pct'), 3) + (f" (ep {g['to_final_25pct_epoch']})" if 'to_final_25pct_epoch'
                                                     in g else ''),
                  _fmt(g.get('to_final_sixth'), 3) + (f" (ep {g['to_final_sixth_epoch']})" if 'to_final_sixth_epoch'
                                                     in g else ''),
                  ' / '.join(_fmt(v, 3) for v in ent.values()) or 'n/a',
                  _fmt(g.get('distill_epochs'), 2) if 'distill_epochs' in g else '–']
        if variant == 'teacher_route':
            rows.append([g['label'] + ' (upper bound)', f"{paper['teacher_route']:.2f}", str(len(g['seeds'])),
                         _fmt(g.get('teacher_route_top1_final')), _fmt(g.get('teacher_route_top1_best'))]
                        + ['same run'] * 5 + [common[-1]])
            rows.append(['student route (same run)', f"{paper['student_route']:.2f}", str(len(g['seeds'])),
                         _fmt(g.get('top1_final')), _fmt(g.get('top1_best'))] + common)
        else:
            pv = paper.get(variant)
            rows.append([g['label'], f'{pv:.2f}' if pv is not None else '–', str(len(g['seeds'])),
                         _fmt(g.get('top1_final')), _fmt(g.get('top1_best'))] + common)
    L += _md_table(header, rows) + ['']
    L += ['Columns: *top-1 final* = last epoch, *best* = best epoch (per run, then averaged); *adj. cons.* = '
          'fraction of probe tokens whose top-1 expert equals the previous epoch\'s, mean over the MoE layers, at the '
          'last epoch and averaged over epochs; *to-final @x* = agreement with the run\'s final routing at the epoch '
          'ending x of training (0-based epoch index in brackets); *entropy* = normalized expert-utilization entropy '
          'per MoE layer at the last epoch (Table S2 metric); *distill epochs* = epochs with the distillation term on. '
          'Routing metrics come from the validation pass in eval mode (student router; for the teacher-route run '
          'too). The adaptive switch is this package\'s rule, not in the paper. Paper column: ImageNet-1K, '
          'DeiT-Tiny, E=8 (Table 5, supplement C.3).', '']
    ema = [g for g in groups if g.get('ema_top1_final')]
    if ema:
        L += ['EMA weights (the checkpoint metric of EMA runs):', '']
        L += _md_table(['variant', 'E', 'EMA top-1 final', 'EMA top-1 best'],
                       [[g['label'], str(g['experts'] or '–'), _fmt(g.get('ema_top1_final')),
                         _fmt(g.get('ema_top1_best'))] for g in ema]) + ['']

    sweep = sorted({g['experts'] for g in groups if g['variant'] in SWEEP_VARIANTS})
    if settings['experts'] or len(sweep) > 1:
        L += ['## Expert sweep: V-MoE vs TGR (full schedule)', '']
        rows = []
        pe = PAPER['sweep']
        for e in sweep:
            v, t = _find(groups, 'vmoe', e), _find(groups, 'tgr', e)
            d = _diff((t or {}).get('top1_final'), (v or {}).get('top1_final'))
            i = pe['experts'].index(e) if e in pe['experts'] else None
            rows.append([str(e), _fmt((v or {}).get('top1_final')), _fmt((t or {}).get('top1_final')),
                         'n/a' if d is None else f"{d['diff']:+.2f}" + (f" ± {d['se']:.2f}" if d['se'] else ''),
                         _fmt((v or {}).get('adjacent_mean'), 3), _fmt((t or {}).get('adjacent_mean'), 3),
                         f"{pe['vmoe'][i]:.2f}" if i is not None else '–',
                         f"{pe['tgr'][i]:.2f}" if i is not None else '–',
                         f"{pe['tgr'][i] - pe['vmoe'][i]:+.2f}" if i is not None else '–'])
        L += _md_table(['E', 'V-MoE top-1 final', 'TGR top-1 final', 'gain (± SE)', 'V-MoE adj. cons.',
                        'TGR adj. cons.', 'paper V-MoE', 'paper TGR', 'paper gain'], rows) + ['']

    L += ['## The paper\'s findings next to this run', '']
    rows = []
    for c in report['claims']:
        o = c['ours']
        ours = 'not run' if o is None else f"{o['diff']:+.3f}" + (f" ± {o['se']:.3f} (SE)" if o.get('se') else '')
        same = {True: 'yes', False: 'no', None: '–'}[c.get('same_direction')] if o is not None else '–'
        beyond = {True: 'yes', False: 'no', None: '–'}[c.get('beyond_2se')] if o is not None else '–'
        paper_value = f"{c['paper']:+.2f}" if isinstance(c['paper'], float) else str(c['paper'])
        rows.append([c['claim'], paper_value, ours, same, beyond])
    L += _md_table(['finding', 'paper', 'this run (difference of seed means)', 'same direction', '> 2 SE'], rows)
    L += ['', '*same direction*: the sign agrees with the paper\'s; *> 2 SE*: the difference exceeds twice its '
              'standard error over seeds (needs >= 2 seeds; otherwise "no"/"–"). Consistency claims are compared as '
              'differences '
              'TGR - V-MoE.', '']

    ex = report.get('export')
    L += ['## Exported student (no teacher)', '']
    if not ex:
        L += ['Not exported (`--no-export`, or no TGR student run).', '']
    elif ex.get('error'):
        L += [f"Export check failed: {ex['error']}", '']
    else:
        L += [f"Best TGR student: run `{ex['run']}` (checkpoint epoch {ex['checkpoint_epoch']}, "
              f"{'EMA' if ex['ema'] else 'raw'} weights), exported with `python -m timm_tgr.export "
              f"{ex['checkpoint_rel']} --out {ex['export_dir_rel']}" + (' --ema' if ex['ema'] else '')
              + '`, reloaded with '
              f"`timm.create_model('local-dir:{ex['export_dir_rel']}', pretrained=True)` and evaluated without any "
              f"teacher: top-1 {ex['top1_exported']:.2f} vs {ex['top1_training_eval']:.2f} at training time "
              f"(|diff| {abs(ex['top1_exported'] - ex['top1_training_eval']):.3f}; "
              f"{'matches' if ex['matches'] else 'DOES NOT MATCH'} within 0.02).", '']

    L += ['## Environment', '', '```']
    for inv in report['environment']['invocations']:
        L += [f"date:    {inv['date']}", f"command: {inv['command']}",
              f"device:  {inv['device']} ({inv['device_name']})",
              f"versions: torch {inv['torch']}, timm {inv['timm']}, timm_tgr {inv['timm_tgr']}, python {inv['python']}"
              f"; git {inv['git']}", '']
    if L[-1] == '':
        L.pop()
    L += ['```', '', 'Files: results.csv / results.json (every per-epoch metric of every run), consistency.png, '
                     'accuracy_vs_experts.png, runs/<variant>-E<E>-s<seed>/ (train_tgr.py run folders).', '']
    return '\n'.join(L)


def plot_consistency(path: str, groups: List[dict], main_e: int) -> bool:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    styles = {'vmoe': ('tab:orange', '-'), 'tgr': ('tab:blue', '-'), 'tgr_first': ('tab:green', '--'),
              'tgr_adaptive': ('tab:olive', '--'), 'distill_only': ('tab:purple', ':'),
              'stablemoe': ('tab:red', '-.'), 'teacher_route': ('tab:gray', ':')}
    drew = False
    for variant in VARIANTS:
        g = _find(groups, variant, main_e)
        if g is None:
            continue
        color, ls = styles[variant]
        for ax, key in zip(axes, ('consistency_prev', 'to_final_mean')):
            curve = g['curves'].get(key)
            if not curve:
                continue
            pts = [(e, c) for e, c in zip(g['curve_epochs'], curve) if c['mean'] is not None]
            if not pts:
                continue
            x = np.array([p[0] for p in pts], dtype=float)
            m = np.array([p[1]['mean'] for p in pts])
            sd = np.array([p[1]['std'] or 0. for p in pts])
            lw = 2.2 if variant in ('vmoe', 'tgr') else 1.2
            label = g['label'] + (' run (student router)' if variant == 'teacher_route' else '')
            ax.plot(x, m, ls, color=color, lw=lw, marker='o', ms=3, label=f"{label} (n={len(g['seeds'])})")
            ax.fill_between(x, m - sd, m + sd, color=color, alpha=0.15 if variant in ('vmoe', 'tgr') else 0.07)
            drew = True
    # the paper's reported levels (ImageNet-1K, 300 epochs): TGR about 0.8, V-MoE 0.5-0.6
    axes[0].axhline(0.8, color='tab:blue', lw=0.8, ls=(0, (1, 3)), label='paper: TGR ~0.8')
    axes[0].axhspan(0.5, 0.6, color='tab:orange', alpha=0.06, label='paper: V-MoE 0.5-0.6')
    axes[1].axhline(0.7, color='tab:blue', lw=0.8, ls=(0, (1, 3)), label='paper: TGR >0.7 by 1/6 of training')
    axes[0].set_title(f'adjacent-epoch routing consistency (E={main_e})')
    axes[1].set_title('agreement with final routing')
    from matplotlib.ticker import MaxNLocator
    all_epochs = [e for g in groups if g['variant'] in VARIANTS and g['experts'] == main_e for e in g['curve_epochs']]
    for ax in axes:
        if all_epochs:
            ax.set_xlim(min(all_epochs) - 0.3, max(all_epochs) + 0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel('epoch')
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel('fraction of probe tokens, mean over MoE layers')
    for ax in axes:
        ax.legend(fontsize=7, loc='lower right')
    fig.suptitle('mean ± std over seeds', fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return drew


def plot_accuracy_vs_experts(path: str, groups: List[dict]) -> bool:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    drew = False
    for variant, color in (('vmoe', 'tab:orange'), ('tgr', 'tab:blue')):
        gs = sorted([g for g in groups if g['variant'] == variant and g['experts']], key=lambda g: g['experts'])
        gs = [g for g in gs if g.get('top1_final', {}).get('mean') is not None]
        if gs:
            x = [g['experts'] for g in gs]
            m = [g['top1_final']['mean'] for g in gs]
            sd = [g['top1_final']['std'] or 0. for g in gs]
            axes[0].errorbar(x, m, yerr=sd, color=color, marker='o', capsize=3,
                             label=f"{VARIANTS[variant]['label']} (final epoch, mean ± std)")
            drew = True
        pe = PAPER['sweep']
        axes[1].plot(pe['experts'], pe[variant], color=color, marker='o', label=VARIANTS[variant]['label'])
    axes[0].set_title('this run: Fashion-MNIST test top-1')
    axes[1].set_title("the paper's: ImageNet-1K top-1, DeiT-Tiny")
    for ax in axes:
        ax.set_xscale('log', base=2)
        ax.minorticks_off()
        ax.set_xlabel('experts E')
        ax.set_ylabel('top-1 (%)')
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return drew


def build_report(output: str, report_command: Optional[dict] = None) -> dict:
    runs_dir = os.path.join(output, 'runs')
    records = discover_runs(runs_dir)
    if not records:
        raise SystemExit(f'no runs in {runs_dir}: train first (without --report-only)')
    settings_path = os.path.join(output, 'settings.json')
    if not os.path.isfile(settings_path):
        raise SystemExit(f'{settings_path} is missing: it is written by a training invocation of this script')
    settings = _read_json(settings_path)
    env_path = os.path.join(output, 'environment.json')
    environment = _read_json(env_path) if os.path.isfile(env_path) else {'invocations': []}
    summaries = [summarize_run(r, runs_dir) for r in records]
    settings['seeds_in_runs'] = sorted({s['seed'] for s in summaries if s['kind'] == 'student'})
    groups = aggregate(summaries)
    export_path = os.path.join(output, 'export_check.json')
    report = {
        'schema': SCHEMA, 'settings': settings, 'environment': environment, 'paper': PAPER,
        'aggregates': groups, 'claims': claims(groups, settings['main_experts']),
        'export': _read_json(export_path) if os.path.isfile(export_path) else None,
        'incomplete_runs': [s['name'] for s in summaries if not s['complete']],
        'runs': summaries,
    }
    if report_command:
        report['report'] = report_command
    md = render_markdown(report)
    with open(os.path.join(output, 'results.md'), 'w') as f:
        f.write(md)
    write_csv(os.path.join(output, 'results.csv'), summaries)
    _write_json(os.path.join(output, 'results.json'), report)
    try:
        plot_consistency(os.path.join(output, 'consistency.png'), groups, settings['main_experts'])
        plot_accuracy_vs_experts(os.path.join(output, 'accuracy_vs_experts.png'), groups)
    except ImportError:
        _logger.warning('matplotlib is not installed: no plots (pip install "timm-tgr[plot]")')
    return report


# --------------------------------------------------------------------------------------------------
# export check
# --------------------------------------------------------------------------------------------------
def export_best_student(output: str, data_dir: str, device: str) -> Optional[dict]:
    """Export the best TGR student (student-routing variants) and evaluate it through local-dir: alone."""
    from timm_tgr.export import load_checkpoint_file, main as export_main
    from timm_tgr.quickstart import evaluate_exported
    runs_dir = os.path.join(output, 'runs')
    best = None
    for rec in discover_runs(runs_dir):
        if rec['variant'] not in EXPORT_CANDIDATES:
            continue
        s = summarize_run(rec, runs_dir)
        if not s['complete']:
            continue
        metric = s.get('ema_top1_best', s['top1_best'])
        if best is None or metric > best[0]:
            best = (metric, s)
    if best is None:
        return None
    s = best[1]
    run_dir = os.path.join(runs_dir, s['name'])
    ckpt_path = os.path.join(run_dir, 'model_best.pth.tar')
    ckpt = load_checkpoint_file(ckpt_path)
    epoch = int(ckpt['epoch'])
    ema = ckpt.get('state_dict_ema') is not None
    del ckpt
    row = next(r for r in s['rows'] if r['epoch'] == epoch)
    expected = row['eval_ema_top1'] if ema else row['eval_top1']
    export_dir = os.path.join(output, 'export')
    if os.path.isdir(export_dir):
        shutil.rmtree(export_dir)
    export_main([ckpt_path, '--out', export_dir] + (['--ema'] if ema else []))
    top1 = evaluate_exported(export_dir, data_dir, device)
    result = {'run': s['name'], 'variant': s['variant'], 'checkpoint': ckpt_path,
              'checkpoint_rel': os.path.relpath(ckpt_path, output), 'export_dir': export_dir,
              'export_dir_rel': os.path.relpath(export_dir, output), 'checkpoint_epoch': epoch, 'ema': ema,
              'top1_exported': top1, 'top1_training_eval': expected, 'matches': abs(top1 - expected) < 0.02}
    _write_json(os.path.join(output, 'export_check.json'), result)
    return result


# --------------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------------
def main(argv: Optional[Sequence[str]] = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    from timm.utils import setup_default_logging
    if not logging.root.handlers:
        setup_default_logging()
    import timm_tgr  # noqa: F401  (registers the models)
    os.makedirs(args.output, exist_ok=True)

    if args.report_only:
        report = build_report(args.output, {'command': 'python benchmarks/reproduce.py ' + shlex.join(argv),
                                            'date': datetime.datetime.now(datetime.timezone.utc).strftime(
                                                '%Y-%m-%d %H:%M UTC')})
        _logger.info(f"report rebuilt from {len(report['runs'])} runs: {os.path.join(args.output, 'results.md')}")
        return report

    if not 0. <= args.stablemoe_freeze_at <= 1.:
        raise SystemExit(f'--stablemoe-freeze-at is a fraction of training in [0, 1], got {args.stablemoe_freeze_at}')
    synthetic = False
    if args.data_dir is None:
        if args.quick:
            args.data_dir = write_synthetic_fashion_mnist(os.path.join(args.output, 'synthetic-fashion-mnist'))
            synthetic = True
        else:
            args.data_dir = 'data'
    device = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    threads_before = torch.get_num_threads()
    plan = Plan(args)
    try:
        if plan.threads:
            torch.set_num_threads(plan.threads)
        students = plan.student_runs()
        teachers = [plan.teacher_run(s) for s in plan.teacher_seeds()]
        needed = {r['teacher'] for r in students if r['teacher']}
        teachers = [t for t in teachers if t['name'] in needed] or teachers[:1]  # the teacher row is always reported
        for run in teachers + students:  # every conflict before any training
            check_record(run, plan.runs_dir)
        env_path = os.path.join(args.output, 'environment.json')
        environment = _read_json(env_path) if os.path.isfile(env_path) else {'invocations': []}
        environment['invocations'].append(_environment(argv, device))
        _write_json(env_path, environment)
        settings = {'quick': args.quick, 'synthetic_data': synthetic, 'recipe': plan.recipe,
                    'teacher_config': os.path.basename(plan.teacher_cfg),
                    'student_config': os.path.basename(plan.student_cfg), 'seeds': list(args.seeds),
                    'variants': list(args.variants), 'main_experts': args.main_experts, 'experts': list(args.experts),
                    'epochs': plan.epochs, 'teacher_epochs': plan.teacher_epochs,
                    'teacher_per_seed': args.teacher_per_seed, 'stablemoe_freeze_at': args.stablemoe_freeze_at,
                    'student_model_kwargs': plan.student_model_kwargs, 'teacher_kwargs': plan.teacher_kwargs,
                    'extra': list(args.extra)}
        _write_json(os.path.join(args.output, 'settings.json'), settings)

        status = {}
        for run in teachers + students:
            status[run['name']] = ensure_run(run, plan.runs_dir)
        export = None
        if not args.no_export:
            export = export_best_student(args.output, args.data_dir, device)
        report = build_report(args.output)
        report['run_status'] = status
        if export is not None and not export['matches']:
            _logger.error(f'exported student top-1 {export["top1_exported"]:.3f} != training-time '
                          f'{export["top1_training_eval"]:.3f}')
        _logger.info(f"done: {os.path.join(args.output, 'results.md')}")
        return report
    finally:
        torch.set_num_threads(threads_before)


if __name__ == '__main__':
    main()
