"""The run's data: the dataset's files prepared and checked (:mod:`timm_tgr.data.checks`) before the model is built,
then timm's datasets and loaders (or ``--device-data``'s device-resident ones) with the augmentation and mixup."""
import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Tuple

import torch
from timm.data import FastCollateMixup, Mixup, create_dataset, create_loader
from timm.utils import is_primary

from ..data import DEFAULT_CROP_PADDING, MNIST_FOLDERS, DeviceDataLoader, check_device_data_args, check_mnist_files
from ..data import prepare_fashion_mnist
from ..data.checks import FOLDER_DATASETS, check_class_lists, check_folder_dataset, check_images, check_labels
from ..data.fashion_mnist import FASHION_MNIST_NAMES
from .spec import AugmentSpec, RunSpec

__all__ = ['Loaders', 'prepare_dataset', 'create_datasets', 'create_loaders', 'create_device_loaders']

_logger = logging.getLogger(__name__)


@dataclass
class Loaders:
    """Training and validation loaders, the batch-level mixup (None when off or done in the collate)."""
    train: Any
    eval: Any
    mixup_fn: Optional[Callable] = None
    mixup_active: bool = False
    probe_batches: int = 0  # leading validation batches forming the routing-consistency probe set


def prepare_dataset(spec: RunSpec) -> None:
    """Fashion-MNIST's files (on the primary process; the others wait), then the dataset's files are checked before
    anything trains: the raw IDX files of the torchvision MNIST family, the folders of an image folder dataset (the
    labels are checked against the model in :func:`create_datasets`)."""
    data = spec.data
    name = data.dataset.lower()
    if name in FASHION_MNIST_NAMES and is_primary(spec):
        src = prepare_fashion_mnist(data.data_dir, download=data.dataset_download)
        _logger.info(f'Fashion-MNIST in {data.data_dir} (source: {src})')
    if spec.runtime.distributed:
        torch.distributed.barrier()
    short = name.split('/', 1)[1] if name.startswith(('torch/', 'torchvision/')) else None
    if short in MNIST_FOLDERS:
        check_mnist_files(data.data_dir, MNIST_FOLDERS[short])
    elif name in FOLDER_DATASETS:
        check_folder_dataset(data.data_dir, data.train_split, data.val_split)


def create_datasets(spec: RunSpec, data_config: dict, num_classes: Optional[int] = None) -> Tuple[Any, Any]:
    """timm datasets of ``--train-split`` and ``--val-split`` (1- or 3-channel images); with ``num_classes`` their
    labels are checked against it."""
    data = spec.data
    channels = data_config['input_size'][0]
    if channels not in (1, 3):
        raise ValueError(f'train_tgr.py reads 1- or 3-channel images; the model wants {channels}')
    common = dict(root=data.data_dir, class_map=data.class_map, download=data.dataset_download,
                  input_img_mode='RGB' if channels == 3 else 'L')
    dataset_train = create_dataset(data.dataset, split=data.train_split, is_training=True,
                                   batch_size=data.batch_size, seed=spec.runtime.seed, **common)
    dataset_eval = create_dataset(data.dataset, split=data.val_split, is_training=False,
                                  batch_size=data.eval_batch_size, **common)
    if data.dataset.lower() in FOLDER_DATASETS:
        check_class_lists(dataset_train, dataset_eval, data.data_dir, data.train_split, data.val_split)
        check_images(dataset_train, data.train_split, data.data_dir)
        check_images(dataset_eval, data.val_split, data.data_dir)
    if num_classes is not None:
        for dataset, split in ((dataset_train, data.train_split), (dataset_eval, data.val_split)):
            check_labels(dataset, split, num_classes, data.dataset, data.data_dir, spec.model.weights_loaded)
    return dataset_train, dataset_eval


