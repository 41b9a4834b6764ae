"""timm ``TrainingTask`` for V-MoE, and the plumbing every timm_tgr task shares.

- :class:`VMoETask`: L = L_task + sum_i lambda_load L_load(p^i) (+ z-loss if configured on the model).
- :func:`moe_loss_components`: the MoE layers' auxiliary loss and its parts for logging.
- :class:`TrainerStateMixin`: a trainer's own resumable state inside ``task_state['trainer']``.
- :func:`wrap_ddp`: DistributedDataParallel that also works for a CPU module.

A task returns the dict timm's loop expects (``'loss'``, ``'output'``) plus every loss component
as a detached scalar tensor for logging (no host sync in the forward). All losses are summed into
the one ``'loss'`` tensor, so timm's gradient-accumulation division and fp16 GradScaler scale every
component alike and the relative weights never change.
"""
from typing import Dict, Mapping, Optional

import torch
import torch.nn as nn
from timm.task import TrainingTask

from ..models import moe_model

__all__ = ['VMoETask', 'TrainerStateMixin', 'moe_loss_components', 'wrap_ddp']


def moe_loss_components(routing_infos: Mapping[int, object]) -> Dict[str, torch.Tensor]:
    """The MoE layers' auxiliary loss (with grad) and detached means for logging."""
    infos = list(routing_infos.values())
    return {
        'moe_aux_loss': torch.stack([r.aux_loss for r in infos]).sum(),
        'load_loss': torch.stack([r.load_loss for r in infos]).mean().detach(),
        'z_loss': torch.stack([r.z_loss for r in infos]).mean().detach(),
        'dropped_fraction': torch.stack([r.dropped_fraction for r in infos]).mean().detach(),
    }


def wrap_ddp(module: nn.Module, device_ids: Optional[list] = None, **ddp_kwargs) -> nn.Module:
    """DistributedDataParallel; ``device_ids`` are dropped for a CPU module (timm's train.py passes
    ``[device]`` even on CPU, which DDP rejects), so gloo training on CPU works from timm's train.py too."""
    from torch.nn.parallel import DistributedDataParallel as DDP
    if all(p.device.type == 'cpu' for p in module.parameters()):
        device_ids = None
    return DDP(module, device_ids=device_ids, **ddp_kwargs)


class TrainerStateMixin:
    """Lets a trainer keep its own resumable state (e.g. the routing-consistency tracker) in the task's
    checkpoint entry: objects given to :meth:`register_trainer_state` (with ``state_dict`` /
    ``load_state_dict``) are saved under ``task_state['trainer'][name]`` by timm's CheckpointSaver and
    restored with the task's checkpoint state (timm's ``resume_task_checkpoint``, train_tgr.py's ``--resume``)."""

    def register_trainer_state(self, name: str, obj) -> None:
        if not hasattr(self, '_trainer_state'):
            self._trainer_state = {}
        self._trainer_state[name] = obj

    def _trainer_state_dict(self) -> Dict[str, object]:
        return {k: v.state_dict() for k, v in getattr(self, '_trainer_state', {}).items()}

    def _load_trainer_state(self, state: Optional[Mapping[str, object]]) -> None:
        for k, v in (state or {}).items():
            if k in getattr(self, '_trainer_state', {}):
                self._trainer_state[k].load_state_dict(v)


class VMoETask(TrainerStateMixin, TrainingTask):
    """Classification + the MoE layers' auxiliary losses: L_task + sum_i lambda_load L_load^i."""

    def __init__(self, model: nn.Module, criterion: Optional[nn.Module] = None, device=None, dtype=None,
                 verbose: bool = True):
        super().__init__(device=device, dtype=dtype, verbose=verbose)
        moe_model(model, required=True)
        self.trainable_module = model
        self.criterion = criterion if criterion is not None else nn.CrossEntropyLoss()

    def get_task_state(self, module: Optional[nn.Module] = None, ema: bool = False) -> Dict[str, object]:
        trainer = {} if ema else self._trainer_state_dict()
        return {'trainer': trainer} if trainer else {}

    def load_task_state(self, state: Optional[Dict[str, object]], strict: bool = True,
                        module: Optional[nn.Module] = None, ema: bool = False) -> None:
        if not ema and state:
            self._load_trainer_state(state.get('trainer'))

    def prepare_distributed(self, device_ids: Optional[list] = None, **ddp_kwargs) -> 'VMoETask':
        self.trainable_module = wrap_ddp(self.trainable_module, device_ids, **ddp_kwargs)
        return self

    def compile(self, backend: str = 'inductor', mode: Optional[str] = None, **compile_kwargs) -> nn.Module:
        self.trainable_module = torch.compile(self.trainable_module, backend=backend, mode=mode, **compile_kwargs)
        self.eval_model = self.trainable_module
        return self.trainable_module

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> Dict[str, torch.Tensor]:
        output = self.trainable_module(input)
        task_loss = self.criterion(output, target)
        moe = moe_loss_components(moe_model(self.trainable_module).routing_infos())
        loss = task_loss + moe['moe_aux_loss']
        moe['moe_aux_loss'] = moe['moe_aux_loss'].detach()
        return {'loss': loss, 'output': output, 'task_loss': task_loss.detach(), **moe}
