#!/usr/bin/env python
"""Sparse upcycling on Fashion-MNIST: a dense DeiT trained with ``train_tgr.py``, upcycled to
``vmoe_deit_tiny`` / ``tgr_moe_deit_tiny`` (E=8, the quickstart's size), measured

- at step 0: top-1 of the upcycled model in eval mode against the dense model, with the eval capacity that drops
  nothing (``eval_capacity_factor=E/K``, what the ``*.fb_in1k_upcycled`` tags use) and with V-MoE's 1.05, and the
  largest logit difference relative to the largest dense logit;
- after 1 epoch of fine-tuning (``train_tgr.py --upcycle-from``), without teacher (V-MoE) and with teacher-guided
  routing (the dense parent is the frozen teacher: upcycle from it and guide with it);
- against 3 epochs from scratch with the same recipe (the CPU tier of ``benchmarks/reproduce.py`` when
  ``--scratch-runs`` points at its ``runs/`` folder, else trained here; ``--no-scratch`` skips it);
- with ``--finetune-variants``, how to fine-tune from upcycled weights (the upcycled tags' training defaults):
  ``noise1`` the paper's router noise std 1.0 (always run: the baseline), ``noise1e`` V-MoE's code's '1/E',
  ``dropless`` noise 1.0 with ``capacity_factor='dropless'``. Each fine-tuned run is evaluated on the test split at
  eval capacity 1.05 and dropless (the upcycled tags' eval), and each variant's step-0 MoE output scale in training
  mode is measured (E/K * the kept gates: 1 would be the dense MLP).

    python benchmarks/upcycle.py --data-dir data --output output/upcycle --scratch-runs output/cpu_tier/runs
    python benchmarks/upcycle.py --data-dir data --output output/upcycle --finetune-variants noise1,noise1e,dropless \
        --no-scratch
    python benchmarks/upcycle.py --output output/upcycle-finetune --report-only --publish upcycle-finetune  # commit
    python benchmarks/upcycle.py --quick --output /tmp/upcycle     # CI smoke run, synthetic data (numbers mean nothing)

Runs are ordinary ``train_tgr.py`` folders under ``<output>/runs``; finished ones are skipped on a second call.
"""
import argparse
import json
import os
import statistics
import sys
import time
from typing import Dict, List, Optional

import torch

from harness.collect import mean_std
from harness.env import device_name
from harness.files import read_metrics
from harness.publish import publish
from harness.tables import fmt

