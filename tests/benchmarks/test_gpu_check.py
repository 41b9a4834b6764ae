"""benchmarks/gpu_check.py: its --dry-run (the same code as on the GPU, on the CPU at tiny sizes) writes every section
with numbers that follow from what it measured; the row plan covers the GPU grid; a section past its limit is cut."""
import json
import os
import re
import statistics
import sys
import time

import pytest


@pytest.fixture(scope='module')
def gpu_check(load_script):
    return load_script('gpu_check')


@pytest.fixture(scope='module')
def dry_run(gpu_check, tmp_path_factory):
    """One dry run of every section (about 30-60 s on 2 CPU cores): (report, out folder, wall seconds). Its budget is
    generous, with the sections' limits scaled alike, so that a CPU starved by other work does not cut a section
    (cutting has its own tests)."""
    out = tmp_path_factory.mktemp('gpu_check_out')
    work = tmp_path_factory.mktemp('gpu_check_work')
    t0 = time.monotonic()
    report = gpu_check.main(['--dry-run', '--out', str(out), '--work-dir', str(work), '--budget-s', '1200'])
    return report, out, time.monotonic() - t0


def _key(r):
    return tuple(r.get(k) for k in ('size', 'variant', 'phase', 'num_experts', 'expert_impl', 'moe_path', 'compile'))


def test_row_plan_covers_the_gpu_grid_with_baselines_first(gpu_check):
    plan = gpu_check.plan_rows()
    keys = [_key(r) for r in plan]
    assert len(keys) == len(set(keys)), 'a row is planned twice'
    moe_paths = {('capacity', 'bmm'), ('capacity', 'grouped_mm'), ('dropless', 'bmm')}
    for size, e in (('tiny', 16), ('small', 8)):
        for compiled in (False, True):
            mine = [r for r in plan if r['size'] == size and r['compile'] == compiled]
            for phase in ('train', 'infer'):
                assert [r for r in mine if r['variant'] == 'dense' and r['phase'] == phase]
                assert {(r['moe_path'], r['expert_impl']) for r in mine
                        if r['variant'] == 'vmoe' and r['phase'] == phase and r['num_experts'] == e} == moe_paths
            assert {(r['moe_path'], r['expert_impl']) for r in mine if r['variant'] == 'tgr'} == moe_paths
            assert {(r['moe_path'], r['expert_impl']) for r in mine if r['variant'] == 'upcycled'} == moe_paths
            assert [r for r in mine if r['variant'] == 'teacher']
    # what a ratio needs comes first: the dense row of the same size/phase/mode, and for TGR its V-MoE and teacher rows
    for i, r in enumerate(plan):
        before = plan[:i]
        same = dict(size=r['size'], compile=r['compile'])
        if r['variant'] in ('vmoe', 'tgr', 'upcycled'):
            assert any(b['variant'] == 'dense' and b['phase'] == r['phase'] and all(b[k] == v for k, v in same.items())
                       for b in before), r
        if r['variant'] == 'tgr':
            assert any(_key(b) == _key(dict(r, variant='vmoe')) for b in before), r
            assert any(b['variant'] == 'teacher' and all(b[k] == v for k, v in same.items()) for b in before), r
    # the goal rows (Small E=8 compiled train) come before any row that is not needed for a goal
    first_compiled = next(i for i, r in enumerate(plan) if r['compile'])
    assert [(r['variant'], r['phase'], r['size']) for r in plan[first_compiled:first_compiled + 4]] == [
        ('dense', 'train', 'small')] + [('vmoe', 'train', 'small')] * 3


def test_a_section_past_its_limit_is_cut(gpu_check, tmp_path):
    t0 = time.monotonic()
    res = gpu_check.run_child([sys.executable, '-c', 'import time; print("started", flush=True); time.sleep(60)'],
                              1.5, gpu_check.child_env(), str(tmp_path / 'log'), 'sleep')
    assert res['timed_out'] and res['returncode'] is not None and time.monotonic() - t0 < 15
    assert 'started' in res['output_tail']


