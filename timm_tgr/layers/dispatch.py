"""Token dispatch of top-K routing under expert capacity (V-MoE), as tensor index arithmetic.

Capacity (V-MoE): tokens are routed in groups of a fixed number of images (V-MoE's code: 8 images,
``group_size = 8 * num_patches``); ``capacity_group='sample'`` makes each image its own group, so an image's
output never depends on the rest of the batch, and ``'batch'`` makes the whole batch one group. A batch that
is not a multiple of the group size ends with a smaller group (V-MoE requires a multiple). Each expert takes at most ``C = ceil(S * K * capacity_factor / E)``
tokens of a group of S tokens. Choices are served k-major (all first choices before any second
choice); within a rank, earlier tokens win, or with batch-prioritized routing (BPR) the tokens with
the higher top-1 gate win. A choice beyond an expert's capacity is dropped: the token gets nothing
from that expert and, if all its choices are dropped, passes through the block's residual
connection only.

The steps, each a function here:

- :func:`capacity_groups` / :func:`expert_capacity`: the group shape ``(G, S)`` and C,
- :func:`assign_slots`: each choice's position in its expert's buffer (kept iff below C),
- :func:`slot_index`: the flat expert-major buffer slot of each kept choice,
- :func:`dispatch_tokens` / :func:`combine_outputs`: copy tokens into the ``[E, G*C, D]`` expert
  buffer and sum the gated expert outputs back per token.

:class:`CapacityDispatcher` strings them into ``dispatch(...) -> (tokens, metadata)`` and
``combine(expert_out, metadata)``, the protocol of every dispatcher here (:class:`TokenDispatcher`).

Where no choice can be dropped (C >= S: an expert can take every token of a group; or the factor :data:`DROPLESS`)
the dropless path needs no buffer at all (MegaBlocks' idea): :func:`sort_by_expert` orders all B*N*K choices by
expert, the experts run on those rows as groups of any size (``GroupedExperts.forward_jagged``), and
:func:`combine_sorted` sums the gated outputs back per token: :class:`SortedDispatcher`.

Expert-Choice routing (each expert picks its C tokens of a group) fills the same ``[E, G*C, D]`` buffer from the
experts' side: :class:`ExpertChoiceDispatcher`.

None of them loops over experts in Python or reads a tensor value on the host.
"""
import math
from typing import List, NamedTuple, Tuple, Union

import torch

from .checks import check_positive

__all__ = [
    'CAPACITY_GROUPS', 'DROPLESS', 'check_capacity', 'check_capacity_group', 'group_images', 'split_groups',
    'capacity_groups', 'expert_capacity', 'assign_slots', 'slot_index',
    'dispatch_tokens', 'combine_outputs', 'kept_counts', 'sort_by_expert', 'combine_sorted',
    'TokenDispatcher', 'CapacityDispatcher', 'SortedDispatcher', 'ExpertChoiceDispatcher',
]

CAPACITY_GROUPS = ('sample', 'batch')  # besides a number of images per group
CapacityGroup = Union[int, str]
DROPLESS = 'dropless'  # a capacity factor meaning "no capacity limit": no choice is ever dropped


def check_capacity_group(capacity_group: Union[CapacityGroup, None], name: str = 'capacity_group') -> CapacityGroup:
    """A routing group: ``'sample'`` (one image), ``'batch'`` (the whole batch) or a number of images >= 1
    (an int, or its digits as a command line or YAML gives them: ``'8'``). ``'sample'`` and 1 are the same."""
    group = capacity_group
    if isinstance(group, str) and group.strip().isdigit():
        group = int(group.strip())
    if isinstance(group, bool) or not (group in CAPACITY_GROUPS or (isinstance(group, int) and group >= 1)):
        raise ValueError(
            f"{name} must be 'sample' (each image routes alone), 'batch' (the whole batch is one group) or a "
            f"number of images per routing group >= 1 (V-MoE: 8), got {capacity_group!r}.")
    return 'sample' if group == 1 else group


