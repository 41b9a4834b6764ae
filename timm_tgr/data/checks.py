"""The checks of a dataset before anything trains: an image folder dataset's split folders, the same class folders
in both splits, every image readable, every label inside the model's classes. Each names the file or folder and the
train_tgr.py flag that fixes it (a failure mid-epoch would lose the epoch and name nothing)."""
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import numpy as np
import torch
from PIL import Image
from timm.data import ImageDataset

__all__ = ['FOLDER_DATASETS', 'check_folder_dataset', 'split_folder', 'check_class_lists', 'check_images',
           'NamedImageDataset', 'dataset_labels', 'check_labels']

FOLDER_DATASETS = ('', 'folder', 'imagefolder')  # timm's names of an image folder dataset


def check_folder_dataset(root: str, train_split: str, val_split: str) -> None:
    """An image folder dataset (``--dataset folder`` / ``''``) needs ``--data-dir`` with a folder for each split:
    without one timm reads the whole ``--data-dir`` as that split, so the validation top-1 (and ``model_best``)
    would come from other images than the validation split's (e.g. the training images)."""
    how = ('--dataset folder reads <data-dir>/<split>/<class>/<image> (splits --train-split / --val-split, '
           'default train / validation)')
    if not os.path.isdir(root):
        raise FileNotFoundError(f'--data-dir {root} does not exist: give the folder holding the image '
                                f'folders ({how}).')
    for flag, split in (('--train-split', train_split), ('--val-split', val_split)):
        if split_folder(root, split) is None:
            there = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
            raise FileNotFoundError(
                f'--data-dir {root} has no {split}/ folder for {flag} {split} (its folders: '
                f'{", ".join(there[:8]) or "none"}): timm would read the whole --data-dir as that split, so '
                f'{_WHOLE_DIR[flag]}. '
                f'Put the images in {os.path.join(root, split)}/<class>/, or name the split\'s folder with '
                f'{flag} ({how}).')


_WHOLE_DIR = {'--train-split': 'training would read the images of every split',
              '--val-split': 'the validation top-1 and model_best would come from the training images'}


def split_folder(root: str, split: str) -> Optional[str]:
    """The folder timm's ``create_dataset`` reads for ``split`` of the folder dataset ``root`` (the split's
    name, or for train / validation one of its synonyms: training, val, valid, eval, evaluation); None where timm
    would fall back to ``root`` itself."""
    name = split.split('[')[0]
    synonyms = {'train': ('train', 'training'), 'training': ('train', 'training')}
    evals = ('val', 'valid', 'validation', 'eval', 'evaluation')
    candidates = (name,) + synonyms.get(name, evals if name in evals else ())
    return next((os.path.join(root, c) for c in candidates if os.path.isdir(os.path.join(root, c))), None)


def check_class_lists(dataset_train, dataset_eval, root: str, train_split: str, val_split: str) -> None:
    """The two splits of a folder dataset must have the same class folders: labels are their sorted positions, so a
    class folder missing (or renamed) in one split shifts every later label and the top-1 compares other classes."""
    train, val = (getattr(getattr(d, 'reader', None), 'class_to_idx', None) for d in (dataset_train, dataset_eval))
    if not isinstance(train, dict) or not isinstance(val, dict) or train == val:
        return
    only_train, only_val = sorted(set(train) - set(val)), sorted(set(val) - set(train))
    parts = []
    if only_train:
        parts.append(f'only in {train_split}/: {", ".join(only_train[:6])}')
    if only_val:
        parts.append(f'only in {val_split}/: {", ".join(only_val[:6])}')
    if not parts:
        moved = sorted(c for c in train if train[c] != val[c])
        parts.append(f'labelled differently: {", ".join(moved[:6])}')
    raise ValueError(
        f'the class folders of {os.path.join(root, train_split)} and '
        f'{os.path.join(root, val_split)} differ ({"; ".join(parts)}; a class folder without images '
        f'counts as missing): labels are the sorted class folders, so the splits would label the same class '
        f'differently. Give both splits the same class folders (or one --class-map for both).')


