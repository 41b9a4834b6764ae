"""Export the study's best TGR student for the Hub and check it alone reproduces its training-time top-1."""
import os
import shutil
from typing import Optional

from .files import write_json
from .collect import discover_runs, summarize_run
from .study import EXPORT_CANDIDATES


def _best_student(runs_dir: str) -> Optional[dict]:
    best = None
    for rec in discover_runs(runs_dir):
        if rec['variant'] not in EXPORT_CANDIDATES:
            continue
        s = summarize_run(rec, runs_dir)
        if not s['complete']:
            continue
        metric = s.get('ema_top1_best', s['top1_best'])
        if best is None or metric > best[0]:
            best = (metric, s)
    return None if best is None else best[1]


def export_best_student(output: str, data_dir: str, device: str) -> Optional[dict]:
    """Export the best TGR student (student-routing variants) and evaluate it through local-dir: alone."""
    from timm_tgr.export import main as export_main
    from timm_tgr.utils.checkpoint import read_checkpoint
    from timm_tgr.quickstart import evaluate_exported
    s = _best_student(os.path.join(output, 'runs'))
    if s is None:
        return None
    ckpt_path = os.path.join(output, 'runs', s['name'], 'model_best.pth.tar')
    ckpt = read_checkpoint(ckpt_path)
    epoch = int(ckpt['epoch'])
    ema = ckpt.get('state_dict_ema') is not None
    del ckpt
    row = next(r for r in s['rows'] if r['epoch'] == epoch)
    expected = row['eval_ema_top1'] if ema else row['eval_top1']
    export_dir = os.path.join(output, 'export')
    if os.path.isdir(export_dir):
        shutil.rmtree(export_dir)
    export_main([ckpt_path, '--out', export_dir] + (['--ema'] if ema else []))
    top1 = evaluate_exported(export_dir, data_dir, device)
    result = {'run': s['name'], 'variant': s['variant'], 'checkpoint': ckpt_path,
              'checkpoint_rel': os.path.relpath(ckpt_path, output), 'export_dir': export_dir,
              'export_dir_rel': os.path.relpath(export_dir, output), 'checkpoint_epoch': epoch, 'ema': ema,
              'top1_exported': top1, 'top1_training_eval': expected, 'matches': abs(top1 - expected) < 0.02}
    write_json(os.path.join(output, 'export_check.json'), result)
    return result
