"""train_tgr.py end to end on tiny synthetic data: CLI, configs, metrics, checkpoints, resume, DDP, errors."""
import gzip
import json
import os
import socket
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch

import timm_tgr  # noqa: F401
from timm_tgr.data import FASHION_MNIST_FILES, prepare_fashion_mnist, write_class_subset
from synthetic import TINY_TGR_ARGV
from timm_tgr.train import main as train_main, parse_args, read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TINY = TINY_TGR_ARGV + ['--checkpoint-hist', '10']


def _run(image_folder, tmp_path, name, *extra):
    return train_main(TINY + ['--data-dir', image_folder, '--output', str(tmp_path), '--experiment', name,
                              *extra])


def test_help_lists_timm_and_tgr_flags():
    out = subprocess.run([sys.executable, os.path.join(ROOT, 'train_tgr.py'), '--help'], capture_output=True,
                         text=True, check=True).stdout
    for flag in ('--model', '--data-dir', '--dataset', '--epochs', '--batch-size', '--lr', '--amp', '--model-ema',
                 '--resume', '--output', '--model-kwargs', '--config', '--teacher', '--teacher-checkpoint',
                 '--distill-weight', '--distill-schedule', '--tgr-mode', '--freeze-router-at'):
        assert flag in out, flag


def test_yaml_config_sets_defaults_and_cli_overrides(tmp_path):
    cfg = tmp_path / 'c.yaml'
    cfg.write_text('model: vmoe_deit_small\nepochs: 7\nmodel_kwargs: {num_experts: 4}\ndistill_weight: 2.5\n')
    args = parse_args(['-c', str(cfg), '--epochs', '3'])
    assert (args.model, args.epochs, args.model_kwargs, args.distill_weight) == ('vmoe_deit_small', 3,
                                                                                 {'num_experts': 4}, 2.5)


def test_yaml_unknown_key_is_an_error(tmp_path, capsys):
    cfg = tmp_path / 'c.yaml'
    cfg.write_text('epochz: 7\n')
    with pytest.raises(SystemExit):
        parse_args(['-c', str(cfg)])
    assert "unknown keys ['epochz']" in capsys.readouterr().err


CONFIGS = sorted(os.listdir(os.path.join(ROOT, 'timm_tgr', 'configs')))


@pytest.mark.parametrize('name', CONFIGS)
def test_shipped_config_trains_an_epoch_on_synthetic_data(name, image_folder, fake_fashion_mnist, tmp_path):
    """Each shipped recipe as written (model, augmentation, Mixup, AMP, schedule, teacher layout) for one short
    epoch; only the data, its size, the batch and the teacher's pretrained weights are swapped for tiny ones (the
    named teacher follows the student's --img-size by itself)."""
    config = os.path.join(ROOT, 'timm_tgr', 'configs', name)
    args = parse_args(['-c', config])
    tiny = ['-c', config, '--epochs', '1', '--warmup-epochs', '0', '-b', '8', '-j', '0', '--threads', '1',
            '--no-progress', '--probe-samples', '8', '--output', str(tmp_path), '--experiment', 'run']
    if args.dataset == 'torch/fashion_mnist':  # the recipe's own dataset, 64 fake images
        data = str(tmp_path / 'data')
        prepare_fashion_mnist(data, source_dir=fake_fashion_mnist)
        if args.num_classes < 10:  # the fine-tuning recipe: a class subset, relabelled 0..n-1
            data = str(tmp_path / 'subset')
            write_class_subset(str(tmp_path / 'data'), data, list(range(10 - args.num_classes, 10)))
        tiny += ['--data-dir', data]
    else:  # ImageNet / CIFAR-100 recipes: a 3-class image folder at 32x32
        # the folder's validation split is 'validation'; the recipe may name another (CIFAR-100: test)
        tiny += ['--dataset', '', '--data-dir', image_folder, '--num-classes', '3', '--img-size', '32',
                 '--val-split', 'validation']
    if args.teacher not in (None, 'none'):
        tiny += ['--no-teacher-pretrained']
    result = train_main(tiny)
    row = result['rows'][-1]
    assert np.isfinite(row['train_loss']) and 0. <= row['eval_top1'] <= 100.
    assert os.path.isfile(os.path.join(result['output_dir'], 'last.pth.tar'))
    if 'tgr' in name:
        assert np.isfinite(row['train_distill_loss']) and set(row['routing']) == {'7', '9', '11'}


