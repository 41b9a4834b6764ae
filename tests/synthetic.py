"""Tiny synthetic image folders for the tests that train or draw: classes told apart by brightness."""
import pathlib
from typing import Sequence, Tuple

import numpy as np
from PIL import Image


def write_image_folder(root, size: int = 16, splits: Sequence[Tuple[str, int]] = (('train', 8), ('validation', 4)),
                       num_classes: int = 3, offset: int = 0, step: int = 80, spread: int = 80, seed: int = 0,
                       class_name: str = 'c{}') -> str:
    """``num_classes`` classes of ``size``x``size`` grayscale PNGs under ``root/<split>/<class>/``, ``n`` per class
    for each ``(split, n)``; class c's pixels lie in ``offset + c*step + [0, spread)``."""
    root = pathlib.Path(root)
    rng = np.random.default_rng(seed)
    for split, n in splits:
        for c in range(num_classes):
            d = root / split / class_name.format(c)
            d.mkdir(parents=True)
            for i in range(n):
                a = (rng.random((size, size)) * spread + offset + c * step).clip(0, 255).astype(np.uint8)
                Image.fromarray(a, 'L').save(d / f'{i}.png')
    return str(root)
