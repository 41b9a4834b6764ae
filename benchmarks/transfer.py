#!/usr/bin/env python
"""Transfer study: pre-train on Fashion-MNIST classes 0-4, fine-tune on classes 5-9.

The paper ("Stable Transfer") fine-tunes ImageNet-trained models on CIFAR-100 and Pets: routing consistency
between the pre-trained and the fine-tuned model is 50.56 % for V-MoE and 73.75 % for TGR-MoE, and
continuing TGR while fine-tuning gives the best accuracy. Here, at CPU scale, on two disjoint label sets
of one real image set (each relabelled 0-4, train and test split each, written by
``timm_tgr.data.subsets``), every run a ``train_tgr.py`` run:

- one dense DeiT-III-style teacher on classes 0-4 (``configs/fmnist_quick_teacher.yaml``, 5 classes);
- per seed, V-MoE and TGR students pre-trained on classes 0-4 (``configs/fmnist_quick_tgr.yaml``, E=8,
  TGR with distillation in the first half, as the quickstart);
- per seed, fine-tuning on classes 5-9 (``configs/fmnist_quick_finetune.yaml``) from the pre-trained
  checkpoint (``--initial-checkpoint``: a fresh 5-class head, every other tensor kept):
  V-MoE -> V-MoE (no teacher), TGR -> V-MoE (TGR as initialization only, no teacher), TGR -> TGR (TGR
  continued: the classes 0-4 teacher, its routers carried over with ``--teacher-routers-from``, the
  same first-half schedule).

Reported (``results.md`` / ``results.json``, mean ± sample std over seeds): fine-tuned top-1,
``consistency_pretrained`` at the last epoch (the share of probe tokens, the first 1000 test images of
classes 5-9, whose top-1 expert per MoE layer is the one the pre-trained weights chose), and adjacent-epoch
consistency, beside the paper's numbers.

    python benchmarks/transfer.py --data-dir data --output output/transfer            # the study
    python benchmarks/transfer.py --data-dir data --output output/transfer --plan-only  # plan + estimate only
    python benchmarks/transfer.py --output output/transfer --report-only                # tables from the runs
    python benchmarks/transfer.py --output output/transfer --report-only --publish transfer  # commit them
    python benchmarks/transfer.py --quick --output /tmp/transfer                        # CI: tiny, synthetic

Interrupted? The same command continues: finished runs are skipped, partial ones resumed (``runner.py``).
"""
import argparse
import logging
import os
import platform
import shlex
from typing import Dict, List, Optional, Sequence

import torch

from harness.collect import block_label, discover_runs, mean_std
from harness.env import device_name, git_revision, start_study
from harness.estimate import estimate_study, format_estimate
from harness.files import read_json, write_json
from harness.plan import config_path, kv_args, read_yaml, threads_per_job
from harness.publish import publish
from harness.runner import ROOT, check_record, run_all, run_status
from harness.study import QUICK_MODEL, QUICK_TRAIN
from harness.tables import fmt, md_table, utc_now

_logger = logging.getLogger('reproduce')

