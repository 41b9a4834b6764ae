"""Class subsets of Fashion-MNIST as their own Fashion-MNIST-format data dirs (for transfer studies).

:func:`write_class_subset` keeps the images of the given classes, relabels them ``0..len(classes)-1``
in the order given, and writes the four idx files to ``<dst>/FashionMNIST/raw/``, so that
``--dataset torch/fashion_mnist --data-dir <dst> --num-classes <len(classes)>`` trains on them
(e.g. classes 0-4 to pre-train, classes 5-9 to fine-tune: two disjoint label sets of one real image set).
"""
import json
import os
from typing import Dict, Sequence

import numpy as np

from .fashion_mnist import FASHION_MNIST_FILES
from .idx import read_idx, write_idx

__all__ = ['write_class_subset', 'SUBSET_MARKER']

SUBSET_MARKER = 'subset.json'  # written last: its presence means the subset is complete
_SPLITS = ('train', 't10k')


def _raw(root: str) -> str:
    return os.path.join(root, 'FashionMNIST', 'raw')


def _check_classes(classes: Sequence[int]) -> list:
    classes = [int(c) for c in classes]
    if not classes or len(set(classes)) != len(classes) or not all(0 <= c <= 255 for c in classes):
        raise ValueError(f'classes must be distinct labels in [0, 255], got {classes}: e.g. classes=(0, 1, 2, 3, 4).')
    return classes


def _existing(dst_root: str, spec: dict):
    """The recorded counts when ``dst_root`` already holds this exact subset; raises for another one."""
    marker = os.path.join(_raw(dst_root), SUBSET_MARKER)
    if not os.path.isfile(marker):
        return None
    with open(marker) as f:
        done = json.load(f)
    if {k: done.get(k) for k in spec} != spec:
        raise ValueError(
            f'{dst_root} already holds another subset ({ {k: done.get(k) for k in spec} }), not {spec}: '
            f'use another destination folder or delete {_raw(dst_root)}.')
    if not all(os.path.isfile(os.path.join(_raw(dst_root), f)) for f in FASHION_MNIST_FILES):
        return None  # files removed since: write them again
    return done['counts']


def write_class_subset(src_root: str, dst_root: str, classes: Sequence[int]) -> Dict[str, int]:
    """Write the images of ``classes`` from ``<src_root>/FashionMNIST/raw`` to ``<dst_root>/FashionMNIST/raw``.

    Label ``classes[i]`` becomes ``i``; image order within a split is kept. A subset already written
    (``subset.json`` present, same source and classes) is left as is. Returns images per split
    (``{'train': n, 't10k': m}``).
    """
    classes = _check_classes(classes)
    src = _raw(src_root)
    missing = [f for f in FASHION_MNIST_FILES if not os.path.isfile(os.path.join(src, f))]
    if missing:
        raise FileNotFoundError(
            f'{src} lacks {missing}: prepare Fashion-MNIST there first '
            f'(timm_tgr.data.prepare_fashion_mnist({src_root!r}), or any train_tgr.py run with --data-dir {src_root}).')
    spec = {'source': os.path.abspath(src_root), 'classes': classes}
    counts = _existing(dst_root, spec)
    if counts is not None:
        return counts
    os.makedirs(_raw(dst_root), exist_ok=True)
    relabel = np.full(256, 255, dtype=np.uint8)
    relabel[classes] = np.arange(len(classes), dtype=np.uint8)
    counts = {}
    for split in _SPLITS:
        images = read_idx(os.path.join(src, f'{split}-images-idx3-ubyte'))
        labels = read_idx(os.path.join(src, f'{split}-labels-idx1-ubyte'))
        keep = np.isin(labels, classes)
        write_idx(os.path.join(_raw(dst_root), f'{split}-images-idx3-ubyte'), images[keep])
        write_idx(os.path.join(_raw(dst_root), f'{split}-labels-idx1-ubyte'), relabel[labels[keep]])
        counts[split] = int(keep.sum())
    with open(os.path.join(_raw(dst_root), SUBSET_MARKER), 'w') as f:
        json.dump({**spec, 'counts': counts}, f, indent=1)
    return counts
