"""When TGR's distillation term is on (TGR-MoE, arXiv 2604.21330, distillation-timing ablation).

The paper's finding: distilling only in the first half of training beats distilling throughout
(guidance matters while routing is unstable); the adaptive mode is our rule for when to stop.
:class:`DistillSchedule` counts training forwards and says whether lambda_distill L_distill is in
the loss; its ``state_dict`` is saved as ``task_state['distill_schedule']``.
"""
import logging
from typing import List, Optional

from .options import GuidanceConfig, guidance_options

_logger = logging.getLogger(__name__)

__all__ = ['DistillSchedule']


class DistillSchedule:
    """When the distillation term is on, counted in training forwards (micro-batches).

    Modes:
        ``'full'``: always (standard TGR-MoE, 77.81 in the paper's Tiny E=8 ablation).
        ``'first'``: for the first ``fraction`` of ``total_steps`` (paper's best: first half, 78.13).
        ``'off'``: never (plain V-MoE with teacher routers still trained, for ablations).
        ``'adaptive'``: our rule for the paper's open problem. Distill until the student's adjacent-epoch
            routing consistency on the probe set plateaus: after at least ``min_fraction`` of training,
            once each of the last ``patience`` epochs gained less than ``delta`` consistency (absolute),
            distillation switches off for good. It never runs past ``max_fraction`` (default 1.0).
            The trainer reports consistency with :meth:`observe_consistency` at each epoch end.
    """

    MODES = guidance_options()['schedule'][2].choices

    def __init__(
            self,
            mode: str = 'full',
            total_steps: Optional[int] = None,
            fraction: float = GuidanceConfig.distill_fraction,
            delta: float = 0.01,
            patience: int = 2,
            min_fraction: float = 0.1,
            max_fraction: float = 1.0,
    ):
        if mode not in self.MODES:
            raise ValueError(f'distill schedule must be one of {self.MODES}, got {mode!r}.')
        if mode in ('first', 'adaptive') and (total_steps is None or total_steps <= 0):
            raise ValueError(f"schedule '{mode}' needs total_steps > 0 (training forwards in the whole run).")
        if not 0. <= fraction <= 1.:
            raise ValueError(f'distill fraction must be in [0, 1], got {fraction}.')
        self.mode = mode
        self.total_steps = total_steps
        self.fraction = fraction
        self.delta = delta
        self.patience = patience
        self.min_fraction = min_fraction
        self.max_fraction = max_fraction
        self.step = 0
        self.stopped_at: Optional[int] = None
        self.history: List[float] = []

    def active(self) -> bool:
        if self.mode == 'full':
            return True
        if self.mode == 'off':
            return False
        if self.mode == 'first':
            return self.step < self.fraction * self.total_steps
        if self.stopped_at is not None:
            return False
        return self.step < self.max_fraction * self.total_steps

    def advance(self) -> None:
        self.step += 1

    def observe_consistency(self, consistency: float) -> None:
        """Adaptive mode: feed the mean adjacent-epoch routing consistency at each epoch end."""
        self.history.append(float(consistency))
        if self.mode != 'adaptive' or self.stopped_at is not None:
            return
        if self.step < self.min_fraction * self.total_steps or len(self.history) <= self.patience:
            return
        recent = self.history[-(self.patience + 1):]
        gains = [b - a for a, b in zip(recent[:-1], recent[1:])]
        if all(g < self.delta for g in gains):
            self.stopped_at = self.step
            _logger.info(f'TGR adaptive schedule: routing consistency plateaued at {recent[-1]:.4f}; '
                         f'distillation off from step {self.step}.')

    def state_dict(self) -> dict:
        return {'mode': self.mode, 'total_steps': self.total_steps, 'fraction': self.fraction, 'step': self.step,
                'stopped_at': self.stopped_at, 'history': list(self.history)}

    def load_state_dict(self, state: dict) -> None:
        if state.get('mode', self.mode) != self.mode:
            raise ValueError(f"checkpoint schedule mode {state['mode']!r} differs from this run's {self.mode!r}.")
        self.step = int(state['step'])
        self.stopped_at = state.get('stopped_at')
        self.history = list(state.get('history', []))
