"""``python -m timm_tgr.visualize MODEL --images FILES_OR_DIR --dataset NAME --out DIR``.

MODEL: a ``train_tgr.py`` / timm checkpoint file, or anything ``timm.create_model(MODEL, pretrained=True)``
loads (``local-dir:DIR``, ``hf-hub:ORG/NAME``, a timm name with weights). Images go through the model's own
timm data config (``resolve_data_config`` + ``create_transform``), one forward pass per batch.
"""
import argparse
import logging
import math
import os
from typing import List, Optional, Sequence, Tuple

import torch
from PIL import Image
from timm.data import create_dataset, create_transform, resolve_data_config

from ..data.fashion_mnist import FASHION_MNIST_NAMES
from ..models import moe_model
from ..utils.cli import ArgumentParser, ParseKwargs, torch_threads
from .load import class_names_for, load_model, load_teacher_routing, run_title
from .writer import ProbeImages, round_robin, write_routing_pictures

__all__ = ['main', 'draw', 'build_parser', 'model_data_config', 'image_files']

_logger = logging.getLogger('timm_tgr.visualize')

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.gif', '.webp', '.tif', '.tiff')


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog='python -m timm_tgr.visualize', formatter_class=argparse.RawDescriptionHelpFormatter,
        description='Routing pictures of a timm_tgr MoE model: per image every MoE block\'s top-1 expert per patch '
                    '(dropped tokens hatched), per block the share of each class\'s tokens per expert, and for a '
                    'TGR checkpoint with its teacher where the student\'s expert is the teacher router\'s.',
        epilog='examples:\n'
               '  python -m timm_tgr.visualize output/RUN/model_best.pth.tar --dataset torch/fashion_mnist '
               '--data-dir data --out output/RUN/pictures\n'
               '  python -m timm_tgr.visualize local-dir:hub/my_model --images photos/ --out pictures\n')
    p.add_argument('model', metavar='MODEL',
                   help='train_tgr.py / timm checkpoint, or a timm model with weights (local-dir:, hf-hub:, name)')
    p.add_argument('--out', required=True, metavar='DIR', help='folder for the PNGs and routing.json')
    p.add_argument('--images', nargs='+', default=[], metavar='FILE_OR_DIR',
                   help='images to draw a sheet each for (folders are searched recursively; a parent folder named '
                        'like a class gives the image its class)')
    p.add_argument('--dataset', default='', metavar='NAME',
                   help='timm dataset for the class x expert heatmaps and the agreement ("folder" or "" for an image '
                        'folder tree, torch/fashion_mnist, ...)')
    p.add_argument('--data-dir', default='data', metavar='DIR', help='dataset root (default: data)')
    p.add_argument('--split', default='validation', help='dataset split (default: validation)')
    p.add_argument('--max-samples', type=int, default=None, metavar='N', help='count at most N dataset images')
    p.add_argument('--num-images', type=int, default=None, metavar='N',
                   help='also draw sheets for N dataset images, one class after another (default: 8 without '
                        '--images, else 0)')
    p.add_argument('--teacher-checkpoint', default=None, metavar='FILE',
                   help="the TGR run's teacher weights, when its recorded path is not valid here")
    p.add_argument('--no-teacher', action='store_true', help='skip the teacher agreement pictures')
    p.add_argument('--ema', action='store_true', help="require the checkpoint's EMA weights (state_dict_ema); "
                   'default: its EMA weights when it has them, else the model\'s, as the export')
    p.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs,
                   help='timm.create_model kwargs (e.g. dynamic_img_size=True)')
    p.add_argument('--class-names', nargs='+', default=None, metavar='NAME', help='class names in class order')
    p.add_argument('-b', '--batch-size', type=int, default=256, help='images per forward pass')
    p.add_argument('-j', '--workers', type=int, default=0, help='data loading workers')
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--threads', type=int, default=None, help='torch CPU threads (default: torch\'s)')
    p.add_argument('--trust-checkpoint', action='store_true',
                   help='torch.load with weights_only=False (runs code in the file: only your own checkpoints)')
    return p


class _ConvertThen:
    """PIL image -> ``mode`` -> ``transform`` (picklable for loader workers)."""

    def __init__(self, mode: str, transform):
        self.mode, self.transform = mode, transform

    def __call__(self, img):
        return self.transform(img.convert(self.mode))


def image_files(paths: Sequence[str]) -> List[Tuple[str, str]]:
    """(file, name) of the images of ``paths``: folders searched recursively (sorted), each image named by its
    path inside the folder given (``class/img``), a file by its own name; repeated names get ``-2``, ``-3``, ..."""
    found = []
    for p in paths:
        if os.path.isdir(p):
            inside = sorted(os.path.join(root, f) for root, _, names in os.walk(p) for f in names
                            if f.lower().endswith(IMAGE_EXTENSIONS))
            if not inside:
                raise FileNotFoundError(f'no images ({", ".join(IMAGE_EXTENSIONS)}) under {p}.')
            found += [(f, os.path.splitext(os.path.relpath(f, p))[0].replace(os.sep, '_')) for f in inside]
        elif os.path.isfile(p):
            found.append((p, os.path.splitext(os.path.basename(p))[0]))
        else:
            raise FileNotFoundError(f'--images {p}: no such file or folder.')
    seen, out = {}, []
    for f, name in found:
        seen[name] = seen.get(name, 0) + 1
        out.append((f, name if seen[name] == 1 else f'{name}-{seen[name]}'))
    return out


