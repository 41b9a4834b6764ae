"""benchmarks/upcycle.py end to end in --quick mode: synthetic Fashion-MNIST, width 32, 1 epoch."""
import importlib.util
import json
import os

import pytest

_SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), 'benchmarks',
                       'upcycle.py')


@pytest.fixture(scope='module')
def study(tmp_path_factory):
    spec = importlib.util.spec_from_file_location('timm_tgr_bench_upcycle', _SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path_factory.mktemp('upcycle')
    return module, out, module.main(['--quick', '--output', str(out), '--device', 'cpu'])


def test_step0_upcycled_model_is_its_dense_parent_at_full_eval_capacity(study):
    _, _, result = study
    s0 = result['step0']
    full = s0['upcycled'][str(float(result['experts']))]
    assert full['top1'] == s0['dense_top1'] and full['dropped_fraction'] == 0.
    assert full['max_abs_logit_diff_rel'] < 1e-4  # the tolerance stated in README / timm_tgr.models.upcycle
    assert s0['upcycled']['1.05']['eval_capacity_factor'] == 1.05


def test_every_run_trained_and_reported(study):
    module, out, result = study
    for kind in ('finetune', 'scratch'):
        for variant in module.VARIANTS:
            (run,) = result['runs'][kind][variant]
            assert os.path.isfile(os.path.join(run, 'metrics.jsonl'))
            assert result['summary'][kind][variant]['top1']['values']
    with open(os.path.join(out, 'results.json')) as f:
        assert json.load(f)['summary'] == result['summary']
    md = (out / 'results.md').read_text()
    assert 'upcycled vmoe_deit_tiny' in md and 'from scratch' in md


def test_finished_runs_are_skipped(study):
    module, out, _ = study
    marker = os.path.getmtime(os.path.join(out, 'runs', 'upcycled-tgr-s0', 'metrics.jsonl'))
    module.main(['--quick', '--output', str(out), '--device', 'cpu'])
    assert os.path.getmtime(os.path.join(out, 'runs', 'upcycled-tgr-s0', 'metrics.jsonl')) == marker
