import pytest

from synthetic import write_image_folder


@pytest.fixture(scope='module')
def image_folder(tmp_path_factory):
    """3 classes of 16x16 grayscale PNGs: 8 train and 4 validation images per class."""
    return write_image_folder(tmp_path_factory.mktemp('syn'))
