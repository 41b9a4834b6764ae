"""Export a trained timm_tgr student for the Hugging Face Hub: safetensors, config.json, model card.

    python -m timm_tgr.export output/train/RUN/model_best.pth.tar --out hub/my_model [--ema]
    python -m timm_tgr.export output/train/RUN/model_best.pth.tar --out hub/my_model --push ORG/NAME [--private]
    python -m timm_tgr.export weights.safetensors --model tgr_moe_deit_tiny --model-kwargs num_classes=10 --out DIR

Writes what timm's ``save_for_hf`` / ``push_to_hf_hub`` write (``model.safetensors``, ``config.json``
with the architecture and the ``model_args`` that rebuild the exact model, and a ``README.md`` model
card from ``generate_readme``), holding the student only: the teacher, teacher routers (``task_state``),
optimizer and any other training state are left out. Load the result with::

    import timm, timm_tgr
    model = timm.create_model('local-dir:hub/my_model', pretrained=True)   # or 'hf-hub:ORG/NAME'

``CHECKPOINT`` may be a run folder: its ``model_best.pth.tar`` is exported. Checkpoints are read by
:mod:`timm_tgr.utils.checkpoint` with ``torch.load(weights_only=True)`` (``argparse.Namespace`` allowed for
the run's args); ``--trust-checkpoint`` switches to ``weights_only=False``, which can run code stored in
the file, so use it only for checkpoints you made yourself. A checkpoint with EMA weights exports them
(the weights ``model_best`` was picked by); ``--no-ema`` exports the model's, ``--ema`` requires the EMA.
Weights holding NaN or Inf are refused, naming the tensors. An ``--out`` folder that already holds an
export is refused unless ``--overwrite``; the files are written to a temporary folder first and moved in
when complete, with the permissions of any file the user writes (the umask).
"""
import argparse
import html
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn

from timm.models import push_to_hf_hub, save_for_hf
from timm.models._hub import generate_readme  # the model card writer of push_to_hf_hub (not in timm.models)

from .models import moe_model
from .models._factory import load_student
from .task.options import RECIPE, RUN, guidance_options
from .train.record import record_roles
from .utils.checkpoint import (
    RUN_CHECKPOINTS, NonFiniteError, describe_weights, student_state_dict, write_error,
)
from .utils.cli import ArgumentParser, ParseKwargs
from .utils.metrics_log import metrics_row, read_metrics

__all__ = [
    'student_state_dict', 'read_metrics', 'make_model_card', 'export_checkpoint',
    'checkpoint_of', 'EXPORT_FILES', 'TGR_CITATION', 'CARD_PICTURE',
]

_logger = logging.getLogger('timm_tgr.export')  # not __name__: run as __main__ by python -m

TGR_CITATION = """@inproceedings{tgrmoe2026,
  title     = {Teacher-Guided Routing for Sparse Vision Mixture-of-Experts},
  booktitle = {CVPR},
  year      = {2026},
  note      = {arXiv:2604.21330}
}"""

# what the model card shows as the training recipe: of a train_tgr.py record the keys of role recipe or run
# (timm_tgr.train.args.record_roles); of another trainer's (timm's train.py, earlier versions) these names
_OTHER_RECIPE_KEYS = ('input_size', 'task', 'mode')
_OTHER_RECIPE_PREFIXES = ('tgr', 'teacher', 'distill', 'routing', 'stablemoe', 'moe_')
_READERS = ('torch/', 'hfds/', 'hfids/', 'tfds/', 'wds/')  # timm dataset reader prefixes
CARD_PICTURE = 'routing_class_expert.png'  # the model card's class-by-expert heatmap, next to README.md


EXPORT_FILES = ('model.safetensors', 'config.json', 'README.md')


def checkpoint_of(path: Union[str, Path]) -> Path:
    """``path``, or for a run folder its best checkpoint (``model_best.pth.tar``)."""
    path = Path(path)
    if not path.is_dir():
        return path
    best = path / RUN_CHECKPOINTS[0]
    if best.is_file():
        return best
    found = sorted(p.name for p in path.glob('*.pth*')) + sorted(p.name for p in path.glob('*.safetensors'))
    raise FileNotFoundError(
        f'{path} is a folder without {RUN_CHECKPOINTS[0]} (the best checkpoint train_tgr.py writes in a run folder); '
        + (f'give one of its checkpoints: {", ".join(found[:6])}.' if found else 'it holds no checkpoint files.'))


