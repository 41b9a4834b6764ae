"""Class subsets of Fashion-MNIST: the kept images and new labels against a hand-made source, read by timm."""
import os

import numpy as np
import pytest

from timm_tgr.data.idx import read_idx, write_idx
from timm_tgr.data.subsets import write_class_subset


def _source(root, labels_by_split):
    """Fashion-MNIST-format files whose image i is filled with the value i (so kept images are identifiable)."""
    raw = root / 'FashionMNIST' / 'raw'
    raw.mkdir(parents=True)
    for split, labels in labels_by_split.items():
        n = len(labels)
        images = np.repeat(np.arange(n, dtype=np.uint8), 28 * 28).reshape(n, 28, 28)
        write_idx(str(raw / f'{split}-images-idx3-ubyte'), images)
        write_idx(str(raw / f'{split}-labels-idx1-ubyte'), np.array(labels, dtype=np.uint8))
    return str(root)


def test_subset_keeps_the_classes_in_order_and_relabels(tmp_path):
    src = _source(tmp_path / 'src', {'train': [5, 0, 7, 5, 9, 2, 6], 't10k': [9, 9, 1, 5]})
    counts = write_class_subset(src, str(tmp_path / 'b'), classes=(5, 6, 7, 8, 9))
    assert counts == {'train': 5, 't10k': 3}
    raw = tmp_path / 'b' / 'FashionMNIST' / 'raw'
    # train: source images 0 (label 5), 2 (7), 3 (5), 4 (9), 6 (6) -> new labels 0, 2, 0, 4, 1
    labels = read_idx(str(raw / 'train-labels-idx1-ubyte')).tolist()
    images = read_idx(str(raw / 'train-images-idx3-ubyte'))
    assert labels == [0, 2, 0, 4, 1]
    assert images[:, 0, 0].tolist() == [0, 2, 3, 4, 6] and images.shape == (5, 28, 28)
    assert read_idx(str(raw / 't10k-labels-idx1-ubyte')).tolist() == [4, 4, 0]
    assert read_idx(str(raw / 't10k-images-idx3-ubyte'))[:, 5, 5].tolist() == [0, 1, 3]


def test_timm_reads_the_subset(tmp_path):
    from timm.data import create_dataset
    src = _source(tmp_path / 'src', {'train': [3, 1, 4, 1, 0], 't10k': [2, 4, 0]})
    write_class_subset(src, str(tmp_path / 'a'), classes=(0, 1, 2, 3, 4))
    ds = create_dataset('torch/fashion_mnist', root=str(tmp_path / 'a'), split='validation')
    assert len(ds) == 3 and [ds[i][1] for i in range(3)] == [2, 4, 0]


def test_existing_subset_is_kept_and_another_is_refused(tmp_path):
    src = _source(tmp_path / 'src', {'train': [0, 1, 2], 't10k': [2, 1]})
    dst = str(tmp_path / 'a')
    write_class_subset(src, dst, classes=(0, 1))
    path = os.path.join(dst, 'FashionMNIST', 'raw', 'train-labels-idx1-ubyte')
    mtime = os.stat(path).st_mtime_ns
    assert write_class_subset(src, dst, classes=(0, 1)) == {'train': 2, 't10k': 1}
    assert os.stat(path).st_mtime_ns == mtime
    with pytest.raises(ValueError, match='another subset'):
        write_class_subset(src, dst, classes=(1, 2))


def test_missing_source_and_bad_classes_name_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match='prepare Fashion-MNIST'):
        write_class_subset(str(tmp_path / 'none'), str(tmp_path / 'a'), classes=(0, 1))
    src = _source(tmp_path / 'src', {'train': [0], 't10k': [0]})
    with pytest.raises(ValueError, match='distinct'):
        write_class_subset(src, str(tmp_path / 'a'), classes=(1, 1))
