"""benchmarks/transfer.py --quick end to end (synthetic data, tiny models, 2 seeds): the plan, the class subsets,
the fine-tuning runs' flags, the aggregates against the run folders' own metrics, resumption, --report-only."""
import json
import os
import statistics

import numpy as np
import pytest


@pytest.fixture(scope='module')
def transfer(load_script):
    return load_script('transfer')


@pytest.fixture(scope='module')
def study(transfer, tmp_path_factory):
    out = str(tmp_path_factory.mktemp('transfer'))
    report = transfer.main(['--quick', '--output', out, '--seeds', '0', '1'])
    return out, report


def _last_row(out, name):
    with open(os.path.join(out, 'runs', name, 'metrics.jsonl')) as f:
        return json.loads(f.read().strip().splitlines()[-1])


def test_plan_is_the_issues(transfer, study):
    out, report = study
    names = {r['name'] for r in report['runs']}
    assert names == {'teacher'} | {f'{k}-s{s}' for s in (0, 1) for k in
                                   ('pre-vmoe', 'pre-tgr', 'ft-vmoe_vmoe', 'ft-tgr_vmoe', 'ft-tgr_tgr')}
    assert set(report['run_status'].values()) == {'trained'} and not report['incomplete']
    argv = {n: json.load(open(os.path.join(out, 'runs', n, 'reproduce_run.json')))['argv'] for n in names}

    def flag(name, key):
        a = argv[name]
        return a[a.index(key) + 1] if key in a else None
    # pre-training on classes 0-4, fine-tuning on classes 5-9, 5 classes each
    assert flag('pre-tgr-s1', '--data-dir').endswith('classes_0-4')
    assert flag('ft-tgr_tgr-s1', '--data-dir').endswith('classes_5-9')
    assert all(flag(n, '--num-classes') == '5' for n in names)
    # V-MoE rows fine-tune without a teacher; TGR continued carries the pre-training run's routers over
    start = os.path.join(out, 'runs', 'pre-tgr-s1', 'last.pth.tar')
    assert flag('ft-tgr_vmoe-s1', '--initial-checkpoint') == start and flag('ft-tgr_vmoe-s1', '--teacher') == 'none'
    assert flag('ft-tgr_vmoe-s1', '--model') == 'vmoe_deit_tiny'
    assert flag('ft-tgr_tgr-s1', '--teacher-routers-from') == start
    assert flag('ft-tgr_tgr-s1', '--teacher-checkpoint').endswith(os.path.join('teacher', 'model_best.pth.tar'))
    assert flag('ft-vmoe_vmoe-s0', '--initial-checkpoint').endswith(os.path.join('pre-vmoe-s0', 'last.pth.tar'))
    assert 'num_experts=8' in argv['ft-tgr_tgr-s0'] and 'num_classes=5' in argv['ft-tgr_tgr-s0']
    # the subsets: relabelled 0..4, as many images as the synthetic set has of those classes
    from timm_tgr.data import read_idx
    full = read_idx(os.path.join(out, 'synthetic-fashion-mnist', 'FashionMNIST', 'raw', 'train-labels-idx1-ubyte'))
    fine = read_idx(os.path.join(out, 'data', 'classes_5-9', 'FashionMNIST', 'raw', 'train-labels-idx1-ubyte'))
    assert fine.tolist() == [int(v) - 5 for v in full if v >= 5]


def test_aggregates_match_the_run_folders(study):
    out, report = study
    agg = report['aggregates']
    for variant in ('vmoe_vmoe', 'tgr_vmoe', 'tgr_tgr'):
        rows = [_last_row(out, f'ft-{variant}-s{s}') for s in (0, 1)]
        cons = [100 * r['consistency_pretrained'] for r in rows]
        assert agg[variant]['consistency_pretrained_last']['mean'] == pytest.approx(statistics.mean(cons))
        assert agg[variant]['consistency_pretrained_last']['std'] == pytest.approx(statistics.stdev(cons))
        top1 = [r['eval_top1'] for r in rows]
        assert agg[variant]['top1_final']['mean'] == pytest.approx(statistics.mean(top1))
        adjacent = [100 * r['consistency_prev'] for r in rows]
        assert agg[variant]['adjacent_last']['mean'] == pytest.approx(statistics.mean(adjacent))
        l12 = [100 * r['routing']['11']['consistency_pretrained'] for r in rows]
        assert agg[variant]['consistency_pretrained_per_layer']['L12']['mean'] == pytest.approx(statistics.mean(l12))
        assert all(0 <= c <= 100 and np.isfinite(c) for c in cons)
    assert 'consistency_pretrained' not in _last_row(out, 'pre-tgr-s0')  # pre-training starts from scratch
    md = open(os.path.join(out, 'results.md')).read()
    for text in ('| V-MoE -> V-MoE |', '| TGR -> V-MoE (TGR as initialization only) |',
                 '| TGR -> TGR (TGR continued) |',
                 '86.20 / 89.82', '87.03 / 91.78', '| 50.56 |', '| 73.75 |', 'CI smoke run',
                 'python benchmarks/transfer.py --quick'):
        assert text in md, text


def test_rerun_skips_and_report_only_rebuilds(transfer, study):
    out, report = study
    md = open(os.path.join(out, 'results.md')).read()
    again = transfer.main(['--quick', '--output', out, '--seeds', '0', '1'])
    assert set(again['run_status'].values()) == {'skipped'}
    rebuilt = transfer.main(['--output', out, '--report-only'])
    assert rebuilt['aggregates'] == again['aggregates'] == report['aggregates']
    assert open(os.path.join(out, 'results.md')).read().count('python benchmarks/transfer.py --quick') == 2
    assert md.count('python benchmarks/transfer.py --quick') == 1
    with pytest.raises(SystemExit, match='other flags'):  # another budget into the same folder is refused
        transfer.main(['--quick', '--output', out, '--seeds', '0', '1', '--finetune-epochs', '3'])