def check_images(dataset, split: str, root: str) -> None:
    """Every image of a folder dataset opens (its header is read) before the first step: timm would skip an
    unreadable one mid-epoch without naming it. Later decode errors name the file (:class:`NamedImageDataset`)."""
    samples = getattr(getattr(dataset, 'reader', None), 'samples', None)
    if not isinstance(samples, (list, tuple)) or not samples or not isinstance(samples[0][0], str):
        return

    def error(path: str) -> Optional[str]:
        try:
            with Image.open(path) as im:
                im.size
        except Exception as e:  # noqa: BLE001 - PIL raises many types for a bad file
            return f'{path}: {type(e).__name__}: {(str(e).strip().splitlines() or [""])[0][:160]}'
        return None

    with ThreadPoolExecutor(max_workers=8) as pool:
        bad = [b for b in pool.map(error, (s[0] for s in samples)) if b is not None]
    if bad:
        more = f' and {len(bad) - 3} more' if len(bad) > 3 else ''
        raise ValueError(f'{len(bad)} image(s) of the {split} split of --data-dir {root} cannot be read '
                         f'({"; ".join(bad[:3])}{more}): replace or remove them.')
    if isinstance(dataset, ImageDataset) and type(dataset) is ImageDataset:
        dataset.__class__ = NamedImageDataset


class NamedImageDataset(ImageDataset):
    """timm's ImageDataset whose unreadable image stops the run naming the file (timm skips it, unnamed)."""

    def __getitem__(self, index):
        path = self.reader.samples[index][0]
        try:
            img, target = self.reader[index][:2]
            img = Image.open(img)
            if self.input_img_mode:
                img = img.convert(self.input_img_mode)
        except (OSError, ValueError, SyntaxError) as e:
            raise ValueError(f'image {path} cannot be read ({type(e).__name__}: {e}): replace or remove it, then '
                             f'--resume the run.') from e
        if self.transform is not None:
            img = self.transform(img)
        if target is None:
            target = -1
        elif self.target_transform is not None:
            target = self.target_transform(target)
        return img, target


def dataset_labels(dataset) -> Optional[np.ndarray]:
    """Every label of ``dataset`` without reading an image (torchvision ``targets``, timm's folder reader
    ``samples``); None when the dataset does not list them."""
    targets = getattr(dataset, 'targets', None)
    if targets is None:
        samples = getattr(getattr(dataset, 'reader', None), 'samples', None)
        if isinstance(samples, (list, tuple)) and all(isinstance(s, (list, tuple)) and len(s) == 2 for s in samples):
            targets = [s[1] for s in samples]
    if targets is None:
        return None
    try:
        return np.asarray(targets if not torch.is_tensor(targets) else targets.cpu().numpy(), dtype=np.int64)
    except (TypeError, ValueError):
        return None


def check_labels(dataset, split: str, num_classes: int, name: str, root: str, weights_loaded: bool = False) -> None:
    """Every label of ``dataset`` (split ``split`` of timm dataset ``name`` in ``root``) in ``[0, num_classes)``,
    before the first step (later it fails mid-epoch); ``weights_loaded``: the model starts from trained weights."""
    labels = dataset_labels(dataset)
    if labels is None or labels.size == 0:
        if labels is not None:
            raise ValueError(f'the {split} split of --dataset {name!r} in {root} holds no images: '
                             f'check --data-dir and the split folders.')
        return
    low, high = int(labels.min()), int(labels.max())
    if low >= 0 and high < num_classes:
        return
    classes = getattr(getattr(dataset, 'reader', None), 'class_to_idx', None)
    what = f'{len(classes)} class folders' if classes else f'labels {low}..{high}'
    raise ValueError(
        f'the {split} split of --dataset {name!r} in {root} has {what}, but the model is built '
        f'for {num_classes} classes (labels 0..{num_classes - 1}): pass --num-classes {high + 1}'
        + (' (a fresh classifier for the new count)' if weights_loaded else '')
        + ', or fix the labels / the class folders (--class-map).')
