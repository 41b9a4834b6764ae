"""The study's outputs: results.md (tables), results.csv (every epoch of every run), results.json, two plots."""
import csv
import datetime
import logging
import os
from typing import List, Optional

import numpy as np

from .baseline import baseline_runs
from .files import read_json, write_json
from .collect import aggregate, block_label, claims, diff, discover_runs, find, find_row, summarize_run
from .runner import ROOT
from .study import PAPER, SWEEP_VARIANTS, TIERS, VARIANTS, paper_top1

_logger = logging.getLogger('reproduce')

SCHEMA = 'timm_tgr.reproduce/1'
_STYLES = {'vmoe': ('tab:orange', '-'), 'tgr': ('tab:blue', '-'), 'tgr_first': ('tab:green', '--'),
           'tgr_adaptive': ('tab:olive', '--'), 'distill_only': ('tab:purple', ':'),
           'stablemoe': ('tab:red', '-.'), 'teacher_route': ('tab:gray', ':'), 'tgr_last': ('tab:cyan', '-.'),
           'soft_moe': ('tab:pink', '--'), 'expert_choice': ('tab:brown', '--'), 'vmoe_noise1': ('gold', '-'),
           'tgr_noise1': ('navy', '-'), 'tgr_random_teacher': ('grey', ':')}


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')


# --------------------------------------------------------------------------------------------------
# csv
# --------------------------------------------------------------------------------------------------
def _flat_row(s: dict, r: dict, to_final: dict, to_final_mean: dict) -> dict:
    flat = {'run': s['name'], 'variant': s['variant'], 'label': s['label'], 'experts': s['experts'], 'seed': s['seed']}
    for k, v in r.items():
        if k != 'routing':
            flat[k] = v
            continue
        for b, info in sorted(v.items(), key=lambda kv: int(kv[0])):
            for m, mv in info.items():
                flat[f'routing_{block_label(b)}_{m}'] = ' '.join(f'{x:.6g}' for x in mv) if isinstance(mv, list) else mv
    if r['epoch'] in to_final_mean:
        flat['to_final_mean'] = to_final_mean[r['epoch']]
        for b, v in sorted(to_final[r['epoch']].items(), key=lambda kv: int(kv[0])):
            flat[f'routing_{block_label(b)}_to_final'] = v
    return flat


def write_csv(path: str, summaries: List[dict]) -> None:
    rows = []
    for s in summaries:
        cons = s.get('routing_consistency') or {}
        to_final = dict(zip(cons.get('epochs', []), cons.get('to_final', [])))
        to_final_mean = dict(zip(cons.get('epochs', []), cons.get('to_final_mean', [])))
        rows += [_flat_row(s, r, to_final, to_final_mean) for r in s['rows']]
    head = ['run', 'variant', 'label', 'experts', 'seed', 'epoch']
    keys = head + sorted({k for r in rows for k in r} - set(head))
    with open(path, 'w', newline='') as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: ('' if r.get(k) is None else r.get(k)) for k in keys})


# --------------------------------------------------------------------------------------------------
# markdown
# --------------------------------------------------------------------------------------------------
def fmt(stat: Optional[dict], digits: int = 2) -> str:
    if not stat or stat.get('mean') is None:
        return 'n/a'
    s = f"{stat['mean']:.{digits}f}"
    if stat.get('std') is not None:
        s += f" ± {stat['std']:.{digits}f}"
    return s


def md_table(header: List[str], rows: List[List[str]]) -> List[str]:
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '|'.join('---' for _ in header) + '|']
    return lines + ['| ' + ' | '.join(r) + ' |' for r in rows]


def _md_header(report: dict) -> List[str]:
    settings = report['settings']
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
    if settings.get('baseline'):
        b = settings['baseline']
        L += [f"Rows {', '.join(f'`{v}`' for v in b['variants'])} are not trained here: they are the runs of the "
              f"`{b['study']}` study (`{b['path']}`, git {', '.join(b['git']) or 'unknown'}), the same student recipe "
              'and seeds (same seed: same initial weights and data order), checked when this report was built.', '']
    if report.get('incomplete_runs'):
        L += ['Incomplete runs, left out of every table (run the training command again to finish them): '
              + ', '.join(f'`{n}`' for n in report['incomplete_runs']) + '.', '']
    return L


