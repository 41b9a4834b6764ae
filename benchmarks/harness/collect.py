"""From run folders to numbers: per-run summaries, mean ± std over seeds, the paper's findings side by side."""
import math
import os
from typing import Dict, List, Optional, Sequence

import numpy as np

from .files import read_json, read_metrics
from .stats import paired_diff, verdict
from .study import PAPER, SWEEP_VARIANTS, VARIANTS

STAT_KEYS = ('top1_final', 'top1_best', 'ema_top1_final', 'ema_top1_best', 'teacher_route_top1_final',
             'teacher_route_top1_best', 'adjacent_last', 'adjacent_mean', 'to_final_25pct', 'to_final_sixth',
             'entropy', 'entropy_kept', 'dropped_train', 'dropped_eval', 'distill_epochs', 'wall_s')


def finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def mean_std(values: Sequence[Optional[float]]) -> dict:
    vals = [float(v) for v in values if finite(v)]
    if not vals:
        return {'mean': None, 'std': None, 'n': 0, 'values': []}
    std = float(np.std(vals, ddof=1)) if len(vals) > 1 else None
    return {'mean': float(np.mean(vals)), 'std': std, 'n': len(vals), 'values': vals}


def frac_epoch(epochs: int, fraction: float) -> int:
    """0-based index of the epoch that ends ``fraction`` of training (at least 0)."""
    return max(0, math.ceil(round(fraction * epochs, 9)) - 1)


def block_label(b: str) -> str:
    return f'L{int(b) + 1}'  # timm's 0-based block index -> the paper's 1-based layer name


def discover_runs(runs_dir: str) -> List[dict]:
    """The ``reproduce_run.json`` records of every run folder, by name."""
    records = []
    if not os.path.isdir(runs_dir):
        return records
    for name in sorted(os.listdir(runs_dir)):
        path = os.path.join(runs_dir, name, 'reproduce_run.json')
        if os.path.isfile(path):
            records.append(read_json(path))
    return records


# --------------------------------------------------------------------------------------------------
# one run
# --------------------------------------------------------------------------------------------------
def _accuracy(rows: List[dict]) -> dict:
    last, top1 = rows[-1], [r['eval_top1'] for r in rows]
    s = {'top1_final': last['eval_top1'], 'top1_best': max(top1), 'best_epoch': rows[int(np.argmax(top1))]['epoch'],
         'wall_s': float(sum(r.get('time_s', 0.) for r in rows))}
    if any('eval_ema_top1' in r for r in rows):
        s['ema_top1_final'] = last.get('eval_ema_top1')
        s['ema_top1_best'] = max(r['eval_ema_top1'] for r in rows if 'eval_ema_top1' in r)
    if 'eval_top1_teacher_route' in last:
        s['teacher_route_top1_final'] = last['eval_top1_teacher_route']
        s['teacher_route_top1_best'] = max(r['eval_top1_teacher_route'] for r in rows)
    if 'train_distill_active' in last:
        s['distill_epochs'] = float(sum(r.get('train_distill_active', 0.) for r in rows))
        off = [r['epoch'] for r in rows if r.get('train_distill_active', 0.) == 0.]
        s['distill_off_from_epoch'] = off[0] if off else None
    return s


def _routing(rows: List[dict], epochs: int, cons: Optional[dict]) -> dict:
    last = rows[-1]
    vals = [v for v in (r.get('consistency_prev') for r in rows) if finite(v)]
    layers = sorted(last.get('routing', {}).items(), key=lambda kv: int(kv[0]))
    s = {'adjacent_last': last.get('consistency_prev'), 'adjacent_mean': float(np.mean(vals)) if vals else None,
         'entropy': last.get('entropy'), 'entropy_kept': last.get('entropy_kept'),
         'dropped_train': last.get('train_dropped_fraction'), 'dropped_eval': last.get('dropped_fraction'),
         'entropy_per_layer': {block_label(b): v['entropy'] for b, v in layers},
         'dropped_fraction_per_layer': {block_label(b): v['dropped_fraction'] for b, v in layers}}
    if cons is not None:
        to_final = dict(zip(cons['epochs'], cons['to_final_mean']))
        for key, frac in (('to_final_25pct', 0.25), ('to_final_sixth', 1 / 6)):
            e = frac_epoch(epochs, frac)
            s[key] = to_final.get(e)
            s[key + '_epoch'] = e
    return s