def check_capacity(
        capacity_factor: Union[float, str, None],
        eval_capacity_factor: Union[float, str, None],
        capacity_group: CapacityGroup,
        meaning: str,
        dropless: bool = False,
) -> Tuple[Union[float, str], Union[float, str, None], CapacityGroup]:
    """Checked ``(capacity_factor, eval_capacity_factor, capacity_group)``.

    Factors must be finite and > 0 (``meaning`` says what they are for the calling layer); the group is checked by
    :func:`check_capacity_group`. ``eval_capacity_factor=None`` means "as in training". ``dropless=True``: the
    layer also takes :data:`DROPLESS` (``'dropless'``: no capacity limit) for either factor, and
    ``capacity_factor=None`` as :data:`DROPLESS`.
    """
    def check(name, cf):
        if dropless and isinstance(cf, str) and cf.strip().lower() == DROPLESS:
            return DROPLESS
        try:
            return check_positive(name, cf, meaning)
        except ValueError:
            if not dropless:
                raise
            raise ValueError(f"{name} must be > 0 and finite, or '{DROPLESS}' ({meaning}), got {cf!r}.") from None

    if capacity_factor is None and dropless:
        capacity_factor = DROPLESS
    capacity_group = check_capacity_group(capacity_group)
    eval_cf = check('eval_capacity_factor', eval_capacity_factor) if eval_capacity_factor is not None else None
    return check('capacity_factor', capacity_factor), eval_cf, capacity_group


def group_images(batch: int, capacity_group: CapacityGroup) -> int:
    """Images per routing group for a batch of ``batch`` images (at least 1)."""
    if capacity_group == 'sample':
        return 1
    if capacity_group == 'batch':
        return max(batch, 1)
    return max(min(int(capacity_group), batch), 1)


def split_groups(x: torch.Tensor, images: int) -> List[torch.Tensor]:
    """``x`` (``[B, N, ...]``) as routing groups ``[G, images * N, ...]``: one tensor when ``images`` divides B,
    else the full groups and then the last, smaller group (``[1, (B % images) * N, ...]``)."""
    B = x.shape[0]
    full = B - B % images
    parts = [x[:full], x[full:]] if 0 < full < B else [x]
    # an empty batch is no group of one image: [0, N, ...]
    return [p.reshape(-1, max(min(images, p.shape[0]), 1) * p.shape[1], *p.shape[2:]) for p in parts]


def capacity_groups(batch: int, tokens: int, capacity_group: CapacityGroup) -> Tuple[int, int]:
    """``(G, S)`` of a batch whose images split evenly into groups: G routing groups of S tokens."""
    images = group_images(batch, capacity_group)
    if batch % images:
        raise ValueError(f'{batch} images do not split into groups of {images}: use split_groups.')
    return batch // images, images * tokens


def expert_capacity(group_tokens: int, num_experts: int, top_k: int, capacity_factor: float) -> int:
    """C = ceil(tokens * K * capacity_factor / E), at least 1."""
    return max(1, math.ceil(group_tokens * top_k * capacity_factor / num_experts))


