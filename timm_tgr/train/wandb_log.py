"""Weights & Biases logging (``--log-wandb``), as timm's train.py does it: one ``wandb.init`` with the run's
args as config, one ``wandb.log`` per epoch; if wandb is not installed the run goes on with a warning.

Each epoch logs the metrics row's scalars (``train_*``, ``eval_*``, ``lr``, routing means), the routing of every
MoE block as ``routing/block<i>/<metric>`` (0-based block index as in metrics.jsonl; the load as
``routing/block<i>/load/expert<e>``) and, on epochs with ``--visualize-every`` pictures, the sheets as images.
Install with ``pip install "timm-tgr[wandb]"``; ``WANDB_MODE=offline`` logs to ``<run>/wandb`` without network.
"""
import logging
import os
from typing import Any, Dict, Optional

from .record import yaml_safe
from .spec import RunFolderSpec

__all__ = ['WandbLogger', 'flatten_row']

_logger = logging.getLogger(__name__)


def flatten_row(row: dict) -> Dict[str, float]:
    """The scalars of a metrics row, its per-block routing as ``routing/block<i>/<metric>`` keys."""
    flat = {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    for block, metrics in (row.get('routing') or {}).items():
        for k, v in metrics.items():
            if isinstance(v, (list, tuple)):
                flat.update({f'routing/block{block}/{k}/expert{e}': x for e, x in enumerate(v)})
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                flat[f'routing/block{block}/{k}'] = v
    return flat


class WandbLogger:
    """The run's wandb run (primary process only)."""

    def __init__(self, run, wandb_module):
        self.run, self.wandb = run, wandb_module

    @classmethod
    def create(cls, folder: RunFolderSpec, record: Dict[str, Any], output_dir: str) -> Optional['WandbLogger']:
        """``wandb.init`` for the run, its ``record`` as config (None, with a warning, when wandb is not
        installed)."""
        try:
            import wandb
        except ImportError:
            _logger.warning('--log-wandb: wandb is not installed, metrics are not logged to wandb '
                            '(pip install "timm-tgr[wandb]").')
            return None
        run = wandb.init(
            project=folder.wandb_project, name=os.path.basename(os.path.normpath(output_dir)),
            config=yaml_safe(record), tags=folder.wandb_tags or None, dir=output_dir,
            id=folder.wandb_resume_id or None, resume='must' if folder.wandb_resume_id else None)
        return cls(run, wandb)

    def log(self, row: dict, pictures: Optional[dict] = None, picture_dir: str = '') -> None:
        """One epoch: the row's scalars and routing per block, and the epoch's pictures if drawn."""
        data = flatten_row(row)
        files = (pictures or {}).get('files') or {}
        images = {}
        for key in ('class_expert', 'agreement'):
            if files.get(key):
                images[f'pictures/{key}'] = self.wandb.Image(os.path.join(picture_dir, files[key]))
        for key in ('sheets', 'agreement_sheets'):
            if files.get(key):
                images[f'pictures/{key}'] = [self.wandb.Image(os.path.join(picture_dir, p), caption=p)
                                             for p in files[key]]
        if (pictures or {}).get('agreement'):
            data.update({f'routing/block{b}/teacher_agreement': v for b, v in pictures['agreement'].items()})
        self.run.log({**data, **images}, step=row['epoch'])

    def finish(self) -> None:
        self.run.finish()
