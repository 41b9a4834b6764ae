#!/usr/bin/env python
"""Reproduce the TGR-MoE paper's findings at small scale on Fashion-MNIST.

One command trains, for every seed and with identical budgets, through ``train_tgr.py`` (no training
loop of its own) the dense teacher and the student variants of a *tier* (study.py), then writes
``results.md`` (mean ± std over seeds, the paper's numbers beside them), ``results.csv`` /
``results.json`` (every per-epoch metric of every run), ``consistency.png`` and
``accuracy_vs_experts.png``, exports the best TGR student with ``timm_tgr.export`` and checks that
``timm.create_model('local-dir:...')`` reproduces its training-time evaluation without any teacher.

Tiers (each states its epochs, widths and why they fit its budget; flags override any part):
  cpu        V-MoE, TGR (full), TGR (first half) at E=8, 3 seeds, quickstart recipe: <= 75 min on 2 CPU cores
  cpu-all    every row (14 variants) at E=8, 3 seeds, then V-MoE vs TGR at E=4, 16, 32: <= 150 min on 2 CPU cores
  cpu-recipe dense, V-MoE, TGR (full), TGR with an untrained teacher at E=8, 3 seeds: <= 60 min on 2 CPU cores
  cpu-teacher  a 10-epoch teacher per seed; TGR full / first half, distillation only, teacher route, last layer
  gpu-main   teacher; V-MoE, TGR full / first half, distillation only, teacher route at E=8; 3 seeds: <= 10 min H100
  gpu-sweep  V-MoE vs TGR at E = 4, 8, 16, 32; 3 seeds: <= 10 more minutes (same --output as gpu-main)
  full       (default) every variant and the sweep at 100 epochs: hours of GPU time

Before training it times a few steps of each model kind on the device and prints the study's estimate
(also in results.json; ``--estimate-only`` stops there).

    python benchmarks/reproduce.py --tier cpu --data-dir data --output output/cpu_tier --device cpu
    python benchmarks/reproduce.py --tier cpu-all --data-dir data --output output/cpu_all --device cpu
    python benchmarks/reproduce.py --tier gpu-main --data-dir data --output output/gpu_study
    python benchmarks/reproduce.py --tier gpu-sweep --data-dir data --output output/gpu_study
    # continue an interrupted study: the same command (completed runs are skipped, partial ones resumed)
    # rebuild tables and plots from the runs on disk
    python benchmarks/reproduce.py --output output/gpu_study --report-only
    # copy the tables, JSON and plots (not the runs) into benchmarks/results/cpu_all/ to commit them
    python benchmarks/reproduce.py --output output/cpu_all --report-only --publish cpu_all
    # a study that only changes the teacher: dense / V-MoE / untrained-teacher rows from cpu_recipe's runs
    python benchmarks/reproduce.py --tier cpu-teacher --data-dir data --output output/cpu_teacher --device cpu \\
        --baseline-study benchmarks/results/cpu_recipe
    # CI smoke test (tiny model, synthetic Fashion-MNIST-format data, CPU, well under a minute)
    python benchmarks/reproduce.py --quick --output /tmp/repro --variants vmoe tgr --experts 4 --main-experts 4

Run folders: ``<output>/runs/<variant>-E<E>-s<seed>`` and ``<output>/runs/teacher-s<seed>``, each a
normal ``train_tgr.py`` output folder plus ``reproduce_run.json`` (the exact flags it was trained with;
a later invocation that would train the same run with other flags stops with an error instead of
mixing budgets) and ``train.log``. ``--jobs N`` trains N runs at once, each its own process.
"""
import argparse
import json
import logging
import os
import platform
import shlex
import time
from typing import Optional, Sequence

import torch

from harness.env import device_name, git_revision, start_study
from harness.estimate import estimate_study, format_estimate
from harness.export_check import export_best_student
from harness.files import read_json, write_json
from harness.plan import Plan
from harness.publish import publish
from harness.runner import ROOT, check_record, run_all
from harness.study import DEFAULT_TIER, STABLEMOE_FREEZE_AT, TIERS, VARIANTS, Tier
from harness.tables import SCHEMA, build_report, utc_now
from timm_tgr.data import write_synthetic_fashion_mnist

__all__ = ['main', 'build_parser', 'resolve_tier', 'SCHEMA']

