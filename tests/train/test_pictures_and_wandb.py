"""train_tgr.py --visualize-every (routing pictures per epoch), --log-wandb (offline), and the exported card's
routing picture, on tiny synthetic data."""
import glob
import json
import os
import sys

import numpy as np
import pytest
from PIL import Image

pytest.importorskip('matplotlib')

from timm_tgr.export import CARD_PICTURE, export_checkpoint  # noqa: E402
from timm_tgr.train import main as train_main, parse_args  # noqa: E402
from timm_tgr.train.spec import resolve_run  # noqa: E402
from timm_tgr.train.wandb_log import WandbLogger, flatten_row  # noqa: E402
from timm_tgr.visualize import plots  # noqa: E402
from synthetic import TINY_TGR_ARGV  # noqa: E402

TINY = TINY_TGR_ARGV


def test_visualize_every_draws_epochs_and_the_last_and_wandb_logs_offline(image_folder, tmp_path, monkeypatch):
    wandb = pytest.importorskip('wandb')
    monkeypatch.setenv('WANDB_MODE', 'offline')
    monkeypatch.setenv('WANDB_SILENT', 'true')
    result = train_main(TINY + [
        '--data-dir', image_folder, '--output', str(tmp_path), '--experiment', 'run', '--epochs', '3',
        '--visualize-every', '2', '--visualize-images', '4', '--log-wandb', '--wandb-project', 'tests'])
    run = result['output_dir']
    assert sorted(os.listdir(os.path.join(run, 'visualize'))) == ['epoch-001', 'epoch-002']  # every 2nd, and the last
    pictures = os.path.join(run, 'visualize', 'epoch-002')
    routing = json.loads(open(os.path.join(pictures, 'routing.json')).read())
    # 4 sheets from the 8-image probe set (c0 x 4, c1 x 4): the first of each class in turn
    assert [i['name'] for i in routing['images']] == ['validation-00000', 'validation-00004', 'validation-00001',
                                                      'validation-00005']
    assert [i['target'] for i in routing['images']] == [0, 1, 0, 1]
    assert routing['class_names'] == ['c0', 'c1', 'c2'] and routing['dataset']['images'] == 8
    for f in routing['files']['sheets']:
        with Image.open(os.path.join(pictures, f)) as img:
            assert img.size == plots.image_sheet_size(3, 4)
    assert len(routing['files']['agreement_sheets']) == 4 and set(routing['agreement']) == {'7', '9', '11'}
    for b, ce in routing['class_expert'].items():
        assert ce['tokens'][:2] == [64, 64] and ce['tokens'][2] == 0  # 4 images x 16 patches; no c2 in the probe set
        assert np.allclose(np.sum(ce['shares'], 1)[:2], 1.0)

    offline = glob.glob(os.path.join(run, 'wandb', 'offline-run-*'))
    assert len(offline) == 1
    log = open(glob.glob(os.path.join(offline[0], '*.wandb'))[0], 'rb').read()
    for key in (b'eval_top1', b'routing/block7/entropy', b'routing/block11/load/expert3',
                b'routing/block9/teacher_agreement', b'pictures/class_expert', b'pictures/sheets'):
        assert key in log, key
    assert glob.glob(os.path.join(offline[0], 'files', 'media', 'images', '**', '*.png'), recursive=True)
    assert wandb.run is None  # finished

    # the exported card embeds the heatmap of the checkpoint's epoch (or the latest drawn)
    out = tmp_path / 'export'
    export_checkpoint(os.path.join(run, 'model_best.pth.tar'), out=out)
    card = (out / 'README.md').read_text()
    assert (out / CARD_PICTURE).is_file() and f']({CARD_PICTURE})' in card and '--visualize-every' in card
    assert 'pip install timm-tgr' in card


def test_no_pictures_without_the_flag_and_bad_values_are_refused(image_folder, tmp_path, capsys):
    result = train_main(TINY + ['--data-dir', image_folder, '--output', str(tmp_path), '--experiment', 'plain',
                                '--epochs', '1'])
    assert not os.path.exists(os.path.join(result['output_dir'], 'visualize'))
    assert not os.path.exists(os.path.join(result['output_dir'], 'wandb'))
    for argv, message in ((['--visualize-every', '-1'], '--visualize-every must be >= 0'),
                          (['--wandb-resume-id', 'abc'], '--wandb-resume-id continues a wandb run')):
        with pytest.raises(SystemExit):
            parse_args(argv)
        assert message in capsys.readouterr().err


def test_log_wandb_without_wandb_warns_and_goes_on(monkeypatch, caplog, tmp_path):
    monkeypatch.setitem(sys.modules, 'wandb', None)  # import wandb raises ImportError
    spec = resolve_run(parse_args(['--log-wandb']))
    with caplog.at_level('WARNING'):
        assert WandbLogger.create(spec.run, spec.record(), str(tmp_path)) is None
    assert 'wandb is not installed' in caplog.text


def test_flatten_row():
    row = {'epoch': 2, 'eval_top1': 50.0, 'consistency_prev': None, 'routing': {
        '7': {'entropy': 0.5, 'load': [0.25, 0.75], 'consistency_prev': None}}}
    assert flatten_row(row) == {'epoch': 2, 'eval_top1': 50.0, 'routing/block7/entropy': 0.5,
                                'routing/block7/load/expert0': 0.25, 'routing/block7/load/expert1': 0.75}
