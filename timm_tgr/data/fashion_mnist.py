"""Fashion-MNIST for the quickstart: Debian's ``dataset-fashion-mnist`` files, else torchvision's download.

timm reads Fashion-MNIST as ``--dataset torch/fashion_mnist`` through torchvision's ``FashionMNIST``,
which expects the decompressed idx files in ``<root>/FashionMNIST/raw/``.
:func:`prepare_fashion_mnist` puts them there from the first source that has them:

1. files already in ``<root>/FashionMNIST/raw/`` (a previous run);
2. the four ``*-ubyte.gz`` (or decompressed) files in ``<root>/FashionMNIST/raw/`` or in ``<root>`` itself,
   then in a directory given by ``TIMM_TGR_FASHION_MNIST``, then Debian's package
   (``apt-get install dataset-fashion-mnist``: ``/usr/share/datasets/fashion-mnist``);
3. torchvision's download, only when ``download=True``.

A directory holding only some of the four files is passed over with a warning that names the missing ones.

When none applies, or the download fails (offline), it raises an error that lists the three ways to get
the data.

The files are checked before any training step (:func:`check_mnist_files`): IDX format, complete
data, as many labels as images, labels below the class count; a corrupt ``.gz`` source is named
and never copied into ``raw/``. Each error names the file and how to get a good one.
"""
import gzip
import logging
import os
import shutil
import zlib
from typing import Optional

import numpy as np

from .idx import check_idx_size, read_idx, write_idx

_logger = logging.getLogger(__name__)

__all__ = ['FASHION_MNIST_FILES', 'prepare_fashion_mnist', 'FASHION_MNIST_MEAN', 'FASHION_MNIST_STD', 'MNIST_FOLDERS',
           'check_mnist_files', 'write_synthetic_fashion_mnist']

FASHION_MNIST_NAMES = ('torch/fashion_mnist', 'torchvision/fashion_mnist')  # timm's names of the dataset
FASHION_MNIST_FILES = (
    'train-images-idx3-ubyte', 'train-labels-idx1-ubyte', 't10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte')
DEBIAN_FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist'  # searched by prepare_fashion_mnist, not public API
# per-channel statistics of the 60k training images (pixel / 255)
FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)


def _raw_dir(root: str) -> str:
    return os.path.join(root, 'FashionMNIST', 'raw')


def _has_all(raw: str) -> bool:
    return all(os.path.isfile(os.path.join(raw, f)) for f in FASHION_MNIST_FILES)


def _source_dirs(root: str, source_dir: Optional[str]):
    if source_dir:
        yield source_dir
    yield _raw_dir(root)  # torchvision's layout (its download keeps the .gz files there)
    yield root  # the files put straight into the data folder
    env = os.environ.get('TIMM_TGR_FASHION_MNIST')
    if env:
        yield env
    yield DEBIAN_FASHION_MNIST_DIR


def prepare_fashion_mnist(root: str, download: bool = False, source_dir: Optional[str] = None) -> str:
    """Make ``root`` loadable by ``timm.data.create_dataset('torch/fashion_mnist', root=root)``.

    Returns the source used: ``'existing'``, the directory the ``.gz`` files came from, or ``'download'``.
    """
    raw = _raw_dir(root)
    if _has_all(raw):
        return 'existing'
    for src in _source_dirs(root, source_dir):
        gz = [os.path.join(src, f + '.gz') for f in FASHION_MNIST_FILES]
        plain = [os.path.join(src, f) for f in FASHION_MNIST_FILES]
        found = [f for f, g, p in zip(FASHION_MNIST_FILES, gz, plain) if os.path.isfile(p) or os.path.isfile(g)]
        if len(found) < len(FASHION_MNIST_FILES):
            if found:  # someone put files there: say why they are not used
                missing = [f + '.gz' for f in FASHION_MNIST_FILES if f not in found]
                _logger.warning(f'{src} holds {len(found)} of the 4 Fashion-MNIST files (missing: '
                                f'{", ".join(missing)}): passed over, looking further.')
            continue
        os.makedirs(raw, exist_ok=True)
        for name, g, p in zip(FASHION_MNIST_FILES, gz, plain):
            dst = os.path.join(raw, name)
            tmp = dst + '.part'
            source = p if os.path.isfile(p) else g
            try:
                if source == p:
                    shutil.copyfile(p, tmp)
                else:
                    with gzip.open(g, 'rb') as fi, open(tmp, 'wb') as fo:
                        shutil.copyfileobj(fi, fo)
                check_idx_size(tmp)  # a bad source never lands in raw/
            except (OSError, EOFError, zlib.error, ValueError) as e:
                if os.path.exists(tmp):
                    os.remove(tmp)
                what = 'is not a readable gzip file' if source == g and not isinstance(e, ValueError) else \
                    'is not a complete IDX file'
                raise ValueError(
                    f'{source} {what} ({type(e).__name__}: {str(e).replace(tmp, name)}): it is corrupt or truncated. '
                    f'Replace it (apt-get install --reinstall dataset-fashion-mnist, or download it again), or pass '
                    f'--dataset-download.') from e
            os.replace(tmp, dst)  # atomic: a killed run never leaves a truncated file behind
        return src
    if download:
        from torchvision.datasets import FashionMNIST
        try:
            FashionMNIST(root, train=True, download=True)
            FashionMNIST(root, train=False, download=True)
        except Exception as e:  # offline, proxy, server down: say how else to get the files
            raise FileNotFoundError(
                f'downloading Fashion-MNIST into {raw} failed ({type(e).__name__}: {e}). {_ways_to_get_it()}') from e
        return 'download'
    raise FileNotFoundError(f'Fashion-MNIST not found in {raw}. {_ways_to_get_it()}')


