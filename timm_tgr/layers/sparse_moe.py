"""Sparse top-K Mixture-of-Experts MLP with expert capacity, as in V-MoE (Riquelme et al., 2021).

:class:`SparseMoE` strings three small pieces together, each replaceable on its own:

- :class:`~timm_tgr.layers.router.TopKRouter` picks K experts per token (fp32),
- a dispatcher of :mod:`~timm_tgr.layers.dispatch` (:class:`~timm_tgr.layers.dispatch.CapacityDispatcher`) turns
  the choices into expert-buffer slots under the capacity limit and sums the gated outputs back,
- :class:`~timm_tgr.layers.experts.GroupedExperts` runs all experts at once with batched matmuls.

Where no choice can be dropped (``capacity_factor='dropless'``, or a capacity C >= S, e.g. the upcycled models'
``eval_capacity_factor=E/K``) the layer takes the dropless path instead: choices sorted by expert, one
grouped matmul over groups of any size, no capacity buffer and no padding
(:class:`~timm_tgr.layers.dispatch.SortedDispatcher`). It gives the capacity path's
outputs (to float rounding) with E/(K*cf) times less expert compute than a C = S buffer; on a torch without
a jagged grouped matmul (:func:`~timm_tgr.layers.experts.grouped_mm_op`) the capacity path runs with C = S.

After every forward the layer keeps a :class:`RoutingInfo`, the routing record every MoE layer of
this package (also Soft-MoE and Expert-Choice) fills the same way, for the losses and metrics.
Nothing in the forward loops over experts in Python or reads a tensor value on the host, so
``torch.compile(fullgraph=True)`` captures the layer whole.
"""
from typing import Optional, Tuple, Type, Union

import torch
import torch.nn as nn

from .checks import check_weight
from .dispatch import (
    DROPLESS, CapacityDispatcher, CapacityGroup, SortedDispatcher, expert_capacity, group_images, split_groups,
)
from .experts import GroupedExperts
from .losses import importance_loss, noisy_load_loss, router_z_loss
from .moe_base import CapacityMoE, RoutingInfo, check_mlp_replacement
from .router import RouterOutput, TopKRouter

__all__ = ['SparseMoE']


def _fmt(cf: Union[float, str]) -> str:
    return repr(cf) if isinstance(cf, str) else f'{cf:g}'