SCHEMA = 'timm_tgr.transfer/1'
PRE_CLASSES, FINE_CLASSES = (0, 1, 2, 3, 4), (5, 6, 7, 8, 9)
# pre-training student -> label, model, guided by the teacher
PRETRAIN = {
    'vmoe': dict(label='V-MoE', model='vmoe_deit_tiny', teacher=False),
    'tgr': dict(label='TGR (first half)', model='tgr_moe_deit_tiny', teacher=True),
}
# fine-tuning rows: pre-trained student, fine-tuned model, whether TGR continues
FINETUNE = {
    'vmoe_vmoe': dict(label='V-MoE -> V-MoE', source='vmoe', model='vmoe_deit_tiny', teacher=False),
    'tgr_vmoe': dict(label='TGR -> V-MoE (TGR as initialization only)', source='tgr', model='vmoe_deit_tiny',
                     teacher=False),
    'tgr_tgr': dict(label='TGR -> TGR (TGR continued)', source='tgr', model='tgr_moe_deit_tiny', teacher=True),
}
PAPER = {
    'setup': 'ImageNet-1K pre-training, fine-tuning on CIFAR-100 and Pets; DeiT-Tiny, K=1 (TGR-MoE, CVPR 2026, '
             'arXiv 2604.21330)',
    'consistency_pretrained': {'vmoe': 50.56, 'tgr': 73.75},  # pre-training vs CIFAR-100 fine-tuning routing
    'top1_cifar100': {'vmoe': 86.20, 'tgr': 87.03},
    'top1_pets': {'vmoe': 89.82, 'tgr': 91.78},
    'note': 'Continuing TGR-MoE during fine-tuning (rather than only using it for initialization) gives the highest '
            'accuracy; the paper gives no number for TGR as initialization only, and does not say which of its '
            'fine-tuning runs the 73.75 % consistency comes from.',
}
QUICK_EPOCHS = dict(teacher=1, pretrain=2, finetune=2)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='python benchmarks/transfer.py', description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data-dir', default=None, help='Fashion-MNIST root (prepared there if missing; default: data, '
                                                    '--quick: a synthetic set in --output)')
    p.add_argument('--output', default='output/transfer', help='subsets, runs and results go here')
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1], help='student seeds (default 0 1)')
    p.add_argument('--experts', type=int, default=8, help='E of every student (default 8)')
    p.add_argument('--teacher-epochs', type=int, default=None, help="default: the teacher config's (2)")
    p.add_argument('--pretrain-epochs', type=int, default=None, help="default: the student config's (3)")
    p.add_argument('--finetune-epochs', type=int, default=None, help="default: the fine-tuning config's (3)")
    p.add_argument('--jobs', type=int, default=1,
                   help='runs at once, each its own `python -m timm_tgr.train` process (default 1: in this process). '
                        'On a 2-core CPU --jobs 2 (1 thread each) is the faster choice')
    p.add_argument('--threads', type=int, default=None, help='torch CPU threads per run (default: cores / jobs)')
    p.add_argument('--workers', type=int, default=None, help="data loader workers (default: the configs'; --quick: 0)")
    p.add_argument('--device', default=None, help="cuda / cpu (default: train_tgr.py's: cuda if available)")
    p.add_argument('--quick', action='store_true',
                   help='CI mode: synthetic Fashion-MNIST-format data, width 32, 1-2 epochs; the numbers mean nothing')
    p.add_argument('--plan-only', action='store_true', help='print the plan and the time estimate, train nothing')
    p.add_argument('--estimate-steps', type=int, default=3, help='timed training steps per model kind (default 3)')
    p.add_argument('--report-only', action='store_true', help='train nothing: rebuild results.md/json from the runs')
    p.add_argument('--publish', default=None, metavar='NAME',
                   help='afterwards copy results.md/json (not the runs) to benchmarks/results/NAME/')
    p.add_argument('--extra', nargs=argparse.REMAINDER, default=[],
                   help='further train_tgr.py flags for every run (everything after --extra)')
    return p


# --------------------------------------------------------------------------------------------------
# data and plan
# --------------------------------------------------------------------------------------------------
def prepare_data(args) -> Dict[str, object]:
    """The full set (real, or synthetic with --quick) and its two class subsets; their image counts."""
    from timm_tgr.data import prepare_fashion_mnist, write_synthetic_fashion_mnist
    from timm_tgr.data.subsets import write_class_subset
    synthetic = args.data_dir is None and args.quick
    if synthetic:
        args.data_dir = write_synthetic_fashion_mnist(os.path.join(args.output, 'synthetic-fashion-mnist'),
                                                      n_train=100, n_test=60)
    args.data_dir = args.data_dir or 'data'
    source = prepare_fashion_mnist(args.data_dir)
    root = os.path.join(args.output, 'data')
    pre, fine = os.path.join(root, 'classes_0-4'), os.path.join(root, 'classes_5-9')
    counts = {'pre': write_class_subset(args.data_dir, pre, PRE_CLASSES),
              'fine': write_class_subset(args.data_dir, fine, FINE_CLASSES)}
    return {'pre': pre, 'fine': fine, 'counts': counts, 'synthetic': synthetic, 'source': source,
            'source_dir': args.data_dir}


