"""train_tgr.py's --upcycle-from (dense weights into an MoE) and --device-data (dataset held on the device),
end to end on a tiny synthetic Fashion-MNIST, checked against independent evaluations."""
import os
import re

import numpy as np
import pytest
import torch

import timm
import timm_tgr  # noqa: F401
from timm_tgr.data import write_synthetic_fashion_mnist
from timm_tgr.data.idx import read_idx
from timm_tgr.train import main as train_main, read_metrics

DIMS = ['embed_dim=32', 'num_heads=2', 'patch_size=7']
COMMON = ['--dataset', 'torch/fashion_mnist', '--img-size', '28', '--in-chans', '1', '--num-classes', '10',
          '-b', '16', '-j', '0', '--warmup-epochs', '0', '--probe-samples', '16', '--no-progress', '--threads', '1',
          '--no-plot', '--epochs', '1']
MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST's, what the trainer uses for torch/fashion_mnist


@pytest.fixture(scope='module')
def fmnist(tmp_path_factory):
    return write_synthetic_fashion_mnist(str(tmp_path_factory.mktemp('fmnist')), n_train=64, n_test=32)


@pytest.fixture(scope='module')
def dense_run(fmnist, tmp_path_factory):
    out = tmp_path_factory.mktemp('dense')
    train_main(COMMON + ['--model', 'deit_tiny_patch16_224', '--model-kwargs', *DIMS, '--data-dir', fmnist,
                         '--output', str(out), '--experiment', 'dense'])
    return str(out / 'dense')


def _test_split(root):
    raw = os.path.join(root, 'FashionMNIST', 'raw')
    x = torch.from_numpy(read_idx(os.path.join(raw, 't10k-images-idx3-ubyte')).astype(np.float32))
    y = torch.from_numpy(read_idx(os.path.join(raw, 't10k-labels-idx1-ubyte')).astype(np.int64))
    return ((x / 255 - MEAN) / STD).unsqueeze(1), y


def test_upcycled_student_evaluates_as_its_dense_parent(fmnist, dense_run, tmp_path):
    """With lr 0 nothing moves: the upcycled MoE's eval (no token dropped at eval capacity E/K) is the dense model's."""
    dense_row = read_metrics(os.path.join(dense_run, 'metrics.jsonl'))[-1]
    train_main(COMMON + [
        '--model', 'vmoe_deit_tiny', '--model-kwargs', *DIMS, 'num_experts=4', 'eval_capacity_factor=4',
        '--teacher', 'none', '--upcycle-from', os.path.join(dense_run, 'model_best.pth.tar'),
        '--lr', '0', '--min-lr', '0', '--warmup-lr', '0', '--data-dir', fmnist, '--output', str(tmp_path),
        '--experiment', 'up'])
    row = read_metrics(str(tmp_path / 'up' / 'metrics.jsonl'))[-1]
    assert row['eval_top1'] == dense_row['eval_top1']
    assert row['eval_loss'] == pytest.approx(dense_row['eval_loss'], abs=1e-4)


def test_upcycle_and_initial_checkpoint_are_exclusive(fmnist, dense_run, tmp_path, capsys):
    ckpt = os.path.join(dense_run, 'model_best.pth.tar')
    with pytest.raises(SystemExit):  # refused with the flags, before anything is built
        train_main(COMMON + ['--model', 'vmoe_deit_tiny', '--model-kwargs', *DIMS, 'num_experts=4', '--teacher',
                             'none', '--upcycle-from', ckpt, '--initial-checkpoint', ckpt, '--data-dir', fmnist,
                             '--output', str(tmp_path), '--experiment', 'x'])
    assert re.search('--upcycle-from .* and --initial-checkpoint both give the model', capsys.readouterr().err)
    assert not (tmp_path / 'x').exists()


def test_upcycle_from_a_dense_model_of_another_width_names_both(fmnist, dense_run, tmp_path):
    with pytest.raises(ValueError, match='width 32 .* width 48'):
        train_main(COMMON + ['--model', 'vmoe_deit_tiny', '--model-kwargs', 'embed_dim=48', 'num_heads=2',
                             'patch_size=7', 'num_experts=4', '--teacher', 'none', '--upcycle-from',
                             os.path.join(dense_run, 'model_best.pth.tar'), '--data-dir', fmnist,
                             '--output', str(tmp_path), '--experiment', 'w'])


def test_device_data_trains_and_evaluates_like_the_plain_model(fmnist, tmp_path):
    """--device-data: the logged eval of epoch 0 equals evaluating its checkpoint by hand on the raw test split."""
    train_main(COMMON + ['--model', 'vmoe_deit_tiny', '--model-kwargs', *DIMS, 'num_experts=4', '--teacher', 'none',
                         '--device-data', '--hflip', '0.5', '--data-dir', fmnist, '--output', str(tmp_path),
                         '--experiment', 'dd', '--checkpoint-hist', '5'])
    row = read_metrics(str(tmp_path / 'dd' / 'metrics.jsonl'))[0]
    model = timm.create_model('vmoe_deit_tiny', embed_dim=32, num_heads=2, patch_size=7, num_experts=4, img_size=28,
                              in_chans=1, num_classes=10)
    model.load_state_dict(torch.load(str(tmp_path / 'dd' / 'checkpoint-0.pth.tar'), weights_only=False)['state_dict'])
    x, y = _test_split(fmnist)
    with torch.no_grad():
        logits = model.eval()(x)
    assert row['eval_top1'] == pytest.approx(100.0 * (logits.argmax(-1) == y).float().mean().item(), abs=1e-4)
    assert np.isfinite(row['train_loss']) and row['routing']


def test_device_data_refuses_augmentation_it_does_not_do(fmnist, tmp_path):
    with pytest.raises(ValueError, match='--aa .*drop --device-data'):
        train_main(COMMON + ['--model', 'vmoe_deit_tiny', '--model-kwargs', *DIMS, 'num_experts=4', '--teacher',
                             'none', '--device-data', '--aa', 'rand-m9-mstd0.5', '--data-dir', fmnist,
                             '--output', str(tmp_path), '--experiment', 'aa'])
