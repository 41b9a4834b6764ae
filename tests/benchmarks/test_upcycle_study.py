"""benchmarks/upcycle.py end to end in --quick mode: synthetic Fashion-MNIST, width 32, 1 epoch."""
import json
import os

import pytest


@pytest.fixture(scope='module')
def study(tmp_path_factory, load_script):
    module = load_script('upcycle')
    out = tmp_path_factory.mktemp('upcycle')
    return module, out, module.main(['--quick', '--output', str(out), '--device', 'cpu',
                                     '--finetune-variants', 'noise1e,dropless', '--guidance', 'tgr'])


def test_step0_upcycled_model_is_its_dense_parent_at_full_eval_capacity(study):
    _, _, result = study
    s0 = result['step0']
    full = s0['upcycled'][str(float(result['experts']))]
    assert full['top1'] == s0['dense_top1'] and full['dropped_fraction'] == 0.
    assert full['max_abs_logit_diff_rel'] < 1e-4  # the tolerance stated in docs/upcycling.md / timm_tgr.models.upcycle
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


def test_finetune_variants_evaluated_both_ways(study):
    """noise1 (always, both guidances), '1/E' and dropless (TGR only here): step-0 scale, top-1 at both evals."""
    module, out, result = study
    study_ = result['finetune_study']
    assert list(study_) == ['noise1', 'noise1e', 'dropless']
    assert list(study_['noise1']['guidance']) == ['vmoe', 'tgr'] and list(study_['dropless']['guidance']) == ['tgr']
    assert study_['dropless']['model_kwargs'] == {'capacity_factor': 'dropless', 'router_noise_std': 1.0}
    assert study_['noise1']['model_kwargs'] == {'router_noise_std': 1.0}  # explicit: not the upcycled default
    for ft, entry in study_.items():
        assert entry['train_scale_step0'] > 0
        for g in entry['guidance'].values():
            assert g['top1_eval_1.05']['values'] and g['top1_eval_dropless']['values'], ft
    # the runs were trained with the variant's kwargs (train_tgr.py records them)
    args = (out / 'runs' / 'upcycled-tgr-noise1e-s0' / 'args.yaml').read_text()
    assert "router_noise_std: 1/E" in args
    assert result['runs']['finetune']['tgr'] == study_['noise1']['guidance']['tgr']['runs']
    md = module.render(result)  # (results.md may have been rewritten by another test's rerun)
    assert "router noise '1/E'" in md and 'Highest mean top-1 at eval dropless' in md
    with pytest.raises(SystemExit, match='--finetune-variants'):
        module.main(['--quick', '--output', str(out), '--finetune-variants', 'noise2'])


def test_report_only_rewrites_the_table_from_results_json(study, tmp_path):
    module, out, _ = study
    saved = json.loads((out / 'results.json').read_text())  # (another test's rerun may have rewritten it)
    (out / 'results.md').write_text('stale')
    again = module.main(['--output', str(out), '--report-only'])
    assert again == saved and (out / 'results.md').read_text() == module.render(saved)
    with pytest.raises(SystemExit, match='no .*results.json; run the study first'):
        module.main(['--output', str(tmp_path), '--report-only'])
    with pytest.raises(SystemExit, match='folder name'):
        module.main(['--output', str(out), '--report-only', '--publish', '../elsewhere'])
