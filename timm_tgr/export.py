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

Checkpoints are read with ``torch.load(weights_only=True)`` (``argparse.Namespace`` allowed for the
run's args); ``--trust-checkpoint`` switches to ``weights_only=False``, which can run code stored in
the file, so use it only for checkpoints you made yourself.
"""
import argparse
import json
import logging
import pickle
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import safetensors.torch
import torch
import torch.nn as nn
from safetensors import SafetensorError

import timm
from timm.models import clean_state_dict, push_to_hf_hub, save_for_hf
from timm.models._hub import generate_readme  # the model card writer of push_to_hf_hub (not in timm.models)
from timm.utils import ParseKwargs

from .utils.metrics_log import metrics_row, read_metrics

__all__ = [
    'load_checkpoint_file', 'student_state_dict', 'resolve_model_args', 'build_student', 'read_metrics',
    'make_model_card', 'export_checkpoint', 'TGR_CITATION',
]

_logger = logging.getLogger(__name__)

TGR_CITATION = """@inproceedings{tgrmoe2026,
  title     = {Teacher-Guided Routing for Sparse Vision Mixture-of-Experts},
  booktitle = {CVPR},
  year      = {2026},
  note      = {arXiv:2604.21330}
}"""

# state_dict prefixes that are training machinery, never the student
_TEACHER_PREFIXES = ('teacher.', 'teacher_routers.', 'teacher_model.')
_WRAPPER_PREFIXES = ('trainable_module.',)  # the state_dict of a whole timm TrainingTask
# create_model kwargs that do not change the architecture or the weights, and are not written to config.json
_NOT_MODEL_ARGS = {
    'drop_rate', 'drop_path_rate', 'attn_drop_rate', 'proj_drop_rate', 'pos_drop_rate', 'patch_drop_rate',
    'drop_block_rate', 'pretrained', 'pretrained_cfg', 'pretrained_cfg_overlay', 'checkpoint_path', 'cache_dir',
    'scriptable', 'exportable', 'no_jit', 'features_only', 'out_indices', 'device', 'dtype',
}
# run args shown as the training recipe in the model card (when present; names of timm_tgr/train/ and timm)
_RECIPE_KEYS = (
    'dataset', 'train_split', 'val_split', 'pretrained', 'num_classes', 'img_size', 'in_chans', 'input_size',
    'mean', 'std', 'crop_pct', 'epochs', 'batch_size', 'grad_accum_steps', 'opt', 'opt_eps', 'opt_betas',
    'momentum', 'weight_decay', 'layer_decay', 'clip_grad', 'clip_mode', 'sched', 'lr', 'warmup_lr', 'min_lr',
    'warmup_epochs', 'cooldown_epochs', 'decay_rate', 'no_aug', 'scale', 'ratio', 'hflip', 'vflip',
    'color_jitter', 'aa', 'reprob', 'mixup', 'cutmix', 'mixup_prob', 'smoothing', 'drop', 'drop_path',
    'model_ema', 'model_ema_decay', 'model_ema_warmup', 'amp', 'amp_dtype', 'seed', 'eval_metric', 'layer_map',
    'freeze_router_at', 'no_teacher_pretrained', 'task', 'mode',
)
_RECIPE_PREFIXES = ('tgr', 'teacher', 'distill', 'routing', 'stablemoe', 'moe_')
_NOT_RECIPE = {'teacher_checkpoint', 'teacher_routers_from', 'teacher_routers'}  # local paths stay out of the card
_READERS = ('torch/', 'hfds/', 'hfids/', 'tfds/', 'wds/')  # timm dataset reader prefixes


def load_checkpoint_file(path: Union[str, Path], trust_checkpoint: bool = False) -> Dict[str, Any]:
    """Read a training checkpoint (.pth/.pth.tar) or a bare state_dict (.pth/.safetensors) on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'checkpoint {path} not found.')
    if path.suffix == '.safetensors':
        try:
            return safetensors.torch.load_file(str(path), device='cpu')
        except SafetensorError as e:
            raise RuntimeError(
                f'{path} is not a readable safetensors file ({e}): it is corrupt or truncated. '
                f'Copy or export it again.') from e
    try:
        if trust_checkpoint:
            return torch.load(path, map_location='cpu', weights_only=False)
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as e:
        reason = str(e).strip().splitlines()[-1][:300]
        raise RuntimeError(
            f'{path} holds objects besides tensors, containers and argparse.Namespace, which '
            f'torch.load(weights_only=True) refuses ({reason}). If it is a checkpoint you made yourself, rerun '
            f'with --trust-checkpoint (trust_checkpoint=True): it loads with weights_only=False, which can run '
            f'code stored in the file.') from e
    except (RuntimeError, EOFError) as e:
        raise RuntimeError(
            f'could not read {path} as a torch checkpoint ({e}): it is truncated, corrupt or not a checkpoint.') from e