_logger = logging.getLogger('reproduce')


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog='python benchmarks/reproduce.py', description=__doc__.split('\n\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--tier', default=None, choices=list(TIERS),
                   help=f'the study to run (default: {DEFAULT_TIER}); the flags below override its choices')
    p.add_argument('--data-dir', default=None,
                   help='Fashion-MNIST root (prepared from Debian\'s dataset-fashion-mnist if needed; default: data, '
                        'or with --quick a synthetic Fashion-MNIST-format set written under --output)')
    p.add_argument('--output', default='output/reproduce', help='runs, tables and plots go here')
    p.add_argument('--recipe', default=None, choices=('quick', 'full', 'gpu'),
                   help='base configs configs/fmnist_<recipe>_{teacher,tgr}.yaml (default: the tier\'s)')
    p.add_argument('--seeds', type=int, nargs='+', default=None, help='seeds (default: the tier\'s, 0 1 2)')
    p.add_argument('--variants', nargs='+', default=None, choices=list(VARIANTS),
                   help='main comparison variants at --main-experts (default: the tier\'s)')
    p.add_argument('--main-experts', type=int, default=None, help='E of the main comparison (paper ablation: 8)')
    p.add_argument('--experts', type=int, nargs='*', default=None,
                   help='expert sweep, V-MoE vs TGR (default: the tier\'s; give no value to skip the sweep)')
    p.add_argument('--order', default=None, choices=('seed', 'variant'),
                   help="run order: 'seed' (every variant of a seed, then the next seed) or 'variant' (all seeds of "
                        "a row, then the next row: the table's priority when time runs out); default: the tier's")
    p.add_argument('--epochs', type=int, default=None, help="student epochs (default: the tier's or recipe's)")
    p.add_argument('--teacher-epochs', type=int, default=None, help="teacher epochs (default: the tier's or recipe's)")
    p.add_argument('--teacher-per-seed', action=argparse.BooleanOptionalAction, default=None,
                   help='train one teacher per seed, so teacher variance enters the error bars (default: the tier\'s; '
                        'otherwise one teacher, trained with the first seed, guides every student, as the paper uses '
                        'one fixed pretrained teacher)')
    p.add_argument('--teacher-model-kwargs', nargs='*', default=None, metavar='K=V',
                   help='override the recipe\'s teacher model kwargs, for its training run and for the students that '
                        'build it (e.g. embed_dim=128 num_heads=4; default: the tier\'s)')
    p.add_argument('--stablemoe-freeze-at', type=float, default=STABLEMOE_FREEZE_AT,
                   help='StableMoE baseline: freeze the routers after this fraction of the updates (default 0.5)')
    p.add_argument('--jobs', type=int, default=None,
                   help='runs at once, each its own `python -m timm_tgr.train` process (default: the tier\'s; '
                        '1 trains in this process, one run after the other)')
    p.add_argument('--device-data', action=argparse.BooleanOptionalAction, default=None,
                   help='pass --device-data to train_tgr.py: data and augmentation on the GPU (default: the tier\'s, '
                        'on for the gpu tiers)')
    p.add_argument('--device', default=None, help='cuda / cpu (default: train_tgr.py\'s: cuda if available)')
    p.add_argument('--threads', type=int, default=None,
                   help='torch CPU threads per run (default: torch\'s with one job, the cores divided among jobs '
                        'otherwise; --quick: 1)')
    p.add_argument('--workers', type=int, default=None, help="data loader workers (default: the recipe's; --quick: 0)")
    p.add_argument('--quick', action='store_true',
                   help='CI mode on CPU: quick recipe with tiny model dims (width 32, patch 7), 2 student / 1 teacher '
                        'epochs, batch 16, and without --data-dir a synthetic Fashion-MNIST-format set (64 train / '
                        '32 test images): checks the pipeline, the numbers mean nothing')
    p.add_argument('--estimate-only', action='store_true', help='print the time estimate and stop (trains nothing)')
    p.add_argument('--budget-s', type=float, default=None,
                   help="wall seconds the estimate is judged against, and for which it suggests --epochs when the "
                        "study does not fit (default: the tier's budget)")
    p.add_argument('--estimate-steps', type=int, default=3, help='timed training steps per model kind (default 3)')
    p.add_argument('--report-only', action='store_true',
                   help='train nothing: rebuild results.md/csv/json and the plots from the runs in --output')
    p.add_argument('--no-export', action='store_true', help='skip exporting and re-evaluating the best TGR student')
    p.add_argument('--publish', default=None, metavar='NAME',
                   help='afterwards copy the tables, JSON and plots of --output (not the run folders) to '
                        'benchmarks/results/NAME/, the committed results')
    p.add_argument('--baseline-study', default=None, metavar='DIR',
                   help='take the rows of --baseline-variants from this published study (e.g. '
                        'benchmarks/results/cpu_recipe) instead of training them: same student recipe and seeds '
                        'required, checked; recorded in settings.json, so later --report-only keeps them')
    p.add_argument('--baseline-variants', nargs='+', default=['dense', 'vmoe', 'tgr_random_teacher'],
                   choices=list(VARIANTS), help='variants --baseline-study supplies (default: dense vmoe '
                                                'tgr_random_teacher)')
    p.add_argument('--extra', nargs=argparse.REMAINDER, default=[],
                   help='further train_tgr.py flags for every run (everything after --extra)')
    return p


