"""benchmarks/study.py tiers and benchmarks/plan.py command lines, against the tiers' written definitions and
hand-copied reference command lines, plus the estimate's scheduler on hand-solved cases."""
import argparse
import os

import pytest


@pytest.fixture(scope='module')
def bench(load_script):
    """reproduce.py loaded from its path and its harness modules (conftest.py puts benchmarks/ on sys.path)."""
    from harness import estimate, plan, runner, study
    return argparse.Namespace(reproduce=load_script('reproduce'), study=study, plan=plan, runner=runner,
                              estimate=estimate)


def _plan(bench, argv, output='/out', data_dir='/data'):
    args = bench.reproduce.build_parser().parse_args(argv + ['--output', output, '--data-dir', data_dir])
    tier = bench.reproduce.resolve_tier(args)
    return tier, bench.plan.Plan(args)


def test_tiers_are_the_issues(bench):
    tiers = bench.study.TIERS
    cpu, main, sweep = tiers['cpu'], tiers['gpu-main'], tiers['gpu-sweep']
    assert (cpu.variants, cpu.main_experts, cpu.experts, cpu.seeds, cpu.recipe) == (
        ('vmoe', 'tgr', 'tgr_first'), 8, (), (0, 1, 2), 'quick')
    assert cpu.budget_s == 75 * 60 and not cpu.device_data
    assert set(main.variants) == {'vmoe', 'tgr', 'tgr_first', 'distill_only', 'teacher_route'}
    assert (main.main_experts, main.experts, main.seeds, main.budget_s) == (8, (), (0, 1, 2), 600)
    assert set(sweep.variants) == {'vmoe', 'tgr'} and sweep.experts == (4, 8, 16, 32) and sweep.budget_s == 600
    assert main.device_data and sweep.device_data
    # the sweep reuses gpu-main's teacher and E=8 runs only if both train them identically
    assert (main.recipe, main.epochs, main.teacher_epochs) == (sweep.recipe, sweep.epochs, sweep.teacher_epochs)
    for t in tiers.values():
        assert t.summary and len(t.why) > 80, t.name
        for role in ('teacher', 'tgr'):
            assert os.path.isfile(bench.plan.config_path(f'fmnist_{t.recipe}_{role}.yaml'))


def test_cpu_tier_builds_the_pre_split_command_lines(bench):
    _, plan = _plan(bench, ['--tier', 'cpu', '--device', 'cpu'])
    runs = {r['name']: r for r in plan.runs()}
    students = [f'{v}-E8-s{s}' for s in range(3) for v in ('vmoe', 'tgr', 'tgr_first')]
    assert sorted(runs) == sorted(['teacher-s0'] + students)
    strip = bench.runner.strip_neutral
    # the command lines the CPU tier's runs were trained with (--recipe quick --variants vmoe tgr tgr_first
    # --main-experts 8 --experts --seeds 0 1 2 --device cpu), flags that change nothing removed, configs by name
    assert strip(runs['vmoe-E8-s0']['argv']) == [
        '-c', 'fmnist_quick_tgr.yaml', '--experiment', 'vmoe-E8-s0', '--seed', '0', '--model', 'vmoe_deit_tiny',
        '--model-kwargs', 'embed_dim=64', 'num_heads=2', 'patch_size=7', 'num_experts=8', '--epochs', '3',
        '--teacher', 'none']
    assert strip(runs['teacher-s0']['argv']) == [
        '-c', 'fmnist_quick_teacher.yaml', '--experiment', 'teacher-s0', '--seed', '0', '--model-kwargs',
        'embed_dim=64', 'num_heads=2', 'patch_size=7', '--epochs', '2']
    tgr = runs['tgr_first-E8-s2']
    assert tgr['teacher'] == 'teacher-s0' and tgr['argv'][tgr['argv'].index('--teacher-checkpoint') + 1] == \
        os.path.join('/out', 'runs', 'teacher-s0', 'model_best.pth.tar')
    assert tgr['argv'][tgr['argv'].index('--distill-schedule'):][:4] == [
        '--distill-schedule', 'first', '--distill-fraction', '0.5']
    assert all('--device-data' not in r['argv'] for r in runs.values())