def assign_slots(
        expert_index: torch.Tensor,
        gates: torch.Tensor,
        num_experts: int,
        batch_prioritized: bool = False,
) -> torch.Tensor:
    """Position of every (token, choice) in its expert's buffer.

    Args:
        expert_index: ``[G, S, K]`` chosen experts per group, token and rank.
        gates: ``[G, S, K]`` their combine weights (BPR orders tokens by ``gates[..., 0]``).
        num_experts: E.
        batch_prioritized: serve tokens with a higher top-1 gate first instead of earlier tokens first.

    Returns:
        ``[G, S, K]`` int64 positions: the number of choices of the same expert in the same group
        served before this one. A choice is kept iff its position is below the capacity C.
    """
    G, S, K = expert_index.shape
    arange_s = torch.arange(S, device=expert_index.device)
    if batch_prioritized:
        order = torch.argsort(gates[..., 0].detach(), dim=1, descending=True, stable=True)
        token_rank = torch.empty_like(order).scatter_(1, order, arange_s.expand(G, S))
    else:
        token_rank = arange_s.expand(G, S)
    # priority of each choice: k-major, then token rank; unique within a group
    ranks_k = torch.arange(K, device=expert_index.device) * S
    priority = token_rank.unsqueeze(-1) + ranks_k  # [G, S, K]
    flat_e = expert_index.reshape(G, S * K)
    key = flat_e * (S * K) + priority.reshape(G, S * K)
    sorted_key, perm = torch.sort(key, dim=1)
    sorted_e = torch.div(sorted_key, S * K, rounding_mode='floor')
    counts = torch.zeros(G, num_experts, dtype=torch.long, device=expert_index.device)
    counts.scatter_add_(1, flat_e, torch.ones_like(flat_e))
    starts = counts.cumsum(1) - counts
    rank_in_expert = torch.arange(S * K, device=expert_index.device) - starts.gather(1, sorted_e)
    position = torch.empty_like(rank_in_expert).scatter_(1, perm, rank_in_expert)
    return position.view(G, S, K)


def slot_index(expert_index: torch.Tensor, position: torch.Tensor, kept: torch.Tensor, capacity: int,
               num_experts: int) -> torch.Tensor:
    """Flat buffer slot of every (token, choice), ``[G*S*K]``.

    Slots are expert-major: expert e, group g, position c -> ``e * (G * C) + g * C + c``, so the
    first ``E * G * C`` slots view as ``[E, G*C]``. Every dropped choice goes to the one extra slot
    ``E * G * C`` at the end, which the experts never see.
    """
    G = expert_index.shape[0]
    num_slots = num_experts * G * capacity
    group_base = (torch.arange(G, device=expert_index.device) * capacity).view(G, 1, 1)
    slot = expert_index * (G * capacity) + group_base + position
    return torch.where(kept, slot, torch.full_like(slot, num_slots)).reshape(-1)


def dispatch_tokens(x: torch.Tensor, slot: torch.Tensor, num_experts: int, capacity: int) -> torch.Tensor:
    """Expert buffer ``[E, G*C, D]``: every kept choice's token of ``x`` (``[G, S, D]``) at its slot.

    Unfilled slots stay zero; the experts process them, and :func:`combine_outputs` never reads them.
    """
    G, S, D = x.shape
    K = slot.numel() // max(G * S, 1)  # an empty batch has no tokens and no slots: K is then irrelevant
    num_slots = num_experts * G * capacity
    tokens = x.reshape(G, S, 1, D).expand(G, S, K, D).reshape(G * S * K, D)
    buffer = x.new_zeros(num_slots + 1, D).index_copy(0, slot, tokens)
    return buffer[:num_slots].view(num_experts, G * capacity, D)


