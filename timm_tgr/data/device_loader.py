"""A data loader that keeps a small image dataset on the device (GPU-resident data path).

Fashion-MNIST (60k x 28 x 28 uint8, 47 MB), MNIST or CIFAR fit in GPU memory many times over. For
such datasets timm's loader (PIL decode, per-sample transforms in CPU workers, host-to-device copy)
costs more than the tiny models it feeds. :class:`DeviceDataLoader` holds the split's uint8 images
``[N, C, H, W]`` and int64 labels on the device once and builds every batch there:

- order: a permutation drawn from ``(seed, epoch)`` with a CPU ``torch.Generator`` (the only host
  work of an epoch), sharded over ``world_size`` ranks exactly as ``torch.utils.data.DistributedSampler``
  (training) / timm's ``OrderedDistributedSampler`` (evaluation) do: padded to a multiple of the ranks by
  repeating the first indices, rank ``r`` taking every ``world_size``-th index from ``r``;
- augmentation (training only): a random crop of the zero-padded image (torchvision's
  ``RandomCrop(H, padding=p)``) and a horizontal flip with probability ``hflip``, vectorized as one
  gather of index arithmetic, random draws from a device ``torch.Generator`` seeded per (seed, epoch, rank);
- normalization exactly as timm's ``PrefetchLoader``: ``(x - 255 mean) / (255 std)`` in float32;
- optionally timm's batch ``Mixup`` (it works on device tensors); the trainer may instead keep applying
  its own ``mixup_fn`` to the batches, as it does with timm's loader without the prefetcher.

Batches come out as timm's loader with ``use_prefetcher=True`` gives them: normalized float images and
int64 targets, both on the device. Call :meth:`DeviceDataLoader.set_epoch` before every epoch.
"""
import math
import os
from typing import Callable, Iterator, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from .idx import read_idx

__all__ = ['DeviceDataLoader', 'random_crop_flip', 'crop_flip', 'check_device_data_args', 'DEFAULT_CROP_PADDING']

DEFAULT_CROP_PADDING = 4  # the usual pad-4 random crop of 28x28 (MNIST-family) and 32x32 (CIFAR) images

_NO_DATA = (
    'DeviceDataLoader.from_dataset needs the whole split as one uint8 image array in `.data` and its labels '
    'in `.targets` (or `.labels`), as torchvision\'s MNIST, FashionMNIST, KMNIST, CIFAR10/100 (timm\'s '
    '"torch/<name>" datasets) hold them; {name} has {what}. Use timm\'s loader for this dataset (drop '
    '--device-data), or build DeviceDataLoader(images, targets, ...) from tensors you load yourself.')


def crop_flip(x: torch.Tensor, oy: torch.Tensor, ox: torch.Tensor, flip: torch.Tensor, padding: int) -> torch.Tensor:
    """Per-sample crop of the zero-padded batch, then horizontal flip, in one gather.

    ``out[b, :, i, j] = P[b, :, oy[b] + i, ox[b] + j']`` with ``P = x`` zero-padded by ``padding`` on every
    side, ``j' = W - 1 - j`` where ``flip[b]`` else ``j``; offsets lie in ``[0, 2 * padding]``.
    """
    B, C, H, W = x.shape
    xp = F.pad(x, (padding,) * 4) if padding else x
    Hp, Wp = H + 2 * padding, W + 2 * padding
    i = torch.arange(H, device=x.device)
    j = torch.arange(W, device=x.device)
    cols = torch.where(flip[:, None], (W - 1 - j)[None, :], j[None, :]) + ox[:, None]  # [B, W]
    rows = oy[:, None] + i[None, :]  # [B, H]
    lin = (rows[:, :, None] * Wp + cols[:, None, :]).reshape(B, 1, H * W).expand(B, C, H * W)
    return torch.gather(xp.reshape(B, C, Hp * Wp), 2, lin).reshape(B, C, H, W)


def random_crop_flip(x: torch.Tensor, padding: int, hflip: float, generator: torch.Generator) -> torch.Tensor:
    """:func:`crop_flip` with offsets uniform over ``[0, 2 * padding]`` and flips with probability ``hflip``."""
    B, device = x.shape[0], x.device
    oy = torch.randint(0, 2 * padding + 1, (B,), generator=generator, device=device)
    ox = torch.randint(0, 2 * padding + 1, (B,), generator=generator, device=device)
    flip = torch.rand(B, generator=generator, device=device) < hflip
    return crop_flip(x, oy, ox, flip, padding)


def check_device_data_args(args) -> None:
    """Refuse training flags whose augmentation the device path does not implement (names the fix)."""
    unsupported = [flag for flag, on in (
        ('--reprob', getattr(args, 'reprob', 0.) > 0.), ('--aa', bool(getattr(args, 'aa', None))),
        ('--color-jitter', bool(getattr(args, 'color_jitter', None))), ('--vflip', getattr(args, 'vflip', 0.) > 0.),
    ) if on]
    if unsupported:
        raise ValueError(f'--device-data augments with a padded random crop and a horizontal flip only; '
                         f'{", ".join(unsupported)} need timm\'s loader: drop --device-data or those flags.')


