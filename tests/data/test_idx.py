"""IDX files: our reader against torchvision's MNIST parser, round trips, gzip, clear errors."""
import gzip
import os
import shutil

import numpy as np
import pytest
import torch

from timm_tgr.data import FASHION_MNIST_FILES, read_idx, read_idx_shape, write_idx, write_synthetic_fashion_mnist


def test_synthetic_set_reads_like_torchvision(tmp_path):
    from torchvision.datasets.mnist import read_image_file, read_label_file
    root = write_synthetic_fashion_mnist(str(tmp_path), n_train=20, n_test=10)
    raw = os.path.join(root, 'FashionMNIST', 'raw')
    assert sorted(os.listdir(raw)) == sorted(FASHION_MNIST_FILES)
    for split, n in (('train', 20), ('t10k', 10)):
        images = read_idx(os.path.join(raw, f'{split}-images-idx3-ubyte'))
        labels = read_idx(os.path.join(raw, f'{split}-labels-idx1-ubyte'))
        assert images.shape == (n, 28, 28) and images.dtype == np.uint8 and labels.shape == (n,)
        reference = read_image_file(os.path.join(raw, f'{split}-images-idx3-ubyte'))
        assert torch.equal(torch.from_numpy(images.copy()), reference)
        assert torch.equal(torch.from_numpy(labels.astype(np.int64)),
                           read_label_file(os.path.join(raw, f'{split}-labels-idx1-ubyte')))
        assert read_idx_shape(os.path.join(raw, f'{split}-images-idx3-ubyte')) == (n, 28, 28)
    assert labels.tolist() == [i % 10 for i in range(10)]


def test_round_trip_and_gzip(tmp_path):
    a = np.random.default_rng(0).integers(0, 256, (3, 5, 7)).astype(np.uint8)
    path = str(tmp_path / 'a-idx3-ubyte')
    write_idx(path, a)
    assert os.path.getsize(path) == 4 + 3 * 4 + a.size  # magic, three big-endian dims, the bytes
    with open(path, 'rb') as f:
        assert f.read(4) == bytes([0, 0, 0x08, 3]) and f.read(4) == (3).to_bytes(4, 'big')
    np.testing.assert_array_equal(read_idx(path), a)
    with open(path, 'rb') as fi, gzip.open(path + '.gz', 'wb') as fo:
        shutil.copyfileobj(fi, fo)
    np.testing.assert_array_equal(read_idx(path + '.gz'), a)


def test_bad_files_name_the_fix(tmp_path):
    bad = tmp_path / 'bad'
    bad.write_bytes(b'\x12\x34\x08\x01' + b'\x00' * 8)
    with pytest.raises(ValueError, match='not an IDX file.*re-extract'):
        read_idx(str(bad))
    short = tmp_path / 'short'
    short.write_bytes(bytes([0, 0, 0x08, 1]) + (10).to_bytes(4, 'big') + b'\x01' * 3)
    with pytest.raises(ValueError, match='truncated'):
        read_idx(str(short))
    with pytest.raises(ValueError, match='uint8'):
        write_idx(str(tmp_path / 'f'), np.zeros(3, dtype=np.float32))


def test_corrupt_gzip_and_short_files_are_named(tmp_path):
    from timm_tgr.data import check_idx_size
    a = np.arange(60, dtype=np.uint8).reshape(3, 4, 5)
    path = str(tmp_path / 'a-idx3-ubyte')
    write_idx(path, a)
    assert check_idx_size(path) == (np.dtype(np.uint8), (3, 4, 5))
    with open(path, 'rb') as f:
        data = f.read()
    with open(path, 'wb') as f:
        f.write(data[:-1])  # one byte short: the size check alone tells, without reading the data
    with pytest.raises(ValueError, match=r'a-idx3-ubyte is truncated: 75 bytes for shape \(3, 4, 5\)'):
        check_idx_size(path)
    with open(path, 'wb') as f:
        f.write(data[:6])  # cut inside the header
    with pytest.raises(ValueError, match='its header ends after 6 bytes'):
        read_idx(path)
    gz = tmp_path / 'b-idx1-ubyte.gz'
    with gzip.open(gz, 'wb') as f:
        f.write(data)
    gz.write_bytes(gz.read_bytes()[:15])
    with pytest.raises(ValueError, match=f'{gz} is not a readable gzip file'):
        read_idx(str(gz))