def combine_outputs(expert_out: torch.Tensor, slot: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """y_s = sum_k weights[s, k] * expert output at slot[s, k], ``[G, S, D]``.

    ``expert_out`` is ``[E, G*C, D]``; ``weights`` (``[G, S, K]``) are the gates, zero for dropped
    choices, whose slot is the extra zero row appended here.
    """
    G, S, K = weights.shape
    D = expert_out.shape[-1]
    flat = expert_out.reshape(-1, D)
    flat = torch.cat([flat, flat.new_zeros(1, D)], dim=0)
    weights = weights.to(flat.dtype).reshape(G * S * K, 1)
    return (flat.index_select(0, slot) * weights).view(G, S, K, D).sum(dim=2)


def kept_counts(expert_index: torch.Tensor, kept: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Kept choices per expert, ``[E]`` int64."""
    counts = torch.zeros(num_experts, dtype=torch.long, device=expert_index.device)
    return counts.scatter_add_(0, expert_index.reshape(-1), kept.reshape(-1).long())


def sort_by_expert(expert_index: torch.Tensor, num_experts: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """All choices in expert-major order, for the dropless path.

    Args:
        expert_index: ``[..., K]`` chosen experts; choice ``c`` of the flattened tensor is token ``c // K``.

    Returns:
        ``(order, counts)``: ``order`` ``[T]`` (T = every choice) lists the flat choice indices by expert, tokens
        in their original order within an expert (stable sort); ``counts`` ``[E]`` int64 choices per expert.
    """
    flat = expert_index.reshape(-1)
    order = torch.argsort(flat, stable=True)
    return order, kept_counts(flat, torch.ones_like(flat, dtype=torch.bool), num_experts)


def combine_sorted(expert_out: torch.Tensor, order: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
    """y_t = sum_k gates[t, k] * expert output of choice (t, k), ``[..., D]`` shaped as ``gates`` without K.

    ``expert_out`` ``[T, D]`` holds the outputs in :func:`sort_by_expert`'s ``order``; ``gates`` ``[..., K]``.
    """
    T, D = expert_out.shape
    K = gates.shape[-1]
    inverse = torch.empty_like(order).scatter_(0, order, torch.arange(T, device=order.device))
    weights = gates.to(expert_out.dtype).reshape(T, 1)
    out = expert_out.index_select(0, inverse) * weights
    if K == 1:  # nothing to sum: skip a copy
        return out.view(*gates.shape[:-1], D)
    return out.view(*gates.shape[:-1], K, D).sum(dim=-2)


class TokenDispatcher:
    """Where the tokens of a routing decision go, and how the experts' outputs come back.

    ``dispatch(x, ...) -> (tokens, metadata)`` lays the tokens out for the experts; ``combine(expert_out,
    metadata)`` weights the experts' outputs and sums them back per token. A dispatcher holds no tensors:
    everything one forward needs between the two calls is in the metadata. The metadata of a token-choice
    dispatcher also has ``kept`` (``[..., K]`` bool: the choice reached its expert) and ``counts`` (``[E]`` int64
    choices each expert processed), for the routing record.
    """

    def __init__(self, num_experts: int):
        self.num_experts = num_experts

    def dispatch(self, x: torch.Tensor, *args, **kwargs):
        raise NotImplementedError

    def combine(self, expert_out: torch.Tensor, metadata) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f'{type(self).__name__}(num_experts={self.num_experts})'


class CapacityDispatch(NamedTuple):
    """:class:`CapacityDispatcher`'s metadata: buffer slots ``[G*S*K]``, combine weights (gates, zero where
    dropped) ``[G, S, K]``, ``kept`` ``[G, S, K]`` and ``counts`` ``[E]``."""
    slot: torch.Tensor
    weights: torch.Tensor
    kept: torch.Tensor
    counts: torch.Tensor


class CapacityDispatcher(TokenDispatcher):
    """Top-K choices of routing groups into capacity-limited expert buffers ``[E, G*C, D]`` (V-MoE)."""

    def dispatch(self, x: torch.Tensor, expert_index: torch.Tensor, gates: torch.Tensor, capacity: int,
                 batch_prioritized: bool = False) -> Tuple[torch.Tensor, CapacityDispatch]:
        """``x`` ``[G, S, D]``, ``expert_index`` / ``gates`` ``[G, S, K]``, C -> ``([E, G*C, D], metadata)``."""
        E = self.num_experts
        position = assign_slots(expert_index, gates, E, batch_prioritized)
        kept = position < capacity
        slot = slot_index(expert_index, position, kept, capacity, E)
        meta = CapacityDispatch(slot, gates * kept, kept, kept_counts(expert_index, kept, E))
        return dispatch_tokens(x, slot, E, capacity), meta

    def combine(self, expert_out: torch.Tensor, metadata: CapacityDispatch) -> torch.Tensor:
        """``[E, G*C, D]`` expert outputs -> ``[G, S, D]``: each token's gated sum over its kept choices."""
        return combine_outputs(expert_out, metadata.slot, metadata.weights)


class SortedDispatch(NamedTuple):
    """:class:`SortedDispatcher`'s metadata: the sort ``order`` ``[T]``, each row's expert ``row_expert`` ``[T]``,
    the ``gates`` ``[..., K]``, ``kept`` (all True) and ``counts`` ``[E]`` (the rows of each expert)."""
    order: torch.Tensor
    row_expert: torch.Tensor
    gates: torch.Tensor
    kept: torch.Tensor
    counts: torch.Tensor


class SortedDispatcher(TokenDispatcher):
    """Dropless: every top-K choice as one row, rows sorted by expert, for experts that run on groups of any
    size (``GroupedExperts.forward_jagged(tokens, metadata.counts, metadata.row_expert)``)."""

    def dispatch(self, x: torch.Tensor, expert_index: torch.Tensor,
                 gates: torch.Tensor) -> Tuple[torch.Tensor, SortedDispatch]:
        """``x`` ``[..., D]``, ``expert_index`` / ``gates`` ``[..., K]`` -> ``(rows [T, D], metadata)``."""
        K = expert_index.shape[-1]
        order, counts = sort_by_expert(expert_index, self.num_experts)
        rows = x.reshape(-1, x.shape[-1]).index_select(0, torch.div(order, K, rounding_mode='floor'))
        row_expert = expert_index.reshape(-1).index_select(0, order)
        kept = torch.ones_like(expert_index, dtype=torch.bool)
        return rows, SortedDispatch(order, row_expert, gates, kept, counts)

    def combine(self, expert_out: torch.Tensor, metadata: SortedDispatch) -> torch.Tensor:
        """``[T, D]`` outputs in sorted order -> ``[..., D]``: each token's gated sum over its K choices."""
        return combine_sorted(expert_out, metadata.order, metadata.gates)


class ExpertChoiceDispatch(NamedTuple):
    """:class:`ExpertChoiceDispatcher`'s metadata: the token of every buffer slot ``[E*G*C]`` (flat over the
    groups' tokens), its weight ``[E*G*C]`` and the number of tokens ``G*S``."""
    token_of_slot: torch.Tensor
    weights: torch.Tensor
    num_tokens: int


class ExpertChoiceDispatcher(TokenDispatcher):
    """Each expert's chosen tokens of each routing group into an expert buffer ``[E, G*C, D]`` (Expert-Choice)."""

    def dispatch(self, x: torch.Tensor, token_index: torch.Tensor,
                 weights: torch.Tensor) -> Tuple[torch.Tensor, ExpertChoiceDispatch]:
        """``x`` ``[G, S, D]``; ``token_index`` / ``weights`` ``[G, E, C]`` (the group positions of the tokens each
        expert takes, and their combine weights) -> ``([E, G*C, D], metadata)``."""
        G, S, D = x.shape
        E, C = token_index.shape[1:]
        group_base = (torch.arange(G, device=x.device) * S).view(G, 1, 1)
        token_of_slot = (token_index + group_base).transpose(0, 1).reshape(-1)  # expert-major, as the buffer
        tokens = x.reshape(G * S, D).index_select(0, token_of_slot).view(E, G * C, D)
        return tokens, ExpertChoiceDispatch(token_of_slot, weights.transpose(0, 1).reshape(-1), G * S)

    def combine(self, expert_out: torch.Tensor, metadata: ExpertChoiceDispatch) -> torch.Tensor:
        """``[E, G*C, D]`` -> ``[G*S, D]``: every token's weighted sum over the experts that took it (zero for a
        token none took)."""
        D = expert_out.shape[-1]
        weighted = expert_out.reshape(-1, D) * metadata.weights.unsqueeze(-1).to(expert_out.dtype)
        return expert_out.new_zeros(metadata.num_tokens, D).index_add(0, metadata.token_of_slot, weighted)