class TransferPlan:
    """The study's runs as ``train_tgr.py`` argv (dicts as ``runner.py`` and ``estimate.py`` take them)."""

    def __init__(self, args, data: Dict[str, object]):
        self.args, self.data = args, data
        self.teacher_cfg, self.student_cfg, self.finetune_cfg = (
            config_path(f'fmnist_quick_{n}.yaml') for n in ('teacher', 'tgr', 'finetune'))
        t, s, f = (read_yaml(c) for c in (self.teacher_cfg, self.student_cfg, self.finetune_cfg))
        self.configs = {'teacher': t, 'student': s, 'finetune': f}
        self.teacher_model_kwargs = dict(t.get('model_kwargs', {}), **(QUICK_MODEL if args.quick else {}))
        self.student_kwargs = dict(s.get('model_kwargs', {}), **(QUICK_MODEL if args.quick else {}),
                                   num_experts=args.experts)
        self.teacher_name = s.get('teacher', 'deit3_small_patch16_224')
        self.teacher_kwargs = dict(s.get('teacher_kwargs', {}), **(QUICK_MODEL if args.quick else {}),
                                   num_classes=len(PRE_CLASSES))
        quick = QUICK_EPOCHS if args.quick else {}
        self.epochs = {
            'teacher': args.teacher_epochs or quick.get('teacher') or int(t['epochs']),
            'pretrain': args.pretrain_epochs or quick.get('pretrain') or int(s['epochs']),
            'finetune': args.finetune_epochs or quick.get('finetune') or int(f['epochs'])}
        self.teacher_epochs = self.epochs['teacher']  # as estimate.py names it
        self.probe_samples = int(QUICK_TRAIN[QUICK_TRAIN.index('--probe-samples') + 1]) if args.quick \
            else int(f.get('probe_samples', 1000))
        self.jobs = max(1, args.jobs)
        self.threads = threads_per_job(args.threads, self.jobs, args.quick)
        self.runs_dir = os.path.join(args.output, 'runs')
        # estimate.py reads the split sizes from args.data_dir: the pre-training subset (the other is as large)
        self.args = argparse.Namespace(**{**vars(args), 'data_dir': data['pre']})

    def _common(self, data_dir: str) -> List[str]:
        a = self.args
        argv = ['--data-dir', data_dir, '--output', self.runs_dir, '--no-progress',
                '--num-classes', str(len(PRE_CLASSES))]
        argv += ['--device', a.device] if a.device else []
        argv += ['--threads', str(self.threads)] if self.threads else []
        workers = a.workers if a.workers is not None else (0 if a.quick else None)
        argv += ['-j', str(workers)] if workers is not None else []
        return argv + (list(QUICK_TRAIN) if a.quick else []) + list(a.extra)

    def _teacher_flags(self) -> List[str]:
        ckpt = os.path.join(self.runs_dir, 'teacher', 'model_best.pth.tar')
        return ['--teacher', self.teacher_name, '--teacher-kwargs', *kv_args(self.teacher_kwargs),
                '--teacher-checkpoint', ckpt]

    def teacher_run(self) -> dict:
        seed = self.args.seeds[0]
        argv = ['-c', self.teacher_cfg, '--experiment', 'teacher', '--seed', str(seed),
                '--model-kwargs', *kv_args(self.teacher_model_kwargs), '--epochs', str(self.epochs['teacher'])]
        return dict(name='teacher', kind='teacher', variant='teacher', label='dense teacher (classes 0-4)',
                    experts=None, seed=seed, epochs=self.epochs['teacher'], teacher=None,
                    argv=argv + self._common(self.data['pre']))

    def pretrain_run(self, variant: str, seed: int) -> dict:
        spec, name = PRETRAIN[variant], f'pre-{variant}-s{seed}'
        argv = ['-c', self.student_cfg, '--experiment', name, '--seed', str(seed), '--model', spec['model'],
                '--model-kwargs', *kv_args(self.student_kwargs), '--epochs', str(self.epochs['pretrain'])]
        argv += self._teacher_flags() if spec['teacher'] else ['--teacher', 'none']
        return dict(name=name, kind='student', variant=f'pre_{variant}', label=f"{spec['label']} (pre-training)",
                    experts=self.args.experts, seed=seed, epochs=self.epochs['pretrain'],
                    teacher='teacher' if spec['teacher'] else None, argv=argv + self._common(self.data['pre']))

    def finetune_run(self, variant: str, seed: int) -> dict:
        spec, name = FINETUNE[variant], f'ft-{variant}-s{seed}'
        source = f"pre-{spec['source']}-s{seed}"
        start = os.path.join(self.runs_dir, source, 'last.pth.tar')  # the end of pre-training
        argv = ['-c', self.finetune_cfg, '--experiment', name, '--seed', str(seed), '--model', spec['model'],
                '--model-kwargs', *kv_args(self.student_kwargs), '--epochs', str(self.epochs['finetune']),
                '--initial-checkpoint', start]
        argv += self._teacher_flags() + ['--teacher-routers-from', start] if spec['teacher'] else ['--teacher', 'none']
        return dict(name=name, kind='student', variant=variant, label=spec['label'], experts=self.args.experts,
                    seed=seed, epochs=self.epochs['finetune'], teacher=source,
                    argv=argv + self._common(self.data['fine']))

    def runs(self) -> List[dict]:
        """The teacher, then per seed the two pre-training runs and the three fine-tuning runs."""
        runs = [self.teacher_run()]
        for seed in self.args.seeds:
            runs += [self.pretrain_run(v, seed) for v in PRETRAIN]
            runs += [self.finetune_run(v, seed) for v in FINETUNE]
        return runs

    def model_spec(self, run: dict) -> Dict[str, object]:
        """What ``estimate.py`` builds to time a run's model kind."""
        cfg = self.configs['teacher' if run['kind'] == 'teacher' else 'student']
        data = {'img_size': cfg['img_size'], 'in_chans': cfg['in_chans'], 'num_classes': 5}
        if run['kind'] == 'teacher':
            model, kwargs, teacher = cfg['model'], dict(self.teacher_model_kwargs, **data), None
        else:
            guided = '--teacher-checkpoint' in run['argv']
            model = run['argv'][run['argv'].index('--model') + 1]
            kwargs = dict(self.student_kwargs, **data)
            teacher = (self.teacher_name, dict(self.teacher_kwargs)) if guided else None
        batch = int(QUICK_TRAIN[QUICK_TRAIN.index('-b') + 1]) if self.args.quick else int(cfg.get('batch_size', 128))
        return dict(model=model, kwargs=kwargs, teacher=teacher, batch_size=batch, amp=bool(cfg.get('amp')),
                    mixup=False, smoothing=float(cfg.get('smoothing', 0.1)), mode='tgr')