EXPERTS = 8
DENSE_MODEL = 'deit_tiny_patch16_224'
QUICK_DIMS = {'embed_dim': 32, 'num_heads': 2, 'patch_size': 7}
QUICK_TRAIN = ['-b', '16', '--probe-samples', '16', '--no-plot', '--log-interval', '1000']
VARIANTS = {  # label, model, whether the dense parent guides routing
    'vmoe': ('V-MoE', 'vmoe_deit_tiny', False),
    'tgr': ('TGR (first half)', 'tgr_moe_deit_tiny', True),
}
SCRATCH_RUN = {'vmoe': 'vmoe-E8-s{seed}', 'tgr': 'tgr_first-E8-s{seed}'}  # reproduce.py's run folder names
FINETUNES = {  # label, model kwargs of the fine-tuning run (on top of the quickstart student's)
    'noise1': ('router noise 1.0 (paper)', {'router_noise_std': 1.0}),
    'noise1e': ("router noise '1/E' (V-MoE's code)", {'router_noise_std': '1/E'}),
    'dropless': ("dropless (capacity_factor='dropless'), noise 1.0",
                 {'capacity_factor': 'dropless', 'router_noise_std': 1.0}),
}
EVAL_CAPACITIES = ('1.05', 'dropless')  # the fine-tuned runs' test evaluations


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='python benchmarks/upcycle.py', description=__doc__.split('\n\n')[0])
    p.add_argument('--data-dir', default=None, help='Fashion-MNIST root (default: data; --quick: synthetic)')
    p.add_argument('--output', default='output/upcycle')
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2], help='fine-tuning / scratch seeds')
    p.add_argument('--dense-epochs', type=int, default=3, help='epochs of the dense parent (default 3)')
    p.add_argument('--finetune-epochs', type=int, default=1, help='fine-tuning epochs (default 1)')
    p.add_argument('--finetune-lr', type=float, default=5e-4,
                   help='fine-tuning lr (default 5e-4: a quarter of the from-scratch 2e-3, as fine-tuning a trained '
                        'model is usually run lower)')
    p.add_argument('--scratch-runs', default=None,
                   help="reproduce.py's runs/ folder with vmoe-E8-s<seed> / tgr_first-E8-s<seed> (else trained here)")
    p.add_argument('--scratch-epochs', type=int, default=3)
    p.add_argument('--no-scratch', action='store_true', help='skip the from-scratch comparison')
    p.add_argument('--finetune-variants', default='noise1',
                   help=f'comma list from {list(FINETUNES)}: how the upcycled model is fine-tuned (noise1 always runs)')
    p.add_argument('--guidance', default=','.join(VARIANTS),
                   help=f'comma list from {list(VARIANTS)}: fine-tune without teacher (vmoe) and/or with TGR (tgr) '
                        f'for the --finetune-variants other than noise1 (noise1 runs both)')
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--quick', action='store_true', help='CI: synthetic data, width 32, 1 epoch everywhere')
    p.add_argument('--report-only', action='store_true',
                   help="rewrite results.md from the study's results.json without training or evaluating")
    p.add_argument('--publish', default=None, metavar='NAME',
                   help='copy results.md / results.json to benchmarks/results/NAME/ (e.g. upcycle-finetune)')
    return p


# ---------------------------------------------------------------------------------------------------------------
# runs
# ---------------------------------------------------------------------------------------------------------------
def _config(name: str) -> str:
    from timm_tgr.quickstart import config_path
    return config_path(name)


def _dims(args) -> Dict[str, object]:
    import yaml
    with open(_config('fmnist_quick_tgr.yaml')) as f:
        dims = dict(yaml.safe_load(f)['model_kwargs'])
    dims.pop('num_experts')
    return {**dims, **(QUICK_DIMS if args.quick else {})}


def _kv(d: Dict[str, object]) -> List[str]:
    return [f'{k}={v}' for k, v in d.items()]


def _finished(run_dir: str, epochs: int) -> bool:
    return len(read_metrics(os.path.join(run_dir, 'metrics.jsonl'))) >= epochs


def _train(args, name: str, argv: List[str], epochs: int) -> str:
    """One train_tgr.py run in ``<output>/runs/<name>`` (skipped when already finished; a partial one is resumed from
    its newest checkpoint, or set aside and started over when it has none, as the study runner does)."""
    from harness.runner import _resume_checkpoint, _set_aside
    from timm_tgr.train import main as train_main
    run_dir = os.path.join(args.output, 'runs', name)
    if not _finished(run_dir, epochs):
        common = ['--data-dir', args.data_dir, '--output', os.path.join(args.output, 'runs'), '--experiment', name,
                  '--epochs', str(epochs), '--device', args.device, '--no-progress', '--checkpoint-hist', '1']
        rows = read_metrics(os.path.join(run_dir, 'metrics.jsonl'))
        resume = _resume_checkpoint(run_dir, len(rows)) if os.path.isdir(run_dir) else None
        if resume is None and os.path.isdir(run_dir):
            _set_aside(run_dir)
        train_main(argv + common + (QUICK_TRAIN if args.quick else []) + (['--resume', resume] if resume else []))
    return run_dir


def train_dense(args) -> str:
    dims = _dims(args)
    argv = ['-c', _config('fmnist_quick_teacher.yaml'), '--model', DENSE_MODEL, '--seed', '0',
            '--model-kwargs', *_kv(dims)]
    run_dir = _train(args, 'dense', argv, args.dense_epochs)
    return os.path.join(run_dir, 'model_best.pth.tar')


