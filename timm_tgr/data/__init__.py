"""Data helpers: Fashion-MNIST preparation (Debian package, a local folder or torchvision's download),
IDX files, class subsets written as their own data folders, a device-resident loader for small datasets, and the
checks of a dataset before training (:mod:`~timm_tgr.data.checks`)."""
from .device_loader import DEFAULT_CROP_PADDING, DeviceDataLoader, check_device_data_args, crop_flip, random_crop_flip
from .fashion_mnist import (
    FASHION_MNIST_FILES, FASHION_MNIST_MEAN, FASHION_MNIST_STD, MNIST_FOLDERS, check_mnist_files,
    prepare_fashion_mnist, write_synthetic_fashion_mnist,
)
from .idx import check_idx_size, read_idx, read_idx_shape, write_idx
from .subsets import write_class_subset

__all__ = [
    'DEFAULT_CROP_PADDING', 'DeviceDataLoader', 'check_device_data_args', 'crop_flip', 'random_crop_flip',
    'FASHION_MNIST_FILES', 'FASHION_MNIST_MEAN', 'FASHION_MNIST_STD', 'MNIST_FOLDERS',
    'check_mnist_files', 'prepare_fashion_mnist', 'check_idx_size', 'read_idx', 'read_idx_shape', 'write_idx',
    'write_synthetic_fashion_mnist', 'write_class_subset',
]
