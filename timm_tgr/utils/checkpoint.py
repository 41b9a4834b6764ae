"""Reading checkpoints, for every entry point: ``--resume``, ``--initial-checkpoint``, ``--teacher-checkpoint``,
``--teacher-routers-from``, ``--upcycle-from``, ``python -m timm_tgr.export``, and the Python API behind them.

- :func:`read_checkpoint`: a training checkpoint (``.pth.tar``) or a bare state_dict (``.pth``,
  ``.safetensors``) on the CPU, with ``torch.load(weights_only=True)`` (``argparse.Namespace`` allowed for
  the run's args; ``trust_checkpoint`` switches to ``weights_only=False``, which can run code stored in
  the file). A missing, empty, truncated or corrupt file gets one message naming the file and the fix.
- :func:`select_weights`: which weights of a checkpoint to use (the one rule below).
- :func:`student_state_dict`: the student's tensors (no DDP / compile prefixes, no teacher, no teacher routers).
- :func:`check_finite`: refuse weights holding NaN or Inf, naming the tensors.
- :func:`write_error`: the error for a failed write (a full disk), naming the file and where it is.

Which weights (``ema``): a checkpoint with EMA weights (``state_dict_ema``, or ``model_ema`` of older timm
checkpoints) is read as its EMA weights unless the model's are asked for (``ema=False``): with
``--model-ema`` both train_tgr.py and timm's train.py evaluate the EMA and pick ``model_best`` by it, and
timm's ``load_checkpoint`` reads checkpoints the same way. ``ema=True`` requires EMA weights; a checkpoint
without them (or a bare state_dict) is read as the model's weights. Every caller logs which it took.
"""
import argparse
import errno
import logging
import os
import pickle
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from timm.models import clean_state_dict

__all__ = [
    'read_checkpoint', 'select_weights', 'student_state_dict', 'is_state_dict', 'as_dict', 'plain_value',
    'state_dict_mismatches',
    'non_finite_tensors', 'check_finite', 'NonFiniteError', 'CheckpointWriteError', 'write_error',
    'RUN_CHECKPOINTS', 'RUN_OUTPUTS', 'run_outputs',
]

_logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

# state_dict prefixes that are training machinery, never the student
TEACHER_PREFIXES = ('teacher.', 'teacher_routers.', 'teacher_model.')
_WRAPPER_PREFIXES = ('trainable_module.',)  # the state_dict of a whole timm TrainingTask
_EMA_KEYS = ('state_dict_ema', 'model_ema')
_MODEL_KEYS = ('state_dict', 'model')
# the checkpoints train_tgr.py writes in a run folder, best first
RUN_CHECKPOINTS = ('model_best.pth.tar', 'last.pth.tar')
# the files that make a folder hold a run (a run that finished at least one epoch)
RUN_OUTPUTS = ('metrics.jsonl', 'summary.csv', 'last.pth.tar', 'model_best.pth.tar', 'routing_consistency.json')
_OTHER_CHECKPOINTS = ('another checkpoint of the run (last.pth.tar, model_best.pth.tar, checkpoint-N.pth.tar) '
                      'or copy it again')


class NonFiniteError(ValueError):
    """Weights holding NaN or Inf values."""


class CheckpointWriteError(OSError):
    """A file could not be written (usually a full disk); the message names the file and its folder."""


def run_outputs(folder: PathLike) -> List[str]:
    """The files in ``folder`` that a run writes once an epoch is done (:data:`RUN_OUTPUTS`, ``checkpoint-N.pth.tar``),
    sorted; empty for a missing folder or one with none of them."""
    if not os.path.isdir(folder):
        return []
    names = os.listdir(folder)
    return sorted(n for n in names if n in RUN_OUTPUTS or (n.startswith('checkpoint-') and n.endswith('.pth.tar')))


def _fix_for(path: Path) -> str:
    return f'use {_OTHER_CHECKPOINTS}' if path.name.endswith('.pth.tar') else 'copy or export it again'


