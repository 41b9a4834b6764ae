"""Fashion-MNIST quickstart: dense teacher -> TGR-MoE student -> evaluation -> student-only export.

    python -m timm_tgr.quickstart                      # quick recipe: about 17 min on 2 CPU cores
    python -m timm_tgr.quickstart --recipe full        # longer recipe, meant for a GPU

Steps (each a ``train_tgr.py`` run with a shipped config, ``timm_tgr/configs/fmnist_<recipe>_*.yaml``):

1. train the dense DeiT-III-style teacher (``deit3_small_patch16_224`` layout sized for 28x28);
2. train ``tgr_moe_deit_tiny`` (narrowed for 28x28, MoE in blocks 8/10/12) guided by it;
3. export the best student with :mod:`timm_tgr.export` (no teacher, no teacher routers), reload it
   through ``timm.create_model('local-dir:...')`` and evaluate it on the 10k test images, which must
   reproduce the training-time evaluation of that checkpoint.

Data: Debian's ``dataset-fashion-mnist`` files (or ``TIMM_TGR_FASHION_MNIST``) if present, else
torchvision's download (``--no-download`` turns it off); when neither works (offline) a clear error says
how to get them. Writes ``<output>/quickstart.json``.
"""
import argparse
import json
import logging
import os
import time
from importlib import resources
from typing import List, Optional

import torch

from .utils.cli import ArgumentParser

_logger = logging.getLogger('timm_tgr.quickstart')  # not __name__: run as __main__ by python -m

RECIPES = ('quick', 'full')


def config_path(name: str) -> str:
    """Path of a config shipped in ``timm_tgr/configs`` (e.g. ``fmnist_quick_tgr.yaml``)."""
    path = resources.files('timm_tgr') / 'configs' / name
    if not path.is_file():
        raise FileNotFoundError(f'config {name!r} is not shipped with timm_tgr (see timm_tgr/configs/).')
    return str(path)


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog='python -m timm_tgr.quickstart', description=__doc__.split('\n')[0])
    p.add_argument('--recipe', default='quick', choices=RECIPES, help='quick (CPU: about 17 min on 2 cores) or full (GPU)')
    p.add_argument('--data-dir', default='data', help='where Fashion-MNIST is (or is prepared)')
    p.add_argument('--output', default='output/quickstart', help='runs, checkpoints and export go here')
    p.add_argument('--no-download', action='store_true',
                   help='never download Fashion-MNIST (default: torchvision downloads it when no local copy exists)')
    p.add_argument('--device', default=None, help='cuda / cpu (default: cuda if available)')
    p.add_argument('--teacher-epochs', type=int, default=None, help='override the recipe\'s teacher epochs')
    p.add_argument('--epochs', type=int, default=None, help='override the recipe\'s student epochs')
    p.add_argument('--seed', type=int, default=42)
    p.add_argument('--no-progress', action='store_true')
    p.add_argument('--extra', nargs=argparse.REMAINDER, default=[],
                   help='further train_tgr.py flags for both runs (everything after --extra)')
    return p


def _check_output(parser: argparse.ArgumentParser, output: str) -> None:
    """An --output holding an earlier quickstart (its runs or export) is refused before anything trains."""
    from .export import EXPORT_FILES
    from .utils.checkpoint import run_outputs
    held = [os.path.join(output, d) for d in ('teacher', 'tgr_moe') if run_outputs(os.path.join(output, d))]
    held += [os.path.join(output, 'export')] * any(os.path.exists(os.path.join(output, 'export', f))
                                                   for f in EXPORT_FILES)
    if held:
        parser.error(f'--output {output} holds an earlier quickstart ({", ".join(held)}), which it would overwrite: '
                     f'give another --output, or delete that folder to start over.')


def _common(args) -> List[str]:
    argv = ['--data-dir', args.data_dir, '--output', args.output, '--seed', str(args.seed)]
    if args.device:
        argv += ['--device', args.device]
    if args.no_progress:
        argv.append('--no-progress')
    return argv + list(args.extra)