def _student_argv(args, variant: str, seed: int, extra_kwargs: Optional[dict] = None) -> List[str]:
    label, model, guided = VARIANTS[variant]
    argv = ['-c', _config('fmnist_quick_tgr.yaml'), '--model', model, '--seed', str(seed),
            '--model-kwargs', *_kv({**_dims(args), 'num_experts': EXPERTS, **(extra_kwargs or {})})]
    return argv + (['--teacher-kwargs', *_kv({**_dims(args), 'img_size': 28, 'in_chans': 1, 'num_classes': 10})]
                   if guided else ['--teacher', 'none'])


def _finetune_name(variant: str, seed: int, ft: str = 'noise1') -> str:
    return f'upcycled-{variant}-s{seed}' if ft == 'noise1' else f'upcycled-{variant}-{ft}-s{seed}'


def finetune(args, dense_ckpt: str, variant: str, seed: int, ft: str = 'noise1') -> str:
    argv = _student_argv(args, variant, seed, FINETUNES[ft][1]) + [
        '--upcycle-from', dense_ckpt, '--lr', str(args.finetune_lr), '--min-lr', str(args.finetune_lr / 20)]
    if VARIANTS[variant][2]:
        argv += ['--teacher', DENSE_MODEL, '--teacher-checkpoint', dense_ckpt]
    return _train(args, _finetune_name(variant, seed, ft), argv, args.finetune_epochs)


def scratch(args, variant: str, seed: int, teacher_ckpt: str) -> str:
    """The from-scratch run: reproduce.py's CPU tier when given (same recipe), else trained here."""
    if args.scratch_runs:
        run_dir = os.path.join(args.scratch_runs, SCRATCH_RUN[variant].format(seed=seed))
        if not _finished(run_dir, args.scratch_epochs):
            raise FileNotFoundError(f'{run_dir} has no finished {args.scratch_epochs}-epoch run: run the CPU tier '
                                    f'of benchmarks/reproduce.py first, or drop --scratch-runs to train it here.')
        return run_dir
    argv = _student_argv(args, variant, seed)
    if VARIANTS[variant][2]:
        argv += ['--teacher', DENSE_MODEL, '--teacher-checkpoint', teacher_ckpt]
    return _train(args, f'scratch-{variant}-s{seed}', argv, args.scratch_epochs)


# ---------------------------------------------------------------------------------------------------------------
# step 0: the upcycled model against its dense parent, no training
# ---------------------------------------------------------------------------------------------------------------
def _test_loader(args):
    from timm_tgr.data import FASHION_MNIST_MEAN, FASHION_MNIST_STD
    from timm_tgr.data.device_loader import DeviceDataLoader
    return DeviceDataLoader.from_fashion_mnist(args.data_dir, train=False, batch_size=500, mean=FASHION_MNIST_MEAN,
                                               std=FASHION_MNIST_STD, device=args.device)


@torch.no_grad()
def _logits(model, loader):
    """Logits and targets of the whole split, and (MoE) the mean fraction of dropped choices over its batches."""
    out, targets, dropped = [], [], []
    for x, y in loader:
        out.append(model(x).float().cpu())
        targets.append(y.cpu())
        if hasattr(model, 'routing_infos'):
            dropped.append(_dropped(model))
    return torch.cat(out), torch.cat(targets), (statistics.fmean(dropped) if dropped else None)


def _top1(logits: torch.Tensor, targets: torch.Tensor) -> float:
    return 100.0 * (logits.argmax(-1) == targets).float().mean().item()


def _dropped(model) -> float:
    infos = model.routing_infos().values()
    return float(torch.stack([info.dropped_fraction for info in infos]).mean())


