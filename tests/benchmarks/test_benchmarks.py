"""CPU smoke test of benchmarks/throughput.py: it runs, writes the JSON it promises, and judges goals right."""
import json
import os

import pytest
import torch


@pytest.fixture(scope='module')
def throughput(load_script):
    return load_script('throughput')


_QUICK = ['--quick', '--device', 'cpu', '--experts', '8', '--steps', '1', '--repeats', '1', '--warmup', '0',
          '--threads', '1']


def test_quick_cpu_run_writes_schema(throughput, tmp_path):
    out = tmp_path / 'bench.json'
    threads = torch.get_num_threads()
    result = throughput.main(_QUICK + ['--out', str(out)])
    assert torch.get_num_threads() == threads  # --threads is undone for the rest of the process
    data = json.loads(out.read_text())
    assert data['schema'] == throughput.SCHEMA
    for key in ('date', 'command', 'environment', 'settings', 'memory_metric', 'memory_note', 'results',
                'tgr_overhead', 'goals', 'goals_evaluated', 'goals_note'):
        assert key in data, key
    env = data['environment']
    assert env['device_type'] == 'cpu' and env['device_name']
    assert env['torch'] == torch.__version__ and env['timm']
    s = data['settings']
    assert (s['batch_size'], s['img_size'], s['experts'], s['compile_modes']) == (8, 32, [8], ['eager'])
    assert data['memory_metric'] == 'cpu_rss_delta'
    assert data['goals_evaluated'] is False and 'not evaluated on CPU' in data['goals_note']

    rows = data['results']
    kinds = {(r['variant'], r['phase']) for r in rows}
    assert kinds == {('dense', 'train'), ('vmoe', 'train'), ('tgr', 'train'), ('dense', 'infer'),
                     ('teacher', 'infer'), ('vmoe', 'infer')}
    for r in rows:
        for key in ('size', 'variant', 'model', 'num_experts', 'expert_impl', 'phase', 'compile', 'img_per_s',
                    'img_per_s_repeats', 'step_ms', 'warmup_s', 'mem_mb', 'mem_metric', 'ratio_to_dense'):
            assert key in r, key
        assert r['img_per_s'] > 0 and r['step_ms'] > 0 and len(r['img_per_s_repeats']) == 1
        assert r['compile'] is False and r['size'] == 'tiny'
        if r['variant'] == 'teacher':
            assert r['ratio_to_dense'] is None and r['teacher'] == 'deit3_small_patch16_224'
        else:
            assert r['ratio_to_dense'] > 0
        if r['variant'] == 'dense':
            assert r['ratio_to_dense'] == 1.0
        if r['variant'] in ('vmoe', 'tgr'):
            assert r['num_experts'] == 8 and r['expert_impl'] == 'bmm'

    (o,) = data['tgr_overhead']
    assert o['ratio'] > 0 and o['goal_max'] == 1.05
    assert o['ratio'] == pytest.approx(o['tgr_step_ms'] / (o['vmoe_step_ms'] + o['teacher_forward_ms']))
    assert data['goals'] and all(g['pass'] is None and g['evaluated'] is False for g in data['goals'])
    assert result['out'] == str(out)


def _row(variant, size, phase, ips, e=None, compiled=False, batch=256):
    return {'variant': variant, 'size': size, 'phase': phase, 'img_per_s': ips, 'step_ms': 1e3 * batch / ips,
            'num_experts': e, 'expert_impl': None if e is None else 'bmm', 'compile': compiled,
            'ratio_to_dense': None}


def test_goals_on_cuda_pass_and_fail(throughput):
    dense_t, dense_i = _row('dense', 'small', 'train', 1000.), _row('dense', 'small', 'infer', 3000.)
    rows = [
        dense_t, dense_i,
        _row('vmoe', 'small', 'train', 950., e=8),     # 0.95 >= 0.90: pass
        _row('vmoe', 'small', 'train', 700., e=128),   # 0.70 <  0.75: fail
        _row('vmoe', 'small', 'infer', 2700., e=8),    # 0.90 <  0.95: fail
        _row('teacher', 'small', 'infer', 2560.),      # 100 ms per batch of 256
        _row('tgr', 'small', 'train', 700., e=8),
    ]
    for r in rows:
        if r['variant'] in ('vmoe', 'tgr'):
            dense = dense_t if r['phase'] == 'train' else dense_i
            r['ratio_to_dense'] = r['img_per_s'] / dense['img_per_s']
    overheads = throughput.tgr_overhead(rows)
    (o,) = overheads
    # TGR 365.7 ms vs (V-MoE 269.5 + teacher 100) * 1.05 = 388: pass
    assert o['ratio'] == pytest.approx((256 / 700) / (256 / 950 + 256 / 2560))
    goals = throughput.evaluate_goals(rows, overheads, on_cuda=True)
    verdicts = [(g['threshold'], g['pass']) for g in goals]
    assert verdicts == [(0.90, True), (0.75, False), (0.95, False), (1.05, True)]
    assert all(g['pass'] is None for g in throughput.evaluate_goals(rows, overheads, on_cuda=False))