def test_gpu_tiers_add_device_data_and_flags_override(bench):
    tier, plan = _plan(bench, ['--tier', 'gpu-main'])
    runs = plan.runs()
    assert [r['name'] for r in runs][:1] == ['teacher-s0'] and len(runs) == 1 + 5 * 3
    assert all('--device-data' in r['argv'] for r in runs) and plan.jobs == tier.jobs > 1
    assert all(r['epochs'] == 12 for r in runs)  # configs/fmnist_gpu_*.yaml
    _, plan = _plan(bench, ['--tier', 'gpu-main', '--no-device-data', '--epochs', '3', '--seeds', '5', '--jobs', '1'])
    runs = plan.runs()
    assert all('--device-data' not in r['argv'] for r in runs) and plan.jobs == 1
    assert {r['epochs'] for r in runs if r['kind'] == 'student'} == {3} and {r['seed'] for r in runs} == {5}
    _, sweep = _plan(bench, ['--tier', 'gpu-sweep'])
    names = [r['name'] for r in sweep.runs()]
    assert len(names) == 1 + 2 * 4 * 3 and 'tgr-E32-s2' in names and 'vmoe-E4-s0' in names
    _, main = _plan(bench, ['--tier', 'gpu-main'])
    shared = {r['name']: r['argv'] for r in main.runs()}
    for r in sweep.runs():  # the same run name means the same command line: a shared --output reuses them
        if r['name'] in shared:
            assert r['argv'] == shared[r['name']]


def test_default_tier_is_the_pre_split_default(bench):
    tier, plan = _plan(bench, [])
    assert tier.name == 'full' and plan.recipe == 'full' and plan.jobs == 1 and not plan.device_data
    assert plan.epochs == 100 and len(plan.runs()) == 1 + 3 * (14 + 3 * 2)  # 14 variants at E=8; E=4/16/32 x 2


def test_cpu_all_tier_runs_every_row_in_priority_order(bench):
    tier, plan = _plan(bench, ['--tier', 'cpu-all', '--device', 'cpu'])
    assert tier.budget_s == 150 * 60 and plan.jobs == 2 and plan.recipe == 'quick'
    names = [r['name'] for r in plan.runs()]
    # tgr_adaptive is left out: at 3 epochs the switch cannot fire (plan.skipped() says so)
    rows = ['dense', 'vmoe', 'tgr', 'tgr_first', 'distill_only', 'teacher_route', 'tgr_last',
            'stablemoe', 'soft_moe', 'expert_choice', 'vmoe_noise1', 'tgr_noise1', 'tgr_random_teacher']
    assert list(plan.skipped()) == ['tgr_adaptive']
    main = ['dense-s0', 'dense-s1', 'dense-s2'] + [f'{v}-E8-s{s}' for v in rows[1:] for s in range(3)]
    sweep = [f'{v}-E{e}-s{s}' for e in (4, 16, 32) for v in ('vmoe', 'tgr') for s in range(3)]
    assert names == ['teacher-s0'] + main + sweep  # all seeds of a row before the next row; the sweep last
    runs = {r['name']: r for r in plan.runs()}
    strip = bench.runner.strip_neutral
    assert strip(runs['dense-s1']['argv']) == [
        '-c', 'fmnist_quick_tgr.yaml', '--experiment', 'dense-s1', '--seed', '1', '--model', 'deit_tiny_patch16_224',
        '--model-kwargs', 'embed_dim=64', 'num_heads=2', 'patch_size=7', '--epochs', '3', '--teacher', 'none']
    assert runs['dense-s1']['experts'] is None and runs['dense-s1']['teacher'] is None
    assert strip(runs['tgr_noise1-E8-s0']['argv'])[9:16] == [
        'embed_dim=64', 'num_heads=2', 'patch_size=7', 'num_experts=8', 'router_noise_std=1.0', '--epochs', '3']
    random_teacher = runs['tgr_random_teacher-E8-s1']['argv']  # the teacher's architecture, untrained, seeded
    assert '--no-teacher-pretrained' in random_teacher and '--teacher-checkpoint' not in random_teacher
    assert runs['tgr_random_teacher-E8-s1']['teacher'] is None
    assert runs['tgr_last-E8-s2']['argv'][-len(plan.common()) - 4:-len(plan.common())] == [
        '--distill-schedule', 'full', '--layer-map', 'last']
    assert runs['soft_moe-E8-s0']['argv'][runs['soft_moe-E8-s0']['argv'].index('--model') + 1] == 'soft_moe_deit_tiny'
    assert plan.model_spec(runs['dense-s0'])['kwargs'] == dict(
        embed_dim=64, num_heads=2, patch_size=7, img_size=28, in_chans=1, num_classes=10)
    # seed-major by flag
    _, seed_major = _plan(bench, ['--tier', 'cpu-all', '--order', 'seed', '--experts'])
    assert [r['name'] for r in seed_major.runs()][1:4] == ['dense-s0', 'vmoe-E8-s0', 'tgr-E8-s0']


