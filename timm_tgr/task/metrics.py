"""Routing metrics of the TGR-MoE paper, computed from what the MoE layers record (no hooks).

- Per MoE layer over a pass (:class:`RoutingStats`): normalized routing entropy of the router's
  choices (supplement Table S2: every top-K choice counts, kept or dropped), the same entropy of the
  assignments that survived the capacity cut (``entropy_kept``: a full expert's overflow is dropped,
  so this one looks more balanced than the router is), per-expert load (share of kept assignments)
  and the dropped-choice fraction.
- Routing consistency on a fixed probe set (paper's Key Findings): the top-1 expert of every probe
  token is recorded each epoch (:func:`record_assignments`, eval mode, so without router noise);
  *adjacent-epoch* consistency is the fraction of tokens whose expert is the same as in the
  previous epoch, *to-final* consistency the fraction equal to the final epoch's
  (:func:`routing_consistency`, :class:`ConsistencyTracker`).
- Pretrain-to-finetune consistency (paper's "Stable Transfer": 50.56 % V-MoE, 73.75 % TGR-MoE):
  the probe assignments of the starting weights, recorded before the first fine-tuning step, against
  each epoch's (:class:`RoutingReference`).
"""
from typing import Dict, Iterable, List, Mapping, Optional

import torch
import torch.nn as nn
from timm.utils import unwrap_model

from ..layers.losses import normalized_utilization_entropy

__all__ = [
    'RoutingStats', 'choice_counts', 'record_assignments', 'routing_consistency', 'ConsistencyTracker',
    'RoutingReference', 'mean_over_layers',
]


def choice_counts(info) -> torch.Tensor:
    """How many of the router's top-K choices went to each expert, kept or dropped: ``[E]`` int64."""
    num_experts = info.probs.shape[-1]
    return torch.bincount(info.expert_index.detach().reshape(-1), minlength=num_experts)


class RoutingStats:
    """Accumulates per MoE layer, over many forwards (e.g. one epoch): the router's choices per expert,
    the kept assignments per expert and the dropped choices."""

    def __init__(self):
        self.choice_counts: Dict[int, torch.Tensor] = {}
        self.counts: Dict[int, torch.Tensor] = {}
        self.dropped: Dict[int, torch.Tensor] = {}
        self.choices: Dict[int, int] = {}

    def update(self, routing_infos: Mapping[int, object]) -> None:
        for i, info in routing_infos.items():
            chosen = choice_counts(info).to('cpu', torch.float64)
            counts = info.expert_counts.detach().to('cpu', torch.float64)
            num_choices = info.kept.numel()
            dropped = info.dropped_fraction.detach().to('cpu', torch.float64) * num_choices
            if i in self.counts:
                self.choice_counts[i] += chosen
                self.counts[i] += counts
                self.dropped[i] += dropped
                self.choices[i] += num_choices
            else:
                self.choice_counts[i], self.counts[i], self.dropped[i], self.choices[i] = \
                    chosen, counts, dropped, num_choices

    def summary(self) -> Dict[int, Dict[str, object]]:
        """``{block: {'entropy', 'entropy_kept': float, 'load': [E floats], 'dropped_fraction': float}}``.

        ``entropy`` is Table S2's normalized routing entropy, of the router's choices; ``entropy_kept`` that
        of the assignments left after the capacity cut; ``load`` each expert's share of the kept assignments.
        """
        out = {}
        for i, counts in self.counts.items():
            total = counts.sum().clamp_min(1.)
            out[i] = {
                'entropy': float(normalized_utilization_entropy(self.choice_counts[i])),
                'entropy_kept': float(normalized_utilization_entropy(counts)),
                'load': (counts / total).tolist(),
                'dropped_fraction': float(self.dropped[i] / max(self.choices[i], 1)),
            }
        return out