def format_plan(plan: TransferPlan) -> str:
    counts = plan.data['counts']
    lines = [f"Transfer study: pre-train on classes 0-4 ({counts['pre']['train']} train / {counts['pre']['t10k']} "
             f"test images), fine-tune on classes 5-9 ({counts['fine']['train']} / {counts['fine']['t10k']}); "
             f"E={plan.args.experts}, seeds {plan.args.seeds}, {plan.jobs} job(s)"
             + (f' x {plan.threads} thread(s)' if plan.threads else '') + ':']
    for run in plan.runs():
        after = f"  (after {run['teacher']})" if run['teacher'] else ''
        lines.append(f"  {run['name']:<20} {run['epochs']} epoch(s)  {run['label']}{after}")
    return '\n'.join(lines)


# --------------------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------------------
def summarize(run: dict, runs_dir: str) -> Optional[dict]:
    """A finished run's numbers (None while it is incomplete): final/best top-1, and for MoE runs the last
    epoch's adjacent consistency and consistency with the starting weights (mean and per MoE layer)."""
    status = run_status(run, runs_dir)
    if not status['complete']:
        return None
    rows = status['rows'][:run['epochs']]
    last = rows[-1]
    s = {k: run[k] for k in ('name', 'kind', 'variant', 'label', 'seed', 'epochs')}
    s.update(top1_final=last['eval_top1'], top1_best=max(r['eval_top1'] for r in rows),
             time_s=round(sum(r.get('time_s', 0.) for r in rows), 1))
    if 'routing' in last:
        s['adjacent_last'] = last.get('consistency_prev')
        s['consistency_pretrained_last'] = last.get('consistency_pretrained')
        s['consistency_pretrained_per_epoch'] = [r.get('consistency_pretrained') for r in rows]
        s['consistency_pretrained_per_layer'] = {
            block_label(b): v.get('consistency_pretrained') for b, v in last['routing'].items()}
    return s


def _pct(values: Sequence[Optional[float]]) -> dict:
    """mean ± std of fractions, as percentages (missing values left out)."""
    return mean_std([100 * v for v in values if v is not None])


def aggregate(summaries: List[dict]) -> Dict[str, dict]:
    """Per variant (teacher, pre_*, fine-tuning rows): mean ± sample std over seeds (consistency in %)."""
    out = {}
    for variant in ['teacher'] + [f'pre_{v}' for v in PRETRAIN] + list(FINETUNE):
        group = [s for s in summaries if s['variant'] == variant]
        if not group:
            continue
        per_layer = [s.get('consistency_pretrained_per_layer') or {} for s in group]
        layers = sorted({b for p in per_layer for b in p}, key=lambda b: int(b[1:]))
        out[variant] = {
            'label': group[0]['label'], 'seeds': [s['seed'] for s in group],
            'top1_final': mean_std([s['top1_final'] for s in group]),
            'adjacent_last': _pct([s.get('adjacent_last') for s in group]),
            'consistency_pretrained_last': _pct([s.get('consistency_pretrained_last') for s in group]),
            'consistency_pretrained_per_layer': {b: _pct([p.get(b) for p in per_layer]) for b in layers},
        }
    return out


