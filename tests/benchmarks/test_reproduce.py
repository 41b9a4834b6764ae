"""benchmarks/reproduce.py end to end in --quick mode: tiny models on synthetic Fashion-MNIST-format data.

One module-scoped run (teacher; dense student; V-MoE, TGR, teacher-route at E=4; 1 seed, 2 epochs) feeds every test:
outputs and their fields, --report-only rebuilding the same table, skipping completed runs, resuming
a partial one, refusing to mix budgets, and the exported student matching the training-time evaluation.
"""
import json
import math
import os
import shutil
import time

import pytest


@pytest.fixture(scope='module')
def repro(load_script):
    return load_script('reproduce')


def _argv(out):
    return ['--quick', '--output', str(out), '--seeds', '0', '--variants', 'dense', 'vmoe', 'tgr', 'teacher_route',
            '--main-experts', '4', '--experts', '4', '--device', 'cpu']


@pytest.fixture(scope='module')
def quick_run(repro, tmp_path_factory):
    out = tmp_path_factory.mktemp('reproduce')
    t0 = time.time()
    report = repro.main(_argv(out))
    return out, report, time.time() - t0


def _mtime(path):
    return os.stat(path).st_mtime_ns


def _finite(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def test_quick_run_writes_every_output(quick_run):
    out, report, seconds = quick_run
    for name in ('results.md', 'results.csv', 'results.json', 'consistency.png', 'accuracy_vs_experts.png',
                 'top1_rows.png', 'environment.json', 'settings.json', 'export_check.json'):
        assert os.path.getsize(out / name) > 0, name
    assert report['run_status'] == {'teacher-s0': 'trained', 'dense-s0': 'trained', 'vmoe-E4-s0': 'trained',
                                    'tgr-E4-s0': 'trained', 'teacher_route-E4-s0': 'trained'}
    assert seconds < 60, seconds


def test_results_json_fields_are_finite(quick_run):
    out, _, _ = quick_run
    data = json.loads((out / 'results.json').read_text())
    assert data['schema'] == 'timm_tgr.reproduce/1'
    inv = data['environment']['invocations'][-1]
    for key in ('date', 'command', 'device', 'device_name', 'torch', 'timm', 'timm_tgr', 'python'):
        assert inv[key], key
    assert inv['command'].startswith('python benchmarks/reproduce.py --quick')
    assert data['settings']['quick'] and data['settings']['synthetic_data'] and data['settings']['epochs'] == 2
    groups = {(g['variant'], g['experts']): g for g in data['aggregates']}
    assert set(groups) == {('teacher', None), ('dense', None), ('vmoe', 4), ('tgr', 4), ('teacher_route', 4)}
    assert _finite(groups[('dense', None)]['top1_final']['mean']) and 'adjacent_last' not in groups[('dense', None)]
    for key in ('vmoe', 'tgr', 'teacher_route'):
        g = groups[(key, 4)]
        for stat in ('top1_final', 'top1_best', 'adjacent_last', 'adjacent_mean', 'to_final_25pct', 'to_final_sixth',
                     'entropy', 'entropy_kept', 'dropped_train', 'dropped_eval', 'wall_s'):
            assert _finite(g[stat]['mean']) and g[stat]['n'] == 1, (key, stat)
        assert 0. <= g['adjacent_last']['mean'] <= 1.
        assert 0. <= g['dropped_train']['mean'] <= 1. and 0. <= g['dropped_eval']['mean'] <= 1.
        run = next(r for r in data['runs'] if r['name'] == f'{key}-E4-s0')
        assert g['wall_s']['mean'] == pytest.approx(sum(r['time_s'] for r in run['rows']))
        assert g['dropped_eval']['mean'] == pytest.approx(run['rows'][-1]['dropped_fraction'])
        assert set(g['entropy_per_layer']) == {'L8', 'L10', 'L12'}
        assert all(0. <= v['mean'] <= 1. for v in g['entropy_per_layer'].values())
        assert g['to_final_25pct_epoch'] == 0 and len(g['curves']['consistency_prev']) == 2
    assert _finite(groups[('teacher_route', 4)]['teacher_route_top1_final']['mean'])
    assert _finite(groups[('tgr', 4)]['distill_epochs']['mean'])
    assert 'teacher_route_top1_final' not in groups[('tgr', 4)]
    runs = {r['name']: r for r in data['runs']}
    assert len(runs['tgr-E4-s0']['rows']) == 2 and runs['tgr-E4-s0']['routing_consistency']['to_final_mean'][-1] == 1.
    claims = {c['claim'].split(',')[0]: c for c in data['claims']}
    assert _finite(claims['TGR (full) - V-MoE']['ours']['diff'])
    assert claims['StableMoE - V-MoE']['ours'] is None  # not run
    ex = data['export']
    assert ex['run'] == 'tgr-E4-s0' and ex['matches'], ex  # local-dir: student, no teacher == training-time eval
    assert os.path.isfile(os.path.join(ex['export_dir'], 'model.safetensors'))


def test_results_csv_has_every_epoch_of_every_run(quick_run):
    out, _, _ = quick_run
    import csv
    with open(out / 'results.csv') as f:
        rows = list(csv.DictReader(f))
    assert sorted((r['run'], r['epoch']) for r in rows) == sorted(
        [('teacher-s0', '0'), ('dense-s0', '0'), ('dense-s0', '1')]
        + [(f'{v}-E4-s0', e) for v in ('vmoe', 'tgr', 'teacher_route') for e in ('0', '1')])
    tgr = [r for r in rows if r['run'] == 'tgr-E4-s0']
    assert all(float(r['routing_L8_entropy']) >= 0 for r in tgr) and tgr[-1]['to_final_mean'] == '1.0'
    assert len(tgr[0]['routing_L8_load'].split()) == 4  # per-expert load, E = 4
    assert all(r['eval_top1_teacher_route'] for r in rows if r['variant'] == 'teacher_route')


def test_markdown_table_lists_paper_numbers_and_environment(quick_run):
    out, _, _ = quick_run
    md = (out / 'results.md').read_text()
    for text in ('CI smoke run', '## Main comparison (E = 4)', '| V-MoE | 77.39 |', '| TGR (full) | 77.81 |',
                 'teacher route (upper bound) | 80.19', 'student route (same run) | 74.84', '## Expert sweep',
                 '## Environment', 'torch ', 'timm 1.', 'command: python benchmarks/reproduce.py --quick'):
        assert text in md, text
    assert 'nan' not in md.lower().replace('fashion', '')


def test_report_only_rebuilds_the_same_table(repro, quick_run):
    out, report, _ = quick_run
    before = (out / 'results.md').read_text()
    rebuilt = repro.main(['--report-only', '--output', str(out)])
    assert (out / 'results.md').read_text() == before
    assert rebuilt['aggregates'] == json.loads(json.dumps(report['aggregates']))
    assert rebuilt['report']['command'].endswith('--report-only --output ' + str(out))


def test_rerun_skips_completed_and_resumes_a_partial_run(repro, quick_run, tmp_path):
    out, _, _ = quick_run
    # a copy, so the other tests keep the original; simulate a run killed during its second epoch
    work = tmp_path / 'copy'
    shutil.copytree(out, work)
    for name in os.listdir(work / 'runs'):  # the copy's records hold the original paths: neutral flags
        assert os.path.isfile(work / 'runs' / name / 'reproduce_run.json')
    run = work / 'runs' / 'vmoe-E4-s0'
    full_rows = [json.loads(x) for x in (run / 'metrics.jsonl').read_text().splitlines()]
    (run / 'metrics.jsonl').write_text(json.dumps(full_rows[0]) + '\n')
    shutil.copyfile(run / 'checkpoint-0.pth.tar', run / 'last.pth.tar')
    os.remove(run / 'routing_consistency.json')
    untouched = _mtime(work / 'runs' / 'tgr-E4-s0' / 'metrics.jsonl')
    argv = _argv(work) + ['--data-dir', str(out / 'synthetic-fashion-mnist'), '--no-export']
    report = repro.main(argv)
    assert report['run_status'] == {'teacher-s0': 'skipped', 'dense-s0': 'skipped', 'vmoe-E4-s0': 'resumed',
                                    'tgr-E4-s0': 'skipped', 'teacher_route-E4-s0': 'skipped'}
    assert _mtime(work / 'runs' / 'tgr-E4-s0' / 'metrics.jsonl') == untouched
    resumed = [json.loads(x) for x in (run / 'metrics.jsonl').read_text().splitlines()]
    assert [r['epoch'] for r in resumed] == [0, 1]
    for key in ('train_loss', 'eval_loss', 'eval_top1', 'consistency_prev'):  # resume == uninterrupted run (CPU)
        assert resumed[1][key] == full_rows[1][key], key
    assert len(report['environment']['invocations']) == 2

    # the same run names with another budget: refused rather than mixed
    with pytest.raises(SystemExit, match='trained with other flags'):
        repro.main(argv + ['--epochs', '3'])


# --------------------------------------------------------------------------------------------------
# --jobs N concurrent runs, the estimate printed before training
# --------------------------------------------------------------------------------------------------
def test_two_jobs_train_the_same_runs_concurrently(repro, quick_run, tmp_path):
    out, _, _ = quick_run
    work = tmp_path / 'jobs2'
    argv = _argv(work) + ['--data-dir', str(out / 'synthetic-fashion-mnist'), '--jobs', '2', '--no-export']
    report = repro.main(argv)
    names = ['teacher-s0', 'dense-s0', 'vmoe-E4-s0', 'tgr-E4-s0', 'teacher_route-E4-s0']
    assert report['run_status'] == {n: 'trained' for n in names}
    spans = json.loads((work / 'timing.json').read_text())['run_spans_s']
    assert sorted(spans) == sorted(names)
    events = sorted([(s, 1) for s, _ in spans.values()] + [(e, -1) for _, e in spans.values()])  # ends first
    running = [sum(d for _, d in events[:i + 1]) for i in range(len(events))]
    assert max(running) == 2  # two at once, never more
    for student in ('tgr-E4-s0', 'teacher_route-E4-s0'):  # guided students start after their teacher ended
        assert spans[student][0] >= spans['teacher-s0'][1]
    for name in names:  # a process per run: its own log; the same numbers as the in-process run (CPU, 1 thread)
        assert 'Output:' in (work / 'runs' / name / 'train.log').read_text()
        ours = [json.loads(x) for x in (work / 'runs' / name / 'metrics.jsonl').read_text().splitlines()]
        ref = [json.loads(x) for x in (out / 'runs' / name / 'metrics.jsonl').read_text().splitlines()]
        assert [r['epoch'] for r in ours] == [r['epoch'] for r in ref]
        for a, b in zip(ours, ref):
            for key in ('train_loss', 'eval_loss', 'eval_top1', 'consistency_prev'):
                assert a.get(key) == b.get(key), (name, key)


def test_estimate_is_printed_before_training(repro, quick_run, tmp_path, capsys):
    out, _, _ = quick_run
    work = tmp_path / 'estimate'
    result = repro.main(_argv(work) + ['--data-dir', str(out / 'synthetic-fashion-mnist'), '--estimate-only'])
    printed = capsys.readouterr().out
    assert 'Estimate on cpu' in printed and 'ms/train step' in printed and 'tier full' in printed
    est = result['estimate']
    assert json.loads((work / 'estimate.json').read_text()) == est
    assert not os.path.isdir(work / 'runs') and not os.path.isfile(work / 'settings.json')  # nothing trained
    kinds = est['step_times']
    assert set(kinds) == {'teacher deit3_small_patch16_224', 'deit_tiny_patch16_224', 'vmoe_deit_tiny E=4',
                          'tgr_moe_deit_tiny E=4 + teacher'}
    assert all(_finite(k['train_s_per_step']) and k['train_s_per_step'] > 0 and k['batch_size'] == 16
               for k in kinds.values())
    # 64 training images / batch 16 = 4 steps, 32 test images = 2 eval batches; 1 teacher / 2 student epochs;
    # the teacher-route run evaluates twice per epoch
    t = kinds['tgr_moe_deit_tiny E=4 + teacher']
    assert est['run_seconds']['tgr-E4-s0'] == pytest.approx(2 * (4 * t['train_s_per_step'] + 2 * t['eval_s_per_batch']))
    assert est['run_seconds']['teacher_route-E4-s0'] == pytest.approx(
        2 * (4 * t['train_s_per_step'] + 4 * t['eval_s_per_batch']))
    d = kinds['teacher deit3_small_patch16_224']
    assert est['run_seconds']['teacher-s0'] == pytest.approx(4 * d['train_s_per_step'] + 2 * d['eval_s_per_batch'])
    assert est['serial_s'] == pytest.approx(sum(est['run_seconds'].values())) == pytest.approx(est['scheduled_s'])
    assert f"{est['serial_s']:.0f} s one run after the other" in printed


def test_finished_runs_are_not_estimated(repro, quick_run, capsys):
    out, _, _ = quick_run
    before = (out / 'results.md').read_text()
    est = repro.main(_argv(out) + ['--data-dir', str(out / 'synthetic-fashion-mnist'), '--estimate-only'])['estimate']
    assert set(est['run_seconds'].values()) == {0.} and est['step_times'] == {} and est['scheduled_s'] == 0.
    assert '0 of 5 runs to train' in capsys.readouterr().out
    assert (out / 'results.md').read_text() == before  # an estimate rewrites no table


def test_report_only_reads_folders_of_the_pre_split_script(repro, quick_run, tmp_path):
    """Older output folders have no estimate.json / timing.json / train.log and fewer settings."""
    out, report, _ = quick_run
    work = tmp_path / 'old'
    shutil.copytree(out, work)
    for name in ('estimate.json', 'timing.json'):
        os.remove(work / name)
    settings = json.loads((work / 'settings.json').read_text())
    for key in ('tier', 'jobs', 'threads_per_job', 'device_data', 'budget_s'):
        del settings[key]
    (work / 'settings.json').write_text(json.dumps(settings))
    rebuilt = repro.main(['--report-only', '--output', str(work)])
    md = (work / 'results.md').read_text()
    assert '## Budget' not in md and '## Main comparison (E = 4)' in md
    assert rebuilt['estimate'] is None and rebuilt['timing'] is None
    assert json.loads(json.dumps(rebuilt['aggregates'])) == json.loads(json.dumps(report['aggregates']))


def _group_top1(report, variant):
    g = next(g for g in report['aggregates'] if g['variant'] == variant)
    return g['top1_final']['mean'], g['per_seed']['top1_final']


def test_baseline_study_supplies_rows_without_training_them(repro, quick_run, tmp_path):
    """A study without dense / V-MoE runs takes them from another study's results.json, checked and marked."""
    out, report, _ = quick_run
    work = tmp_path / 'teacher_study'
    shutil.copytree(out, work)
    for name in ('dense-s0', 'vmoe-E4-s0'):
        shutil.rmtree(work / 'runs' / name)
    rebuilt = repro.main(['--report-only', '--output', str(work), '--baseline-study', str(out),
                          '--baseline-variants', 'dense', 'vmoe'])
    for variant in ('dense', 'vmoe', 'tgr'):
        assert _group_top1(rebuilt, variant) == _group_top1(report, variant), variant
    claim = next(c for c in rebuilt['claims'] if c['claim'].startswith('TGR (full) - V-MoE, top-1'))
    want = next(c for c in report['claims'] if c['claim'].startswith('TGR (full) - V-MoE, top-1'))
    assert claim['ours'] == want['ours'] and claim['paired'] == want['paired']
    assert {r['name']: r.get('source') for r in rebuilt['runs']}['vmoe-E4-s0'] == os.path.basename(out)
    assert 'are not trained here' in (work / 'results.md').read_text()
    again = repro.main(['--report-only', '--output', str(work)])  # recorded: a later rebuild keeps the rows
    assert _group_top1(again, 'vmoe') == _group_top1(report, 'vmoe')


def test_baseline_study_refuses_another_recipe_or_a_row_trained_twice(repro, quick_run, tmp_path):
    out, _, _ = quick_run
    other = tmp_path / 'other'
    other.mkdir()
    data = json.loads((out / 'results.json').read_text())
    data['settings']['epochs'] += 1
    (other / 'results.json').write_text(json.dumps(data))
    work = tmp_path / 'work'
    shutil.copytree(out, work)
    with pytest.raises(SystemExit, match=r"epochs: 3 there, 2 here.*Train those rows here"):
        repro.main(['--report-only', '--output', str(work), '--baseline-study', str(other),
                    '--baseline-variants', 'vmoe'])
    work2 = tmp_path / 'work2'
    shutil.copytree(out, work2)
    with pytest.raises(SystemExit, match=r"variants trained in both studies: \['vmoe'\]"):
        repro.main(['--report-only', '--output', str(work2), '--baseline-study', str(out),
                    '--baseline-variants', 'vmoe'])


def test_publish_copies_the_results_not_the_runs(repro, quick_run, tmp_path, monkeypatch):
    out, _, _ = quick_run
    import harness.publish
    monkeypatch.setattr(harness.publish, 'RESULTS_DIR', str(tmp_path / 'results'))
    repro.main(['--report-only', '--output', str(out), '--publish', 'quick'])
    published = sorted(os.listdir(tmp_path / 'results' / 'quick'))
    expected = sorted(f for f in os.listdir(out) if os.path.isfile(out / f) and f.rsplit('.', 1)[-1] in
                      ('md', 'json', 'csv', 'png'))
    assert published == expected and 'results.md' in published and 'top1_rows.png' in published
    assert (tmp_path / 'results' / 'quick' / 'results.json').read_bytes() == (out / 'results.json').read_bytes()
    with pytest.raises(SystemExit, match='folder name'):
        repro.main(['--report-only', '--output', str(out), '--publish', '../elsewhere'])


def test_eval_capacity_reproduces_training_eval_and_drops_nothing_at_e_over_k(quick_run, tmp_path, load_script):
    out, _, _ = quick_run
    module = load_script('eval_capacity')
    work = tmp_path / 'study'
    shutil.copytree(out, work)
    report = module.main(['--output', str(work), '--data-dir', str(out / 'synthetic-fashion-mnist'),
                          '--variants', 'vmoe', 'tgr'])
    for variant in ('vmoe', 'tgr'):
        (row,) = report['rows'][variant]
        metrics = [json.loads(x) for x in (work / 'runs' / row['run'] / 'metrics.jsonl').read_text().splitlines()]
        best = max(metrics, key=lambda r: r['eval_top1'])
        assert row['top1'] == pytest.approx(best['eval_top1'])  # the trainer's own evaluation of that checkpoint
        assert row['no_drop_capacity_factor'] == 4.0 and row['dropped_fraction_no_drop'] == 0.
    assert (work / 'eval_capacity.md').read_text().count('\n| ') == 3


def test_eval_capacity_compares_three_eval_routings(quick_run, load_script):
    """benchmarks/eval_capacity.py on a finished run: as trained (groups of 8 images), each image alone, and
    nothing dropped; the no-drop routing drops nothing and the three share one model (same top-1 scale)."""
    out, report, _ = quick_run
    eval_capacity = load_script('eval_capacity')
    data_dir = report['settings'].get('data_dir') or str(out / 'synthetic-fashion-mnist')
    result = eval_capacity.evaluate_run(str(out / 'runs' / 'vmoe-E4-s0'), data_dir, 'cpu')
    assert result['capacity_group'] == 8 and result['no_drop_capacity_factor'] == 4.0
    assert result['dropped_fraction_no_drop'] == 0.
    assert 0. < result['dropped_fraction_per_image'] <= 1. and 0. <= result['dropped_fraction_trained'] <= 1.
    for mode in ('trained', 'per_image', 'no_drop'):
        assert 0. <= result[f'top1_{mode}'] <= 100.
    table = eval_capacity._table({'vmoe': [result]})
    assert 'each image alone' in table and f"{result['top1_trained']:.2f}" in table