@torch.no_grad()
def record_assignments(model: nn.Module, batches: Iterable, device: Optional[torch.device] = None,
                       amp_autocast=None) -> Dict[int, torch.Tensor]:
    """Top-1 expert of every token of a fixed probe set, per MoE block: ``{block: int64 [tokens]}``.

    Runs ``model`` in eval mode (no router noise, eval capacity); restores its mode afterwards.
    ``batches`` yields images or ``(images, targets)``; ``model`` may be DDP/compiled-wrapped.
    """
    base = unwrap_model(model)
    was_training = base.training
    model.eval()
    records: Dict[int, List[torch.Tensor]] = {}
    try:
        for batch in batches:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            if device is not None:
                x = x.to(device)
            if amp_autocast is not None:
                with amp_autocast():
                    model(x)
            else:
                model(x)
            for i, info in base.routing_infos().items():
                records.setdefault(i, []).append(info.expert_index[..., 0].reshape(-1).cpu())
    finally:
        model.train(was_training)
    return {i: torch.cat(v) for i, v in records.items()}


def routing_consistency(a: Mapping[int, torch.Tensor], b: Mapping[int, torch.Tensor]) -> Dict[int, float]:
    """Per block, the fraction of probe tokens assigned to the same expert in ``a`` and ``b``."""
    if set(a) != set(b):
        raise ValueError(f'assignments cover different blocks: {sorted(a)} vs {sorted(b)}.')
    out = {}
    for i in a:
        if a[i].shape != b[i].shape:
            raise ValueError(f'block {i}: {a[i].numel()} vs {b[i].numel()} probe tokens; use the same probe set.')
        out[i] = float((a[i] == b[i]).double().mean())
    return out


class ConsistencyTracker:
    """Keeps each epoch's probe assignments; reports adjacent-epoch and to-final consistency."""

    def __init__(self):
        self.history: List[Dict[int, torch.Tensor]] = []

    def add(self, assignments: Mapping[int, torch.Tensor]) -> Optional[Dict[int, float]]:
        """Record an epoch; returns its consistency with the previous epoch (None for the first)."""
        prev = self.history[-1] if self.history else None
        self.history.append(dict(assignments))
        return routing_consistency(prev, assignments) if prev is not None else None

    def adjacent(self) -> List[Optional[Dict[int, float]]]:
        return [None] + [routing_consistency(a, b) for a, b in zip(self.history[:-1], self.history[1:])]

    def to_final(self) -> List[Dict[int, float]]:
        """Consistency of every recorded epoch with the last one."""
        final = self.history[-1]
        return [routing_consistency(h, final) for h in self.history]

    def state_dict(self) -> dict:
        return {'history': [{i: t.clone() for i, t in h.items()} for h in self.history]}

    def load_state_dict(self, state: dict) -> None:
        self.history = [dict(h) for h in state['history']]


class RoutingReference:
    """Probe assignments of one fixed model state (e.g. the pre-trained model before fine-tuning), and
    the consistency of later assignments with them; resumable (``state_dict`` / ``load_state_dict``)."""

    def __init__(self):
        self.assignments: Optional[Dict[int, torch.Tensor]] = None

    def set(self, assignments: Mapping[int, torch.Tensor]) -> None:
        self.assignments = {i: t.clone() for i, t in assignments.items()}

    def consistency(self, assignments: Mapping[int, torch.Tensor]) -> Dict[int, float]:
        """Per block, the fraction of probe tokens assigned to the same expert as in the reference."""
        if self.assignments is None:
            raise RuntimeError('no reference recorded yet: call set() with the starting model\'s assignments.')
        return routing_consistency(self.assignments, assignments)

    def state_dict(self) -> dict:
        if self.assignments is None:
            return {'assignments': None}
        return {'assignments': {i: t.clone() for i, t in self.assignments.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.assignments = None if state.get('assignments') is None else dict(state['assignments'])


def mean_over_layers(values: Optional[Mapping[int, float]]) -> Optional[float]:
    if not values:
        return None
    return sum(values.values()) / len(values)