# --------------------------------------------------------------------------------------------------
# results.md
# --------------------------------------------------------------------------------------------------
_PAPER_OF = {'vmoe_vmoe': 'vmoe', 'tgr_tgr': 'tgr'}  # our rows the paper's V-MoE / TGR-MoE numbers sit beside


def _md_main(groups: Dict[str, dict]) -> List[str]:
    rows = []
    for variant, spec in FINETUNE.items():
        g, paper = groups.get(variant), _PAPER_OF.get(variant)
        if g is None:
            continue
        p_top1 = (f"{PAPER['top1_cifar100'][paper]:.2f} / {PAPER['top1_pets'][paper]:.2f}" if paper
                  else 'not reported')
        p_cons = f"{PAPER['consistency_pretrained'][paper]:.2f}" if paper else 'not reported'
        rows.append([spec['label'], fmt(g['top1_final']), fmt(g['consistency_pretrained_last']),
                     fmt(g['adjacent_last']), p_top1, p_cons])
    header = ['fine-tuning (classes 5-9)', 'top-1 (%)', 'consistency with the pre-trained routing (%), last epoch',
              'adjacent-epoch consistency (%), last epoch', 'paper top-1 CIFAR-100 / Pets (%)',
              'paper pretrain-to-finetune consistency (%)']
    return ['## Fine-tuning', ''] + md_table(header, rows) + ['']


def _per_epoch(values: Optional[List[Optional[float]]]) -> str:
    if not values or all(v is None for v in values):
        return '-'
    return ' / '.join('n/a' if v is None else f'{v:.3f}' for v in values)


def _md_details(groups: Dict[str, dict], summaries: List[dict]) -> List[str]:
    ft = [v for v in FINETUNE if v in groups]
    layers = sorted({b for v in ft for b in groups[v]['consistency_pretrained_per_layer']}, key=lambda b: int(b[1:]))
    L = ['Consistency with the pre-trained routing per MoE layer (%, last epoch; layers 1-based):', '']
    L += md_table(['fine-tuning'] + layers,
                  [[groups[v]['label']] + [fmt(groups[v]['consistency_pretrained_per_layer'].get(b)) for b in layers]
                   for v in ft]) + ['']
    pre = [v for v in ['teacher'] + [f'pre_{v}' for v in PRETRAIN] if v in groups]
    L += ['## Pre-training (classes 0-4)', '']
    L += md_table(['run', 'top-1 (%)', 'adjacent-epoch consistency (%), last epoch'],
                  [[groups[v]['label'], fmt(groups[v]['top1_final']), fmt(groups[v]['adjacent_last'])] for v in pre])
    L += ['', '## Every run', '']
    L += md_table(['run', 'seed', 'epochs', 'top-1 final / best (%)', 'consistency_pretrained per epoch (fraction)',
                   'time (s)'],
                  [[s['name'], str(s['seed']), str(s['epochs']), f"{s['top1_final']:.2f} / {s['top1_best']:.2f}",
                    _per_epoch(s.get('consistency_pretrained_per_epoch')), f"{s['time_s']:.0f}"] for s in summaries])
    return L + ['']


def render_markdown(report: dict) -> str:
    st = report['settings']
    L = ['# Transfer: pre-train on Fashion-MNIST classes 0-4, fine-tune on classes 5-9', '']
    if st.get('quick'):
        L += ['**CI smoke run (`--quick`): tiny model, 1-2 epochs, synthetic data. It checks the pipeline; the '
              'numbers say nothing about the method.**', '']
    L += [f"Epochs: teacher {st['epochs']['teacher']}, pre-training {st['epochs']['pretrain']}, fine-tuning "
          f"{st['epochs']['finetune']}; E={st['experts']}; seeds {st['seeds']}; one teacher (seed {st['seeds'][0]}). "
          f"Images (train / test): classes 0-4 {st['counts']['pre']['train']} / {st['counts']['pre']['t10k']}, "
          f"classes 5-9 {st['counts']['fine']['train']} / {st['counts']['fine']['t10k']}. Mean ± sample std over "
          'seeds; top-1 on the test split of classes 5-9; consistency on the probe set (the first '
          f"{st['probe_samples']} test images of classes 5-9), mean over the MoE layers.", '']
    if report['incomplete']:
        L += ['Incomplete runs, left out: ' + ', '.join(f'`{n}`' for n in report['incomplete']) + '.', '']
    L += _md_main(report['aggregates'])
    L += [f"Paper: {PAPER['setup']}. Its consistency is between the ImageNet pre-trained and the CIFAR-100 "
          f"fine-tuned model (V-MoE 50.56 %, TGR-MoE 73.75 %); its top-1 are V-MoE vs TGR-MoE. {PAPER['note']}", '']
    L += _md_details(report['aggregates'], report['runs'])
    L += ['## Environment', '', '```']
    for inv in report['invocations']:
        L += [f"{inv['date']}: {inv['command']}", f"  device {inv['device']} ({inv['device_name']}); torch "
              f"{inv['torch']}, timm {inv['timm']}, timm_tgr {inv['timm_tgr']}; git {inv['git']}"]
    return '\n'.join(L + ['```', ''])