def resolve_tier(args: argparse.Namespace) -> Tier:
    """Fill every option left unset from the tier (``args.tier`` or the default)."""
    tier = TIERS[args.tier or DEFAULT_TIER]
    args.tier = tier.name
    defaults = dict(recipe=tier.recipe, variants=list(tier.variants), main_experts=tier.main_experts,
                    experts=list(tier.experts), seeds=list(tier.seeds), epochs=tier.epochs,
                    teacher_epochs=tier.teacher_epochs, jobs=tier.jobs, device_data=tier.device_data, order=tier.order,
                    teacher_per_seed=tier.teacher_per_seed, teacher_model_kwargs=dict(tier.teacher_model_kwargs))
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if isinstance(args.teacher_model_kwargs, list):
        args.teacher_model_kwargs = _kwargs(args.teacher_model_kwargs)
    return tier


def _kwargs(items: Sequence[str]) -> dict:
    """``K=V`` strings as a dict; values as YAML reads them (``128`` an int)."""
    import yaml
    out = {}
    for item in items:
        if '=' not in item:
            raise SystemExit(f'--teacher-model-kwargs takes K=V pairs, got {item!r} (e.g. embed_dim=128)')
        k, v = item.split('=', 1)
        out[k] = yaml.safe_load(v)
    return out


# --------------------------------------------------------------------------------------------------
# what an invocation records
# --------------------------------------------------------------------------------------------------
def _environment(argv: Sequence[str], device: str) -> dict:
    import timm
    from timm_tgr.version import __version__
    return {
        'date': utc_now(), 'command': 'python benchmarks/reproduce.py ' + shlex.join(list(argv)),
        'device': device, 'device_name': device_name(device),
        'torch': torch.__version__, 'timm': timm.__version__, 'timm_tgr': __version__,
        'python': platform.python_version(), 'platform': platform.platform(), 'git': git_revision(ROOT),
    }


def _settings(args, plan: Plan, synthetic: bool, tier: Tier) -> dict:
    return {'quick': args.quick, 'synthetic_data': synthetic, 'recipe': plan.recipe,
            'teacher_config': os.path.basename(plan.teacher_cfg),
            'student_config': os.path.basename(plan.student_cfg), 'seeds': list(args.seeds),
            'variants': list(args.variants), 'main_experts': args.main_experts, 'experts': list(args.experts),
            'epochs': plan.epochs, 'teacher_epochs': plan.teacher_epochs,
            'teacher_per_seed': args.teacher_per_seed, 'stablemoe_freeze_at': args.stablemoe_freeze_at,
            'teacher_model_kwargs': plan.teacher_model_kwargs, 'skipped_variants': plan.skipped(),
            'student_model_kwargs': plan.student_model_kwargs, 'teacher_kwargs': plan.teacher_kwargs,
            'extra': list(args.extra), 'tier': tier.name, 'jobs': plan.jobs, 'threads_per_job': plan.threads,
            'device_data': plan.device_data, 'budget_s': tier.budget_s, 'order': args.order}


def _record_invocation(args, argv, device: str, plan: Plan, synthetic: bool, tier: Tier) -> None:
    env_path = os.path.join(args.output, 'environment.json')
    environment = read_json(env_path) if os.path.isfile(env_path) else {'invocations': []}
    environment['invocations'].append(_environment(argv, device))
    write_json(env_path, environment)
    settings_path = os.path.join(args.output, 'settings.json')
    settings = _settings(args, plan, synthetic, tier)
    baseline = _baseline_study(args, read_json(settings_path) if os.path.isfile(settings_path) else {})
    if baseline:
        settings['baseline_study'] = baseline
    write_json(settings_path, settings)