def step0(args, dense_ckpt: str) -> dict:
    """Eval-mode top-1 of the dense parent and of the upcycled MoE at two eval capacities, on the test split."""
    import timm
    from timm_tgr.models import load_dense_state_dict, upcycle_from, upcycled_eval_capacity_factor
    kw = dict(_dims(args), img_size=28, in_chans=1, num_classes=10)
    loader = _test_loader(args)
    dense = timm.create_model(DENSE_MODEL, **kw)
    dense.load_state_dict(load_dense_state_dict(dense_ckpt))
    ref, targets, _ = _logits(dense.to(args.device).eval(), loader)
    result = {'dense_top1': _top1(ref, targets), 'test_images': len(targets), 'upcycled': {}}
    for cf in (upcycled_eval_capacity_factor(EXPERTS), 1.05):
        moe = timm.create_model('vmoe_deit_tiny', num_experts=EXPERTS, eval_capacity_factor=cf, **kw)
        moe = upcycle_from(dense_ckpt, moe).to(args.device).eval()
        logits, _, dropped = _logits(moe, loader)
        result['upcycled'][str(cf)] = {
            'eval_capacity_factor': cf, 'top1': _top1(logits, targets),
            'max_abs_logit_diff_rel': float((logits - ref).abs().max() / ref.abs().max()),
            'dropped_fraction': dropped}
    return result


def _model_kwargs(args, ft: str = 'noise1', **kw) -> dict:
    return dict(_dims(args), img_size=28, in_chans=1, num_classes=10, num_experts=EXPERTS, **FINETUNES[ft][1], **kw)


@torch.no_grad()
def train_mode_scale(args, dense_ckpt: str, ft: str) -> float:
    """Step 0 of fine-tuning variant ``ft``: mean over tokens and MoE blocks of E/K * sum of the kept gates in
    training mode (router noise on) on one test batch. The upcycled experts are the dense MLP times E/K, so this is
    the MoE MLP's output scale relative to the dense one (1 in eval mode)."""
    import timm
    from timm_tgr.models import upcycle_from
    moe = upcycle_from(dense_ckpt, timm.create_model('vmoe_deit_tiny', **_model_kwargs(args, ft))).to(args.device)
    x, _ = next(iter(_test_loader(args)))
    torch.manual_seed(0)
    moe.train()(x)
    scales = [(info.gates * info.kept).sum(-1).mean() * EXPERTS / moe.top_k for info in moe.routing_infos().values()]
    return float(torch.stack(scales).mean())


def evaluate_run(args, run_dir: str, ft: str) -> Dict[str, dict]:
    """Test-split top-1 (and dropped choices) of a fine-tuned run's last checkpoint at each of EVAL_CAPACITIES."""
    import timm
    from timm_tgr.models import load_dense_state_dict
    sd = load_dense_state_dict(os.path.join(run_dir, 'last.pth.tar'))  # any checkpoint's student state_dict
    loader, out = _test_loader(args), {}
    for cf in EVAL_CAPACITIES:
        model = timm.create_model('vmoe_deit_tiny', **_model_kwargs(args, ft, eval_capacity_factor=(
            cf if cf == 'dropless' else float(cf))))
        model.load_state_dict(sd)
        logits, targets, dropped = _logits(model.to(args.device).eval(), loader)
        out[cf] = {'top1': _top1(logits, targets), 'dropped_fraction': dropped}
    return out


def finetune_study(args, dense_ckpt: str, runs: Dict[str, Dict[str, List[str]]]) -> dict:
    """Per fine-tuning variant and guidance: step-0 training scale, and mean ± std over seeds of the test top-1 at
    each eval capacity and of the wall time."""
    study = {}
    for ft, by_variant in runs.items():
        entry = {'label': FINETUNES[ft][0], 'model_kwargs': FINETUNES[ft][1],
                 'train_scale_step0': train_mode_scale(args, dense_ckpt, ft), 'guidance': {}}
        for variant, dirs in by_variant.items():
            evals = [evaluate_run(args, d, ft) for d in dirs]
            entry['guidance'][variant] = {
                **{f'top1_eval_{cf}': mean_std([e[cf]['top1'] for e in evals]) for cf in EVAL_CAPACITIES},
                'dropped_eval_1.05': mean_std([e['1.05']['dropped_fraction'] for e in evals]),
                'time_s': mean_std([_final(d)['time_s'] for d in dirs]), 'runs': dirs}
        study[ft] = entry
    return study