def _file_probe(files: Sequence[Tuple[str, str]], transform, class_names: Sequence[str]) -> ProbeImages:
    images, targets, names = [], [], []
    for f, name in files:
        with Image.open(f) as img:
            images.append(transform(img))
        parent = os.path.basename(os.path.dirname(os.path.abspath(f)))
        targets.append(class_names.index(parent) if parent in class_names else None)
        names.append(name)
    return ProbeImages(torch.stack(images), targets, names)


def _dataset_probe(dataset, n: int, class_names: Sequence[str], split: str) -> ProbeImages:
    """``n`` images of ``dataset``: the first image of each class in turn, then the second of each, ..."""
    need = math.ceil(n / max(1, len(class_names)))
    candidates, per_class = [], {}
    for i in range(min(len(dataset), 100 * n + 1000)):
        x, y = dataset[i]
        y = int(y)
        if per_class.get(y, 0) < need:
            per_class[y] = per_class.get(y, 0) + 1
            candidates.append((i, y, x))
        if len(per_class) >= len(class_names) and all(v >= need for v in per_class.values()):
            break
    chosen = [candidates[k] for k in round_robin([y for _, y, _ in candidates], n)]
    names = [f'{split}-{i:05d}-{class_names[y] if y < len(class_names) else y}' for i, y, _ in chosen]
    return ProbeImages(torch.stack([x for _, _, x in chosen]), [y for _, y, _ in chosen], names)


def _create_dataset(args, transform, img_mode: str):
    if args.dataset.lower() in FASHION_MNIST_NAMES:
        from ..data import prepare_fashion_mnist
        prepare_fashion_mnist(args.data_dir)
    dataset = create_dataset(args.dataset, root=args.data_dir, split=args.split, is_training=False,
                             input_img_mode=img_mode)
    dataset.transform = _ConvertThen(img_mode, transform)
    return dataset


def model_data_config(model) -> dict:
    """timm's data config of ``model``, its input size and channels taken from the model itself when its
    pretrained_cfg says otherwise (a cfg left at timm's 3 x 224 x 224 default)."""
    cfg = resolve_data_config({}, model=model)
    pe = model.patch_embed
    size = tuple(pe.img_size) if pe.img_size is not None and not getattr(model, 'dynamic_img_size', False) \
        else tuple(cfg['input_size'][1:])
    channels = model.in_chans
    if (channels, *size) != tuple(cfg['input_size']):
        _logger.warning(f"the model's pretrained_cfg says input_size {tuple(cfg['input_size'])}, the model takes "
                        f"{(channels, *size)}: using the model's")
        cfg['input_size'] = (channels, *size)
    for k in ('mean', 'std'):
        if len(cfg[k]) != channels:
            if channels != 1:
                raise SystemExit(f"the model's pretrained_cfg {k} {cfg[k]} does not fit its {channels} channels.")
            _logger.warning(f"the model's pretrained_cfg {k} {tuple(cfg[k])} is for {len(cfg[k])} channels, the model "
                            f'takes 1: using their mean')
            cfg[k] = (sum(cfg[k]) / len(cfg[k]),)
    return cfg


def main(argv: Optional[Sequence[str]] = None) -> dict:
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    args = build_parser().parse_args(argv)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise SystemExit('python -m timm_tgr.visualize draws with matplotlib: pip install "timm-tgr[plot]"')
    with torch_threads(args.threads):
        return draw(args)


def draw(args: argparse.Namespace) -> dict:
    """Load, pick the images, write the pictures (see :func:`write_routing_pictures`); returns the summary."""
    device = torch.device(args.device)
    loaded = load_model(args.model, model_kwargs=args.model_kwargs, ema=args.ema,
                        trust_checkpoint=args.trust_checkpoint)
    model = loaded.model.to(device)
    if moe_model(model) is None:
        raise SystemExit(f'{args.model} is a {type(model).__name__}, not a timm_tgr MoE model: nothing routes.')
    if not args.images and not args.dataset:
        raise SystemExit('give images (--images FILE_OR_DIR ...) and/or a dataset (--dataset NAME --data-dir DIR).')
    teacher = None if args.no_teacher else load_teacher_routing(loaded, args.teacher_checkpoint, device=device)
    data_config = model_data_config(model)
    img_mode = 'L' if data_config['input_size'][0] == 1 else 'RGB'
    transform = create_transform(**data_config, is_training=False)
    dataset = _create_dataset(args, transform, img_mode) if args.dataset else None
    class_names = class_names_for(model, loaded.run_args, dataset, args.class_names)
    probes = []
    if args.images:
        probes.append(_file_probe(image_files(args.images), _ConvertThen(img_mode, transform), class_names))
    num_images = args.num_images if args.num_images is not None else (0 if args.images else 8)
    if dataset is not None and num_images > 0:
        probes.append(_dataset_probe(dataset, num_images, class_names, args.split))
    probe = ProbeImages(torch.cat([p.images for p in probes]), sum((p.targets for p in probes), []),
                        sum((p.names for p in probes), [])) if probes else ProbeImages(torch.empty(0), [], [])
    batches = None
    if dataset is not None:
        batches = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=False,
                                              num_workers=args.workers)
    summary = write_routing_pictures(
        model, args.out, probe, data_config['mean'], data_config['std'], class_names, model.num_classes,
        dataset_batches=batches, dataset_name=f'{args.dataset} {args.split}' if dataset is not None else '',
        teacher=teacher, device=device, max_samples=args.max_samples, title=run_title(loaded))
    files = summary['files']
    _logger.info(f"wrote {len(files['sheets'])} image sheets, {len(files['agreement_sheets'])} agreement sheets"
                 + (', class x expert heatmaps' if 'class_expert' in files else '')
                 + (', agreement per block' if 'agreement' in files else '') + f' and routing.json to {args.out}')
    return summary