def test_threads_are_divided_among_jobs(bench):
    f = bench.plan.threads_per_job
    assert f(None, 1, False) is None and f(None, 4, True) == 1 and f(3, 4, False) == 3
    assert f(None, 2, False) == max(1, (os.cpu_count() or 1) // 2)


def test_schedule_replays_the_runner_policy(bench):
    simulate = bench.estimate.simulate
    runs = [dict(name='T'), dict(name='A', teacher='T'), dict(name='B'), dict(name='C', teacher='T')]
    secs = {'T': 10., 'A': 5., 'B': 7., 'C': 3.}
    assert simulate(runs, secs, 1) == 25.  # one after the other
    assert simulate(runs, secs, 2) == 15.  # T || B; A and C wait for T (10), then A || C
    assert simulate(runs, secs, 3) == 15.
    assert simulate([dict(name='T'), dict(name='A', teacher='T')], {'T': 0., 'A': 4.}, 2) == 4.  # T already done
    with pytest.raises(ValueError, match='outside the plan'):
        simulate([dict(name='A', teacher='X')], {'A': 1.}, 2)



def test_fit_epochs_cuts_epochs_until_the_schedule_fits(bench):
    """Teacher T (10 s/epoch), students A, B after it (5 s/epoch each), 2 jobs, 2 s start-up per run, 12 epochs:
    at e student epochs and te = round(e / 2) teacher epochs the schedule is (2 + 10 te) + (2 + 5 e)."""
    fit = bench.estimate.fit_epochs
    runs = [dict(name='T', kind='teacher'), dict(name='A', kind='student', teacher='T'),
            dict(name='B', kind='student', teacher='T')]
    per_epoch, none_done = {'T': 10., 'A': 5., 'B': 5.}, {'T': 0, 'A': 0, 'B': 0}
    # e=6, te=3: 32 + 32 = 64 > 60; e=5, te=2 (round(2.5) is 2): 22 + 27 = 49
    assert fit(runs, per_epoch, none_done, 2., 2, 60., 12, 6) == {'epochs': 5, 'teacher_epochs': 2,
                                                                   'scheduled_s': 49.}
    # a teacher already trained for 3 epochs costs nothing at te <= 3: e=11 (te=6: 3 more) is 32 + 57 > 60, e=10
    # (te=5: 2 more) is 22 + 52 > 60, e=9 (te=4: 1 more) is 12 + 47 = 59
    assert fit(runs, per_epoch, dict(none_done, T=3), 2., 2, 60., 12, 6)['epochs'] == 9
    assert fit(runs, per_epoch, none_done, 2., 2, 10., 12, 6) is None  # not even one epoch: 12 + 7 > 10

def test_runner_resumes_from_the_newest_checkpoint_before_the_missing_rows(bench, tmp_path):
    """A save that failed after its metrics row was written leaves rows 0..k and checkpoints up to k-1: the runner
    resumes from the newest checkpoint before the first missing row instead of training from scratch."""
    import torch
    resume = bench.runner._resume_checkpoint
    for name, epoch in (('checkpoint-0.pth.tar', 0), ('checkpoint-1.pth.tar', 1), ('last.pth.tar', 1)):
        torch.save({'epoch': epoch}, tmp_path / name)
    assert resume(str(tmp_path), 3) == str(tmp_path / 'last.pth.tar')  # rows 0-2, the epoch-2 save failed
    assert resume(str(tmp_path), 2) == str(tmp_path / 'last.pth.tar')
    torch.save({'epoch': 3}, tmp_path / 'last.pth.tar')  # a later epoch than the rows: not a resume point
    assert resume(str(tmp_path), 2) == str(tmp_path / 'checkpoint-1.pth.tar')
    assert resume(str(tmp_path), 1) == str(tmp_path / 'checkpoint-0.pth.tar')
    assert resume(str(tmp_path), 0) is None


def test_runner_sets_an_earlier_attempt_aside_before_starting_over(bench, tmp_path):
    """With no checkpoint to resume from, the runner keeps the earlier attempt's outputs in stale-<time>/ (the
    trainer never writes into a folder holding a run)."""
    for name in ('metrics.jsonl', 'summary.csv', 'args.yaml', 'reproduce_run.json', 'train.log'):
        (tmp_path / name).write_text(name)
    bench.runner._set_aside(str(tmp_path))
    stale = [p for p in tmp_path.iterdir() if p.name.startswith('stale-')]
    assert len(stale) == 1 and sorted(p.name for p in stale[0].iterdir()) == ['args.yaml', 'metrics.jsonl',
                                                                              'summary.csv']
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ['reproduce_run.json', 'train.log']
    assert (stale[0] / 'metrics.jsonl').read_text() == 'metrics.jsonl'


def test_cpu_teacher_tier_trains_a_stronger_teacher_per_seed(bench):
    tier, plan = _plan(bench, ['--tier', 'cpu-teacher', '--device', 'cpu'])
    assert plan.teacher_seeds() == [0, 1, 2] and plan.teacher_epochs == 10
    runs = {r['name']: r for r in plan.runs()}
    assert [r['name'] for r in plan.runs()][:3] == ['teacher-s0', 'teacher-s1', 'teacher-s2']
    student = runs['tgr-E8-s1']['argv']
    assert runs['tgr-E8-s1']['teacher'] == 'teacher-s1'
    assert student[student.index('--teacher-checkpoint') + 1].endswith('teacher-s1/model_best.pth.tar')
    # the paper's 2x width by flag: the teacher's run and the students that build it, not the students themselves
    _, wide = _plan(bench, ['--tier', 'cpu-teacher', '--teacher-model-kwargs', 'embed_dim=128', 'num_heads=4'])
    wide_runs = {r['name']: r for r in wide.runs()}
    assert 'embed_dim=128' in wide_runs['teacher-s2']['argv'] and 'embed_dim=64' not in wide_runs['teacher-s2']['argv']
    wide_student = wide_runs['tgr-E8-s2']['argv']
    kw = wide_student[wide_student.index('--teacher-kwargs') + 1:wide_student.index('--teacher-checkpoint')]
    assert 'embed_dim=128' in kw and 'num_heads=4' in kw
    model_kw = wide_student[wide_student.index('--model-kwargs') + 1:wide_student.index('--epochs')]
    assert 'embed_dim=64' in model_kw  # the student keeps its width


def test_paired_t_test_matches_tables(bench):
    from harness import stats
    # two-sided 5 % critical values of Student's t (standard tables)
    for t, df in ((12.706, 1), (4.303, 2), (3.182, 3), (2.776, 4), (2.571, 5), (2.228, 10)):
        assert abs(stats.t_two_sided_p(t, df) - 0.05) < 5e-4
    assert abs(stats.t_two_sided_p(9.925, 2) - 0.01) < 5e-4
    # same-seed differences 1, 2, 3: mean 2, SE 1/sqrt(3), t = 2 sqrt(3) on 2 df
    paired = stats.paired_diff({'0': 11., '1': 12., '2': 13.}, {'0': 10., '1': 10., '2': 10., '3': 0.})
    assert paired['n'] == 3 and abs(paired['diff'] - 2.) < 1e-12 and abs(paired['se'] - 3 ** -0.5) < 1e-12
    t = 2. * 3 ** 0.5
    assert abs(paired['p'] - (1. - t / (t * t + 2.) ** 0.5)) < 1e-12  # df = 2: p = 1 - t / sqrt(t^2 + 2)
    assert stats.verdict(paired, +1) == 'within noise' and stats.verdict(paired, None) == '–'
    strong = stats.paired_diff({'0': 1., '1': 1.1, '2': 0.9}, {'0': 0., '1': 0., '2': 0.})
    assert stats.verdict(strong, +1) == 'reproduces' and stats.verdict(strong, -1) == 'does not'