class SparseMoE(CapacityMoE):
    """Top-K sparse MoE replacement for a transformer MLP, on any ``[B, N, C]`` tensor.

    The constructor takes timm ``Mlp``'s arguments (``in_features``, ``hidden_features``,
    ``act_layer``, ``bias``, ``drop``), so it can be passed as a ViT block's ``mlp_layer``.

    Args:
        num_experts: E.
        top_k: K.
        capacity_factor: training capacity factor (> 0), or ``'dropless'`` (also None): no capacity limit, no
            choice dropped. (``timm.create_model`` drops None kwargs: pass ``'dropless'`` there.)
        eval_capacity_factor: capacity factor in eval mode, or ``'dropless'``; None uses ``capacity_factor``.
            Any factor >= E/K (C >= S: nothing can be dropped) runs the dropless path too.
        router_noise_std: Gaussian noise std on router logits in training: ``'1/E'`` (default, V-MoE's code) or
            an absolute std (1.0 is Table S1's literal reading).
        batch_prioritized_routing: BPR (higher top-1 gate wins a full expert).
        capacity_group: images per routing group (default 8, V-MoE's ``group_size = 8 * num_patches``), or
            ``'sample'`` (each image alone: outputs independent of the batch) or ``'batch'``. Capacity, the
            importance loss and the load loss are all per group.
        eval_capacity_group: the routing group in eval mode (None: ``capacity_group``).
        load_loss_weight: lambda_load of the importance loss (CV^2 of the clean softmax's per-group importance).
        noisy_load_loss_weight: weight of V-MoE's noise-based load loss (0.005 as in V-MoE; needs router noise).
        z_loss_weight: lambda of the ST-MoE router z-loss in ``aux_loss`` (0 disables).

    After every forward, ``self.routing`` holds a :class:`RoutingInfo`. Setting
    ``self.routing_override`` to a ``[B, N, E]`` probability tensor makes the next forwards choose
    experts (and gates) from it instead of the router (the paper's teacher-route experiment); the
    recorded ``probs`` stay the router's own, and the override's gates keep their autograd graph, so
    the task loss trains whatever produced it (the teacher router, supplement Eq. S1).
    ``self.detach_gates = True`` stops the task loss from reaching the router through the combine
    weights (the paper's distillation-only ablation). ``self.use_dropless = False`` keeps the capacity
    buffer (C = S when dropless) even where the dropless path could run, to compare the two.
    """

    def __init__(
            self,
            in_features: int,
            hidden_features: Optional[int] = None,
            out_features: Optional[int] = None,
            act_layer: Type[nn.Module] = nn.GELU,
            norm_layer: Optional[Type[nn.Module]] = None,
            bias: bool = True,
            drop: float = 0.,
            num_experts: int = 8,
            top_k: int = 1,
            capacity_factor: Union[float, str, None] = 1.05,
            eval_capacity_factor: Union[float, str, None] = None,
            router_noise_std: Union[float, str, None] = '1/E',
            batch_prioritized_routing: bool = False,
            capacity_group: CapacityGroup = 8,
            eval_capacity_group: Optional[CapacityGroup] = None,
            load_loss_weight: float = 0.005,
            noisy_load_loss_weight: float = 0.005,
            z_loss_weight: float = 0.,
            device=None,
            dtype=None,
            **kwargs,
    ):
        check_mlp_replacement('SparseMoE', kwargs, in_features, out_features, norm_layer)
        super().__init__(
            capacity_factor, eval_capacity_factor, capacity_group,
            '1.0 gives each expert an equal share of the tokens; larger drops fewer tokens; None drops none',
            dropless=True, eval_capacity_group=eval_capacity_group)
        self.num_experts = num_experts
        self.top_k = top_k
        self.batch_prioritized_routing = batch_prioritized_routing
        self.load_loss_weight = check_weight('load_loss_weight', load_loss_weight, 'lambda_load; 0 turns L_load off')
        self.noisy_load_loss_weight = check_weight(
            'noisy_load_loss_weight', noisy_load_loss_weight, "V-MoE's load loss; 0 turns it off")
        self.z_loss_weight = check_weight('z_loss_weight', z_loss_weight, '0 disables the router z-loss')
        dd = dict(device=device, dtype=dtype)
        self.router = TopKRouter(in_features, num_experts, top_k=top_k, noise_std=router_noise_std, **dd)
        self.experts = GroupedExperts(
            num_experts, in_features, hidden_features or in_features, act_layer=act_layer, bias=bias, drop=drop, **dd)
        self.capacity_dispatcher = CapacityDispatcher(num_experts)
        self.sorted_dispatcher = SortedDispatcher(num_experts)
        self.use_dropless = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 3:
            raise ValueError(f'SparseMoE expects tokens as [B, N, C], got shape {tuple(x.shape)}.')
        logits = self.router.compute_logits(self.router_input(x))
        route = self.router.route(logits, choice_probs=self.routing_override)
        if self.detach_gates:
            route.gates = route.gates.detach()
        images = group_images(x.shape[0], self.current_capacity_group())
        if self._runs_dropless(x, images):
            out, kept, counts = self._dropless(x, route)
        else:
            out, kept, counts = self._capacity(x, route, images)
        self.routing = self._routing_info(route, kept, counts, images)
        return out

    def _runs_dropless(self, x: torch.Tensor, images: int) -> bool:
        """Dropless where no choice can be dropped (an expert takes at most S choices of a group of S tokens, so
        C >= S drops none) and the experts can run on jagged groups."""
        S = images * x.shape[1]
        cf = self.current_capacity_factor()
        no_drop = cf == DROPLESS or expert_capacity(S, self.num_experts, self.top_k, cf) >= S
        return no_drop and self.use_dropless and self.experts.jagged_dtype(x) is not None

    def _dropless(self, x: torch.Tensor, route: RouterOutput) -> Tuple[torch.Tensor, ...]:
        """Every choice kept: rows sorted by expert, one grouped matmul per expert layer, gated sum back."""
        tokens, meta = self.sorted_dispatcher.dispatch(x, route.expert_index, route.gates)
        out = self.sorted_dispatcher.combine(self.experts.forward_jagged(tokens, meta.counts, meta.row_expert), meta)
        return out, meta.kept, meta.counts

    def _capacity(self, x: torch.Tensor, route: RouterOutput, images: int) -> Tuple[torch.Tensor, ...]:
        """The capacity buffer per routing group (C at most S), for the full groups and then the last, smaller one
        (its own capacity): ``(out [B, N, D], kept [B, N, K], counts [E])``."""
        B, N, D = x.shape
        cf = self.current_capacity_factor()
        parts = []
        for xg, index, gates in zip(split_groups(x, images), split_groups(route.expert_index, images),
                                    split_groups(route.gates, images)):
            S = xg.shape[1]
            capacity = S if cf == DROPLESS else min(S, expert_capacity(S, self.num_experts, self.top_k, cf))
            tokens, meta = self.capacity_dispatcher.dispatch(xg, index, gates, capacity, self.batch_prioritized_routing)
            parts.append((self.capacity_dispatcher.combine(self.experts(tokens), meta), meta.kept, meta.counts))
        if len(parts) == 1:
            out, kept, counts = parts[0]
        else:
            out, kept, counts = (torch.cat([p[0].reshape(-1, D) for p in parts]),
                                 torch.cat([p[1].reshape(-1) for p in parts]), parts[0][2] + parts[1][2])
        return out.view(B, N, D), kept.view(B, N, self.top_k), counts

    def _routing_info(self, route: RouterOutput, kept: torch.Tensor, counts: torch.Tensor,
                      images: int) -> RoutingInfo:
        load = self._group_mean(importance_loss, images, self._clean_probs(route))
        noisy_load = load.new_zeros(())
        if route.noisy_logits is not None:
            noisy_load = self._group_mean(
                lambda lg, nlg: noisy_load_loss(lg, nlg, self.router.noise_std, self.top_k), images,
                route.logits, route.noisy_logits)
        z = router_z_loss(route.logits) if self.z_loss_weight > 0 else load.new_zeros(())
        aux = self.load_loss_weight * load + self.noisy_load_loss_weight * noisy_load + self.z_loss_weight * z
        return RoutingInfo(
            probs=route.probs,
            logits=route.logits,
            expert_index=route.expert_index,
            gates=route.gates,
            kept=kept,
            expert_counts=counts,
            dropped_fraction=1. - kept.float().mean(),
            load_loss=load,
            noisy_load_loss=noisy_load,
            z_loss=z,
            aux_loss=aux,
        )

    @staticmethod
    def _clean_probs(route: RouterOutput) -> torch.Tensor:
        """The softmax of the logits without noise (V-MoE's importance loss reads it, not the noisy one)."""
        return route.probs if route.noisy_logits is None else torch.softmax(route.logits, dim=-1)

    @staticmethod
    def _group_mean(loss_fn, images: int, *tensors: torch.Tensor) -> torch.Tensor:
        """Mean over routing groups of ``loss_fn`` on ``[G, S, E]`` groups of ``tensors`` (``[B, N, E]``)."""
        per_group = [loss_fn(*groups) for groups in zip(*(split_groups(t, images) for t in tensors))]
        return (per_group[0] if len(per_group) == 1 else torch.cat(per_group)).mean()

    def extra_repr(self) -> str:
        s = (f'num_experts={self.num_experts}, top_k={self.top_k}, capacity_factor={_fmt(self.capacity_factor)}, '
             f'capacity_group={self.capacity_group!r}, bpr={self.batch_prioritized_routing}')
        if self.eval_capacity_factor is not None:
            s += f', eval_capacity_factor={_fmt(self.eval_capacity_factor)}'
        if self.eval_capacity_group is not None:
            s += f', eval_capacity_group={self.eval_capacity_group!r}'
        return s