def _pct(stat: Optional[dict]) -> str:
    return 'n/a' if not stat or stat.get('mean') is None else f"{100 * stat['mean']:.1f}"


def _routing_cells(g: dict) -> List[str]:
    """adj. last / mean, to-final @1/6, entropy per layer (router choices), entropy of the kept tokens, dropped
    % train / eval, wall time, distill epochs; '–' for a model without routing."""
    if g['experts'] is None:  # a dense model: nothing routed
        return ['–'] * 6 + [fmt(g.get('wall_s'), 0), '–']
    ent = g.get('entropy_per_layer', {})
    to_final = fmt(g.get('to_final_sixth'), 3) + (f" (ep {g['to_final_sixth_epoch']})" if 'to_final_sixth_epoch' in g
                                                  else '')
    return [fmt(g.get('adjacent_last'), 3), fmt(g.get('adjacent_mean'), 3), to_final,
            ' / '.join(fmt(v, 3) for v in ent.values()) or 'n/a', fmt(g.get('entropy_kept'), 3),
            f"{_pct(g.get('dropped_train'))} / {_pct(g.get('dropped_eval'))}", fmt(g.get('wall_s'), 0),
            fmt(g.get('distill_epochs'), 2) if 'distill_epochs' in g else '–']


def _paper_cell(variant: str) -> str:
    value = paper_top1(variant)
    if value is None:
        return '–'
    return f'{value[0]:.2f}' + ('' if value[1] == 'E=8' else f' ({value[1]})')


def table_rows(groups: List[dict], main_e: int) -> List[tuple]:
    """``(label, group, top-1 key, paper cell)`` per table row, in the table's order (the teacher first; the
    teacher-route runs give two rows: teacher route and student route)."""
    rows = [(g['label'], g, 'top1', '(DeiT-III, pretrained)') for g in groups if g['variant'] == 'teacher']
    for variant in VARIANTS:
        g = find_row(groups, variant, main_e)
        if g is None:
            continue
        if variant == 'teacher_route':
            rows.append((g['label'] + ' (upper bound)', g, 'teacher_route_top1', _paper_cell('teacher_route')))
            rows.append(('student route (same run)', g, 'top1', _paper_cell('student_route')))
        else:
            rows.append((g['label'], g, 'top1', _paper_cell(variant)))
    return rows


def _main_rows(groups: List[dict], main_e: int) -> List[List[str]]:
    out = []
    for label, g, key, paper in table_rows(groups, main_e):
        cells = [label, paper, str(len(g['seeds'])), fmt(g.get(key + '_final')), fmt(g.get(key + '_best'))]
        if g['variant'] == 'teacher':
            cells += ['–'] * 6 + [fmt(g.get('wall_s'), 0), '–']
        elif key == 'teacher_route_top1':
            cells += ['same run'] * 7 + [_routing_cells(g)[-1]]
        else:
            cells += _routing_cells(g)
        out.append(cells)
    return out