def _baseline_study(args, settings: dict) -> Optional[dict]:
    """settings.json's ``baseline_study``, where :func:`build_report` reads it (checked there): ``--baseline-study``,
    else what ``settings`` (an earlier invocation's) recorded."""
    if args.baseline_study is None:
        return settings.get('baseline_study')
    return {'study': os.path.relpath(os.path.abspath(args.baseline_study), ROOT),
            'variants': list(args.baseline_variants)}


def _record_baseline(args) -> None:
    """``--report-only`` with ``--baseline-study``: note it in the study's settings.json."""
    if args.baseline_study is None:
        return
    path = os.path.join(args.output, 'settings.json')
    if not os.path.isfile(path):
        raise SystemExit(f'{path} is missing: --baseline-study adds rows to a study that has run (train first)')
    settings = read_json(path)
    settings['baseline_study'] = _baseline_study(args, settings)
    write_json(path, settings)


def _data_dir(args) -> bool:
    """Set args.data_dir (a synthetic set for --quick without one); True when synthetic."""
    if args.data_dir is not None:
        return False
    if args.quick:
        args.data_dir = write_synthetic_fashion_mnist(os.path.join(args.output, 'synthetic-fashion-mnist'))
        return True
    args.data_dir = 'data'
    return False


# --------------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------------
def _estimate(args, plan: Plan, runs, device: str, tier: Tier) -> dict:
    from timm_tgr.data import prepare_fashion_mnist
    prepare_fashion_mnist(args.data_dir)  # the estimate reads the split sizes; train_tgr.py would do it anyway
    budget_s = args.budget_s if args.budget_s is not None else tier.budget_s
    est = estimate_study(plan, runs, device, steps=args.estimate_steps, budget_s=budget_s)
    print(format_estimate(est, tier), flush=True)
    write_json(os.path.join(args.output, 'estimate.json'), est)
    return est


def _train(args, plan: Plan, runs, device: str) -> dict:
    t0 = time.time()
    status, spans = run_all(runs, plan.runs_dir, plan.jobs, plan.threads)
    timing = {'wall_s': round(time.time() - t0, 2), 'jobs': plan.jobs, 'run_spans_s': spans,
              'trained': sum(1 for s in status.values() if s in ('trained', 'resumed'))}
    write_json(os.path.join(args.output, 'timing.json'), timing)
    export = None if args.no_export else export_best_student(args.output, args.data_dir, device)
    if export is not None and not export['matches']:
        _logger.error(f'exported student top-1 {export["top1_exported"]:.3f} != training-time '
                      f'{export["top1_training_eval"]:.3f}')
    report = build_report(args.output)
    report['run_status'] = status
    _logger.info(f"done: {os.path.join(args.output, 'results.md')}")
    return report


def main(argv: Optional[Sequence[str]] = None) -> dict:
    argv, args = start_study(build_parser(), argv)
    if args.report_only:
        _record_baseline(args)
        report = build_report(args.output, {'command': 'python benchmarks/reproduce.py ' + shlex.join(argv),
                                            'date': utc_now()})
        _logger.info(f"report rebuilt from {len(report['runs'])} runs: {os.path.join(args.output, 'results.md')}")
        publish(args.output, args.publish)
        return report
    tier = resolve_tier(args)
    if not 0. <= args.stablemoe_freeze_at <= 1.:
        raise SystemExit(f'--stablemoe-freeze-at is a fraction of training in [0, 1], got {args.stablemoe_freeze_at}')
    synthetic = _data_dir(args)
    device = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    plan = Plan(args)
    for variant, why in plan.skipped().items():
        print(f'not running {variant}: {why}', flush=True)
    runs = plan.runs()
    for run in runs:  # every conflict before any training
        check_record(run, plan.runs_dir)
    est = _estimate(args, plan, runs, device, tier)
    if args.estimate_only:
        return {'estimate': json.loads(json.dumps(est))}
    _record_invocation(args, argv, device, plan, synthetic, tier)
    report = _train(args, plan, runs, device)
    publish(args.output, args.publish)
    return report


if __name__ == '__main__':
    main()