def check_probe_forward(model: nn.Module, path: Union[str, Path]) -> None:
    """A forward of the model on a fixed probe batch must give finite logits: weights can be finite while every
    output is NaN / Inf (the run diverged at its last update), which the finite-weights check cannot see."""
    c, h, w = model.pretrained_cfg['input_size']
    probe = torch.randn(2, c, h, w, generator=torch.Generator().manual_seed(0))
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model(probe)
    model.train(was_training)
    out = out[0] if isinstance(out, (tuple, list)) else out
    if not torch.isfinite(out).all():
        raise NonFiniteError(
            f'{path}: its weights are finite, but a forward on a probe batch gives NaN / Inf logits: the run that '
            f'wrote it diverged. Export an earlier checkpoint of the run (checkpoint-N.pth.tar of an epoch before it '
            f'diverged).')


# what may go into the card's YAML header unquoted: a dataset id or a license name
_HEADER_NAME = re.compile(r'[A-Za-z0-9][A-Za-z0-9_.\-/]*')


def _text(v: Any) -> str:
    """A string from the checkpoint or the user for the card's markdown body: one line (newlines would start
    new markdown, or YAML in the header), HTML special characters escaped (no tags or scripts), no backticks."""
    return html.escape(' '.join(str(v).split()), quote=False).replace('`', "'")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f'{v:.6g}'
    return _text(v)


def _model_stats(model: nn.Module) -> Dict[str, Any]:
    """Params, input, classes and, for MoE models, experts, top-k and the MoE blocks."""
    c, h, w = model.pretrained_cfg['input_size']
    stats = {'Params (M)': f'{sum(p.numel() for p in model.parameters()) / 1e6:.2f}'}
    stats.update({'Image size': f'{h} x {w}', 'Input channels': c, 'Classes': model.num_classes})
    moe = model.get_moe_layers() if moe_model(model) is not None else {}
    if moe:
        stats.update({
            'Experts (E)': getattr(model, 'num_experts', '-'), 'Top-K': getattr(model, 'top_k', '-'),
            'MoE blocks (0-based)': ', '.join(str(i) for i in moe),
        })
    return stats


def _papers(cfg: Dict[str, Any]) -> Dict[str, str]:
    """The TGR paper, and the architecture's own paper when its pretrained_cfg names another."""
    papers = {'Teacher-Guided Routing for Sparse Vision Mixture-of-Experts': 'https://arxiv.org/abs/2604.21330'}
    paper_id = str(cfg.get('paper_ids') or '')
    if cfg.get('paper_name') and '2604.21330' not in paper_id:
        papers[cfg['paper_name']] = 'https://arxiv.org/abs/' + paper_id.replace('arXiv:', '')
    return papers


def _local_path(option: str) -> bool:
    """A teacher-guidance option that names a file on the training machine: kept out of the card."""
    return option in guidance_options() and guidance_options()[option][2].path


def _in_recipe(key: str) -> bool:
    """Whether the card shows run arg ``key`` in its training recipe (see :data:`_OTHER_RECIPE_KEYS`)."""
    role = record_roles().get(key)
    if role is not None:
        return role in (RECIPE, RUN)
    return (key in _OTHER_RECIPE_KEYS or key.startswith(_OTHER_RECIPE_PREFIXES)) and not _local_path(key)


def _data_details(run_args: Dict[str, Any]) -> Dict[str, Any]:
    """'Dataset' (timm name without its reader prefix) or a 'Training data' note, and the 'Training recipe'."""
    details = {}
    dataset = run_args.get('dataset')
    if isinstance(dataset, str) and dataset and dataset.lower() != 'folder':
        for p in _READERS:
            dataset = dataset[len(p):] if dataset.startswith(p) else dataset
        if _HEADER_NAME.fullmatch(dataset):
            details['Dataset'] = dataset  # timm's card writer lists it in the YAML header
        else:
            details['Training data'] = f'{_text(dataset)} (not a dataset id: not listed in the card header)'

    elif 'dataset' in run_args:
        details['Training data'] = 'an image folder (its name is not recorded in the run args)'
    else:
        details['Training data'] = 'not recorded in the run args'
    recipe = {_text(k): _fmt(v) for k, v in run_args.items() if v is not None and v != '' and _in_recipe(str(k))}
    recipe.update({f'model_kwargs.{_text(k)}': _fmt(v) for k, v in (run_args.get('model_kwargs') or {}).items()
                   if str(k).startswith('tgr_') and not _local_path(k[4:])})
    details['Training recipe'] = recipe or 'not recorded: the checkpoint has no run args and no args.yaml was found'
    return details


