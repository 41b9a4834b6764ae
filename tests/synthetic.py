"""Tiny synthetic training for the tests that train or draw: image folders whose classes differ in brightness, and
the train_tgr.py flags of a tiny TGR-MoE run on them."""
import pathlib
from typing import Sequence, Tuple

import numpy as np
from PIL import Image

# train_tgr.py flags of the smallest guided run: a width-32 TGR-MoE (E=4) on 3 classes of 16x16 grayscale images,
# guided by a random width-32 DeiT-III-layout teacher (add --data-dir, --output, --experiment)
TINY_TGR_ARGV = [
    '--dataset', '', '--model', 'tgr_moe_deit_tiny',
    '--model-kwargs', 'embed_dim=32', 'num_heads=2', 'patch_size=4', 'num_experts=4',
    '--img-size', '16', '--in-chans', '1', '--num-classes', '3', '--mean', '0.5', '--std', '0.25',
    '--teacher', 'deit3_small_patch16_224', '--teacher-kwargs', 'embed_dim=32', 'num_heads=2', 'patch_size=4',
    'img_size=16', 'in_chans=1', 'num_classes=3', '--no-teacher-pretrained',
    '-b', '8', '-j', '0', '--warmup-epochs', '1', '--probe-samples', '8', '--no-progress', '--threads', '1',
]


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