# ---------------------------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------------------------
def _final(run_dir: str) -> dict:
    rows = read_metrics(os.path.join(run_dir, 'metrics.jsonl'))
    return {'top1': rows[-1]['eval_top1'], 'best_top1': max(r['eval_top1'] for r in rows), 'epochs': len(rows),
            'time_s': sum(r.get('time_s', 0.) for r in rows)}


def summarize(runs: Dict[str, Dict[str, List[str]]]) -> dict:
    return {kind: {v: {k: mean_std([_final(d)[k] for d in dirs]) for k in ('top1', 'time_s')}
                   for v, dirs in by_variant.items()} for kind, by_variant in runs.items() if by_variant}


def _render_finetune_study(result: dict) -> List[str]:
    study = result.get('finetune_study') or {}
    if not study:
        return []
    lines = ['', f"Fine-tuning from upcycled weights, {result['finetune_epochs']} epoch(s), seeds {result['seeds']}: "
             'test top-1 of the last checkpoint at eval capacity 1.05 / dropless (the upcycled tags\' eval), mean ± '
             'std; MoE output scale at step 0 in training mode (E/K x kept gates; the dense MLP is 1):', '',
             '| fine-tuning | scale at step 0 | guidance | top-1, eval 1.05 | top-1, eval dropless | '
             'wall time per run |', '|---|---|---|---|---|---|']
    for entry in study.values():
        for variant, g in entry['guidance'].items():
            lines.append(f"| {entry['label']} | {entry['train_scale_step0']:.2f} | {VARIANTS[variant][0]} | "
                         f"{fmt(g['top1_eval_1.05'])} | {fmt(g['top1_eval_dropless'])} | "
                         f"{g['time_s']['mean']:.0f} s |")
    best = max(((ft, v, g['top1_eval_dropless']['mean']) for ft, e in study.items() for v, g in e['guidance'].items()
                if g['top1_eval_dropless']['mean'] is not None), key=lambda t: t[2], default=None)
    if best:
        lines += ['', f"Highest mean top-1 at eval dropless: {study[best[0]]['label']} with {VARIANTS[best[1]][0]} "
                      f"({best[2]:.2f})."]
    return lines


def render(result: dict) -> str:
    s0 = result['step0']
    lines = [f"# Sparse upcycling on Fashion-MNIST ({result['environment']['device_name']})", '',
             f"Command: `{result['environment']['command']}`  ", f"Date: {result['environment']['date']}", '',
             f"| model (eval mode, {s0['test_images']:,} test images) | eval capacity factor | top-1 | "
             'max abs Δlogit / max abs dense logit | choices dropped |',
             '|---|---|---|---|---|', f"| dense parent ({DENSE_MODEL}, {result['dense_epochs']} epoch(s)) | | "
             f"{s0['dense_top1']:.2f} | | |"]
    for r in s0['upcycled'].values():
        lines.append(f"| upcycled vmoe_deit_tiny, E={EXPERTS}, step 0 | {r['eval_capacity_factor']:g} | "
                     f"{r['top1']:.2f} "
                     f"| {r['max_abs_logit_diff_rel']:.1e} | {100 * r['dropped_fraction']:.1f} % |")
    lines += ['', f"Seeds {result['seeds']}, mean ± std of the last epoch's top-1 (eval capacity 1.05):", '',
              '| start | epochs | V-MoE | TGR (first half) | wall time per run (V-MoE / TGR) |',
              '|---|---|---|---|---|']
    for kind, label, ep in (('finetune', 'upcycled', result['finetune_epochs']),
                            ('scratch', 'from scratch', result['scratch_epochs'])):
        if kind not in result['summary']:
            continue
        s = result['summary'][kind]
        lines.append(f"| {label} | {ep} | {fmt(s['vmoe']['top1'])} | {fmt(s['tgr']['top1'])} | "
                     f"{s['vmoe']['time_s']['mean']:.0f} s / {s['tgr']['time_s']['mean']:.0f} s |")
    lines += _render_finetune_study(result)
    return '\n'.join(lines) + '\n'