def _results_details(metrics: Optional[Dict[str, Any]], metrics_note: str) -> Dict[str, Any]:
    """'Results' (the row's scalars) and 'Routing per MoE block' from a metrics.jsonl row, or why there are none."""
    if not metrics:
        return {'Results': f'not recorded: {metrics_note or "no metrics.jsonl found"}'}
    results = {_text(k): _fmt(v) for k, v in metrics.items() if k != 'routing' and not isinstance(v, (dict, list))}
    details = {'Results' + (f' ({metrics_note})' if metrics_note else ''): results}
    routing = metrics.get('routing') or {}
    if routing:
        details['Routing per MoE block (0-based)'] = {
            f'block {_text(b)}': ', '.join(f'{_text(k)} {"n/a" if v is None else _fmt(v)}' for k, v in r.items()
                                    if not isinstance(v, (list, tuple, dict))) if isinstance(r, dict) else _fmt(r)
            for b, r in routing.items()}
    else:
        details['Routing per MoE block'] = 'not recorded in the metrics row'
    return details


def _start_details(run_args: Dict[str, Any], metrics: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """'Fine-tuning' for a run started from trained weights: where from, and the routing consistency with
    them (``consistency_pretrained`` of the metrics row: top-1 expert per probe token, mean over MoE blocks)."""
    if not metrics or metrics.get('consistency_pretrained') is None:
        return {}
    source = str(run_args.get('model_source') or '')
    if source.startswith('hf-hub:'):
        start = f'`{_text(source)}` (--pretrained)'
    elif source.startswith('local-dir:'):
        start = 'an exported model folder (--pretrained)'
    elif run_args.get('initial_checkpoint'):
        start = 'a training checkpoint (--initial-checkpoint)'
    elif run_args.get('pretrained'):
        start = f"the pretrained weights of `{_text(run_args.get('model', '?'))}`"
    else:
        start = 'its initial weights (no trained weights recorded in the run args)'
    value = float(metrics['consistency_pretrained'])
    return {'Fine-tuning': {
        'Started from': start,
        'Teacher routers': 'carried over from the pre-training run' if run_args.get('teacher_routers_from')
        else ('fresh' if run_args.get('teacher') not in (None, '', 'none') else 'none (no teacher)'),
        'consistency_pretrained': f'{100 * value:.2f} % of probe tokens keep the top-1 expert the starting '
                                  f'weights chose (mean over MoE blocks)',
    }}


def _usage(arch: str, repo_id: Optional[str]) -> Tuple[str, str]:
    """The card's description and its loading snippet."""
    name = f'hf-hub:{repo_id}' if repo_id else 'hf-hub:ORG/NAME'
    usage = (
        'The architecture is defined by the timm plugin `timm_tgr`, so install it next to timm first:\n\n'
        '```bash\n'
        'pip install timm-tgr   # or, in a clone of the timm-tgr repository: pip install -e .\n'
        '```\n\n'
        '```python\n'
        'import timm\n'
        'import timm_tgr  # registers the timm_tgr architectures with timm\n\n'
        f"model = timm.create_model('{name}', pretrained=True).eval()\n"
        "# or from a local copy: timm.create_model('local-dir:/path/to/folder', pretrained=True)\n"
        'data_cfg = timm.data.resolve_data_config({}, model=model)\n'
        'transform = timm.data.create_transform(**data_cfg)\n'
        '```\n')
    description = (
        f'A sparse Vision Mixture-of-Experts DeiT (`{arch}`) exported with timm_tgr, the timm plugin for V-MoE '
        'and Teacher-Guided Routing (TGR-MoE, CVPR 2026, arXiv:2604.21330). These are the student weights only: '
        'no teacher, teacher routers, optimizer or training state; at inference the model is a plain '
        'V-MoE-style ViT.')
    return description, usage


def make_model_card(
        model: nn.Module,
        arch: str,
        run_args: Dict[str, Any],
        metrics: Optional[Dict[str, Any]] = None,
        metrics_note: str = '',
        checkpoint_info: Optional[Dict[str, Any]] = None,
        repo_id: Optional[str] = None,
        routing_picture: Optional[str] = None,
) -> Dict[str, Any]:
    """Model card dict for timm's ``generate_readme``: the run's recipe and measured results, nothing else.

    ``routing_picture``: what the class-by-expert heatmap saved next to the card as :data:`CARD_PICTURE` shows
    (None: no picture)."""
    cfg = model.pretrained_cfg
    details = {'Model Type': 'Image classification, sparse Vision Mixture-of-Experts ViT (student weights only)',
               'Architecture': f'`{_text(arch)}` (timm_tgr)', 'Model Stats': _model_stats(model),
               'Papers': _papers(cfg)}
    details.update(_data_details(run_args))
    details['Weights'] = dict(checkpoint_info or {})
    details.update(_start_details(run_args, metrics))
    details.update(_results_details(metrics, metrics_note))
    if routing_picture:
        details['Expert use per class'] = (
            f"![share of each class's patch tokens per expert]({CARD_PICTURE})<br>{routing_picture}")
    description, usage = _usage(arch, repo_id)
    return {
        'description': description, 'details': details, 'usage': usage, 'citation': TGR_CITATION,
        'license': cfg.get('license', 'apache-2.0') if _HEADER_NAME.fullmatch(str(cfg.get('license', 'apache-2.0')))
        else 'other',
        'tags': ['image-classification', 'timm', 'timm_tgr', 'mixture-of-experts'],
    }


def _card_metrics(
        metrics: Optional[Union[str, Path]], path: Path, epoch: Optional[int],
) -> Tuple[Optional[Dict[str, Any]], str]:
    """The metrics.jsonl row for the card (the checkpoint's epoch, else the last row) and where it came from."""
    metrics_path = Path(metrics) if metrics is not None else path.parent / 'metrics.jsonl'
    if not metrics_path.is_file():
        if metrics is not None:
            raise FileNotFoundError(f'metrics file {metrics_path} not found.')
        return None, 'no metrics.jsonl next to the checkpoint'
    rows = read_metrics(metrics_path)
    row = metrics_row(rows, epoch) if epoch is not None else None
    if row is not None:
        return row, f"{metrics_path.name}, epoch {row.get('epoch', '?')}"
    row = metrics_row(rows)
    if row is None:
        return None, f'{metrics_path.name} is empty'
    return row, f"{metrics_path.name}, epoch {row.get('epoch', '?')}, its last row" + (
        f' (the checkpoint is from epoch {epoch})' if epoch is not None else '')


def _checkpoint_info(path: Path, key: Optional[str], ckpt: Dict[str, Any],
                     run_args: Dict[str, Any]) -> Dict[str, Any]:
    """The card's 'Weights' section: source file, state_dict key, epoch and metric of the checkpoint."""
    ema = key is not None and 'ema' in key
    info = {'Exported from': _text(path.name), 'State dict': (key or 'bare state_dict') + (' (EMA)' if ema else '')}
    if ckpt.get('epoch') is not None:
        info['Checkpoint epoch'] = ckpt['epoch']
    if ckpt.get('metric') is not None:
        info[f"Checkpoint metric ({_text(run_args.get('eval_metric', 'eval metric'))})"] = _fmt(float(ckpt['metric']))
    return info


def _check_out(out: Path, overwrite: bool) -> None:
    """Refuse an ``out`` folder holding an export unless ``overwrite``."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f'--out {out} is a file: give a folder to write {", ".join(EXPORT_FILES)} to.')
    there = [f for f in EXPORT_FILES if (out / f).exists()]
    if there and not overwrite:
        raise FileExistsError(
            f'--out {out} already holds an export ({", ".join(there)}): give another --out folder, or pass '
            f'--overwrite (overwrite=True) to replace it.')


def _write_export(student: nn.Module, out: Path, model_args: Dict[str, Any], readme: str,
                  picture: Optional[Path] = None) -> None:
    """save_for_hf + README.md (+ the card's picture) into a temporary folder beside ``out``, then moved into
    ``out`` file by file: a failed write leaves ``out`` as it was. Files get the mode of any file the user writes
    (0666 & ~umask)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f'.{out.name}.tmp-', dir=out.parent))
    try:
        try:
            save_for_hf(student, tmp, model_args=dict(model_args), safe_serialization=True)
            (tmp / 'README.md').write_text(readme)
            if picture is not None:
                shutil.copyfile(picture, tmp / CARD_PICTURE)
        except (OSError, RuntimeError) as e:
            error = write_error(e, out / EXPORT_FILES[0], kept=f'{out} was not changed.')
            if error is None:
                raise
            raise error from e
        umask = os.umask(0)
        os.umask(umask)
        out.mkdir(parents=True, exist_ok=True)
        for f in sorted(tmp.iterdir()):
            os.chmod(f, 0o666 & ~umask)
            os.replace(f, out / f.name)
        if picture is None and (out / CARD_PICTURE).exists():  # an earlier export's picture: not this card's
            (out / CARD_PICTURE).unlink()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _card_picture(picture: Optional[Union[str, Path]], path: Path, epoch: Optional[int]) -> Tuple[Optional[Path], str]:
    """The class-by-expert heatmap for the card and its caption: ``picture`` if given, else the one
    ``train_tgr.py --visualize-every`` drew in the checkpoint's run folder (its epoch's, else the latest)."""
    what = "Share of each class's patch tokens sent to each expert (top-1 choice) per MoE block, rows sum to 1"
    if picture is not None:
        picture = Path(picture)
        if not picture.is_file():
            raise FileNotFoundError(f'routing picture {picture} not found.')
        return picture, f'{what} (python -m timm_tgr.visualize).'
    from .visualize.writer import latest_class_expert_picture
    found = latest_class_expert_picture(str(path.parent), epoch)
    if found is None:
        return None, ''
    file, drawn = found
    note = '' if drawn == epoch else f', the latest drawn; the checkpoint is from epoch {epoch}'
    caption = f'{what}, over the probe set of the validation split at epoch {drawn}{note} ' \
              f'(train_tgr.py --visualize-every).'
    return Path(file), caption