def _as_dict(args: Any) -> Dict[str, Any]:
    if args is None:
        return {}
    if isinstance(args, argparse.Namespace):
        return dict(vars(args))
    if isinstance(args, dict):
        return dict(args)
    raise TypeError(f"checkpoint 'args' is a {type(args).__name__}; expected an argparse.Namespace or a dict.")


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def student_state_dict(state_dict: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """The student's tensors of ``state_dict`` and the keys left out.

    Removes DDP / torch.compile prefixes (timm's ``clean_state_dict``), drops teacher and teacher-router
    tensors, and, for the state_dict of a ``TGRTrainableModule`` (``student.*``, ``teacher_routers.*``),
    keeps only ``student.*`` without the prefix.
    """
    sd = {}
    for k, v in clean_state_dict(state_dict).items():
        for p in _WRAPPER_PREFIXES:
            k = k[len(p):] if k.startswith(p) else k
        sd[k] = v
    wrapped = any(k.startswith('student.') for k in sd)
    out, dropped = {}, []
    for k, v in sd.items():
        if k.startswith(_TEACHER_PREFIXES) or (wrapped and not k.startswith('student.')):
            dropped.append(k)
        else:
            out[k[len('student.'):] if wrapped else k] = v
    return clean_state_dict(out), dropped


def _read_args_yaml(path: Path) -> Dict[str, Any]:
    import yaml
    with open(path, 'r') as f:
        data = yaml.safe_load(f)
    if not isinstance(data, dict):
        raise ValueError(f'{path} is not a mapping of run args.')
    return data


def _jsonable(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return v


def resolve_model_args(
        run_args: Dict[str, Any],
        model: Optional[str] = None,
        model_kwargs: Optional[Dict[str, Any]] = None,
        checkpoint_arch: Optional[str] = None,
) -> Tuple[str, Dict[str, Any]]:
    """Architecture name and the ``timm.create_model`` kwargs that rebuild the trained model.

    From the run's ``model`` / ``model_kwargs`` plus its top-level ``num_classes``, ``in_chans``,
    ``img_size`` (or ``input_size``) and ``gp``; ``model`` and ``model_kwargs`` given here override them.
    Dropout rates, ``tgr_*`` guidance options and other arguments that do not change the architecture
    are left out.
    """
    # timm_tgr/train/ records the architecture of an hf-hub: / local-dir: --model as model_arch (args.yaml)
    arch = model or run_args.get('model_arch') or run_args.get('model')
    if not arch and checkpoint_arch and timm.is_model(checkpoint_arch):
        arch = checkpoint_arch
    if not arch:
        raise ValueError(
            'the checkpoint does not name its architecture (no args.model and no registered arch): pass '
            '--model NAME, e.g. --model tgr_moe_deit_small, and the --model-kwargs it was trained with.')
    if not timm.is_model(arch):
        raise ValueError(
            f"unknown architecture '{arch}': it is not a registered timm model. timm_tgr registers "
            f"{', '.join(timm.list_models('*moe_deit*')[:4])}, ...; pass --model with one of "
            f"timm.list_models('*moe_deit*').")
    # timm_tgr/train/ records the resolved create_model kwargs ('model_kwargs_resolved' in its args.yaml)
    args = dict(run_args.get('model_kwargs_resolved') or run_args.get('model_kwargs') or {})
    for k in ('num_classes', 'in_chans', 'img_size'):
        if run_args.get(k) is not None:
            args.setdefault(k, run_args[k])
    input_size = run_args.get('input_size')
    if input_size:
        args.setdefault('in_chans', input_size[0])
        args.setdefault('img_size', tuple(input_size[1:]))
    if run_args.get('gp'):
        args.setdefault('global_pool', run_args['gp'])
    args.update(model_kwargs or {})
    # tgr_* kwargs are teacher-guidance options for timm's train.py (timm_tgr.task.timm_train), not architecture
    args = {k: _jsonable(v) for k, v in args.items()
            if k not in _NOT_MODEL_ARGS and not k.startswith('tgr_') and v is not None}
    try:
        json.dumps(args)
    except TypeError as e:
        raise ValueError(f'model args {args} cannot be written to config.json ({e}): pass them as numbers, '
                         f'strings or lists with --model-kwargs.') from e
    return arch, args


def _shape_hints(sd: Dict[str, torch.Tensor]) -> str:
    hints = []
    w = sd.get('patch_embed.proj.weight')
    if w is not None and w.ndim == 4:
        hints += [f'embed_dim={w.shape[0]}', f'in_chans={w.shape[1]}', f'patch_size={w.shape[2]}']
    if 'head.weight' in sd:
        hints.append(f'num_classes={sd["head.weight"].shape[0]}')
    return f' The weights look like {", ".join(hints)}.' if hints else ''


def state_dict_mismatches(state_dict: Dict[str, torch.Tensor], reference: Dict[str, torch.Tensor],
                          ignore: Sequence[str] = ()) -> List[str]:
    """What keeps ``state_dict`` from loading strictly into a model whose state_dict is ``reference``: missing and
    unexpected tensors and shape mismatches, each with up to three examples (empty when it fits). Keys in
    ``ignore`` may be absent."""
    missing = [k for k in reference if k not in state_dict and k not in ignore]
    unexpected = [k for k in state_dict if k not in reference]
    shapes = [f'{k} {tuple(state_dict[k].shape)} vs {tuple(reference[k].shape)}'
              for k in reference if k in state_dict and state_dict[k].shape != reference[k].shape]
    parts = []
    if missing:
        parts.append(f'{len(missing)} missing tensors (e.g. {", ".join(missing[:3])})')
    if unexpected:
        parts.append(f'{len(unexpected)} unexpected tensors (e.g. {", ".join(unexpected[:3])})')
    if shapes:
        parts.append(f'{len(shapes)} shape mismatches (checkpoint vs model, e.g. {"; ".join(shapes[:3])})')
    return parts


def build_student(
        arch: str,
        model_args: Dict[str, Any],
        state_dict: Dict[str, torch.Tensor],
        source: str = 'the checkpoint',
        checkpoint_arch: Optional[str] = None,
) -> nn.Module:
    """``timm.create_model(arch, **model_args)`` with ``state_dict`` loaded strictly, in eval mode."""
    model = timm.create_model(arch, **model_args)
    parts = state_dict_mismatches(state_dict, model.state_dict())
    if parts:
        if checkpoint_arch and checkpoint_arch != arch and timm.is_model(checkpoint_arch):
            fix = (f"The checkpoint was saved for architecture '{checkpoint_arch}': export it with "
                   f'--model {checkpoint_arch} (or without --model).')
        else:
            fix = ('Pass the architecture and model args the weights were trained with '
                   '(--model NAME --model-kwargs k=v ...).' + _shape_hints(state_dict))
        raise RuntimeError(
            f"{source} does not fit '{arch}' built with {model_args}: {'; '.join(parts)}. {fix}")
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f'{v:.6g}'
    return str(v)


def _model_stats(model: nn.Module) -> Dict[str, Any]:
    """Params, input, classes and, for MoE models, experts, top-k and the MoE blocks."""
    c, h, w = model.pretrained_cfg['input_size']
    stats = {'Params (M)': f'{sum(p.numel() for p in model.parameters()) / 1e6:.2f}'}
    stats.update({'Image size': f'{h} x {w}', 'Input channels': c, 'Classes': model.num_classes})
    moe = model.get_moe_layers() if hasattr(model, 'get_moe_layers') else {}
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


def _data_details(run_args: Dict[str, Any]) -> Dict[str, Any]:
    """'Dataset' (timm name without its reader prefix) or a 'Training data' note, and the 'Training recipe'."""
    details = {}
    dataset = run_args.get('dataset')
    if dataset and dataset.lower() != 'folder':
        for p in _READERS:
            dataset = dataset[len(p):] if dataset.startswith(p) else dataset
        details['Dataset'] = dataset
    elif 'dataset' in run_args:
        details['Training data'] = 'an image folder (its name is not recorded in the run args)'
    else:
        details['Training data'] = 'not recorded in the run args'
    recipe = {k: _fmt(v) for k, v in run_args.items() if v is not None and v != '' and k not in _NOT_RECIPE
              and (k in _RECIPE_KEYS or k.startswith(_RECIPE_PREFIXES))}
    recipe.update({f'model_kwargs.{k}': _fmt(v) for k, v in (run_args.get('model_kwargs') or {}).items()
                   if k.startswith('tgr_') and k[4:] not in _NOT_RECIPE})
    details['Training recipe'] = recipe or 'not recorded: the checkpoint has no run args and no args.yaml was found'
    return details


def _results_details(metrics: Optional[Dict[str, Any]], metrics_note: str) -> Dict[str, Any]:
    """'Results' (the row's scalars) and 'Routing per MoE block' from a metrics.jsonl row, or why there are none."""
    if not metrics:
        return {'Results': f'not recorded: {metrics_note or "no metrics.jsonl found"}'}
    results = {k: _fmt(v) for k, v in metrics.items() if k != 'routing' and not isinstance(v, (dict, list))}
    details = {'Results' + (f' ({metrics_note})' if metrics_note else ''): results}
    routing = metrics.get('routing') or {}
    if routing:
        details['Routing per MoE block (0-based)'] = {
            f'block {b}': ', '.join(f'{k} {"n/a" if v is None else _fmt(v)}' for k, v in r.items()
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
        start = f'`{source}` (--pretrained)'
    elif source.startswith('local-dir:'):
        start = 'an exported model folder (--pretrained)'
    elif run_args.get('initial_checkpoint'):
        start = 'a training checkpoint (--initial-checkpoint)'
    elif run_args.get('pretrained'):
        start = f"the pretrained weights of `{run_args.get('model', '?')}`"
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
) -> Dict[str, Any]:
    """Model card dict for timm's ``generate_readme``: the run's recipe and measured results, nothing else."""
    cfg = model.pretrained_cfg
    details = {'Model Type': 'Image classification, sparse Vision Mixture-of-Experts ViT (student weights only)',
               'Architecture': f'`{arch}` (timm_tgr)', 'Model Stats': _model_stats(model), 'Papers': _papers(cfg)}
    details.update(_data_details(run_args))
    details['Weights'] = dict(checkpoint_info or {})
    details.update(_start_details(run_args, metrics))
    details.update(_results_details(metrics, metrics_note))
    description, usage = _usage(arch, repo_id)
    return {
        'description': description, 'details': details, 'usage': usage, 'citation': TGR_CITATION,
        'license': cfg.get('license', 'apache-2.0'), 'tags': ['image-classification', 'timm', 'timm_tgr',
                                                             'mixture-of-experts'],
    }


def _update_pretrained_cfg(model: nn.Module, run_args: Dict[str, Any], source: str) -> None:
    """Make the model's pretrained_cfg (written to config.json) describe the exported weights."""
    cfg = dict(model.pretrained_cfg)
    pe = getattr(model, 'patch_embed', None)
    img_size = tuple(pe.img_size) if pe is not None and pe.img_size is not None else tuple(cfg['input_size'][1:])
    cfg['input_size'] = (getattr(model, 'in_chans', cfg['input_size'][0]), *img_size)
    cfg['num_classes'] = model.num_classes
    if getattr(model, 'dynamic_img_size', False):
        cfg['fixed_input_size'] = False
    for k in ('mean', 'std', 'crop_pct', 'interpolation', 'crop_mode'):
        if run_args.get(k) not in (None, ''):
            cfg[k] = tuple(run_args[k]) if isinstance(run_args[k], list) else run_args[k]
    if cfg['input_size'][0] != 3:
        # timm "converts" `first_conv` of pretrained weights whenever in_chans != 3, assuming RGB weights;
        # these are already in_chans wide (for 1 channel the sum over one channel is a no-op that still logs
        # a misleading conversion), so skip that: they load at the exported in_chans only
        cfg['first_conv'] = None
    cfg['notes'] = (f'Student weights exported by timm_tgr.export from {source}.',)
    for k in ('url', 'file', 'hf_hub_id', 'hf_hub_filename', 'source', 'state_dict'):
        cfg.pop(k, None)
    cfg['tag'] = None  # not the tag the architecture was created with (e.g. the upcycled dense weights)
    model.pretrained_cfg = model.default_cfg = cfg


def _select_weights(path: Path, ckpt: Any, ema: bool) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any], Optional[str]]:
    """(state_dict to export, checkpoint dict (empty for a bare state_dict), its key in the checkpoint)."""
    if _is_state_dict(ckpt):
        if ema:
            raise ValueError(f'{path} is a bare state_dict with no EMA weights: export it without --ema.')
        return ckpt, {}, None
    if not isinstance(ckpt, dict):
        raise ValueError(f'{path} holds a {type(ckpt).__name__}, not a checkpoint dict or a state_dict.')
    key = 'state_dict_ema' if ema else next((k for k in ('state_dict', 'model') if k in ckpt), None)
    if ema and ckpt.get(key) is None:
        raise ValueError(
            f'{path} has no EMA weights (state_dict_ema): train with --model-ema, or export without --ema.')
    if key is None or not isinstance(ckpt.get(key), dict):
        raise ValueError(
            f"{path} has no 'state_dict' (keys: {sorted(ckpt)[:10]}): give a train_tgr.py / timm checkpoint "
            f'or a bare state_dict.')
    return ckpt[key], ckpt, key


def _run_args(ckpt: Dict[str, Any], path: Path) -> Dict[str, Any]:
    """The run's args: the checkpoint's 'args', else the args.yaml next to it, else empty."""
    run_args = _as_dict(ckpt.get('args'))
    args_yaml = path.parent / 'args.yaml'
    if not run_args and args_yaml.is_file():
        run_args = _read_args_yaml(args_yaml)
    return run_args


def _load_student(
        raw: Dict[str, torch.Tensor], arch: str, model_args: Dict[str, Any], run_args: Dict[str, Any], path: Path,
        checkpoint_arch: Optional[str] = None,
) -> nn.Module:
    """The student of ``raw`` (teacher tensors left out) with a pretrained_cfg describing the export."""
    state_dict, dropped = student_state_dict(raw)
    if dropped:
        _logger.info(f'left out {len(dropped)} non-student tensors: {", ".join(dropped[:8])}'
                     + (' ...' if len(dropped) > 8 else ''))
    student = build_student(arch, model_args, state_dict, source=str(path), checkpoint_arch=checkpoint_arch)
    _update_pretrained_cfg(student, run_args, path.name)
    return student


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


def _checkpoint_info(path: Path, key: Optional[str], ema: bool, ckpt: Dict[str, Any],
                     run_args: Dict[str, Any]) -> Dict[str, Any]:
    """The card's 'Weights' section: source file, state_dict key, epoch and metric of the checkpoint."""
    info = {'Exported from': path.name, 'State dict': (key or 'bare state_dict') + (' (EMA)' if ema else '')}
    if ckpt.get('epoch') is not None:
        info['Checkpoint epoch'] = ckpt['epoch']
    if ckpt.get('metric') is not None:
        info[f"Checkpoint metric ({run_args.get('eval_metric', 'eval metric')})"] = _fmt(float(ckpt['metric']))
    return info


def export_checkpoint(
        checkpoint: Union[str, Path],
        out: Optional[Union[str, Path]] = None,
        ema: bool = False,
        push: Optional[str] = None,
        private: bool = False,
        model: Optional[str] = None,
        model_kwargs: Optional[Dict[str, Any]] = None,
        metrics: Optional[Union[str, Path]] = None,
        trust_checkpoint: bool = False,
        token: Optional[str] = None,
) -> nn.Module:
    """Export the student of ``checkpoint`` to ``out`` and/or push it to the Hub repo ``push``; returns it.

    ``checkpoint`` is a train_tgr.py / timm CheckpointSaver checkpoint ('state_dict', optional
    'state_dict_ema', 'args', 'epoch', ...) or a bare state_dict (.pth or .safetensors; give ``model``
    and ``model_kwargs`` unless an args.yaml sits next to it). ``ema`` exports 'state_dict_ema'.
    Run metrics come from ``metrics`` or ``<checkpoint dir>/metrics.jsonl``.
    """
    if out is None and push is None:
        raise ValueError('nothing to do: give an output folder (--out DIR) and/or a Hub repo (--push ORG/NAME).')
    path = Path(checkpoint)
    raw, ckpt, key = _select_weights(path, load_checkpoint_file(path, trust_checkpoint=trust_checkpoint), ema)
    run_args = _run_args(ckpt, path)
    arch, model_args = resolve_model_args(run_args, model, model_kwargs, checkpoint_arch=ckpt.get('arch'))
    student = _load_student(raw, arch, model_args, run_args, path, checkpoint_arch=ckpt.get('arch'))
    row, note = _card_metrics(metrics, path, ckpt.get('epoch'))
    card = make_model_card(student, arch, run_args, row, note, _checkpoint_info(path, key, ema, ckpt, run_args),
                           repo_id=push)
    if out is not None:
        out = Path(out)
        save_for_hf(student, out, model_args=dict(model_args), safe_serialization=True)
        (out / 'README.md').write_text(generate_readme(card, push.split('/')[-1] if push else arch))
    if push is not None:
        push_to_hf_hub(
            student, push, commit_message=f'Add {arch} student weights (timm_tgr.export)', token=token,
            private=private, model_card=card, model_args=dict(model_args), safe_serialization=True)
    return student


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog='python -m timm_tgr.export', description=__doc__.split('\n\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('checkpoint', help='train_tgr.py / timm checkpoint (.pth.tar), or a bare state_dict '
                                      '(.pth, .safetensors) with --model and --model-kwargs')
    p.add_argument('--out', default=None, help='folder to write model.safetensors, config.json, README.md to')
    p.add_argument('--ema', action='store_true', help="export the EMA weights ('state_dict_ema')")
    p.add_argument('--push', default=None, metavar='ORG/NAME',
                   help='upload to this Hugging Face Hub repo (needs a write token: `hf auth login` or HF_TOKEN)')
    p.add_argument('--private', action='store_true', help='create the Hub repo as private')
    p.add_argument('--model', default=None, help="architecture, overriding the checkpoint's args.model")
    p.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs,
                   help='timm.create_model kwargs as k=v, overriding the checkpoint args (e.g. num_classes=10)')
    p.add_argument('--metrics', default=None, help='metrics.jsonl of the run (default: next to the checkpoint)')
    p.add_argument('--trust-checkpoint', action='store_true',
                   help='torch.load with weights_only=False (runs code in the file: only your own checkpoints)')
    return p


def main(argv: Optional[List[str]] = None) -> None:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    export_checkpoint(
        args.checkpoint, out=args.out, ema=args.ema, push=args.push, private=args.private, model=args.model,
        model_kwargs=args.model_kwargs, metrics=args.metrics, trust_checkpoint=args.trust_checkpoint)
    if args.out:
        print(f"wrote {args.out}: load with timm.create_model('local-dir:{args.out}', pretrained=True)")
    if args.push:
        print(f"pushed to {args.push}: load with timm.create_model('hf-hub:{args.push}', pretrained=True)")


if __name__ == '__main__':
    main()