def summarize_run(record: dict, runs_dir: str) -> dict:
    """A run's record, its metrics rows (one per epoch) and the statistics the tables use."""
    d = os.path.join(runs_dir, record['name'])
    rows = read_metrics(os.path.join(d, 'metrics.jsonl'))
    rows = sorted({r['epoch']: r for r in rows}.values(), key=lambda r: r['epoch'])
    epochs = record['epochs']
    s = {'name': record['name'], 'kind': record['kind'], 'variant': record['variant'], 'label': record['label'],
         'experts': record['experts'], 'seed': record['seed'], 'epochs': epochs, 'teacher': record.get('teacher'),
         'epochs_done': len(rows), 'complete': len(rows) >= epochs}
    if not rows:
        return {**s, 'rows': [], 'routing_consistency': None}
    s.update(_accuracy(rows))
    cons = None
    if record['kind'] == 'student' and record['experts'] is not None:  # MoE students (dense ones route nothing)
        cpath = os.path.join(d, 'routing_consistency.json')
        cons = read_json(cpath) if os.path.isfile(cpath) else None
        s.update(_routing(rows, epochs, cons))
    return {**s, 'rows': rows, 'routing_consistency': cons}


# --------------------------------------------------------------------------------------------------
# over seeds
# --------------------------------------------------------------------------------------------------
def _curves(runs: List[dict]) -> dict:
    """Per-epoch mean ± std over seeds (for the plots)."""
    epochs = sorted({r['epoch'] for s_ in runs for r in s_['rows']})
    curves = {}
    for key in ('consistency_prev', 'eval_top1'):
        curves[key] = [mean_std([next((r.get(key) for r in s_['rows'] if r['epoch'] == e), None) for s_ in runs])
                       for e in epochs]
    if all(s_.get('routing_consistency') for s_ in runs):
        curves['to_final_mean'] = [
            mean_std([dict(zip(s_['routing_consistency']['epochs'], s_['routing_consistency']['to_final_mean']))
                      .get(e) for s_ in runs]) for e in epochs]
    return {'curve_epochs': epochs, 'curves': curves}


def _group(variant: str, experts, runs: List[dict]) -> dict:
    g = {'variant': variant, 'label': runs[0]['label'], 'experts': experts,
         'seeds': sorted(r['seed'] for r in runs), 'epochs': runs[0]['epochs']}
    g['per_seed'] = {}
    for k in STAT_KEYS:
        if any(k in r for r in runs):
            g[k] = mean_std([r.get(k) for r in runs])
            g['per_seed'][k] = {str(r['seed']): r.get(k) for r in runs if finite(r.get(k))}  # str: JSON keys
    layers = sorted({layer for r in runs for layer in r.get('entropy_per_layer', {})}, key=lambda x: int(x[1:]))
    if layers:
        g['entropy_per_layer'] = {layer: mean_std([r.get('entropy_per_layer', {}).get(layer) for r in runs])
                                  for layer in layers}
    for k in ('to_final_25pct_epoch', 'to_final_sixth_epoch'):
        if k in runs[0]:
            g[k] = runs[0][k]
    if 'distill_off_from_epoch' in runs[0]:
        g['distill_off_from_epoch'] = [r.get('distill_off_from_epoch') for r in runs]
    g.update(_curves(runs))
    return g