@pytest.mark.parametrize('argv, message', [
    (['--resume', '/no/such.pth.tar'], 'no such checkpoint file'),
    (['--model', 'vmoe_deit_nope'], 'is not a timm model'),
    (['--epochs', '0'], '--epochs must be >= 1'),
    (['--teacher-checkpoint', '/no/teacher.pth'], 'no such file'),
    (['--freeze-router-at', '1.5'], 'fraction of training'),
    (['-c', '/no/config.yaml'], 'does not exist'),
    (['--distill-weight', '-1'], '--distill-weight must be >= 0.0 (a finite number), got -1.0'),
    (['--teacher-entropy-weight', 'nan'], '--teacher-entropy-weight must be >= 0.0 (a finite number), got nan'),
    (['--distill-fraction', '1.5'], '--distill-fraction must be in [0.0, 1.0] (a finite number), got 1.5'),
    (['--tgr-mode', 'upper'], "argument --tgr-mode: invalid choice: 'upper'"),
])
def test_bad_flags_give_clear_errors(argv, message, capsys):
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert message in capsys.readouterr().err


def test_dense_model_with_teacher_is_refused(image_folder, tmp_path):
    with pytest.raises(ValueError, match='dense model'):
        train_main(['--dataset', '', '--data-dir', image_folder, '--model', 'deit_tiny_patch16_224',
                    '--model-kwargs', 'embed_dim=32', 'num_heads=2', 'patch_size=4', 'depth=2',
                    '--img-size', '16', '--in-chans', '1', '--num-classes', '3', '--teacher',
                    'deit3_small_patch16_224', '--epochs', '1', '-j', '0', '--output', str(tmp_path)])


def test_two_epoch_tgr_run_writes_metrics_checkpoints_and_plot(image_folder, tmp_path):
    result = _run(image_folder, tmp_path, 'run', '--epochs', '2')
    out = result['output_dir']
    rows = read_metrics(os.path.join(out, 'metrics.jsonl'))
    assert [r['epoch'] for r in rows] == [0, 1]
    for key in ('train_loss', 'train_task_loss', 'train_moe_aux_loss', 'train_load_loss', 'train_distill_loss',
                'train_teacher_router_loss', 'train_teacher_entropy', 'train_dropped_fraction', 'eval_top1',
                'eval_loss', 'entropy', 'entropy_kept', 'dropped_fraction'):
        assert np.isfinite(rows[-1][key]), key
    # the total is the sum of its parts: task + aux + teacher-router loss + lambda_distill * KL
    r = rows[0]
    total = (r['train_task_loss'] + r['train_moe_aux_loss'] + r['train_teacher_router_loss']
             + 5.0 * r['train_distill_loss'])
    assert r['train_loss'] == pytest.approx(total, rel=1e-4)
    assert set(rows[1]['routing']) == {'7', '9', '11'}
    assert rows[0]['consistency_prev'] is None and 0. <= rows[1]['consistency_prev'] <= 1.
    for block in rows[1]['routing'].values():
        assert sum(block['load']) == pytest.approx(1.0)
        assert 0. <= block['entropy'] <= 1. and 0. <= block['entropy_kept'] <= 1.
    per_layer = [b['dropped_fraction'] for b in rows[1]['routing'].values()]
    assert rows[1]['dropped_fraction'] == pytest.approx(np.mean(per_layer))
    cons = json.load(open(os.path.join(out, 'routing_consistency.json')))
    assert cons['to_final_mean'][-1] == 1.0 and len(cons['adjacent']) == 2
    assert os.path.isfile(os.path.join(out, 'summary.csv')) and os.path.isfile(os.path.join(out, 'args.yaml'))
    pytest.importorskip('matplotlib')
    assert os.path.getsize(os.path.join(out, 'routing_consistency.png')) > 0

    ckpt = torch.load(os.path.join(out, 'last.pth.tar'), map_location='cpu', weights_only=False)
    assert not any(k.startswith(('teacher', 'student.')) for k in ckpt['state_dict'])  # the student only
    assert set(ckpt['task_state']['teacher_routers']) == {'7.proj.weight', '9.proj.weight', '11.proj.weight'}
    assert ckpt['args'].model == 'tgr_moe_deit_tiny'
    assert ckpt['args'].model_kwargs == dict(embed_dim=32, num_heads=2, patch_size=4, num_experts=4, num_classes=3,
                                             img_size=16, in_chans=1)
    # the student rebuilds from the recorded args, without any teacher
    import timm
    model = timm.create_model(ckpt['args'].model, **ckpt['args'].model_kwargs)
    model.load_state_dict(ckpt['state_dict'])


