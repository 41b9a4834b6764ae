#!/usr/bin/env python
"""How much of a study's top-1 depends on tokens dropped by capacity at evaluation.

A top-1 V-MoE routes eval batches like training ones (V-MoE's code: groups of 8 images, capacity 1.05), so an
image's output depends on its batch mates and an unbalanced router drops tokens there. This script evaluates the
finished runs of a ``benchmarks/reproduce.py`` study on the test split as trained, with each image routed alone
at the same capacity, and with nothing dropped (E/K: the dropless path), and writes
``<output>/eval_capacity.json`` / ``.md`` (``--publish NAME`` copies them next to the study's results).

    python benchmarks/eval_capacity.py --output output/cpu_all --data-dir data --publish cpu_all
"""
import argparse
import json
import os
import statistics
import tempfile
from typing import Dict, List, Optional, Sequence

import torch

from harness.collect import discover_runs
from harness.env import start_study
from harness.files import write_json
from harness.publish import publish

DEFAULT_VARIANTS = ('vmoe', 'vmoe_noise1', 'stablemoe', 'tgr', 'tgr_noise1', 'tgr_first', 'tgr_random_teacher')


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='python benchmarks/eval_capacity.py', description=__doc__.split('\n\n')[0])
    p.add_argument('--output', required=True, help='the study folder (with runs/)')
    p.add_argument('--data-dir', default='data', help='Fashion-MNIST root')
    p.add_argument('--variants', nargs='+', default=list(DEFAULT_VARIANTS), help='which variants to evaluate')
    p.add_argument('--device', default='cpu')
    p.add_argument('--publish', default=None, metavar='NAME', help='copy the results to benchmarks/results/NAME/')
    return p


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, device: str) -> Dict[str, float]:
    """Top-1 (%) and the share of top-K choices dropped by capacity, mean over MoE layers and batches."""
    model.to(device).eval()
    correct = total = 0
    dropped: List[float] = []
    for x, y in loader:
        out = model(x.to(device))
        correct += int((out.argmax(-1).cpu() == y).sum())
        total += y.numel()
        infos = model.routing_infos().values()
        dropped.append(statistics.fmean(float(i.dropped_fraction) for i in infos))
    return {'top1': 100. * correct / total, 'dropped_fraction': statistics.fmean(dropped)}


def _loader(model: torch.nn.Module, data_dir: str):
    from timm.data import create_dataset, create_loader, resolve_data_config
    cfg = resolve_data_config({}, model=model)
    ds = create_dataset('torch/fashion_mnist', root=data_dir, split='validation', is_training=False,
                        input_img_mode='L')
    return create_loader(ds, input_size=cfg['input_size'], batch_size=256, is_training=False,
                         interpolation=cfg['interpolation'], mean=cfg['mean'], std=cfg['std'],
                         crop_pct=cfg['crop_pct'], num_workers=0, use_prefetcher=False)


def eval_modes(moe: torch.nn.Module) -> Dict[str, dict]:
    """The evaluation routings compared, as ``create_model`` kwargs: as trained (the model's own eval capacity and
    routing group: V-MoE's code routes eval batches in the training groups), each image alone at the same
    capacity (outputs independent of the batch), and nothing dropped (capacity E/K: dropless, also
    batch-independent)."""
    modes = {'trained': {}, 'no_drop': {'eval_capacity_factor': float(moe.num_experts) / moe.top_k}}
    if getattr(moe, 'capacity_group', 'sample') != 'sample':
        modes['per_image'] = {'eval_capacity_group': 'sample'}
    return modes


def evaluate_run(run_dir: str, data_dir: str, device: str) -> Optional[dict]:
    """The run's best checkpoint under every routing of :func:`eval_modes`: ``top1_<mode>``,
    ``dropped_fraction_<mode>`` (and ``top1`` / ``top1_no_drop`` as before)."""
    import timm
    from timm_tgr.export import main as export_main
    ckpt = os.path.join(run_dir, 'model_best.pth.tar')
    if not os.path.isfile(ckpt):
        return None
    with tempfile.TemporaryDirectory() as d:
        export_main([ckpt, '--out', d])
        model = timm.create_model(f'local-dir:{d}', pretrained=True)
        moe = next(iter(model.get_moe_layers().values()))
        loader = _loader(model, data_dir)
        result = {'eval_capacity_factor': moe.current_capacity_factor() if hasattr(moe, 'current_capacity_factor')
                  else None, 'capacity_group': getattr(moe, 'capacity_group', None)}
        for mode, kwargs in eval_modes(moe).items():
            if kwargs:
                model = timm.create_model(f'local-dir:{d}', pretrained=True, **kwargs)
            r = evaluate(model, loader, device)
            result[f'top1_{mode}'], result[f'dropped_fraction_{mode}'] = r['top1'], r['dropped_fraction']
    result['top1'], result['dropped_fraction'] = result['top1_trained'], result['dropped_fraction_trained']
    result['no_drop_capacity_factor'] = float(moe.num_experts) / moe.top_k
    return result


def _table(rows: Dict[str, List[dict]]) -> str:
    def ms(vals):
        vals = [v for v in vals if v is not None]
        if not vals:
            return '–'
        return f'{statistics.fmean(vals):.2f} ± {statistics.stdev(vals):.2f}' if len(vals) > 1 else f'{vals[0]:.2f}'

    def col(rs, key, scale=1.):
        return ms([None if r.get(key) is None else scale * r[key] for r in rs])

    def delta(rs, mode):
        return ms([None if r.get(f'top1_{mode}') is None else r[f'top1_{mode}'] - r['top1_trained'] for r in rs])

    lines = ['| variant | seeds | top-1 as trained (training groups) | % dropped | top-1, each image alone | '
             '% dropped | top-1, nothing dropped (cf E/K) | alone - trained | no drop - trained |',
             '|---|---|---|---|---|---|---|---|---|']
    for variant, rs in rows.items():
        if rs:
            lines.append(f"| {variant} | {len(rs)} | {col(rs, 'top1_trained')} | "
                         f"{col(rs, 'dropped_fraction_trained', 100.)} | {col(rs, 'top1_per_image')} | "
                         f"{col(rs, 'dropped_fraction_per_image', 100.)} | {col(rs, 'top1_no_drop')} | "
                         f"{delta(rs, 'per_image')} | {delta(rs, 'no_drop')} |")
    return '\n'.join(lines) + '\n'


def main(argv: Optional[Sequence[str]] = None) -> dict:
    argv, args = start_study(build_parser(), argv)
    runs_dir = os.path.join(args.output, 'runs')
    records = [r for r in discover_runs(runs_dir) if r['variant'] in args.variants and r['kind'] == 'student']
    rows: Dict[str, List[dict]] = {v: [] for v in args.variants}
    for rec in sorted(records, key=lambda r: (args.variants.index(r['variant']), r['name'])):
        res = evaluate_run(os.path.join(runs_dir, rec['name']), args.data_dir, args.device)
        if res is not None:
            rows[rec['variant']].append({'run': rec['name'], 'seed': rec['seed'], **res})
            print(json.dumps(rows[rec['variant']][-1]), flush=True)
    report = {'command': 'python benchmarks/eval_capacity.py ' + ' '.join(argv), 'rows': rows}
    write_json(os.path.join(args.output, 'eval_capacity.json'), report)
    with open(os.path.join(args.output, 'eval_capacity.md'), 'w') as f:
        f.write('# Top-1 under three evaluation routings: as trained, each image alone, nothing dropped\n\n'
                + _table(rows))
    publish(args.output, args.publish)
    return report


if __name__ == '__main__':
    main()