def aggregate(summaries: List[dict]) -> List[dict]:
    """One group per (variant, E) over the complete runs: mean ± std of every statistic, curves."""
    groups: Dict[tuple, List[dict]] = {}
    for s in summaries:
        if s['complete']:
            groups.setdefault((s['variant'], s['experts']), []).append(s)
    order = ['teacher'] + list(VARIANTS)
    return [_group(variant, experts, runs) for (variant, experts), runs in
            sorted(groups.items(), key=lambda kv: (kv[0][1] or 0, order.index(kv[0][0])))]


def find(groups: List[dict], variant: str, experts) -> Optional[dict]:
    return next((g for g in groups if g['variant'] == variant and g['experts'] == experts), None)


def diff(a: Optional[dict], b: Optional[dict]) -> Optional[dict]:
    """a - b of two mean/std stats, with the standard error of the difference of means."""
    if not a or not b or a.get('mean') is None or b.get('mean') is None:
        return None
    se = None
    if a.get('std') is not None and b.get('std') is not None:
        se = math.sqrt(a['std'] ** 2 / a['n'] + b['std'] ** 2 / b['n'])
    return {'diff': a['mean'] - b['mean'], 'se': se}


# --------------------------------------------------------------------------------------------------
# the paper's findings
# --------------------------------------------------------------------------------------------------
def _claim(claim: str, paper_value, ours: Optional[dict], direction: Optional[int] = None,
           paired: Optional[dict] = None) -> dict:
    """A finding: the paper's value (None where the paper has no number), ours (difference of seed means, unpaired
    SE) and ``paired`` (same-seed differences, paired t test: :func:`harness.stats.paired_diff`), and, where the
    paper or the method predicts a sign (``direction``), whether ours has it and the ``verdict``."""
    item = {'claim': claim, 'paper': paper_value, 'ours': ours, 'direction': direction, 'paired': paired,
            'verdict': verdict(paired, direction)}
    if ours is not None:
        item['beyond_2se'] = ours['se'] is not None and abs(ours['diff']) > 2 * ours['se']
        if direction is not None:
            item['same_direction'] = (ours['diff'] > 0) == (direction > 0) if ours['diff'] != 0 else False
    return item


def _sweep_claim(groups: List[dict]) -> Optional[dict]:
    """The TGR gain over V-MoE against log2 E: slope here and in the paper (same E values)."""
    sweep_e = sorted({x['experts'] for x in groups if x['variant'] in SWEEP_VARIANTS and x['experts'] is not None})
    gains = {e: paired_diff((find(groups, 'tgr', e) or {}).get('per_seed', {}).get('top1_final'),
                            (find(groups, 'vmoe', e) or {}).get('per_seed', {}).get('top1_final')) for e in sweep_e}
    gains = {e: v for e, v in gains.items() if v is not None}
    if len(gains) < 2:
        return None
    es = sorted(gains)
    slope = float(np.polyfit(np.log2(es), [gains[e]['diff'] for e in es], 1)[0])
    pe = PAPER['sweep']
    pes = [e for e in es if e in pe['experts']]
    paper_slope = None
    if len(pes) >= 2:
        idx = [pe['experts'].index(e) for e in pes]
        paper_slope = round(float(np.polyfit(np.log2(pes), [pe['tgr'][i] - pe['vmoe'][i] for i in idx], 1)[0]), 3)
    return {'claim': f'TGR gain over V-MoE grows with E: slope of the gain vs log2 E over E={es} '
                     '(top-1 points per doubling)',
            'paper': paper_slope, 'ours': {'diff': slope, 'se': None}, 'same_direction': slope > 0,
            'beyond_2se': None, 'gains': {str(e): gains[e] for e in es}}


def find_row(groups: List[dict], variant: str, main_e: int) -> Optional[dict]:
    """The group of a table row: the variant at ``main_e`` experts (a dense variant has none)."""
    return find(groups, variant, main_e if VARIANTS[variant].get('moe', True) else None)