def read_checkpoint(path: PathLike, trust_checkpoint: bool = False, what: str = 'checkpoint') -> Any:
    """The object stored in ``path`` (a checkpoint dict or a state_dict), read on the CPU.

    ``what`` names the file in messages the way the user gave it (``'--resume'``, ``'teacher checkpoint'``).
    Raises FileNotFoundError (missing), RuntimeError (empty, truncated, corrupt, or objects that
    ``weights_only`` refuses: pass ``trust_checkpoint`` for a checkpoint you made yourself).
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(
            f'{what} {path} is a folder: give a checkpoint file in it (train_tgr.py writes model_best.pth.tar and '
            f'last.pth.tar in the run folder).')
    if not path.is_file():
        raise FileNotFoundError(f'{what} {path} not found.')
    if path.stat().st_size == 0:
        raise RuntimeError(
            f'{what} {path} is empty (0 bytes): its write never finished (an interrupted save or copy, or a full '
            f'disk). {_fix_for(path).capitalize()}.')
    if path.suffix == '.safetensors':
        return _read_safetensors(path, what)
    try:
        if trust_checkpoint:
            return torch.load(path, map_location='cpu', weights_only=False)
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as e:
        refused = _refused_globals(path)
        if refused is None:  # its pickle does not parse: a damaged file, whatever torch's wording
            reason = _unpickling_reason(e)
            raise RuntimeError(
                f'could not read {what} {path} ({reason}): it is truncated, corrupt or not a checkpoint (an '
                f'interrupted save or copy, or a full disk). {_fix_for(path).capitalize()}.') from e
        reason = f'it refers to {", ".join(refused[:5])}' if refused else _unpickling_reason(e)
        raise RuntimeError(
            f'{what} {path} holds objects besides tensors, containers and argparse.Namespace, which '
            f'torch.load(weights_only=True) refuses ({reason}). If it is a checkpoint you made yourself, rerun '
            f'with --trust-checkpoint (trust_checkpoint=True): it loads with weights_only=False, which can run '
            f'code stored in the file.') from e
    except (RuntimeError, EOFError, ValueError, OSError, KeyError, IndexError) as e:
        reason = (str(e).strip().splitlines() or [''])[0].split('. ')[0][:200]
        raise RuntimeError(
            f'could not read {what} {path} ({type(e).__name__}: {reason}): it is truncated, corrupt or not a '
            f'checkpoint (an interrupted save or copy, or a full disk). {_fix_for(path).capitalize()}.') from e


# globals a weights_only checkpoint may refer to (torch's own rebuild functions and storages, containers)
_SAFE_GLOBAL_PREFIXES = ('torch.', 'collections.OrderedDict', 'argparse.Namespace', '_codecs.encode', 'builtins.set',
                         'builtins.frozenset', 'builtins.bytearray', 'builtins.complex', 'builtins.slice',
                         'numpy.')


def _refused_globals(path: Path) -> Optional[List[str]]:
    """For a torch zip checkpoint whose ``torch.load(weights_only=True)`` raised ``UnpicklingError``: the globals its
    pickle refers to beyond tensors and containers, when the pickle parses whole (the file is intact: weights_only
    refused what it holds); None when it does not parse or is not a zip checkpoint (the file is damaged). The
    decision rests on the file, not on the wording of torch's message, which changes between releases."""
    import pickletools
    import zipfile
    try:
        with zipfile.ZipFile(path) as z:
            name = next(n for n in z.namelist() if n.endswith('/data.pkl') or n == 'data.pkl')
            data = z.read(name)
    except (zipfile.BadZipFile, StopIteration, OSError, EOFError, KeyError, ValueError, RuntimeError):
        return None
    found, strings, memo = [], [], {}
    try:
        for op, arg, _ in pickletools.genops(data):
            if isinstance(arg, str) and ('UNICODE' in op.name or 'STRING' in op.name):
                strings.append(arg)
            elif op.name == 'MEMOIZE' and strings:
                memo[len(memo)] = strings[-1]
            elif op.name in ('PUT', 'BINPUT', 'LONG_BINPUT') and strings:
                memo[arg] = strings[-1]
            elif op.name in ('GET', 'BINGET', 'LONG_BINGET') and isinstance(memo.get(arg), str):
                strings.append(memo[arg])
            elif op.name in ('GLOBAL', 'INST'):
                found.append(arg.replace(' ', '.'))
            elif op.name == 'STACK_GLOBAL' and len(strings) >= 2:
                found.append(f'{strings[-2]}.{strings[-1]}')
    except Exception:  # noqa: BLE001 - pickletools raises ValueError and others on a damaged pickle
        return None
    return sorted({g for g in found if not g.startswith(_SAFE_GLOBAL_PREFIXES)})