# --------------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------------
def build_report(output: str) -> dict:
    """results.json / results.md from the run folders in ``output`` (finished runs only)."""
    runs_dir = os.path.join(output, 'runs')
    records = discover_runs(runs_dir)
    summaries = [s for s in (summarize(r, runs_dir) for r in records) if s is not None]
    done = {s['name'] for s in summaries}
    report = {
        'schema': SCHEMA, 'settings': read_json(os.path.join(output, 'settings.json')),
        'invocations': read_json(os.path.join(output, 'environment.json'))['invocations'],
        'paper': PAPER, 'aggregates': aggregate(summaries), 'runs': summaries,
        'incomplete': [r['name'] for r in records if r['name'] not in done]}
    write_json(os.path.join(output, 'results.json'), report)
    with open(os.path.join(output, 'results.md'), 'w') as f:
        f.write(render_markdown(report))
    return report


def _record_invocation(args, argv: Sequence[str], plan: TransferPlan, device: str) -> None:
    """Append this command and its environment to environment.json; write settings.json."""
    import timm
    from timm_tgr.version import __version__
    path = os.path.join(args.output, 'environment.json')
    env = read_json(path) if os.path.isfile(path) else {'invocations': []}
    env['invocations'].append({
        'date': utc_now(), 'command': 'python benchmarks/transfer.py ' + shlex.join(list(argv)), 'device': device,
        'device_name': device_name(device), 'torch': torch.__version__, 'timm': timm.__version__,
        'timm_tgr': __version__, 'python': platform.python_version(), 'git': git_revision(ROOT)})
    write_json(path, env)
    write_json(os.path.join(args.output, 'settings.json'), {
        'quick': args.quick, 'synthetic_data': plan.data['synthetic'], 'data_dir': plan.data['source_dir'],
        'counts': plan.data['counts'], 'seeds': list(args.seeds), 'experts': args.experts, 'epochs': plan.epochs,
        'probe_samples': plan.probe_samples,
        'configs': [os.path.basename(c) for c in (plan.teacher_cfg, plan.student_cfg, plan.finetune_cfg)],
        'student_model_kwargs': plan.student_kwargs, 'teacher_kwargs': plan.teacher_kwargs, 'jobs': plan.jobs,
        'threads_per_job': plan.threads, 'extra': list(args.extra)})


def _train(plan: TransferPlan, runs: List[dict]) -> Dict[str, str]:
    return run_all(runs, plan.runs_dir, plan.jobs, plan.threads)[0]


def main(argv: Optional[Sequence[str]] = None) -> dict:
    argv, args = start_study(build_parser(), argv)
    if args.report_only:
        report = build_report(args.output)
        publish(args.output, args.publish)
        return report
    plan = TransferPlan(args, prepare_data(args))
    runs = plan.runs()
    for run in runs:  # every conflict before any training
        check_record(run, plan.runs_dir)
    device = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    print(format_plan(plan), flush=True)
    est = estimate_study(plan, runs, device, steps=args.estimate_steps)
    print(format_estimate(est), flush=True)
    write_json(os.path.join(args.output, 'estimate.json'), est)
    if args.plan_only:
        return {'runs': runs, 'estimate': est}
    _record_invocation(args, argv, plan, device)
    status = _train(plan, runs)
    report = build_report(args.output)
    report['run_status'] = status
    _logger.info(f"done: {os.path.join(args.output, 'results.md')}")
    publish(args.output, args.publish)
    return report


if __name__ == '__main__':
    main()
