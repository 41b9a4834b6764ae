"""StableMoE-style two-stage routing (the TGR-MoE paper's C.3 baseline; Dai et al., ACL 2022).

Stage 1 trains the model as usual (V-MoE: router, load loss and all). At the switch step the
routers are frozen where they are (the learned router is "copied" and kept fixed) and stage 2
trains everything else with that fixed routing, so token-to-expert assignments stop drifting.

What still differs from StableMoE: its stage 2 routes on a fixed, distilled word embedding (a token's
expert depends on the token alone); here the frozen router keeps reading the hidden states of its
block, which change while the layers below it train, so a token's expert can still move. Images have
no token vocabulary to embed, which is also how the TGR-MoE paper's C.3 ran it ("copying the routing
network, which is then frozen without distillation"). The load loss is V-MoE's, not StableMoE's.

A training loop calls one function at the switch step::

    from timm_tgr.task.stablemoe import RouterFreezeSchedule, freeze_routers

    schedule = RouterFreezeSchedule(fraction=0.5, total_steps=total_steps)   # or switch_step=...
    for step, (x, y) in enumerate(loader, start=start_step):
        schedule.maybe_freeze(model, step)     # freezes once, at step >= switch step; cheap otherwise
        loss = criterion(model(x), y) + model.moe_aux_loss()
        optimizer.zero_grad(); loss.backward(); optimizer.step()

or simply ``freeze_routers(model)`` at the chosen step. What freezing does:

- every router parameter of every MoE layer (``blocks.i.mlp.router.*``: the top-K / Expert-Choice
  router weights, Soft-MoE's slot parameters and scale) gets ``requires_grad = False`` and its
  ``.grad`` is set to None, so it receives no gradient from any loss (task, load loss, z-loss,
  TGR distillation). The optimizer may keep the parameters: torch and timm optimizers skip a
  parameter whose ``.grad`` is None, so no update, momentum or weight decay moves it;
- the routers' training noise is turned off (std 0), so a token's assignment is deterministic as in
  StableMoE's frozen stage-2 routing; ``disable_noise=False`` keeps the noise as configured;
- the load / z losses still appear in ``moe_aux_loss()`` (they then only log; no parameter gets
  their gradient). Drop them from the loss if you prefer.

``requires_grad`` is not part of a ``state_dict``: after resuming past the switch step call
``freeze_routers`` (or ``maybe_freeze``) again before the first step. With
``DistributedDataParallel`` freeze before wrapping, or re-wrap after freezing, or wrap with
``find_unused_parameters=True`` (DDP records which parameters need gradients at construction).
``torch.compile`` recompiles once after the switch (``requires_grad`` is guarded).
"""
from typing import List, Optional

import torch.nn as nn
from timm.utils import unwrap_model

from ..models import moe_model

__all__ = ['router_parameters', 'freeze_routers', 'routers_frozen', 'RouterFreezeSchedule']


def _moe_layers(model: nn.Module) -> dict:
    return moe_model(model, required=True).get_moe_layers()


def router_parameters(model: nn.Module) -> dict:
    """``{name: parameter}`` of every MoE layer's router, named as in the model's ``state_dict``."""
    base = unwrap_model(model)
    names = {id(p): n for n, p in base.named_parameters(remove_duplicate=False)}
    params = {}
    for moe in _moe_layers(base).values():
        for p in moe.router.parameters():
            params[names[id(p)]] = p
    return params


def freeze_routers(model: nn.Module, disable_noise: bool = True) -> List[str]:
    """Freeze the routers of all MoE layers (StableMoE stage 2); returns the frozen parameter names.

    Sets ``requires_grad = False`` and ``grad = None`` on them (see the module docstring). Idempotent.
    ``disable_noise`` (default) also sets the routers' training noise std to 0: frozen routing is deterministic.
    """
    params = router_parameters(model)
    for p in params.values():
        p.requires_grad_(False)
        p.grad = None
    if disable_noise:
        for moe in _moe_layers(model).values():
            if hasattr(moe.router, 'noise_std'):
                moe.router.noise_std = 0.
    return sorted(params)


def routers_frozen(model: nn.Module) -> bool:
    """True when no router parameter requires a gradient."""
    return not any(p.requires_grad for p in router_parameters(model).values())


class RouterFreezeSchedule:
    """When to switch to StableMoE's stage 2: at ``switch_step``, or at ``fraction`` of ``total_steps``.

    ``maybe_freeze(model, step)`` freezes the routers the first time it is called with
    ``step >= switch_step`` (also right after resuming past it) and returns the frozen names then,
    None otherwise.
    """

    def __init__(self, switch_step: Optional[int] = None, fraction: Optional[float] = None,
                 total_steps: Optional[int] = None, disable_noise: bool = True):
        if (switch_step is None) == (fraction is None):
            raise ValueError(
                'RouterFreezeSchedule needs exactly one of switch_step (an optimizer step) or fraction '
                '(of total_steps, e.g. 0.5).')
        if fraction is not None:
            if not 0. <= fraction <= 1.:
                raise ValueError(f'fraction must be in [0, 1] (share of training before the switch), got {fraction}.')
            if total_steps is None or total_steps < 1:
                raise ValueError(
                    f'fraction={fraction} needs total_steps >= 1 (the length of training), got {total_steps}.')
            switch_step = round(fraction * total_steps)
        if switch_step < 0:
            raise ValueError(f'switch_step must be >= 0, got {switch_step}.')
        self.switch_step = int(switch_step)
        self.disable_noise = disable_noise
        self.frozen = False

    def maybe_freeze(self, model: nn.Module, step: int) -> Optional[List[str]]:
        if self.frozen or step < self.switch_step:
            return None
        self.frozen = True
        return freeze_routers(model, disable_noise=self.disable_noise)

    def state_dict(self) -> dict:
        return {'switch_step': self.switch_step, 'frozen': self.frozen}

    def load_state_dict(self, state: dict) -> None:
        # 'frozen' is not restored: requires_grad is not in the model's state_dict, so the next
        # maybe_freeze at or past the switch step must freeze the freshly loaded model again
        self.switch_step = int(state['switch_step'])