def _md_main(groups: List[dict], main_e: int) -> List[str]:
    header = ['variant', 'paper (IN-1K)', 'seeds', 'top-1 final', 'top-1 best', 'adj. cons. last',
              'adj. cons. mean', 'to-final @1/6', 'entropy L8 / L10 / L12', 'entropy of kept tokens',
              '% dropped train / eval', 'wall s per run', 'distill epochs']
    L = [f'## Main comparison (E = {main_e})', ''] + md_table(header, _main_rows(groups, main_e)) + ['']
    L += ['Columns: *top-1 final* = last epoch, *best* = best epoch (per run, then averaged); *adj. cons.* = '
          'fraction of probe tokens whose top-1 expert equals the previous epoch\'s, mean over the MoE layers, at the '
          'last epoch and averaged over epochs; *to-final @1/6* = agreement with the run\'s final routing at the '
          'epoch ending 1/6 of training (0-based epoch index in brackets); *entropy* = normalized routing entropy '
          'of the router\'s choices per MoE layer at the last epoch (Table S2 metric: every token\'s top-1 choice, '
          'kept or dropped); *entropy of kept tokens* = the same over the assignments left after the capacity cut '
          '(mean over layers); *% dropped* = share of top-K choices dropped by capacity, mean over the MoE layers, '
          'in the last training epoch (noisy router, training capacity) and in its evaluation; *wall s per run* = '
          'training + evaluation seconds of a run, summed over its epochs (runs shared the cores: a cost, not a '
          'speed comparison); *distill epochs* = epochs with the distillation term on. Routing metrics come from '
          'the validation pass in eval mode (student router; for the teacher-route run too). The adaptive switch '
          'is this package\'s rule, not in the paper. Paper column: ImageNet-1K, DeiT-Tiny, E=8 (Table 5, '
          'supplement C.3) unless marked "main, E=16" (main table).', '']
    ema = [g for g in groups if g.get('ema_top1_final')]
    if ema:
        L += ['EMA weights (the checkpoint metric of EMA runs):', '']
        L += md_table(['variant', 'E', 'EMA top-1 final', 'EMA top-1 best'],
                      [[g['label'], str(g['experts'] or '–'), fmt(g.get('ema_top1_final')),
                        fmt(g.get('ema_top1_best'))] for g in ema]) + ['']
    return L


def _md_sweep(groups: List[dict], settings: dict) -> List[str]:
    sweep = sorted({g['experts'] for g in groups if g['variant'] in SWEEP_VARIANTS})
    if not (settings['experts'] or len(sweep) > 1):
        return []
    missing = [e for e in settings['experts'] if e not in sweep]
    if len(sweep) <= 1:
        return ['## Expert sweep: V-MoE vs TGR (full schedule)', '',
                f'Not run: no complete V-MoE / TGR runs at E = {", ".join(map(str, missing))} (the same command '
                f'trains them; finished runs are skipped).', '']
    rows, pe = [], PAPER['sweep']
    for e in sweep:
        v, t = find(groups, 'vmoe', e) or {}, find(groups, 'tgr', e) or {}
        d = diff(t.get('top1_final'), v.get('top1_final'))
        i = pe['experts'].index(e) if e in pe['experts'] else None
        paper = [f"{pe['vmoe'][i]:.2f}", f"{pe['tgr'][i]:.2f}", f"{pe['tgr'][i] - pe['vmoe'][i]:+.2f}"] \
            if i is not None else ['–'] * 3
        rows.append([str(e), fmt(v.get('top1_final')), fmt(t.get('top1_final')),
                     'n/a' if d is None else f"{d['diff']:+.2f}" + (f" ± {d['se']:.2f}" if d['se'] else ''),
                     fmt(v.get('adjacent_mean'), 3), fmt(t.get('adjacent_mean'), 3)] + paper)
    return ['## Expert sweep: V-MoE vs TGR (full schedule)', ''] + md_table(
        ['E', 'V-MoE top-1 final', 'TGR top-1 final', 'gain (± SE)', 'V-MoE adj. cons.', 'TGR adj. cons.',
         'paper V-MoE', 'paper TGR', 'paper gain'], rows) + ['']