def test_throughput_rows_that_do_not_fit_are_skipped_with_the_reason(gpu_check, tmp_path):
    run = gpu_check.ThroughputRun(dry_run=True, deadline_ts=time.time() - 1, out_path=str(tmp_path / 't.json'))
    section = run.run()
    assert section['status'] == 'done' and section['rows'] == [] and section['errors'] == []
    assert sorted(_key(r) for r in section['skipped']) == sorted(_key(r) for r in gpu_check.plan_rows())
    budget = [r for r in section['skipped'] if r['reason'].startswith('budget')]
    assert [_key(r) for r in budget] == [_key(r) for r in gpu_check._core('tiny', False)]
    assert json.loads((tmp_path / 't.json').read_text())['skipped'] == section['skipped']


def test_junit_outcomes(gpu_check, tmp_path):
    xml = tmp_path / 'j.xml'
    xml.write_text('<testsuites><testsuite><testcase classname="a" name="ok" time="0.5"/>'
                   '<testcase classname="a" name="bad" time="1"><failure message="boom">trace</failure></testcase>'
                   '<testcase classname="b" name="skip"><skipped message="needs a CUDA device"/></testcase>'
                   '</testsuite></testsuites>')
    j = gpu_check.parse_junit(str(xml))
    assert [(t['id'], t['outcome'], t['message']) for t in j['tests']] == [
        ('a::ok', 'passed', None), ('a::bad', 'failed', 'boom'), ('b::skip', 'skipped', 'needs a CUDA device')]
    assert j['counts'] == {'passed': 1, 'failed': 1, 'error': 0, 'skipped': 1}
    assert 'error' in gpu_check.parse_junit(str(tmp_path / 'missing.xml'))


def test_dry_run_report_and_out_files(gpu_check, dry_run):
    report, out, wall = dry_run
    assert report['schema'] == gpu_check.SCHEMA and report['dry_run'] and report['status'] == 'complete'
    assert list(report['sections']) == list(gpu_check.SECTIONS)
    for name, sec in report['sections'].items():
        assert sec['wall_s'] <= sec['limit_s'] + gpu_check.GRACE_S + 5, name
    assert report['wall_s'] <= report['budget_s'] and wall < report['budget_s'] + 30
    # what the device tool brings back: at most 8 files, plain names; the JSON on disk is the report
    files = sorted(os.listdir(out))
    assert files == ['gpu_check.json', 'study_estimate.json', 'study_results.json', 'study_results.md']
    assert all(re.fullmatch(r'[A-Za-z0-9._-]+', f) for f in files)
    assert json.loads((out / 'gpu_check.json').read_text()) == json.loads(json.dumps(report, default=str))
    assert report['sections']['deepspeed']['status'] == 'skipped' and report['sections']['deepspeed']['reason']


def test_dry_run_pytest_section(dry_run):
    sec = dry_run[0]['sections']['pytest']
    assert sec['returncode'] == 0 and not sec['timed_out']
    ids = [t['id'] for t in sec['tests']]
    assert any(i.endswith('test_dropless_has_no_host_sync_in_bf16') for i in ids)
    assert any(i.endswith('test_cuda_batches_match_cpu_and_keep_pixels') for i in ids)
    assert any('grouped_mm_matches_float64_reference' in i and 'cuda' in i for i in ids)
    assert sum(sec['counts'].values()) == len(ids) > 0
    if not sec['cuda_tests_ran']:  # no CUDA here: every gpu test skipped, and the section says so
        assert sec['counts']['skipped'] == len(ids) and sec['status'].startswith('nothing ran')