def _images_nchw(data) -> torch.Tensor:
    images = data if isinstance(data, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(data))
    if images.dtype != torch.uint8:
        raise TypeError(f'DeviceDataLoader holds uint8 images, got {images.dtype}: convert them to uint8 '
                        f'(0..255) first, or use timm\'s loader (drop --device-data).')
    if images.ndim == 3:  # [N, H, W] grayscale (MNIST family)
        return images[:, None]
    if images.ndim == 4 and images.shape[-1] in (1, 3) and images.shape[1] not in (1, 3):  # [N, H, W, C] (CIFAR)
        return images.permute(0, 3, 1, 2)
    if images.ndim == 4 and images.shape[1] in (1, 3):
        return images
    raise ValueError(f'DeviceDataLoader wants images [N, H, W], [N, H, W, C] or [N, C, H, W] with 1 or 3 '
                     f'channels, got shape {tuple(images.shape)}.')


def _check_fits(nbytes: int, device: torch.device) -> None:
    if device.type != 'cuda':
        return
    free, _ = torch.cuda.mem_get_info(device)
    if nbytes > free // 2:
        raise MemoryError(f'DeviceDataLoader would keep {nbytes / 2 ** 30:.2f} GiB of images on {device}, more '
                          f'than half of its {free / 2 ** 30:.2f} GiB free: use timm\'s loader for a dataset this '
                          f'size (drop --device-data).')