def _md_claims(report: dict) -> List[str]:
    rows = []
    for c in report['claims']:
        o, pr = c['ours'], c.get('paired')
        ours = 'not run' if o is None else f"{o['diff']:+.3f}" + (f" ± {o['se']:.3f}" if o.get('se') else '')
        paired = '–' if not pr or pr.get('se') is None else f"{pr['diff']:+.3f} ± {pr['se']:.3f} (n={pr['n']})"
        p_value = '–' if not pr or pr.get('p') is None else f"{pr['p']:.3f}"
        same = {True: 'yes', False: 'no', None: '–'}[c.get('same_direction')] if o is not None else '–'
        paper_value = f"{c['paper']:+.2f}" if isinstance(c['paper'], float) else (
            'no number' if c['paper'] is None else str(c['paper']))
        rows.append([c['claim'], paper_value, ours, paired, p_value, same, c.get('verdict', '–')])
    L = ['## The paper\'s findings next to this run', '']
    L += md_table(['finding', 'paper', 'this run: difference of means ± SE (unpaired)',
                   'same-seed difference ± SE', 'paired p', 'same direction', 'verdict'], rows)
    return L + ['', '*same-seed difference*: mean over seeds of (a - b) at the same seed (same initial weights and '
                    'data order), its SE, and the two-sided paired t test\'s p; *verdict*: "reproduces" = the '
                    'direction the paper (or, without a paper number, the method) predicts and paired p < 0.05, '
                    '"does not" = the opposite direction with p < 0.05, "within noise" = p >= 0.05, "–" = no '
                    'prediction or fewer than 2 seeds. The sweep slope is fitted to the same-seed gains. Consistency '
                    'claims are compared as differences TGR - V-MoE.', '']


def _md_export(ex: Optional[dict]) -> List[str]:
    L = ['## Exported student (no teacher)', '']
    if not ex:
        return L + ['Not exported (`--no-export`, or no TGR student run).', '']
    if ex.get('error'):
        return L + [f"Export check failed: {ex['error']}", '']
    return L + [
        f"Best TGR student: run `{ex['run']}` (checkpoint epoch {ex['checkpoint_epoch']}, "
        f"{'EMA' if ex['ema'] else 'raw'} weights), exported with `python -m timm_tgr.export "
        f"{ex['checkpoint_rel']} --out {ex['export_dir_rel']}" + (' --ema' if ex['ema'] else '') + '`, reloaded with '
        f"`timm.create_model('local-dir:{ex['export_dir_rel']}', pretrained=True)` and evaluated without any "
        f"teacher: top-1 {ex['top1_exported']:.2f} vs {ex['top1_training_eval']:.2f} at training time "
        f"(|diff| {abs(ex['top1_exported'] - ex['top1_training_eval']):.3f}; "
        f"{'matches' if ex['matches'] else 'DOES NOT MATCH'} within 0.02).", '']


def _md_budget(report: dict) -> List[str]:
    """The tier, its budget and why, the estimate printed before training, the measured wall time."""
    settings, est, timing = report['settings'], report.get('estimate'), report.get('timing')
    tier = TIERS.get(settings.get('tier') or '')
    if tier is None and not est:
        return []
    L = ['## Budget', '']
    if tier is not None:
        L += [f"Tier `{tier.name}`: {tier.summary}. {tier.why}", '']
    if est:
        L += [f"Estimate before training ({est['device_name']}): {est['serial_s']:.0f} s of runs one after the "
              f"other; {est['scheduled_s']:.0f} s with {est['jobs']} at once if they do not slow each other"
              + (f"; budget {est['budget_s']:.0f} s" if est.get('budget_s') else '') + '. '
              + ' '.join(f"{k}: {v['train_s_per_step'] * 1e3:.1f} ms/step." for k, v in est['step_times'].items()), '']
    if timing:
        L += [f"Measured: {timing['wall_s']:.0f} s wall for the runs of the last training invocation "
              f"({timing['trained']} trained or resumed, {timing['jobs']} at once).", '']
    return L


def _md_environment(report: dict) -> List[str]:
    L = ['## Environment', '', '```']
    for inv in report['environment']['invocations']:
        L += [f"date:    {inv['date']}", f"command: {inv['command']}",
              f"device:  {inv['device']} ({inv['device_name']})",
              f"versions: torch {inv['torch']}, timm {inv['timm']}, timm_tgr {inv['timm_tgr']}, python {inv['python']}"
              f"; git {inv['git']}", '']
    if L[-1] == '':
        L.pop()
    return L + ['```', '', 'Files: results.csv / results.json (every per-epoch metric of every run), consistency.png, '
                           'accuracy_vs_experts.png, top1_rows.png, runs/<variant>-E<E>-s<seed>/ (train_tgr.py run '
                           'folders).', '']