def test_resume_reproduces_the_uninterrupted_run(image_folder, tmp_path):
    common = ('--epochs', '3', '--model-ema', '--mixup', '0.5', '--distill-schedule', 'first')
    full = _run(image_folder, tmp_path, 'full', *common)
    resumed = _run(image_folder, tmp_path, 'resumed', *common,
                   '--resume', os.path.join(full['output_dir'], 'checkpoint-0.pth.tar'))
    a = {r['epoch']: r for r in full['rows']}
    b = {r['epoch']: r for r in resumed['rows']}
    assert sorted(b) == [1, 2]
    for epoch in (1, 2):
        for key in ('train_loss', 'train_task_loss', 'train_distill_loss', 'train_distill_active', 'eval_loss',
                    'eval_ema_loss', 'consistency_prev'):
            assert b[epoch][key] == a[epoch][key], (epoch, key)
    assert b[2]['train_distill_active'] == 0.0  # 'first' schedule: its step count was resumed too


def test_resume_into_the_same_folder_keeps_earlier_rows(image_folder, tmp_path):
    first = _run(image_folder, tmp_path, 'same', '--epochs', '2', '--model', 'vmoe_deit_tiny', '--teacher', 'none')
    again = train_main(TINY + ['--data-dir', image_folder, '--epochs', '2', '--model', 'vmoe_deit_tiny', '--teacher',
                               'none', '--resume', os.path.join(first['output_dir'], 'checkpoint-0.pth.tar')])
    assert again['output_dir'] == first['output_dir']
    rows = read_metrics(os.path.join(first['output_dir'], 'metrics.jsonl'))
    assert [r['epoch'] for r in rows] == [0, 1]
    assert rows[1]['train_loss'] == first['rows'][1]['train_loss']
    # model_best.pth.tar is still the best over all epochs, not only the resumed ones
    best = max(rows, key=lambda r: r['eval_top1'])
    assert (again['best_metric'], again['best_epoch']) == (best['eval_top1'], best['epoch'])


def test_stablemoe_freezes_routers_mid_run(image_folder, tmp_path):
    result = _run(image_folder, tmp_path, 'stable', '--epochs', '2', '--model', 'vmoe_deit_tiny', '--teacher', 'none',
                  '--freeze-router-at', '0.5')
    ckpts = [torch.load(os.path.join(result['output_dir'], f'checkpoint-{e}.pth.tar'), map_location='cpu',
                        weights_only=False)['state_dict'] for e in (0, 1)]
    routers = [k for k in ckpts[0] if '.mlp.router.' in k]
    assert routers and all(torch.equal(ckpts[0][k], ckpts[1][k]) for k in routers)
    assert not torch.equal(ckpts[0]['head.weight'], ckpts[1]['head.weight'])


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_ddp_two_processes_match_one_process(image_folder, tmp_path):
    """2 gloo processes x batch 12 == 1 process x batch 24 on the same global batches.

    One full-dataset batch per step makes the global batch identical whatever the sampler's order;
    router noise and the per-process load-balancing losses are off, and each image is its own routing group (groups
    of 8 images would differ between 24 images in one process and 12 in each of two), so every logged loss must
    agree.
    """
    args = TINY + ['--data-dir', image_folder, '--epochs', '2', '--output', str(tmp_path), '--probe-samples', '0',
                   '--model-kwargs', 'embed_dim=32', 'num_heads=2', 'patch_size=4', 'num_experts=4',
                   'router_noise_std=0.0', 'load_loss_weight=0.0', 'capacity_group=sample',
                   '--teacher-load-weight', '0', '--smoothing', '0',
                   '--hflip', '0', '--scale', '1', '1', '--ratio', '1', '1', '-vb', '6', '--no-plot']
    single = train_main(args + ['-b', '24', '--experiment', 'single'])
    env = dict(os.environ, OMP_NUM_THREADS='1', MASTER_ADDR='127.0.0.1')
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_port', str(_free_port()),
           os.path.join(ROOT, 'train_tgr.py')] + args + ['-b', '12', '--experiment', 'ddp', '--device', 'cpu']
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = read_metrics(os.path.join(str(tmp_path), 'ddp', 'metrics.jsonl'))
    assert len(ddp) == 2
    for a, b in zip(single['rows'], ddp):
        for key in ('train_loss', 'train_task_loss', 'train_distill_loss', 'train_teacher_router_loss', 'eval_loss',
                    'eval_top1'):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key