def test_dry_run_throughput_ratios_follow_from_the_measured_rows(gpu_check, dry_run):
    sec = dry_run[0]['sections']['throughput']
    assert sec['status'] == 'done' and sec['errors'] == [] and sec['goals_meaningful'] is False
    rows = sec['rows']
    planned = {_key(r) for r in gpu_check.plan_rows()}
    assert [_key(r) for r in rows] == [_key(r) for r in gpu_check._core('tiny', False)]
    assert {_key(r) for r in rows} | {_key(r) for r in sec['skipped']} == planned
    batch = sec['settings']['batch_size']
    by_key = {_key(r): r for r in rows}
    for r in rows:
        assert r['img_per_s'] == pytest.approx(statistics.median(r['img_per_s_repeats']))
        assert r['step_ms'] == pytest.approx(1e3 * batch / r['img_per_s']) and r['img_per_s'] > 0
        if r['variant'] in ('vmoe', 'tgr', 'upcycled'):
            dense = by_key[('tiny', 'dense', r['phase'], None, None, None, False)]
            assert r['ratio_to_dense'] == pytest.approx(r['img_per_s'] / dense['img_per_s'])

    def ms(**kw):
        (r,) = [r for r in rows if all(r[k] == v for k, v in kw.items())]
        return r['step_ms']
    (o,) = sec['tgr_overhead']
    expected = ms(variant='tgr') / (ms(variant='vmoe', phase='train', moe_path='capacity', expert_impl='bmm')
                                    + ms(variant='teacher'))
    assert o['ratio'] == pytest.approx(expected)
    (up,) = [c for c in sec['dropless'] if c['kind'] == 'upcycled_eval_vs_dense']
    assert up['ratio'] == pytest.approx(ms(variant='upcycled') / ms(variant='dense', phase='infer'))

    # the three kinds of goal are there (MoE train / dense, TGR overhead, upcycled eval), each with the value computed
    # above and its verdict; on the GPU the train goal that counts is Small E=8 compiled, here Tiny E=16 eager
    goals = {g['goal']: g for g in sec['goals']}
    train = [g for n, g in goals.items() if n.startswith('vmoe_deit_tiny E=16') and 'train eager / dense' in n]
    assert sorted(re.search(r'\[(\w+)\]', g['goal']).group(1) for g in train) == ['bmm', 'dropless', 'grouped_mm']
    for g in train:
        assert g['value'] == pytest.approx(by_key[tuple(g['row'][k] for k in (
            'size', 'variant', 'phase', 'num_experts', 'expert_impl', 'moe_path', 'compile'))]['ratio_to_dense'])
    (tgr_goal,) = [g for n, g in goals.items() if 'TGR step / (V-MoE step + teacher fwd)' in n]
    (up_goal,) = [g for n, g in goals.items() if 'upcycled eval time / dense' in n]
    assert tgr_goal['value'] == pytest.approx(expected) and up_goal['value'] == pytest.approx(up['ratio'])
    for g in sec['goals']:
        assert g['pass'] == (g['value'] >= g['threshold'] if g['direction'] == '>=' else g['value'] <= g['threshold'])
    # one profiled step (the dry run profiles the first goal row whatever its verdict), of a measured row
    (prof,) = sec['profiles']
    assert _key(prof['row']) in by_key and prof['goals'] and prof['top']
    assert 0 < sum(t['share'] for t in prof['top']) <= 1 + 1e-6 and prof['total_us'] > 0


def test_dry_run_study_section(dry_run):
    report, out, _ = dry_run
    sec = report['sections']['study']
    assert sec['status'] == 'done', sec.get('process', {}).get('output_tail')
    est = json.loads((out / 'study_estimate.json').read_text())
    assert sec['estimate']['scheduled_s'] == est['scheduled_s'] and est['budget_s'] == sec['training_budget_s']
    if est['fits']:
        assert sec['epochs'] == {'from': 'the tier (it fits)'}
    else:  # the estimate's suggestion is what ran
        assert (sec['epochs']['epochs'], sec['epochs']['teacher_epochs']) == (
            est['suggested']['epochs'], est['suggested']['teacher_epochs'])
    results = json.loads((out / 'study_results.json').read_text())
    assert [a['variant'] for a in sec['results']['aggregates']] == [a['variant'] for a in results['aggregates']] == [
        'teacher', 'tgr']
    assert all(a['top1_final']['n'] == 1 for a in sec['results']['aggregates'])
    assert sec['results']['export']['matches'] is True
