"""Where Fashion-MNIST comes from: files in the data folder, Debian's copy, torchvision's download when no local copy
exists, a clear message offline."""
import gzip
import logging
import os
import urllib.error

import pytest

from timm_tgr.data import FASHION_MNIST_FILES, prepare_fashion_mnist, read_idx_shape, write_synthetic_fashion_mnist


@pytest.fixture
def no_local_copy(tmp_path, monkeypatch):
    monkeypatch.setattr('timm_tgr.data.fashion_mnist.DEBIAN_FASHION_MNIST_DIR', str(tmp_path / 'none'))
    monkeypatch.delenv('TIMM_TGR_FASHION_MNIST', raising=False)


class _FakeDownload:
    """Stands in for torchvision's FashionMNIST(download=True): writes the raw files as the real one does."""
    calls = []

    def __init__(self, root, train, download):
        self.calls.append((root, train, download))
        write_synthetic_fashion_mnist(root, n_train=8, n_test=4)


class _Offline:
    def __init__(self, root, train, download):
        raise urllib.error.URLError('[Errno -3] Temporary failure in name resolution')


def test_download_is_used_when_nothing_is_local(tmp_path, no_local_copy, monkeypatch):
    monkeypatch.setattr('torchvision.datasets.FashionMNIST', _FakeDownload)
    _FakeDownload.calls = []
    assert prepare_fashion_mnist(str(tmp_path / 'data'), download=True) == 'download'
    assert [c[1:] for c in _FakeDownload.calls] == [(True, True), (False, True)]
    raw = tmp_path / 'data' / 'FashionMNIST' / 'raw'
    assert all((raw / f).is_file() for f in FASHION_MNIST_FILES)


def test_offline_download_says_how_else_to_get_the_data(tmp_path, no_local_copy, monkeypatch):
    monkeypatch.setattr('torchvision.datasets.FashionMNIST', _Offline)
    with pytest.raises(FileNotFoundError, match=r'downloading Fashion-MNIST .* failed \(URLError.*apt-get install '
                                                r'dataset-fashion-mnist.*TIMM_TGR_FASHION_MNIST'):
        prepare_fashion_mnist(str(tmp_path / 'data'), download=True)


def test_quickstart_downloads_by_default_and_not_with_no_download(tmp_path, no_local_copy, monkeypatch):
    from timm_tgr import quickstart
    monkeypatch.setattr('torchvision.datasets.FashionMNIST', _Offline)
    out = str(tmp_path / 'qs')
    with pytest.raises(FileNotFoundError, match='download.* failed'):  # tried the download: there was no copy
        quickstart.main(['--data-dir', str(tmp_path / 'data'), '--output', out])
    with pytest.raises(FileNotFoundError) as e:
        quickstart.main(['--data-dir', str(tmp_path / 'data'), '--output', out, '--no-download'])
    assert str(e.value).startswith('Fashion-MNIST not found in')  # no download was tried
    assert not os.path.exists(os.path.join(out, 'teacher'))  # nothing trained


def _gz_copy(tmp_path, name, dest, n_train, files=FASHION_MNIST_FILES):
    """The four files of a synthetic Fashion-MNIST with ``n_train`` training images, gzipped into ``dest``."""
    raw = os.path.join(write_synthetic_fashion_mnist(str(tmp_path / name), n_train=n_train, n_test=4),
                       'FashionMNIST', 'raw')
    os.makedirs(dest, exist_ok=True)
    for f in files:
        with open(os.path.join(raw, f), 'rb') as fi, gzip.open(os.path.join(dest, f + '.gz'), 'wb') as fo:
            fo.write(fi.read())
    return str(dest)


def _train_images(root):
    return read_idx_shape(os.path.join(root, 'FashionMNIST', 'raw', 'train-images-idx3-ubyte'))[0]


@pytest.mark.parametrize('where', ['data', 'data/FashionMNIST/raw'])
def test_gz_files_in_the_data_folder_come_before_debians_copy(tmp_path, monkeypatch, where):
    """The four .gz files put into --data-dir (or torchvision's raw/ folder under it) are the ones used."""
    debian = _gz_copy(tmp_path, 'debian-src', tmp_path / 'debian', n_train=8)
    monkeypatch.setattr('timm_tgr.data.fashion_mnist.DEBIAN_FASHION_MNIST_DIR', debian)
    monkeypatch.delenv('TIMM_TGR_FASHION_MNIST', raising=False)
    mine = _gz_copy(tmp_path, 'my-src', tmp_path / where, n_train=12)
    assert prepare_fashion_mnist(str(tmp_path / 'data')) == mine
    assert _train_images(str(tmp_path / 'data')) == 12  # not Debian's 8


def test_a_folder_with_some_of_the_files_is_passed_over_with_a_warning(tmp_path, monkeypatch, caplog):
    debian = _gz_copy(tmp_path, 'debian-src', tmp_path / 'debian', n_train=8)
    monkeypatch.setattr('timm_tgr.data.fashion_mnist.DEBIAN_FASHION_MNIST_DIR', debian)
    monkeypatch.delenv('TIMM_TGR_FASHION_MNIST', raising=False)
    _gz_copy(tmp_path, 'my-src', tmp_path / 'data', n_train=12, files=FASHION_MNIST_FILES[:2])
    with caplog.at_level(logging.WARNING, logger='timm_tgr.data.fashion_mnist'):
        assert prepare_fashion_mnist(str(tmp_path / 'data')) == debian
    assert _train_images(str(tmp_path / 'data')) == 8
    said = [r.getMessage() for r in caplog.records if 'passed over' in r.getMessage()]
    assert len(said) == 1 and said[0].startswith(f"{tmp_path / 'data'} holds 2 of the 4 Fashion-MNIST files")
    assert 't10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz' in said[0]