# --- Fashion-MNIST -------------------------------------------------------------------------------
def _write_idx(path, array: np.ndarray):
    dims = array.shape
    header = struct.pack('>HBB', 0, 0x08, len(dims)) + b''.join(struct.pack('>I', d) for d in dims)
    with gzip.open(path, 'wb') as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture(scope='module')
def fake_fashion_mnist(tmp_path_factory):
    """Debian-style directory with the four idx.gz files (64 train, 32 test images, 10 classes)."""
    src = tmp_path_factory.mktemp('fmnist_src')
    rng = np.random.default_rng(0)
    for split, n in (('train', 64), ('t10k', 32)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 50, (n, 28, 28)) + labels[:, None, None] * 20
        _write_idx(src / f'{split}-images-idx3-ubyte.gz', images)
        _write_idx(src / f'{split}-labels-idx1-ubyte.gz', labels)
    return str(src)


def test_prepare_fashion_mnist_from_debian_style_files(fake_fashion_mnist, tmp_path):
    assert prepare_fashion_mnist(str(tmp_path), source_dir=fake_fashion_mnist) == fake_fashion_mnist
    assert prepare_fashion_mnist(str(tmp_path)) == 'existing'
    from timm.data import create_dataset
    ds = create_dataset('torch/fashion_mnist', root=str(tmp_path), split='validation')
    img, label = ds[3]
    assert len(ds) == 32 and img.size == (28, 28) and label == 3


def test_missing_fashion_mnist_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr('timm_tgr.data.fashion_mnist.DEBIAN_FASHION_MNIST_DIR', str(tmp_path / 'none'))
    monkeypatch.delenv('TIMM_TGR_FASHION_MNIST', raising=False)
    with pytest.raises(FileNotFoundError, match='apt-get install dataset-fashion-mnist'):
        prepare_fashion_mnist(str(tmp_path / 'data'))
    assert all(not (tmp_path / 'data' / 'FashionMNIST' / 'raw' / f).exists() for f in FASHION_MNIST_FILES)


def test_quickstart_pipeline_on_tiny_fashion_mnist(fake_fashion_mnist, tmp_path, monkeypatch):
    """The quickstart's teacher -> student -> export -> local-dir evaluation chain, 1 epoch each."""
    monkeypatch.setenv('TIMM_TGR_FASHION_MNIST', fake_fashion_mnist)
    from timm_tgr.quickstart import main as quickstart
    summary = quickstart(['--data-dir', str(tmp_path / 'data'), '--output', str(tmp_path / 'qs'), '--teacher-epochs',
                          '1', '--epochs', '1', '--no-progress', '--extra', '--workers', '0', '--threads', '1',
                          '-b', '16'])
    assert summary['export']['matches_training_eval'], summary
    assert os.path.isfile(os.path.join(str(tmp_path / 'qs'), 'export', 'model.safetensors'))


@pytest.mark.parametrize('model', ['ec_moe_deit_tiny', 'soft_moe_deit_tiny'])
def test_baseline_models_train_with_guidance_and_metrics(image_folder, tmp_path, model):
    result = _run(image_folder, tmp_path, model, '--epochs', '2', '--model', model, '--warmup-epochs', '0')
    last = result['rows'][-1]
    assert np.isfinite(last['train_distill_loss']) and last['train_distill_loss'] > 0
    assert set(last['routing']) == {'7', '9', '11'} and 0. <= last['consistency_prev'] <= 1.
