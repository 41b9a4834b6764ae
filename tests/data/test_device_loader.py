"""DeviceDataLoader on CPU against independent references: timm's create_loader (eval and no-aug training
batches), torch's DistributedSampler / timm's OrderedDistributedSampler (order and sharding), a
shifted-copy definition of the padded random crop, and the statistics of crops and flips."""

import numpy as np
import pytest
import torch

from timm_tgr.data import (FASHION_MNIST_MEAN, FASHION_MNIST_STD, DeviceDataLoader, check_device_data_args, crop_flip,
                           write_idx, write_synthetic_fashion_mnist)


def _id_images(n, seed=0, hw=(28, 28), channels=1):
    """Random images in 1..255 (a zero can only come from padding); the label of image i is i."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, 256, (n, channels, *hw), generator=g, dtype=torch.uint8), torch.arange(n)


def _raw(x):
    """Undo mean 0 / std 1 normalization: x * 255 is the uint8 pixel."""
    return torch.round(x * 255).to(torch.int64)


def _shifted(img, dy, dx, flip):
    """Reference crop: out[i, j] = img[i + dy, j + dx] (zero outside), then mirrored if flip."""
    C, H, W = img.shape
    out = torch.zeros_like(img)
    out[:, max(0, -dy):H - max(0, dy), max(0, -dx):W - max(0, dx)] = \
        img[:, max(0, dy):H - max(0, -dy), max(0, dx):W - max(0, -dx)]
    return out.flip(-1) if flip else out


def _recover(out, src, padding):
    """Every (dy, dx, flip) under which ``out`` is a shifted copy of ``src`` (brute force)."""
    return [(dy, dx, f) for dy in range(-padding, padding + 1) for dx in range(-padding, padding + 1)
            for f in (False, True) if torch.equal(_shifted(src, dy, dx, f), out)]


# ---------------------------------------------------------------------------------------------------------
# eval and no-aug paths == timm's loader
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def fmnist_root(tmp_path_factory):
    return write_synthetic_fashion_mnist(str(tmp_path_factory.mktemp('fmnist')), n_train=64, n_test=36)


def _timm_loader(root, is_training, prefetcher, batch_size=16):
    from timm.data import create_dataset, create_loader
    ds = create_dataset('torch/fashion_mnist', root=root, split='train' if is_training else 'validation',
                        is_training=is_training)
    loader = create_loader(ds, input_size=(1, 28, 28), batch_size=batch_size, is_training=is_training, no_aug=True,
                           interpolation='bilinear', mean=FASHION_MNIST_MEAN, std=FASHION_MNIST_STD, crop_pct=1.0,
                           num_workers=0, use_prefetcher=prefetcher, device=torch.device('cpu'))
    return ds, loader


@pytest.mark.parametrize('prefetcher', [True, False])
def test_eval_batches_equal_timm_create_loader(fmnist_root, prefetcher):
    ds, ref = _timm_loader(fmnist_root, False, prefetcher)
    ours = DeviceDataLoader.from_dataset(ds, 16, mean=FASHION_MNIST_MEAN, std=FASHION_MNIST_STD,
                                         input_size=(1, 28, 28))
    ref_batches, our_batches = list(ref), list(ours)
    assert len(ours) == len(ref) == 3 and [b[0].shape[0] for b in our_batches] == [16, 16, 4]  # last batch kept
    for (x, y), (rx, ry) in zip(our_batches, ref_batches):
        assert x.dtype == rx.dtype == torch.float32 and y.dtype == ry.dtype == torch.int64
        assert torch.equal(y, ry)
        if prefetcher:  # the same arithmetic as timm's PrefetchLoader: bit-identical
            assert torch.equal(x, rx)
        else:  # ToTensor + Normalize rounds differently
            torch.testing.assert_close(x, rx, atol=1e-6, rtol=0)


def test_training_without_augmentation_yields_timm_samples(fmnist_root):
    ds, ref = _timm_loader(fmnist_root, True, True)
    ours = DeviceDataLoader.from_dataset(ds, 16, is_training=True, mean=FASHION_MNIST_MEAN, std=FASHION_MNIST_STD)
    assert len(ours) == len(ref) == 4

    def samples(loader):  # every (image, label) of one epoch, in a canonical order
        pairs = [(x[i], int(y[i])) for x, y in loader for i in range(x.shape[0])]
        return sorted(pairs, key=lambda p: (p[1], p[0].sum().item()))
    for (x, y), (rx, ry) in zip(samples(ours), samples(ref)):
        assert y == ry and torch.equal(x, rx)


def test_from_idx_equals_from_dataset(fmnist_root):
    from torchvision.datasets import FashionMNIST
    a = DeviceDataLoader.from_fashion_mnist(fmnist_root, False, 8)
    b = DeviceDataLoader.from_dataset(FashionMNIST(fmnist_root, train=False), 8)
    assert torch.equal(a.images, b.images) and torch.equal(a.targets, b.targets) and a.targets.dtype == torch.int64


# ---------------------------------------------------------------------------------------------------------
# crop and flip
# ---------------------------------------------------------------------------------------------------------
def test_crop_flip_is_a_shifted_copy():
    x, _ = _id_images(12, hw=(6, 7), channels=2)
    g = torch.Generator().manual_seed(1)
    oy, ox = torch.randint(0, 9, (12,), generator=g), torch.randint(0, 9, (12,), generator=g)
    oy[:2], ox[:2] = torch.tensor([0, 8]), torch.tensor([8, 0])  # both ends of the range
    flip = torch.rand(12, generator=g) < 0.5
    out = crop_flip(x, oy, ox, flip, padding=4)
    for b in range(12):
        assert torch.equal(out[b], _shifted(x[b], int(oy[b]) - 4, int(ox[b]) - 4, bool(flip[b]))), b
    assert torch.equal(crop_flip(x, torch.zeros(12, dtype=torch.long), torch.zeros(12, dtype=torch.long),
                                 torch.zeros(12, dtype=torch.bool), padding=0), x)


def test_loader_crops_are_uniform_and_flips_have_rate_p():
    n, p, epochs = 64, 4, 6
    images, ids = _id_images(n, hw=(10, 10))
    loader = DeviceDataLoader(images, ids, 16, is_training=True, padding=p, hflip=0.3)
    dys, dxs, flips = [], [], []
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for x, y in loader:
            for i in range(x.shape[0]):
                found = _recover(_raw(x[i]), images[int(y[i])].to(torch.int64), p)
                assert len(found) == 1, found  # exactly one shift/flip explains the output: pixels kept
                dys.append(found[0][0]), dxs.append(found[0][1]), flips.append(found[0][2])
    m = len(flips)
    assert m == n * epochs
    assert abs(np.mean(flips) - 0.3) < 4 * np.sqrt(0.3 * 0.7 / m)  # binomial, 4 sigma
    for offsets in (dys, dxs):  # uniform over -p..p: chi-square with 2p dof, far below its 1e-4 tail (~33 at 8 dof)
        counts = np.bincount(np.array(offsets) + p, minlength=2 * p + 1)
        expected = m / (2 * p + 1)
        assert ((counts - expected) ** 2 / expected).sum() < 33, counts


def test_no_flip_and_no_padding_mean_identity():
    images, ids = _id_images(32, hw=(8, 8))
    loader = DeviceDataLoader(images, ids, 8, is_training=True, padding=0, hflip=0.)
    for x, y in loader:
        assert torch.equal(_raw(x), images[y].to(torch.int64))
    always = DeviceDataLoader(images, ids, 8, is_training=True, padding=0, hflip=1.)
    for x, y in always:
        assert torch.equal(_raw(x), images[y].flip(-1).to(torch.int64))


# ---------------------------------------------------------------------------------------------------------
# order: per (seed, epoch), distributed sharding
# ---------------------------------------------------------------------------------------------------------
def _order(loader):
    return [i for _, y in loader for i in y.tolist()]


@pytest.mark.parametrize('n,world', [(64, 1), (64, 4), (70, 4), (5, 8)])
def test_training_order_is_distributed_samplers(n, world):
    from torch.utils.data import DistributedSampler
    images, ids = _id_images(n, hw=(4, 4))
    for rank in range(world):
        for epoch in (0, 3):
            loader = DeviceDataLoader(images, ids, 2, is_training=True, seed=7, rank=rank, world_size=world)
            loader.set_epoch(epoch)
            ref = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=True, seed=7)
            ref.set_epoch(epoch)
            ref = list(ref)
            assert len(loader) == len(ref) // 2
            assert _order(loader) == ref[:len(loader) * 2]


@pytest.mark.parametrize('n,world', [(64, 4), (70, 4)])
def test_eval_sharding_is_timms_ordered_sampler_and_covers(n, world):
    from timm.data.distributed_sampler import OrderedDistributedSampler
    images, ids = _id_images(n, hw=(4, 4))
    shards = []
    for rank in range(world):
        loader = DeviceDataLoader(images, ids, 5, rank=rank, world_size=world)
        shards.append(_order(loader))
        assert shards[-1] == list(OrderedDistributedSampler(range(n), num_replicas=world, rank=rank))
    flat = [i for s in shards for i in s]
    assert sorted(set(flat)) == list(range(n))  # covering
    assert len(flat) - n == (-n) % world  # disjoint but for the padding to a multiple of the ranks


def test_training_shards_are_disjoint_and_cover():
    images, ids = _id_images(64, hw=(4, 4))
    shards = [set(_order(DeviceDataLoader(images, ids, 4, is_training=True, rank=r, world_size=4))) for r in range(4)]
    assert all(len(s) == 16 for s in shards) and set().union(*shards) == set(range(64))


def test_permutation_fixed_per_seed_and_epoch():
    images, ids = _id_images(64, hw=(6, 6))

    def epoch_batches(seed, epoch):
        loader = DeviceDataLoader(images, ids, 8, is_training=True, padding=2, hflip=0.5, seed=seed)
        loader.set_epoch(epoch)
        return list(loader)
    a, b = epoch_batches(0, 1), epoch_batches(0, 1)
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))  # augmentation too
    orders = [torch.cat([y for _, y in epoch_batches(s, e)]).tolist() for s, e in ((0, 0), (0, 1), (1, 0))]
    assert orders[0] != orders[1] and orders[0] != orders[2]
    assert all(sorted(o) == list(range(64)) for o in orders)
    loader = DeviceDataLoader(images, ids, 8, is_training=True, padding=2, hflip=0.5)
    loader.set_epoch(1)
    first, again = list(loader), list(loader)  # iterating an epoch twice repeats it
    assert all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(first, again))


# ---------------------------------------------------------------------------------------------------------
# mixup, channels, datasets it cannot hold
# ---------------------------------------------------------------------------------------------------------
def test_mixup_on_device_batches():
    from timm.data import Mixup
    images, ids = _id_images(32, hw=(8, 8))
    mixup = Mixup(mixup_alpha=1.0, cutmix_alpha=0., label_smoothing=0., num_classes=32)
    mixed = DeviceDataLoader(images, ids, 8, is_training=True, mixup_fn=mixup)
    plain = DeviceDataLoader(images, ids, 8, is_training=True)
    np.random.seed(0)
    for (x, t), (a, y) in zip(mixed, plain):
        assert t.shape == (8, 32) and torch.allclose(t.sum(1), torch.ones(8))
        lam = t[0, y[0]].item()  # distinct labels: row b holds lam at y[b] and 1 - lam at y[7 - b]
        assert torch.allclose(t[torch.arange(8), y.flip(0)], torch.full((8,), 1 - lam))
        torch.testing.assert_close(x, lam * a + (1 - lam) * a.flip(0), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match='even --batch-size'):
        DeviceDataLoader(images, ids, 7, is_training=True, mixup_fn=mixup)


def test_grayscale_to_three_channels_and_shape_checks():
    images, ids = _id_images(8, hw=(6, 6))
    loader = DeviceDataLoader(images, ids, 4, in_chans=3, mean=(0.1, 0.2, 0.3), std=(0.5, 0.5, 0.5))
    x, y = next(iter(loader))
    ref = (images[:4].expand(-1, 3, -1, -1).float() - torch.tensor([25.5, 51., 76.5]).view(1, 3, 1, 1)) / 127.5
    torch.testing.assert_close(x, ref, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match='--img-size 6'):
        DeviceDataLoader(images, ids, 4, input_size=(1, 28, 28))
    with pytest.raises(ValueError, match='--in-chans 3'):
        DeviceDataLoader(_id_images(4, channels=3)[0], torch.arange(4), 2, in_chans=1)


def test_from_dataset_layouts_and_clear_errors(tmp_path):
    class CifarLike:  # torchvision CIFAR: numpy [N, H, W, 3] and a list of labels
        data = np.arange(2 * 4 * 5 * 3, dtype=np.uint8).reshape(2, 4, 5, 3)
        targets = [1, 0]
    loader = DeviceDataLoader.from_dataset(CifarLike(), 2)
    assert loader.images.shape == (2, 3, 4, 5) and loader.targets.tolist() == [1, 0]
    assert torch.equal(loader.images[1, 2], torch.from_numpy(CifarLike.data[1, :, :, 2]))

    class Folder:
        samples = [('a.png', 0)]
    with pytest.raises(TypeError, match='drop --device-data'):
        DeviceDataLoader.from_dataset(Folder(), 2)

    class Floats:
        data = np.zeros((2, 4, 4), dtype=np.float32)
        targets = [0, 1]
    with pytest.raises(TypeError, match='uint8'):
        DeviceDataLoader.from_dataset(Floats(), 2)
    with pytest.raises(ValueError, match='2 integer class labels'):
        DeviceDataLoader(np.zeros((2, 4, 4), dtype=np.uint8), [0, 1, 2], 2)


def test_from_idx_with_int_labels(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (6, 5, 5)).astype(np.uint8)
    write_idx(str(tmp_path / 'img'), images)
    write_idx(str(tmp_path / 'lab'), np.arange(6, dtype=np.uint8))
    loader = DeviceDataLoader.from_idx(str(tmp_path / 'img'), str(tmp_path / 'lab'), 3, std=(1.,))
    x, y = next(iter(loader))
    assert y.tolist() == [0, 1, 2] and torch.equal(_raw(x)[:, 0], torch.from_numpy(images[:3]).long())


def test_unsupported_augmentation_flags_are_refused():
    from types import SimpleNamespace
    ok = SimpleNamespace(reprob=0., aa=None, color_jitter=None, vflip=0.)
    check_device_data_args(ok)
    with pytest.raises(ValueError, match='--reprob, --aa.*drop --device-data'):
        check_device_data_args(SimpleNamespace(reprob=0.25, aa='rand-m9', color_jitter=None, vflip=0.))


# ---------------------------------------------------------------------------------------------------------
# CUDA (skipped without a GPU)
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
def test_cuda_batches_match_cpu_and_keep_pixels():
    images, ids = _id_images(64, hw=(10, 10))
    cpu = list(DeviceDataLoader(images, ids, 16, mean=(0.3,), std=(0.4,)))
    gpu = list(DeviceDataLoader(images, ids, 16, mean=(0.3,), std=(0.4,), device='cuda'))
    assert all(x2.is_cuda and y2.is_cuda and torch.equal(x1, x2.cpu()) and torch.equal(y1, y2.cpu())
               for (x1, y1), (x2, y2) in zip(cpu, gpu))
    train = DeviceDataLoader(images, ids, 16, is_training=True, padding=4, hflip=0.5, device='cuda')
    train.set_epoch(2)
    order = []
    for x, y in train:
        order += y.tolist()
        for i in range(x.shape[0]):
            assert len(_recover(_raw(x[i].cpu()), images[int(y[i])].to(torch.int64), 4)) == 1
    cpu_train = DeviceDataLoader(images, ids, 16, is_training=True)
    cpu_train.set_epoch(2)
    assert order == _order(cpu_train)  # the permutation is drawn on the host: the same on every device