def render_markdown(report: dict) -> str:
    groups, settings = report['aggregates'], report['settings']
    L = _md_header(report) + _md_main(groups, settings['main_experts']) + _md_sweep(groups, settings)
    L += _md_claims(report) + _md_export(report.get('export')) + _md_budget(report) + _md_environment(report)
    return '\n'.join(L)


# --------------------------------------------------------------------------------------------------
# plots
# --------------------------------------------------------------------------------------------------
def _plot_variant(axes, g: dict, variant: str) -> bool:
    color, ls = _STYLES[variant]
    drew = False
    for ax, key in zip(axes, ('consistency_prev', 'to_final_mean')):
        pts = [(e, c) for e, c in zip(g['curve_epochs'], g['curves'].get(key) or []) if c['mean'] is not None]
        if not pts:
            continue
        x = np.array([p[0] for p in pts], dtype=float)
        m = np.array([p[1]['mean'] for p in pts])
        sd = np.array([p[1]['std'] or 0. for p in pts])
        main = variant in ('vmoe', 'tgr')
        label = g['label'] + (' run (student router)' if variant == 'teacher_route' else '')
        ax.plot(x, m, ls, color=color, lw=2.2 if main else 1.2, marker='o', ms=3,
                label=f"{label} (n={len(g['seeds'])})")
        ax.fill_between(x, m - sd, m + sd, color=color, alpha=0.15 if main else 0.07)
        drew = True
    return drew


