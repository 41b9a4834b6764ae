"""timm-tgr's trainer (``train_tgr.py``, ``python -m timm_tgr.train``, ``timm-tgr-train``).

Dense models train with timm's ``ClassificationTask``, timm_tgr MoE models with
:class:`~timm_tgr.task.vmoe_task.VMoETask`, and with a teacher (the default for ``tgr_moe_*`` models, or
``--teacher`` for any MoE model) with :class:`~timm_tgr.task.tgr_task.TGRTask`.

Modules: ``args`` (flags, each with its role in the run's record; ``-c`` YAML configs, checks), ``spec`` (the
command line resolved once into a :class:`~timm_tgr.train.spec.RunSpec`), ``record`` (``args.yaml`` / a
checkpoint's args and their keys' roles), ``setup`` (model, teacher, task, optimizer, scheduler, resume),
``loaders`` (datasets and loaders), ``run_folder`` (the output folder, ``args.yaml``), ``finetune`` (starting from
trained weights: hf-hub: / local-dir: models, --initial-checkpoint with a fresh classifier, mismatch errors),
``loop`` (train_one_epoch, validate), ``report`` (metrics rows, metrics.jsonl, summary.csv,
routing_consistency.json), ``pictures`` (routing pictures every ``--visualize-every`` epochs), ``wandb_log``
(``--log-wandb``), ``run`` (main: setup, the starting weights' routing, epochs, end).
"""
from ..utils.metrics_log import read_metrics
from .args import build_parser, parse_args
from .loop import train_one_epoch, validate
from .report import plot_routing_consistency
from .run import main, train

__all__ = ['main', 'cli', 'train', 'build_parser', 'parse_args', 'read_metrics', 'train_one_epoch', 'validate',
           'plot_routing_consistency']


def cli() -> None:
    """``train_tgr.py`` / ``timm-tgr-train``: :func:`main` with errors as one ``error:`` line."""
    from ..utils.cli import run_cli
    run_cli(main, 'train_tgr.py')