def _mixup(aug: AugmentSpec, num_classes: int, prefetcher: bool) -> Tuple[bool, Optional[Mixup], Optional[Callable]]:
    """(active, batch-level Mixup, collate_fn): timm's FastCollateMixup with the prefetcher, else Mixup."""
    active = aug.mixup > 0 or aug.cutmix > 0. or aug.cutmix_minmax is not None
    if not active:
        return False, None, None
    mixup_args = dict(
        mixup_alpha=aug.mixup, cutmix_alpha=aug.cutmix, cutmix_minmax=aug.cutmix_minmax, prob=aug.mixup_prob,
        switch_prob=aug.mixup_switch_prob, mode=aug.mixup_mode, label_smoothing=aug.smoothing,
        num_classes=num_classes)
    if prefetcher:
        return True, None, FastCollateMixup(**mixup_args)
    return True, Mixup(**mixup_args), None


def create_loaders(spec: RunSpec, data_config: dict, device: torch.device, num_classes: int) -> Loaders:
    """timm's ``create_loader`` for both splits, with the flags' augmentation and mixup."""
    data, aug = spec.data, spec.augment
    dataset_train, dataset_eval = create_datasets(spec, data_config, num_classes)
    mixup_active, mixup_fn, collate_fn = _mixup(aug, num_classes, data.prefetcher)
    train_interpolation = aug.train_interpolation
    if aug.no_aug or not train_interpolation:
        train_interpolation = data_config['interpolation']
    common = dict(input_size=data_config['input_size'], mean=data_config['mean'], std=data_config['std'],
                  num_workers=data.workers, distributed=spec.runtime.distributed, pin_memory=data.pin_mem,
                  device=device, use_prefetcher=data.prefetcher, persistent_workers=False)
    loader_train = create_loader(
        dataset_train, batch_size=data.batch_size, is_training=True, no_aug=aug.no_aug, re_prob=aug.reprob,
        re_mode=aug.remode, re_count=aug.recount, scale=aug.scale, ratio=aug.ratio, hflip=aug.hflip,
        vflip=aug.vflip, color_jitter=aug.color_jitter, auto_augment=aug.aa, interpolation=train_interpolation,
        collate_fn=collate_fn, **common)
    loader_eval = create_loader(
        dataset_eval, batch_size=data.eval_batch_size, is_training=False, interpolation=data_config['interpolation'],
        crop_pct=data_config['crop_pct'], **common)
    return _loaders(spec, loader_train, loader_eval, len(dataset_train), mixup_active, mixup_fn)


def create_device_loaders(spec: RunSpec, data_config: dict, device: torch.device, num_classes: int) -> Loaders:
    """--device-data: both splits held on ``device`` (DeviceDataLoader); crop, flip and the batch Mixup there."""
    data, aug, runtime = spec.data, spec.augment, spec.runtime
    check_device_data_args(aug)
    dataset_train, dataset_eval = create_datasets(spec, data_config, num_classes)
    mixup_active, mixup_fn, _ = _mixup(aug, num_classes, data.prefetcher)  # no prefetcher: batch-level Mixup
    common = dict(mean=data_config['mean'], std=data_config['std'], device=device, rank=runtime.rank,
                  world_size=runtime.world_size, input_size=data_config['input_size'])
    loader_train = DeviceDataLoader.from_dataset(
        dataset_train, data.batch_size, is_training=True, seed=runtime.seed,
        padding=0 if aug.no_aug else DEFAULT_CROP_PADDING, hflip=0. if aug.no_aug else aug.hflip, **common)
    loader_eval = DeviceDataLoader.from_dataset(dataset_eval, data.eval_batch_size, **common)
    return _loaders(spec, loader_train, loader_eval, loader_train.num_samples, mixup_active, mixup_fn)


def _loaders(spec: RunSpec, loader_train, loader_eval, num_train: int, mixup_active: bool,
             mixup_fn: Optional[Mixup]) -> Loaders:
    """Both loaders with the probe-set size; a training split smaller than one batch is an error."""
    if len(loader_train) == 0:
        raise ValueError(f'the training split has fewer images ({num_train}) than one batch '
                         f'({spec.data.batch_size}, incomplete batches are dropped): lower --batch-size.')
    probe = spec.guidance.probe_samples
    probe_batches = math.ceil(probe / spec.data.eval_batch_size) if probe > 0 else 0
    return Loaders(train=loader_train, eval=loader_eval, mixup_fn=mixup_fn, mixup_active=mixup_active,
                   probe_batches=probe_batches)
