"""Where Fashion-MNIST comes from: torchvision's download when no local copy exists, a clear message offline."""
import os
import urllib.error

import pytest

from timm_tgr.data import FASHION_MNIST_FILES, prepare_fashion_mnist, write_synthetic_fashion_mnist


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