def export_checkpoint(
        checkpoint: Union[str, Path],
        out: Optional[Union[str, Path]] = None,
        ema: Optional[bool] = None,
        push: Optional[str] = None,
        private: bool = False,
        model: Optional[str] = None,
        model_kwargs: Optional[Dict[str, Any]] = None,
        metrics: Optional[Union[str, Path]] = None,
        trust_checkpoint: bool = False,
        token: Optional[str] = None,
        overwrite: bool = False,
        routing_picture: Optional[Union[str, Path]] = None,
) -> nn.Module:
    """Export the student of ``checkpoint`` to ``out`` and/or push it to the Hub repo ``push``; returns it.

    ``checkpoint`` is a train_tgr.py / timm CheckpointSaver checkpoint ('state_dict', optional
    'state_dict_ema', 'args', 'epoch', ...), a run folder (its ``model_best.pth.tar``) or a bare state_dict
    (.pth or .safetensors; give ``model`` and ``model_kwargs`` unless an args.yaml sits next to it).
    ``ema``: None exports the EMA weights when the checkpoint has them, else the model's; True requires
    them; False exports the model's. Run metrics come from ``metrics`` or ``<checkpoint dir>/metrics.jsonl``.
    An ``out`` holding an export is refused unless ``overwrite``.
    The card embeds a class-by-expert heatmap (copied next to it as :data:`CARD_PICTURE`): ``routing_picture``,
    else the run's own from ``train_tgr.py --visualize-every`` when it drew one.
    """
    if out is None and push is None:
        raise ValueError('nothing to do: give an output folder (--out DIR) and/or a Hub repo (--push ORG/NAME).')
    if out is not None:
        _check_out(Path(out), overwrite)
    path = checkpoint_of(checkpoint)
    loaded = load_student(path, ema=ema, model=model, model_kwargs=model_kwargs, trust_checkpoint=trust_checkpoint,
                          fix='Export an earlier checkpoint of the run (checkpoint-N.pth.tar of an epoch before it '
                              'diverged).')
    student, arch, model_args, run_args, ckpt, key = (loaded.model, loaded.arch, loaded.model_args, loaded.run_args,
                                                      loaded.checkpoint, loaded.weights_key)
    _logger.info(f'exporting {describe_weights(key)} of {path}')
    check_probe_forward(student, path)
    row, note = _card_metrics(metrics, path, ckpt.get('epoch'))
    picture, caption = _card_picture(routing_picture, path, ckpt.get('epoch'))
    card = make_model_card(student, arch, run_args, row, note, _checkpoint_info(path, key, ckpt, run_args),
                           repo_id=push, routing_picture=caption or None)
    if out is not None:
        title = _text(push.split('/')[-1] if push else arch)
        _write_export(student, Path(out), model_args, generate_readme(card, title), picture)
    if push is not None:
        push_to_hf_hub(
            student, push, commit_message=f'Add {arch} student weights (timm_tgr.export)', token=token,
            private=private, model_card=card, model_args=dict(model_args), safe_serialization=True)
        if picture is not None:
            from huggingface_hub import HfApi
            HfApi(token=token).upload_file(
                path_or_fileobj=str(picture), path_in_repo=CARD_PICTURE, repo_id=push,
                commit_message='Add the routing picture of the model card (timm_tgr.export)')
    return student


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog='python -m timm_tgr.export', description=__doc__.split('\n\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('checkpoint', help='train_tgr.py / timm checkpoint (.pth.tar), a run folder (its '
                                      'model_best.pth.tar), or a bare state_dict (.pth, .safetensors) with --model '
                                      'and --model-kwargs')
    p.add_argument('--out', default=None, help='folder to write model.safetensors, config.json, README.md to')
    p.add_argument('--overwrite', action='store_true', help='replace the export already in --out')
    weights = p.add_mutually_exclusive_group()
    weights.add_argument('--ema', dest='ema', action='store_const', const=True, default=None,
                         help="export the EMA weights ('state_dict_ema'), an error when there are none "
                              '(default: the EMA weights when the checkpoint has them, else the model\'s)')
    weights.add_argument('--no-ema', dest='ema', action='store_const', const=False,
                         help="export the model's weights ('state_dict') even when the checkpoint has EMA weights")
    p.add_argument('--push', default=None, metavar='ORG/NAME',
                   help='upload to this Hugging Face Hub repo (needs a write token: `hf auth login` or HF_TOKEN)')
    p.add_argument('--private', action='store_true', help='create the Hub repo as private')
    p.add_argument('--model', default=None, help="architecture, overriding the checkpoint's args.model")
    p.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs,
                   help='timm.create_model kwargs as k=v, overriding the checkpoint args (e.g. num_classes=10)')
    p.add_argument('--metrics', default=None, help='metrics.jsonl of the run (default: next to the checkpoint)')
    p.add_argument('--trust-checkpoint', action='store_true',
                   help='torch.load with weights_only=False (runs code in the file: only your own checkpoints)')
    p.add_argument('--routing-picture', default=None, metavar='PNG',
                   help='class x expert heatmap for the model card (e.g. class_expert.png of python -m '
                        'timm_tgr.visualize; default: the run\'s own from train_tgr.py --visualize-every, if any)')
    return p


def main(argv: Optional[List[str]] = None) -> None:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    export_checkpoint(
        args.checkpoint, out=args.out, ema=args.ema, push=args.push, private=args.private, model=args.model,
        model_kwargs=args.model_kwargs, metrics=args.metrics, trust_checkpoint=args.trust_checkpoint,
        overwrite=args.overwrite, routing_picture=args.routing_picture)
    if args.out:
        print(f"wrote {args.out}: load with timm.create_model('local-dir:{args.out}', pretrained=True)")
    if args.push:
        print(f"pushed to {args.push}: load with timm.create_model('hf-hub:{args.push}', pretrained=True)")


if __name__ == '__main__':
    from .utils.cli import run_cli
    run_cli(main, 'python -m timm_tgr.export')