def _unpickling_reason(e: Exception) -> str:
    """The line of torch's weights_only error that says what it refused (``Unsupported global: ...``)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    for line in lines:
        if line.startswith(('Unsupported', 'GLOBAL')) or 'WeightsUnpickler error: ' in line:
            return line.split('WeightsUnpickler error: ')[-1][:300]
    return (lines[-1] if lines else type(e).__name__)[:300]


def _read_safetensors(path: Path, what: str) -> Dict[str, torch.Tensor]:
    import safetensors.torch
    from safetensors import SafetensorError
    try:
        return safetensors.torch.load_file(str(path), device='cpu')
    except (SafetensorError, OSError, ValueError) as e:
        raise RuntimeError(
            f'{what} {path} is not a readable safetensors file ({e}): it is corrupt or truncated. '
            f'Copy or export it again.') from e


def is_state_dict(obj: Any) -> bool:
    """A non-empty dict of tensors (a bare state_dict), not a checkpoint dict."""
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def as_dict(args: Any) -> Dict[str, Any]:
    """A checkpoint's ``args`` (argparse.Namespace or dict) as a dict; {} when absent."""
    if args is None:
        return {}
    if isinstance(args, argparse.Namespace):
        return dict(vars(args))
    if isinstance(args, dict):
        return dict(args)
    raise TypeError(f"checkpoint 'args' is a {type(args).__name__}; expected an argparse.Namespace or a dict.")


def plain_value(v: Any) -> Any:
    """Tuples as lists and dict keys as strings, recursively: a run arg as args.yaml / JSON hold it, so values read
    back from a checkpoint compare equal to the flags' values."""
    if isinstance(v, (list, tuple)):
        return [plain_value(x) for x in v]
    if isinstance(v, dict):
        return {str(k): plain_value(x) for k, x in v.items()}
    return v


def select_weights(
        ckpt: Any, path: PathLike, ema: Optional[bool] = None, what: str = 'checkpoint',
        ema_flag: str = '--ema',
) -> Tuple[Dict[str, torch.Tensor], Optional[str]]:
    """``(weights, key)`` of ``ckpt`` by the module's rule: EMA weights when it holds them and ``ema`` is not
    False; ``ema=True`` requires them. ``key`` is None for a bare state_dict. ``ema_flag`` is named in the
    error for missing EMA weights."""
    if is_state_dict(ckpt):
        if ema:
            raise ValueError(f'{what} {path} is a bare state_dict with no EMA weights: drop {ema_flag} '
                             f'(ema=True).')
        return ckpt, None
    if not isinstance(ckpt, dict):
        raise ValueError(f'{what} {path} holds a {type(ckpt).__name__}, not a checkpoint dict or a state_dict.')
    ema_key = next((k for k in _EMA_KEYS if isinstance(ckpt.get(k), dict)), None)
    if ema and ema_key is None:
        raise ValueError(f"{what} {path} has no EMA weights ('state_dict_ema'): it comes from a run without "
                         f'--model-ema; drop {ema_flag} (ema=True) to read its model weights.')
    if ema is not False and ema_key is not None:
        return ckpt[ema_key], ema_key
    key = next((k for k in _MODEL_KEYS if isinstance(ckpt.get(k), dict)), None)
    if key is None:
        raise ValueError(
            f"{what} {path} has no weights ('state_dict' or 'model'; its keys: {sorted(ckpt)[:10]}): give a "
            f'train_tgr.py / timm checkpoint or a bare state_dict.')
    return ckpt[key], key