class DeviceDataLoader:
    """Batches of a device-resident uint8 image dataset, augmented and normalized on the device.

    Args:
        images: uint8 ``[N, C, H, W]`` (or ``[N, H, W]`` grayscale, or ``[N, H, W, C]``), tensor or array.
        targets: integer class labels ``[N]``.
        batch_size: samples per batch (per rank).
        is_training: shuffle per epoch, drop the last incomplete batch, augment, apply ``mixup_fn``.
        mean, std: per-channel normalization (pixel / 255 units), as timm's data config gives them.
        padding: random-crop padding (training; 0: no crop). hflip: horizontal flip probability (training).
        mixup_fn: timm ``Mixup`` applied to every training batch (None: leave it to the caller).
        device: where images, labels and batches live. seed: of the permutation and the augmentation.
        rank, world_size: distributed sharding of every epoch's indices.
        drop_last: default ``is_training``. in_chans: repeat 1-channel images to this many channels.
        input_size: ``(C, H, W)`` the model expects; a mismatch fails at construction.
    """

    def __init__(
            self, images, targets, batch_size: int, is_training: bool = False,
            mean: Sequence[float] = (0.,), std: Sequence[float] = (1.,), padding: int = 0, hflip: float = 0.,
            mixup_fn: Optional[Callable] = None, device: Union[str, torch.device] = 'cpu', seed: int = 0,
            rank: int = 0, world_size: int = 1, drop_last: Optional[bool] = None, in_chans: Optional[int] = None,
            input_size: Optional[Tuple[int, int, int]] = None, img_dtype: torch.dtype = torch.float32):
        from timm.data.loader import adapt_to_chs
        self.device = torch.device(device)
        images = _images_nchw(images)
        targets = torch.as_tensor(np.asarray(targets) if not isinstance(targets, torch.Tensor) else targets)
        if targets.ndim != 1 or targets.shape[0] != images.shape[0] or targets.is_floating_point():
            raise ValueError(f'targets must be {images.shape[0]} integer class labels, got {targets.dtype} '
                             f'{tuple(targets.shape)}.')
        self.in_chans = in_chans or images.shape[1]
        self._check_shapes(images.shape, input_size, batch_size, rank, world_size, padding, hflip)
        if mixup_fn is not None and batch_size % 2:
            raise ValueError(f'timm\'s Mixup mixes a batch with its reverse and needs an even batch size, got '
                             f'{batch_size}: use an even --batch-size.')
        _check_fits(images.numel(), self.device)
        self.images = images.contiguous().to(self.device)
        self.targets = targets.to(device=self.device, dtype=torch.int64)
        self.batch_size, self.is_training = int(batch_size), bool(is_training)
        self.drop_last = self.is_training if drop_last is None else bool(drop_last)
        self.padding, self.hflip, self.mixup_fn = int(padding), float(hflip), mixup_fn
        self.seed, self.rank, self.world_size, self.epoch = int(seed), int(rank), int(world_size), 0
        shape = (1, self.in_chans, 1, 1)
        self.img_dtype = img_dtype
        self.mean = torch.tensor([x * 255 for x in adapt_to_chs(tuple(mean), self.in_chans)],
                                 device=self.device, dtype=img_dtype).view(shape)
        self.std = torch.tensor([x * 255 for x in adapt_to_chs(tuple(std), self.in_chans)],
                                device=self.device, dtype=img_dtype).view(shape)

    def _check_shapes(self, shape, input_size, batch_size, rank, world_size, padding, hflip) -> None:
        C = shape[1]
        if self.in_chans != C and C != 1:
            raise ValueError(f'{C}-channel images cannot feed a {self.in_chans}-channel model: set --in-chans {C}.')
        if input_size is not None and (self.in_chans, *shape[2:]) != tuple(input_size):
            raise ValueError(f'the images are {C}x{shape[2]}x{shape[3]}, the model wants {tuple(input_size)}: '
                             f'set --img-size {shape[2]} (DeviceDataLoader does not resize), or drop --device-data.')
        if batch_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f'need batch_size >= 1 and 0 <= rank < world_size, got {batch_size}, {rank}, {world_size}')
        if padding < 0 or not 0. <= hflip <= 1.:
            raise ValueError(f'need padding >= 0 and hflip in [0, 1], got {padding}, {hflip}')

    # ---- construction from datasets and files
    @classmethod
    def from_dataset(cls, dataset, batch_size: int, **kwargs) -> 'DeviceDataLoader':
        """From a torchvision-style dataset holding its raw images in ``.data`` and labels in ``.targets``
        (MNIST, FashionMNIST, KMNIST, CIFAR10/100; what timm's ``create_dataset('torch/<name>')`` returns).
        The dataset's own ``transform`` is not used: this loader augments and normalizes itself."""
        name = type(dataset).__name__
        data = getattr(dataset, 'data', None)
        targets = getattr(dataset, 'targets', None)
        if targets is None:
            targets = getattr(dataset, 'labels', None)
        if data is None or targets is None:
            raise TypeError(_NO_DATA.format(name=name, what='no `.data`' if data is None else 'no `.targets`'))
        if not isinstance(data, (torch.Tensor, np.ndarray)):
            raise TypeError(_NO_DATA.format(name=name, what=f'a `.data` of type {type(data).__name__}'))
        return cls(data, targets, batch_size, **kwargs)

    @classmethod
    def from_idx(cls, images_path: str, labels_path: str, batch_size: int, **kwargs) -> 'DeviceDataLoader':
        """From an IDX image file (``[N, H, W]`` uint8) and its label file (``.gz`` or not)."""
        return cls(read_idx(images_path), read_idx(labels_path).astype(np.int64), batch_size, **kwargs)

    @classmethod
    def from_fashion_mnist(cls, root: str, train: bool, batch_size: int, **kwargs) -> 'DeviceDataLoader':
        """From ``<root>/FashionMNIST/raw`` (the layout :func:`~timm_tgr.data.prepare_fashion_mnist` writes)."""
        split = 'train' if train else 't10k'
        raw = os.path.join(root, 'FashionMNIST', 'raw')
        return cls.from_idx(os.path.join(raw, f'{split}-images-idx3-ubyte'),
                            os.path.join(raw, f'{split}-labels-idx1-ubyte'), batch_size, **kwargs)

    # ---- order
    @property
    def num_samples(self) -> int:
        """Samples in the whole split (all ranks)."""
        return int(self.images.shape[0])

    @property
    def samples_per_rank(self) -> int:
        return math.ceil(self.num_samples / self.world_size)

    def __len__(self) -> int:
        n = self.samples_per_rank
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Fix the epoch: its permutation (training) and augmentation draws follow from (seed, epoch)."""
        self.epoch = int(epoch)

    def indices(self) -> torch.Tensor:
        """This rank's sample indices for the current epoch (CPU int64), before batching."""
        n = self.num_samples
        if self.is_training:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        total = self.samples_per_rank * self.world_size
        if total > n:  # pad by repeating the first indices, as DistributedSampler does
            order = order.repeat(math.ceil(total / n))[:total]
        return order[self.rank:total:self.world_size]

    def _aug_generator(self) -> torch.Generator:
        g = torch.Generator(device=self.device)
        g.manual_seed((self.seed * 1_000_003 + self.epoch * 10_007 + self.rank * 101 + 1) % (2 ** 63))
        return g

    # ---- batches
    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        order = self.indices().to(self.device)
        augment = self.is_training and (self.padding > 0 or self.hflip > 0.)
        g = self._aug_generator() if augment else None
        for b in range(len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            x = self.images.index_select(0, idx)
            target = self.targets.index_select(0, idx)
            if augment:
                x = random_crop_flip(x, self.padding, self.hflip, g)
            if x.shape[1] != self.in_chans:
                x = x.expand(-1, self.in_chans, -1, -1)
            x = x.to(self.img_dtype).sub_(self.mean).div_(self.std)
            if self.is_training and self.mixup_fn is not None:
                x, target = self.mixup_fn(x, target)
            yield x, target

    def __repr__(self) -> str:
        return (f'{type(self).__name__}({self.num_samples} images {tuple(self.images.shape[1:])} on {self.device}, '
                f'batch {self.batch_size}, training {self.is_training}, padding {self.padding}, hflip {self.hflip}, '
                f'mixup {self.mixup_fn is not None}, rank {self.rank}/{self.world_size})')