@torch.no_grad()
def evaluate_exported(export_dir: str, data_dir: str, device: str, batch_size: int = 256) -> float:
    """Top-1 of ``local-dir:<export_dir>`` on the Fashion-MNIST test split: the student alone, no teacher."""
    import timm
    from timm.data import create_dataset, create_loader, resolve_data_config
    model = timm.create_model(f'local-dir:{export_dir}', pretrained=True).to(device).eval()
    cfg = resolve_data_config({}, model=model)
    ds = create_dataset('torch/fashion_mnist', root=data_dir, split='validation', is_training=False,
                        input_img_mode='L')
    loader = create_loader(ds, input_size=cfg['input_size'], batch_size=batch_size, is_training=False,
                           interpolation=cfg['interpolation'], mean=cfg['mean'], std=cfg['std'],
                           crop_pct=cfg['crop_pct'], num_workers=0, use_prefetcher=False)
    correct = total = 0
    for x, y in loader:
        out = model(x.to(device))
        correct += int((out.argmax(-1).cpu() == y).sum())
        total += y.numel()
    return 100.0 * correct / total


def main(argv: Optional[List[str]] = None) -> dict:
    from timm.utils import setup_default_logging
    from .data import prepare_fashion_mnist
    from .train import main as train_main
    setup_default_logging()
    parser = _parser()
    args = parser.parse_args(argv)
    _check_output(parser, args.output)  # before the data: nothing is fetched for a run that would be refused
    source = prepare_fashion_mnist(args.data_dir, download=not args.no_download)
    _logger.info(f'Fashion-MNIST in {args.data_dir} (from {source})')
    device = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    os.makedirs(args.output, exist_ok=True)
    t_start = time.time()
    summary = {'recipe': args.recipe, 'device': device, 'torch': torch.__version__}

    # 1. dense teacher
    t0 = time.time()
    teacher_argv = ['-c', config_path(f'fmnist_{args.recipe}_teacher.yaml'), '--experiment', 'teacher'] + _common(args)
    if args.teacher_epochs:
        teacher_argv += ['--epochs', str(args.teacher_epochs)]
    teacher = train_main(teacher_argv)
    teacher_ckpt = os.path.join(teacher['output_dir'], 'model_best.pth.tar')
    summary['teacher'] = {'top1': teacher['best_metric'], 'epoch': teacher['best_epoch'],
                          'checkpoint': teacher_ckpt, 'minutes': round((time.time() - t0) / 60, 2)}

    # 2. TGR-MoE student guided by it
    t0 = time.time()
    student_argv = ['-c', config_path(f'fmnist_{args.recipe}_tgr.yaml'), '--experiment', 'tgr_moe',
                    '--teacher-checkpoint', teacher_ckpt] + _common(args)
    if args.epochs:
        student_argv += ['--epochs', str(args.epochs)]
    student = train_main(student_argv)
    student_ckpt = os.path.join(student['output_dir'], 'model_best.pth.tar')
    last = student['rows'][-1] if student['rows'] else {}
    summary['student'] = {
        'top1': student['best_metric'], 'epoch': student['best_epoch'], 'checkpoint': student_ckpt,
        'final_entropy': last.get('entropy'), 'final_consistency_prev': last.get('consistency_prev'),
        'minutes': round((time.time() - t0) / 60, 2)}

    # 3. export the student alone and evaluate it without the teacher
    from .export import main as export_main
    export_dir = os.path.join(args.output, 'export')
    ema = bool(student['rows']) and 'eval_ema_top1' in student['rows'][-1]  # best was picked by the EMA
    export_main([student_ckpt, '--out', export_dir] + (['--ema'] if ema else []))
    top1 = evaluate_exported(export_dir, args.data_dir, device)
    summary['export'] = {'dir': export_dir, 'top1_local_dir': top1,
                         'matches_training_eval': abs(top1 - (student['best_metric'] or -1)) < 0.02}
    summary['total_minutes'] = round((time.time() - t_start) / 60, 2)
    with open(os.path.join(args.output, 'quickstart.json'), 'w') as f:
        json.dump(summary, f, indent=1)
    _logger.info(
        f"Quickstart done in {summary['total_minutes']:.1f} min: teacher top-1 {summary['teacher']['top1']:.2f}, "
        f"TGR-MoE student top-1 {summary['student']['top1']:.2f}, exported student (local-dir:{export_dir}, "
        f"no teacher) top-1 {top1:.2f}. Summary: {os.path.join(args.output, 'quickstart.json')}")
    return summary


if __name__ == '__main__':
    from .utils.cli import run_cli
    run_cli(main, 'python -m timm_tgr.quickstart')