def report_only(args) -> dict:
    """results.md again from ``<output>/results.json`` (and ``--publish``); nothing trains or evaluates."""
    path = os.path.join(args.output, 'results.json')
    if not os.path.isfile(path):
        raise SystemExit(f'--report-only: no {path}; run the study first.')
    with open(path) as f:
        result = json.load(f)
    with open(os.path.join(args.output, 'results.md'), 'w') as f:
        f.write(render(result))
    publish(args.output, args.publish)
    return result


def _environment(argv: List[str], device: str) -> dict:
    import platform
    import timm
    return {'date': time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()), 'device_name': device_name(device),
            'command': 'python benchmarks/upcycle.py ' + ' '.join(argv), 'torch': torch.__version__,
            'timm': timm.__version__, 'python': platform.python_version()}


def _prepare(args) -> None:
    from timm_tgr.data import prepare_fashion_mnist, write_synthetic_fashion_mnist
    if args.quick:
        args.data_dir = write_synthetic_fashion_mnist(args.data_dir or os.path.join(args.output, 'data'), 64, 32)
        args.dense_epochs = args.finetune_epochs = args.scratch_epochs = 1
        args.seeds, args.scratch_runs = args.seeds[:1], None
    else:
        args.data_dir = prepare_fashion_mnist(args.data_dir or 'data')


def _csv(value: str, allowed, flag: str) -> List[str]:
    items = [v.strip() for v in value.split(',') if v.strip()]
    bad = [v for v in items if v not in allowed]
    if bad or not items:
        raise SystemExit(f'{flag}: give a comma list from {list(allowed)}, got {value!r}.')
    return items


def main(argv: Optional[List[str]] = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.report_only:
        return report_only(args)
    fts = ['noise1'] + [ft for ft in _csv(args.finetune_variants, FINETUNES, '--finetune-variants') if ft != 'noise1']
    guidance = _csv(args.guidance, VARIANTS, '--guidance')
    os.makedirs(args.output, exist_ok=True)
    _prepare(args)
    dense_ckpt = train_dense(args)
    result = {'environment': _environment(argv, args.device), 'seeds': args.seeds, 'experts': EXPERTS,
              'dense_epochs': args.dense_epochs, 'finetune_epochs': args.finetune_epochs,
              'finetune_lr': args.finetune_lr, 'scratch_epochs': args.scratch_epochs,
              'scratch_runs': args.scratch_runs, 'step0': step0(args, dense_ckpt)}
    ft_runs = {ft: {v: [finetune(args, dense_ckpt, v, s, ft) for s in args.seeds]
                    for v in (VARIANTS if ft == 'noise1' else guidance)} for ft in fts}
    runs = {'finetune': ft_runs['noise1'],
            'scratch': {} if args.no_scratch else {v: [scratch(args, v, s, dense_ckpt) for s in args.seeds]
                                                   for v in VARIANTS}}
    result['runs'] = runs
    result['summary'] = summarize(runs)
    result['finetune_study'] = finetune_study(args, dense_ckpt, ft_runs)
    with open(os.path.join(args.output, 'results.json'), 'w') as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(args.output, 'results.md'), 'w') as f:
        f.write(render(result))
    print(render(result))
    publish(args.output, args.publish)
    return result


if __name__ == '__main__':
    main()