def describe_weights(key: Optional[str]) -> str:
    """'its EMA weights (state_dict_ema)', 'its model weights (state_dict)' or 'a bare state_dict'."""
    if key is None:
        return 'a bare state_dict'
    return f'its {"EMA" if key in _EMA_KEYS else "model"} weights ({key})'


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
        if k.startswith(TEACHER_PREFIXES) or (wrapped and not k.startswith('student.')):
            dropped.append(k)
        else:
            out[k[len('student.'):] if wrapped else k] = v
    return clean_state_dict(out), dropped


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


def non_finite_tensors(state_dict: Dict[str, Any]) -> List[str]:
    """Names of the floating-point tensors of ``state_dict`` holding NaN or Inf (one host sync in all)."""
    names = [k for k, v in state_dict.items() if torch.is_tensor(v) and v.is_floating_point() and v.numel()]
    if not names:
        return []
    flags = torch.stack([torch.isfinite(state_dict[k]).all().to('cpu', non_blocking=True) for k in names])
    return [k for k, ok in zip(names, flags.tolist()) if not ok]


def check_finite(state_dict: Dict[str, Any], source: str, fix: str) -> None:
    """Raise :class:`NonFiniteError` naming the tensors of ``state_dict`` that hold NaN or Inf.

    ``source`` names the weights (``'--initial-checkpoint X'``), ``fix`` says what to do instead.
    """
    bad = non_finite_tensors(state_dict)
    if bad:
        more = f' and {len(bad) - 5} more' if len(bad) > 5 else ''
        raise NonFiniteError(
            f'{source} holds non-finite values (NaN or Inf) in {len(bad)} of {len(state_dict)} tensors '
            f'({", ".join(bad[:5])}{more}): the run that wrote it diverged. {fix}')


def _free(folder: str) -> str:
    try:
        return f'{shutil.disk_usage(folder).free / 2 ** 20:.0f} MB free there now'
    except OSError:
        return 'its free space is unknown'


def write_error(e: BaseException, path: PathLike, kept: str = '') -> Optional[CheckpointWriteError]:
    """The error to raise for ``e``, a failed write of ``path`` (None when ``e`` is not a failed write).

    A full disk (``OSError`` ENOSPC / EDQUOT, or torch's ``PytorchStreamWriter`` / ``inline_container`` errors,
    which carry no errno) is named as such, with the folder and its free space; ``kept`` says what is intact.
    """
    path = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(path)
    text = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
    after = f' {kept}' if kept else ''
    # what to do once there is space: continue from the intact checkpoint kept names, else run the command again
    # (a run folder without a checkpoint is started again)
    then = 'then continue with that --resume' if '--resume' in kept else 'then run the same command again'
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return CheckpointWriteError(
            e.errno, f'the disk is full: no space left to write {path} (on the disk of {folder}; {_free(folder)}).'
                     f'{after} Free space there or write to another --output, {then}.')
    torch_write = isinstance(e, RuntimeError) and any(
        s in str(e) for s in ('inline_container', 'PytorchStreamWriter', 'file write failed', 'unexpected pos'))
    if torch_write:
        return CheckpointWriteError(
            errno.ENOSPC, f'writing {path} failed (torch: {text}); the usual cause is a full disk: the disk of '
                          f'{folder} has {_free(folder)}.{after} Free space there or write to another --output, '
                          f'{then}.')
    if isinstance(e, OSError):
        return CheckpointWriteError(
            e.errno, f'could not write {path} ({type(e).__name__}: {text}).{after} Check that {folder} is writable '
                     f'and has space ({_free(folder)}).')
    return None