# (finding, variant a, variant b, direction the paper or the method predicts for a - b, its paper value)
_TOP1_CLAIMS = (
    ('V-MoE - dense student', 'vmoe', 'dense', +1, 'main'),
    ('TGR (full) - V-MoE', 'tgr', 'vmoe', +1, 'e8'),
    ('TGR (first half) - TGR (full)', 'tgr_first', 'tgr', +1, 'e8'),
    ('TGR (first half) - V-MoE', 'tgr_first', 'vmoe', +1, 'e8'),
    ('TGR (adaptive switch) - TGR (full)', 'tgr_adaptive', 'tgr', None, None),
    ('distillation only - V-MoE', 'distill_only', 'vmoe', +1, 'e8'),
    ('TGR (full), aligned teacher layers - last teacher layer', 'tgr', 'tgr_last', +1, 'e8'),
    ('StableMoE - V-MoE', 'stablemoe', 'vmoe', -1, 'e8'),
    ('TGR (full) - StableMoE', 'tgr', 'stablemoe', +1, 'e8'),
    ('TGR (full) - Soft-MoE', 'tgr', 'soft_moe', -1, 'main'),
    ('TGR (full) - Expert-Choice', 'tgr', 'expert_choice', None, None),
    ('V-MoE: noise 1.0 - noise 1/E (the default)', 'vmoe_noise1', 'vmoe', None, None),
    ('TGR (full) - V-MoE, both at noise 1.0', 'tgr_noise1', 'vmoe_noise1', +1, None),
    ('TGR (full) - TGR with an untrained teacher', 'tgr', 'tgr_random_teacher', +1, None),
    ('TGR with an untrained teacher - V-MoE', 'tgr_random_teacher', 'vmoe', None, None),
)


def _paper_diff(a: str, b: str, table: Optional[str]):
    """The paper's a - b from the E=8 ablations or the main table (E=16 for Tiny); None when it has no number."""
    values = {'e8': PAPER['top1_e8'], 'main': PAPER['top1_main_e16']}.get(table)
    if values is None or a not in values or b not in values:
        return None
    return round(values[a] - values[b], 2)


def claims(groups: List[dict], main_e: int) -> List[dict]:
    """The paper's findings, each with this run's counterpart (difference of seed means, its standard error)."""
    g = {v: find_row(groups, v, main_e) for v in VARIANTS}

    def st(variant, key='top1_final'):
        return (g.get(variant) or {}).get(key)

    def ps(variant, key='top1_final'):
        return (g.get(variant) or {}).get('per_seed', {}).get(key)

    def compare(a, b, key_a='top1_final', key_b=None):
        key_b = key_b or key_a
        return diff(st(a, key_a), st(b, key_b)), paired_diff(ps(a, key_a), ps(b, key_b))

    p = PAPER['top1_e8']
    out = []
    for name, a, b, d, table in _TOP1_CLAIMS:
        where = ' (paper: main table, E=16)' if table == 'main' else ''
        unpaired, paired = compare(a, b)
        out.append(_claim(f'{name}, top-1 at E={main_e}{where}', _paper_diff(a, b, table), unpaired, d, paired))
    unpaired, paired = compare('teacher_route', 'teacher_route', 'teacher_route_top1_final', 'top1_final')
    out.insert(7, _claim(f'teacher route - student route (same model), top-1 at E={main_e}',
                         round(p['teacher_route'] - p['student_route'], 2), unpaired, +1, paired))
    for a, b, what in (('tgr', 'vmoe', 'default noise 1/E'), ('tgr_noise1', 'vmoe_noise1', 'noise 1.0')):
        unpaired, paired = compare(a, b, 'adjacent_mean')
        out.append(_claim(f'TGR (full) - V-MoE, adjacent-epoch consistency (mean over epochs), {what}, E={main_e}',
                          'about 0.8 vs 0.5-0.6', unpaired, +1, paired))
    unpaired, paired = compare('tgr', 'vmoe', 'to_final_sixth')
    out.append(_claim(f'TGR (full) - V-MoE, to-final consistency after 1/6 of training at E={main_e}',
                      'TGR > 0.70 within the first sixth', unpaired, +1, paired))
    sweep = _sweep_claim(groups)
    return out + ([sweep] if sweep else [])