def plot_consistency(path: str, groups: List[dict], main_e: int) -> bool:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.5))
    drew = False
    for variant in VARIANTS:
        g = find(groups, variant, main_e)
        drew = (g is not None and _plot_variant(axes, g, variant)) or drew
    # the paper's reported levels (ImageNet-1K, 300 epochs): TGR about 0.8, V-MoE 0.5-0.6
    axes[0].axhline(0.8, color='tab:blue', lw=0.8, ls=(0, (1, 3)), label='paper: TGR ~0.8')
    axes[0].axhspan(0.5, 0.6, color='tab:orange', alpha=0.06, label='paper: V-MoE 0.5-0.6')
    axes[1].axhline(0.7, color='tab:blue', lw=0.8, ls=(0, (1, 3)), label='paper: TGR >0.7 by 1/6 of training')
    axes[0].set_title(f'adjacent-epoch routing consistency (E={main_e})')
    axes[1].set_title('agreement with final routing')
    all_epochs = [e for g in groups if g['variant'] in VARIANTS and g['experts'] == main_e for e in g['curve_epochs']]
    for ax in axes:
        if all_epochs:
            ax.set_xlim(min(all_epochs) - 0.3, max(all_epochs) + 0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel('epoch')
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    handles = {}  # one legend for both panels, outside them: the curves stay visible
    for ax in axes:
        handles.update(zip(*reversed(ax.get_legend_handles_labels())))
    fig.legend(list(handles.values()), list(handles), fontsize=7, loc='center left', bbox_to_anchor=(0.78, 0.5))
    axes[0].set_ylabel('fraction of probe tokens, mean over MoE layers')
    fig.suptitle('mean ± std over seeds', fontsize=9)
    fig.tight_layout(rect=(0, 0, 0.78, 1))
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
            axes[0].errorbar([g['experts'] for g in gs], [g['top1_final']['mean'] for g in gs],
                             yerr=[g['top1_final']['std'] or 0. for g in gs], color=color, marker='o', capsize=3,
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


def plot_top1_rows(path: str, groups: List[dict], main_e: int) -> bool:
    """Top-1 per table row: mean ± std over seeds with each seed's value (left), the paper's number (right)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    rows = [(label, g[key + '_final'], paper) for label, g, key, paper in table_rows(groups, main_e)
            if (g.get(key + '_final') or {}).get('mean') is not None]
    if not rows:
        return False
    y = np.arange(len(rows))[::-1]
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.42 * len(rows) + 1.4), sharey=True,
                             gridspec_kw={'width_ratios': [3, 2]})
    for yi, (_, stat, _) in zip(y, rows):
        axes[0].errorbar(stat['mean'], yi, xerr=stat['std'] or 0., fmt='o', color='tab:blue', capsize=3)
        axes[0].plot(stat['values'], [yi] * len(stat['values']), 'x', color='k', ms=4, alpha=0.6)
    for yi, (_, _, paper) in zip(y, rows):
        try:
            axes[1].plot(float(paper.split()[0]), yi, 's', color='tab:gray')
        except ValueError:  # no paper number for this row
            pass
    axes[0].set_yticks(y)
    axes[0].set_yticklabels([r[0] for r in rows], fontsize=8)
    axes[0].set_xlabel('Fashion-MNIST test top-1 (%), final epoch: mean ± std, x = each seed')
    axes[1].set_xlabel("paper's ImageNet-1K top-1 (%), DeiT-Tiny")
    axes[0].set_title(f'this study (E={main_e})', fontsize=9)
    axes[1].set_title('the paper (E=8; dense, Soft-MoE: main table, E=16)', fontsize=9)
    for ax in axes:
        ax.grid(alpha=0.3, axis='x')
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


# --------------------------------------------------------------------------------------------------
# all outputs
# --------------------------------------------------------------------------------------------------
def _optional_json(output: str, name: str, default=None):
    path = os.path.join(output, name)
    return read_json(path) if os.path.isfile(path) else default


def build_report(output: str, report_command: Optional[dict] = None) -> dict:
    """Read every run folder under ``<output>/runs`` and write results.md/csv/json and the plots."""
    runs_dir = os.path.join(output, 'runs')
    records = discover_runs(runs_dir)
    if not records:
        raise SystemExit(f'no runs in {runs_dir}: train first (without --report-only)')
    settings = _optional_json(output, 'settings.json')
    if settings is None:
        raise SystemExit(f"{os.path.join(output, 'settings.json')} is missing: it is written by a training "
                         f"invocation of this script")
    summaries = [summarize_run(r, runs_dir) for r in records]
    if settings.get('baseline_study'):
        base = settings['baseline_study']
        extra, settings['baseline'] = baseline_runs(os.path.join(ROOT, base['study']), base['variants'], settings,
                                                    summaries)
        summaries += extra
    settings['seeds_in_runs'] = sorted({s['seed'] for s in summaries if s['kind'] == 'student'})
    groups = aggregate(summaries)
    report = {
        'schema': SCHEMA, 'settings': settings,
        'environment': _optional_json(output, 'environment.json', {'invocations': []}), 'paper': PAPER,
        'aggregates': groups, 'claims': claims(groups, settings['main_experts']),
        'export': _optional_json(output, 'export_check.json'),
        'estimate': _optional_json(output, 'estimate.json'), 'timing': _optional_json(output, 'timing.json'),
        'incomplete_runs': [s['name'] for s in summaries if not s['complete']], 'runs': summaries,
    }
    if report_command:
        report['report'] = report_command
    with open(os.path.join(output, 'results.md'), 'w') as f:
        f.write(render_markdown(report))
    write_csv(os.path.join(output, 'results.csv'), summaries)
    write_json(os.path.join(output, 'results.json'), report)
    try:
        plot_consistency(os.path.join(output, 'consistency.png'), groups, settings['main_experts'])
        plot_accuracy_vs_experts(os.path.join(output, 'accuracy_vs_experts.png'), groups)
        plot_top1_rows(os.path.join(output, 'top1_rows.png'), groups, settings['main_experts'])
    except ImportError:
        _logger.warning('matplotlib is not installed: no plots (pip install "timm-tgr[plot]")')
    return report
