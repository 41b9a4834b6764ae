"""A run's record: what ``args.yaml`` and a checkpoint's ``args`` hold (:meth:`~timm_tgr.train.spec.RunSpec.record`)
and the role of each of its keys: every flag's declared one (:mod:`.args`), a resolved value's its flag's, the
runtime keys' neutral. Resume, ``args.yaml`` and the model card read the roles here."""
import argparse
import functools
from typing import Any, Dict

from ..task.options import MODEL, NEUTRAL
from .args import build_parser

__all__ = ['RESOLVED', 'record_roles', 'flag_names', 'yaml_safe', 'checkpoint_args']

# the record's resolved values, compared in place of their flags: an hf-hub:/local-dir: --model as its architecture
# and the create_model kwargs that rebuild it, --teacher as the teacher trained with (the paper's by default)
RESOLVED = {'model': 'model_arch', 'model_kwargs': 'model_kwargs_resolved', 'teacher': 'teacher_resolved'}
# how this process ran (set up from --device and torch.distributed's environment), and a checkpoint's --model
_RUNTIME = {'distributed': NEUTRAL, 'world_size': NEUTRAL, 'rank': NEUTRAL, 'local_rank': NEUTRAL,
            'prefetcher': NEUTRAL, 'model_source': MODEL}


@functools.lru_cache(maxsize=None)
def record_roles() -> Dict[str, str]:
    """The role of every key of a run's record (``args.yaml``, a checkpoint's ``args``): each flag's own, a
    resolved value's its flag's, and the runtime keys'."""
    roles = {a.dest: a.role for a in build_parser()._actions if a.role is not None}
    return {**roles, **{RESOLVED[k]: roles[k] for k in RESOLVED}, **_RUNTIME}


@functools.lru_cache(maxsize=None)
def flag_names() -> Dict[str, str]:
    """Each flag's dest and its long name (``'batch_size'`` -> ``'--batch-size'``)."""
    return {a.dest: a.option_strings[-1] for a in build_parser()._actions if a.option_strings}


def yaml_safe(d: dict) -> dict:
    """``d`` with every value a plain YAML type (str, number, bool, None, list, dict); others as str."""
    out = {}
    for k, v in d.items():
        if isinstance(v, (str, int, float, bool, type(None))):
            out[k] = v
        elif isinstance(v, (list, tuple)):
            out[k] = list(v)
        elif isinstance(v, dict):
            out[k] = yaml_safe(v)
        else:
            out[k] = str(v)
    return out


def checkpoint_args(record: Dict[str, Any]) -> argparse.Namespace:
    """The args saved in checkpoints: the run's record (:meth:`~timm_tgr.train.spec.RunSpec.record`) as plain values
    (loadable with weights_only), ``model`` and the exact ``model_kwargs`` that rebuild the model.

    For an ``hf-hub:`` / ``local-dir:`` ``--model``, ``model`` is its architecture (so the checkpoint
    rebuilds without the source) and ``model_source`` the name given.
    """
    d = yaml_safe(record)
    d['model_kwargs'] = dict(record['model_kwargs_resolved'])
    arch = record.get('model_arch') or record['model']
    if arch != record['model']:
        d['model'], d['model_source'] = arch, record['model']
    return argparse.Namespace(**d)
