"""The run's checkpoint saver: timm's ``CheckpointSaver`` whose writes never replace a good checkpoint.

- Every file is written under a temporary name in the run folder and renamed over the old one
  (``os.replace``, atomic): ``last.pth.tar`` through timm's ``tmp.pth.tar``, ``model_best.pth.tar`` and
  ``checkpoint-N.pth.tar`` (hard links or copies of ``last.pth.tar``) through ``<name>.tmp``. A failed
  write (a full disk) removes its temporary file and leaves every earlier checkpoint as it was; the error
  says the disk is full, where, and which checkpoint to resume from.
- Weights holding NaN or Inf are never written: the error names the tensors, and ``last.pth.tar``
  stays the last finite checkpoint (the resume point).
"""
import logging
import os
import shutil
from typing import Dict, Optional, Tuple

import torch
from timm.utils import CheckpointSaver, unwrap_model

from ..utils.checkpoint import NonFiniteError, non_finite_tensors, write_error

__all__ = ['RunCheckpointSaver']

_logger = logging.getLogger(__name__)


class RunCheckpointSaver(CheckpointSaver):
    """timm's CheckpointSaver (works with timm's own history and best-metric bookkeeping) with atomic writes,
    full-disk errors that name the folder, and a refusal to write non-finite weights.

    Error messages name the resume point: ``last.pth.tar`` once this invocation saved an epoch
    (``last_epoch``), before that the checkpoint it resumed from (``resumed_from``, of ``resumed_epoch``).
    """

    def __init__(self, *args, resumed_from: Optional[str] = None, resumed_epoch: Optional[int] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.resumed_from, self.resumed_epoch = resumed_from, resumed_epoch
        self.last_epoch: Optional[int] = None

    @property
    def last_path(self) -> str:
        return os.path.join(self.checkpoint_dir, 'last' + self.extension)

    def resume_point(self) -> Optional[Tuple[str, int]]:
        """``(checkpoint, its epoch)`` to continue from now, None when there is none yet."""
        if self.last_epoch is not None:
            return self.last_path, self.last_epoch
        if self.resumed_from is not None:
            return self.resumed_from, self.resumed_epoch
        return None

    def resume_advice(self) -> str:
        """Which checkpoint is intact and how to continue from it."""
        point = self.resume_point()
        if point is None:
            return 'No checkpoint of this run was written yet.'
        return f'{point[0]} (epoch {point[1]}) is intact: continue from it with --resume {point[0]}.'

    # --- what is saved -------------------------------------------------------------------------
    def _state_tensors(self) -> Dict[str, torch.Tensor]:
        """The weights a checkpoint of now would hold: model (or task) state_dict, teacher routers, EMA."""
        if self.task is None:
            tensors = dict(unwrap_model(self.model).state_dict(), **_optimizer_tensors(self.optimizer))
            if self.model_ema is not None:
                tensors.update({f'ema.{k}': v for k, v in unwrap_model(self.model_ema).state_dict().items()})
            return tensors
        tensors = _optimizer_tensors(self.optimizer)
        for ema in (False, True):
            state = self.task.get_checkpoint_state(ema=ema, unwrap_fn=self.unwrap_fn)
            for key, value in state.items():
                if isinstance(value, dict):
                    _flatten(tensors, key, value)
        return tensors

    def check_finite(self, epoch: int) -> None:
        """Raise :class:`NonFiniteError` naming the tensors when the weights to save hold NaN or Inf."""
        bad = non_finite_tensors(self._state_tensors())
        if bad:
            more = f' and {len(bad) - 5} more' if len(bad) > 5 else ''
            raise NonFiniteError(
                f'the weights after epoch {epoch} hold NaN or Inf ({", ".join(bad[:5])}{more}): training diverged, '
                f'and they were not saved. {self.resume_advice()} Lower --lr, or clip gradients (--clip-grad 1.0).')

    def save_checkpoint(self, epoch, metric=None):
        """timm's save; ``last_epoch`` follows ``last.pth.tar`` as soon as it is replaced, so when a later step
        (``checkpoint-N`` / ``model_best`` copies) fails, ``last_epoch == epoch`` says the epoch is saved."""
        self.check_finite(epoch)
        self._saving = epoch
        try:
            return super().save_checkpoint(epoch, metric=metric)
        finally:
            self._saving = None

    # --- how it is written -----------------------------------------------------------------------
    def _fail(self, e: BaseException, path: str, tmp: str) -> None:
        if os.path.exists(tmp):
            try:
                os.remove(tmp)
            except OSError:
                pass
        error = write_error(e, path, kept=self.resume_advice())
        if error is None:
            raise e
        _logger.error(str(error))
        raise error from e

    def _save(self, save_path, epoch, metric=None):
        try:
            super()._save(save_path, epoch, metric)
        except (OSError, RuntimeError) as e:
            self._fail(e, self.last_path if os.path.basename(save_path).startswith('tmp') else save_path, save_path)

    def _replace(self, src, dst):
        os.replace(src, dst)  # atomic: dst is the old file or the new one, never missing
        if os.path.abspath(dst) == os.path.abspath(self.last_path) and getattr(self, '_saving', None) is not None:
            self.last_epoch = self._saving

    def _duplicate(self, src, dst):
        tmp = dst + '.tmp'
        try:
            if os.path.exists(tmp):
                os.remove(tmp)
            if self.can_hardlink:
                try:
                    os.link(src, tmp)
                except (OSError, NotImplementedError):
                    self.can_hardlink = False
            if not self.can_hardlink:
                shutil.copy2(src, tmp)
            os.replace(tmp, dst)
        except OSError as e:
            self._fail(e, dst, tmp)


def _optimizer_tensors(optimizer) -> Dict[str, torch.Tensor]:
    """The optimizer's state tensors (moments, step counts) as ``optimizer.<param>.<name>``: saved with the weights,
    so a NaN / Inf there is refused as theirs (a resume from it would diverge at its first step)."""
    if optimizer is None:
        return {}
    out = {}
    for i, (param, state) in enumerate(optimizer.state.items()):
        for k, v in state.items():
            if torch.is_tensor(v):
                out[f'optimizer.{i}.{k}'] = v
    return out


def _flatten(out: Dict[str, torch.Tensor], prefix: str, value) -> None:
    for k, v in value.items():
        name = f'{prefix}.{k}'
        if torch.is_tensor(v):
            out[name] = v
        elif isinstance(v, dict):
            _flatten(out, name, v)
