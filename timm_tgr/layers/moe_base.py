"""What the MoE layers of this package share: the routing record, the checks of the timm ``Mlp`` arguments they
take in its place, and the capacity state of the layers that route tokens under an expert capacity.

- :class:`RoutingInfo`: the routing of one layer's last forward, filled the same way by every layer
  (:class:`~timm_tgr.layers.sparse_moe.SparseMoE`, :class:`~timm_tgr.layers.soft_moe.SoftMoE`,
  :class:`~timm_tgr.layers.expert_choice.ExpertChoiceMoE`), for the losses and metrics.
- :func:`check_mlp_replacement`: the argument checks of a layer that stands in for a timm ``Mlp``.
- :class:`MoELayer`: the base of all three: the routing record and the state a model or a task sets between
  forwards (``routing_override``, ``detach_gates``, ``detach_router_input``).
- :class:`CapacityMoE`: the base of the layers with an expert capacity (top-K V-MoE and Expert-Choice): the
  checked capacity factors and routing groups of the training and eval modes.
"""
from dataclasses import dataclass
from typing import Optional, Union

import torch
import torch.nn as nn

from .dispatch import CapacityGroup, check_capacity, check_capacity_group

__all__ = ['RoutingInfo', 'check_mlp_replacement', 'MoELayer', 'CapacityMoE']


def check_mlp_replacement(layer: str, extra: dict, in_features: int, out_features, norm_layer) -> None:
    """Shared argument checks of the MoE layers that stand in for a timm ``Mlp``."""
    if extra:
        raise TypeError(f'{layer} got unexpected arguments {sorted(extra)}.')
    if out_features not in (None, in_features):
        raise ValueError(f'{layer} keeps the feature size: out_features must equal in_features.')
    if norm_layer is not None:
        raise ValueError(f'{layer} has no inner MLP norm; build the model with scale_mlp_norm=False.')


@dataclass
class RoutingInfo:
    """Routing of one MoE layer in its last forward (tensors keep their autograd graph).

    ``probs``/``logits``: ``[B, N, E]`` fp32; ``expert_index``/``gates``/``kept``: ``[B, N, K]``;
    ``expert_counts``: ``[E]`` kept choices per expert; ``dropped_fraction``: share of the
    B*N*K choices dropped by capacity; ``load_loss``/``noisy_load_loss``/``z_loss``: unweighted L_load (V-MoE's
    importance loss), V-MoE's noise-based load loss (zero where a layer has none) and z-loss, each the mean over
    the layer's routing groups; ``aux_loss``: their weighted sum as configured on the layer.
    """
    probs: torch.Tensor
    logits: torch.Tensor
    expert_index: torch.Tensor
    gates: torch.Tensor
    kept: torch.Tensor
    expert_counts: torch.Tensor
    dropped_fraction: torch.Tensor
    load_loss: torch.Tensor
    noisy_load_loss: torch.Tensor
    z_loss: torch.Tensor
    aux_loss: torch.Tensor


class MoELayer(nn.Module):
    """Base of the MoE layers: the routing record and the state a model or a task sets between forwards.

    - ``routing_override``: a ``[B, N, E]`` probability tensor the layer routes by instead of its router (None:
      the router); a layer with no choice to override names why in ``override_refused`` and refuses one;
    - ``detach_gates``: True stops the task loss from reaching the router through the combine weights;
    - ``detach_router_input``: True makes the router read its input without gradient, so losses on the router's
      probabilities train the router's weights only (the teacher-route experiment: nothing of the student's
      distillation loss flows back through the tokens into what routed them).

    After every forward ``routing`` holds the layer's :class:`RoutingInfo`.
    """

    override_refused: Optional[str] = None  # why the layer takes no routing_override; None: it takes one

    def __init__(self):
        super().__init__()
        self.routing: Optional[RoutingInfo] = None
        self._routing_override: Optional[torch.Tensor] = None
        self.detach_gates = False
        self.detach_router_input = False

    @property
    def routing_override(self) -> Optional[torch.Tensor]:
        return self._routing_override

    @routing_override.setter
    def routing_override(self, value: Optional[torch.Tensor]) -> None:
        if value is not None and self.override_refused is not None:
            raise ValueError(self.override_refused)
        self._routing_override = value

    def router_input(self, x: torch.Tensor) -> torch.Tensor:
        """What the router reads: ``x``, without gradient when ``detach_router_input``."""
        return x.detach() if self.detach_router_input else x


class CapacityMoE(MoELayer):
    """Base of the MoE layers that route tokens under an expert capacity.

    Args:
        capacity_factor / eval_capacity_factor / capacity_group: checked by
            :func:`~timm_tgr.layers.dispatch.check_capacity`; ``meaning`` says what the factor means for the layer
            (in its messages), ``dropless`` whether it takes ``'dropless'`` (no capacity limit).
        eval_capacity_group: the routing group in eval mode (None: ``capacity_group``).

    The routing state (``routing``, ``routing_override``, ``detach_gates``, ``detach_router_input``) is
    :class:`MoELayer`'s.
    """

    def __init__(self, capacity_factor: Union[float, str, None], eval_capacity_factor: Union[float, str, None],
                 capacity_group: CapacityGroup, meaning: str, dropless: bool = False,
                 eval_capacity_group: Optional[CapacityGroup] = None):
        super().__init__()
        self.capacity_factor, self.eval_capacity_factor, self.capacity_group = check_capacity(
            capacity_factor, eval_capacity_factor, capacity_group, meaning, dropless=dropless)
        self.eval_capacity_group = (None if eval_capacity_group is None
                                    else check_capacity_group(eval_capacity_group, 'eval_capacity_group'))

    def current_capacity_factor(self) -> Union[float, str]:
        """The capacity factor of the current mode: ``eval_capacity_factor`` in eval mode when set, else
        ``capacity_factor`` (a float, or ``'dropless'`` where the layer takes it)."""
        if not self.training and self.eval_capacity_factor is not None:
            return self.eval_capacity_factor
        return self.capacity_factor

    def current_capacity_group(self) -> CapacityGroup:
        """The routing group of the current mode: ``eval_capacity_group`` in eval mode when set, else
        ``capacity_group``."""
        if not self.training and self.eval_capacity_group is not None:
            return self.eval_capacity_group
        return self.capacity_group