def test_dropless_targets_judged_on_every_device(throughput):
    """Upcycled eval time <= 1.10x dense and dropless train step <= the capacity path's, on CPU too."""
    rows = [_row('dense', 'small', 'infer', 100., batch=16)]
    for path, ips in (('capacity', 40.), ('dropless', 95.)):  # 2.5x and 1.05x the dense time
        rows.append(dict(_row('upcycled', 'small', 'infer', ips, e=8, batch=16), moe_path=path))
    for path, ips in (('capacity', 50.), ('dropless', 45.)):  # dropless 1.11x the capacity step time: fail
        rows.append(dict(_row('vmoe', 'tiny', 'train', ips, e=16, batch=16), moe_path=path))
    comparisons = throughput.dropless_comparisons(rows)
    assert [(c['kind'], c['moe_path'], round(c['ratio'], 3), c['goal_max']) for c in comparisons] == [
        ('upcycled_eval_vs_dense', 'capacity', 2.5, None), ('upcycled_eval_vs_dense', 'dropless', 1.053, 1.10),
        ('dropless_vs_capacity_vmoe_train', 'dropless', 1.111, 1.0)]
    goals = throughput.evaluate_goals(rows, [], on_cuda=False, comparisons=comparisons)
    judged = [(g['threshold'], g['pass']) for g in goals if g['evaluated']]
    assert judged == [(1.10, True), (1.0, False)]


def test_quick_upcycled_rows(throughput, tmp_path):
    """The upcycled rows (capacity buffer at C = S and dropless) next to dense, at the smoke size."""
    out = tmp_path / 'bench.json'
    throughput.main(_QUICK + ['--variants', 'dense,upcycled', '--modes', 'infer', '--moe-paths', 'capacity,dropless',
                              '--out', str(out)])
    data = json.loads(out.read_text())
    assert [(r['variant'], r['moe_path']) for r in data['results']] == [
        ('dense', None), ('upcycled', 'capacity'), ('upcycled', 'dropless')]
    assert [c['moe_path'] for c in data['dropless']] == ['capacity', 'dropless']
    assert [g['evaluated'] for g in data['goals'] if 'upcycled eval' in g['goal']] == [True]
    assert 'dropless targets are evaluated on every device' in data['goals_note']


def test_dropless_preset(throughput):
    args = throughput.parse_args(['--device', 'cpu', '--preset', 'dropless'])
    assert (args.batch_size, args.img_size, args.compile_modes) == (16, 224, ['eager'])
    rows = [tuple(r) for r in args.row_specs]
    assert ('small', 'upcycled', 'infer', 8, 'dropless', 'any') in rows
    assert {('tiny', 'vmoe', 'train', 16, p, 'any') for p in ('capacity', 'dropless')} <= set(rows)
    assert all(r[-1] == 'cuda' for r in rows if r[3] == 128)  # the GPU rows
    args = throughput.parse_args(['--device', 'cpu', '--preset', 'dropless', '--batch-size', '4'])
    assert args.batch_size == 4


def test_quick_smoke_run_never_writes_the_committed_results(throughput):
    """The documented smoke run (--quick) writes under the git-ignored output/, never over benchmarks/results/."""
    cpu = torch.device('cpu')
    quick = throughput.default_out(throughput.parse_args(['--quick', '--device', 'cpu']), cpu)
    assert quick == os.path.join(throughput._ROOT, 'output', 'throughput-cpu-quick.json')
    measured = throughput.default_out(throughput.parse_args(['--device', 'cpu']), cpu)
    assert measured == os.path.join(throughput._ROOT, 'benchmarks', 'results', 'throughput-cpu.json')
    given = throughput.parse_args(['--quick', '--device', 'cpu', '--out', 'x.json'])
    assert throughput.default_out(given, cpu) == 'x.json'


def test_cli_validation(throughput):
    args = throughput.parse_args(['--quick', '--device', 'cpu'])
    assert (args.img_size, args.models, args.compile_modes, args.amp_dtype) == (32, ['tiny'], ['eager'], 'float32')
    args = throughput.parse_args(['--device', 'cpu', '--compile', '--models', 'small', '--experts', '8,128'])
    assert args.compile_modes == ['eager', 'compile'] and args.experts == [8, 128] and args.models == ['small']
    for bad in (['--models', 'huge'], ['--experts', 'eight'], ['--modes', 'fit'], ['--img-size', '30'],
                ['--amp-dtype', 'int8'], ['--expert-impl', 'loop'], ['--moe-paths', 'padded'],
                ['--preset', 'everything']):
        with pytest.raises(SystemExit):
            throughput.parse_args(['--device', 'cpu'] + bad)
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match='no CUDA device'):
            throughput.parse_args(['--device', 'cuda'])


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get('TIMM_TGR_BENCH_COMPILE'),
                    reason='torch.compile of a full ViT takes minutes on a small CPU; set TIMM_TGR_BENCH_COMPILE=1')
def test_quick_cpu_compile_row(throughput, tmp_path):
    out = tmp_path / 'bench.json'
    throughput.main(_QUICK + ['--variants', 'dense,vmoe', '--modes', 'infer', '--compile-modes', 'compile',
                              '--warmup', '1', '--out', str(out)])
    rows = json.loads(out.read_text())['results']
    assert [(r['variant'], r['compile']) for r in rows] == [('dense', True), ('vmoe', True)]
    assert all(r['img_per_s'] > 0 and r['ratio_to_dense'] > 0 for r in rows)