def _ways_to_get_it() -> str:
    return (
        f'Get it one of three ways: '
        f'(1) apt-get install dataset-fashion-mnist (Debian/Ubuntu; files in {DEBIAN_FASHION_MNIST_DIR}); '
        f'(2) put {", ".join(f + ".gz" for f in FASHION_MNIST_FILES)} into the data folder, or set '
        f'TIMM_TGR_FASHION_MNIST to a directory holding them; '
        f'(3) download it with torchvision (needs internet): train_tgr.py --dataset-download, or the quickstart '
        f'without --no-download.')


# torchvision's MNIST-family datasets keep their raw IDX files in <root>/<class name>/raw
MNIST_FOLDERS = {'mnist': 'MNIST', 'fashion_mnist': 'FashionMNIST', 'kmnist': 'KMNIST'}


def check_mnist_files(root: str, folder: str = 'FashionMNIST', num_classes: Optional[int] = None) -> None:
    """Check the four raw IDX files of ``<root>/<folder>/raw`` before training (missing files are left to the
    dataset's own error): IDX magic, data as long as the header says (file sizes only), a label per image,
    labels in ``[0, num_classes)``. ValueError naming the file and the fix."""
    raw = os.path.join(root, folder, 'raw')
    fix = f're-extract or download it again (delete {raw} to have it prepared anew)'
    for split in ('train', 't10k'):
        images_path = os.path.join(raw, f'{split}-images-idx3-ubyte')
        labels_path = os.path.join(raw, f'{split}-labels-idx1-ubyte')
        if not (os.path.isfile(images_path) and os.path.isfile(labels_path)):
            continue
        try:
            _, shape = check_idx_size(images_path)
            labels = read_idx(labels_path)
        except ValueError as e:
            raise ValueError(f'{e} ({fix})') from e
        if len(shape) != 3:
            raise ValueError(f'{images_path} holds an array of shape {shape}, not [N, H, W] images: {fix}.')
        if labels.ndim != 1 or labels.shape[0] != shape[0]:
            raise ValueError(
                f'{labels_path} holds {labels.shape[0] if labels.ndim else 0} labels for the {shape[0]} images of '
                f'{images_path}: one of them is truncated or from another release; {fix}.')
        if labels.size and (labels.min() < 0 or (num_classes is not None and labels.max() >= num_classes)):
            high = int(labels.max())
            raise ValueError(
                f'{labels_path} has labels {int(labels.min())}..{high}, but the model is built for --num-classes '
                f'{num_classes} (labels 0..{num_classes - 1}): pass --num-classes {high + 1}, or fix the labels.')


def write_synthetic_fashion_mnist(root: str, n_train: int = 64, n_test: int = 32, seed: int = 0) -> str:
    """A tiny Fashion-MNIST-format set (idx files in ``<root>/FashionMNIST/raw``) whose classes differ in
    brightness, for smoke tests. ``timm``'s ``torch/fashion_mnist`` reads it like the real one.
    Existing files are kept (returns ``root`` either way)."""
    raw = os.path.join(root, 'FashionMNIST', 'raw')
    if all(os.path.isfile(os.path.join(raw, f)) for f in FASHION_MNIST_FILES):
        return root
    os.makedirs(raw, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, n in (('train', n_train), ('t10k', n_test)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 50, (n, 28, 28)) + labels[:, None, None] * 20
        write_idx(os.path.join(raw, f'{split}-images-idx3-ubyte'), images.astype(np.uint8))
        write_idx(os.path.join(raw, f'{split}-labels-idx1-ubyte'), labels.astype(np.uint8))
    return root
