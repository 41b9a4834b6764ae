"""What the pictures show, as tensors: per image and MoE block the top-1 expert of every patch, whether that
choice was dropped by capacity, the teacher router's top-1 expert, and counts over a dataset.

Everything comes from one forward pass per batch and the model's ``routing_infos()`` (no hooks). Prefix
tokens (class, distillation, register tokens) are not patches: only the last ``grid_h * grid_w`` tokens,
which timm's ViTs lay out row by row after the prefix, are mapped onto the patch grid.
"""
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from timm.utils import unwrap_model

from ..models import moe_model
from ..task.teacher_router import TeacherRouting

__all__ = [
    'TeacherRouting', 'RoutingMaps', 'patch_grid', 'patch_tokens', 'routing_maps', 'ClassExpertCounts',
    'AgreementCounts', 'class_order', 'collect_routing',
]


def patch_grid(model: nn.Module, x: torch.Tensor) -> Tuple[int, int]:
    """(rows, columns) of the patch grid ``model`` makes of the images ``x`` (``[B, C, H, W]``)."""
    base = unwrap_model(model)
    pe = base.patch_embed
    if getattr(base, 'dynamic_img_size', False) and hasattr(pe, 'dynamic_feat_size'):
        return tuple(int(s) for s in pe.dynamic_feat_size(tuple(x.shape[-2:])))
    return tuple(int(s) for s in pe.grid_size)


def patch_tokens(t: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
    """The patch tokens of a per-token tensor ``[B, N, ...]`` as ``[B, rows, columns, ...]`` (prefix tokens,
    which come first, left out)."""
    gh, gw = grid
    num_patches = gh * gw
    if t.shape[1] < num_patches:
        raise ValueError(f'{t.shape[1]} tokens cannot hold a {gh}x{gw} patch grid.')
    return t[:, t.shape[1] - num_patches:].reshape(t.shape[0], gh, gw, *t.shape[2:])


@dataclass
class RoutingMaps:
    """Routing of one batch on the patch grid, per MoE block (``[B, rows, columns]`` tensors on the CPU).

    ``expert``: the router's top-1 choice; ``kept``: whether that choice got a slot in its expert (False:
    dropped by capacity); ``teacher_expert``: the teacher router's top-1 expert (empty without a teacher);
    ``logits``: the model's ``[B, classes]`` output.
    """
    expert: Dict[int, torch.Tensor]
    kept: Dict[int, torch.Tensor]
    logits: torch.Tensor
    teacher_expert: Dict[int, torch.Tensor] = field(default_factory=dict)
    num_experts: int = 0

    @property
    def blocks(self) -> List[int]:
        return sorted(self.expert)

    def agreement(self, block: int) -> torch.Tensor:
        """``[B, rows, columns]`` bool: the student's top-1 expert is the teacher router's."""
        return self.expert[block] == self.teacher_expert[block]

    def select(self, index: torch.Tensor) -> 'RoutingMaps':
        """The maps of the images ``index`` (a batch index tensor)."""
        pick = lambda maps: {b: t[index] for b, t in maps.items()}  # noqa: E731
        return RoutingMaps(expert=pick(self.expert), kept=pick(self.kept), logits=self.logits[index],
                           teacher_expert=pick(self.teacher_expert), num_experts=self.num_experts)

    @staticmethod
    def cat(parts: Sequence['RoutingMaps']) -> 'RoutingMaps':
        """The maps of consecutive batches as one."""
        join = lambda name: {b: torch.cat([getattr(p, name)[b] for p in parts])  # noqa: E731
                             for b in getattr(parts[0], name)}
        return RoutingMaps(expert=join('expert'), kept=join('kept'), logits=torch.cat([p.logits for p in parts]),
                           teacher_expert=join('teacher_expert'), num_experts=parts[0].num_experts)


@torch.no_grad()
def routing_maps(model: nn.Module, x: torch.Tensor, teacher: Optional[TeacherRouting] = None) -> RoutingMaps:
    """One eval-mode forward of ``model`` on ``x`` (and of ``teacher``), read back through ``routing_infos()``."""
    base = moe_model(model)
    if base is None:
        raise ValueError(f'{type(unwrap_model(model)).__name__} has no routing_infos(): give a timm_tgr MoE model.')
    was_training = base.training
    model.eval()
    try:
        logits = model(x)
    finally:
        model.train(was_training)
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    grid = patch_grid(base, x)
    expert, kept, num_experts = {}, {}, 0
    for i, info in base.routing_infos().items():
        expert[i] = patch_tokens(info.expert_index[..., 0], grid).cpu()
        kept[i] = patch_tokens(info.kept[..., 0], grid).cpu()
        num_experts = max(num_experts, info.probs.shape[-1])
    maps = RoutingMaps(expert=expert, kept=kept, logits=logits.float().cpu(), num_experts=num_experts)
    if teacher is not None:
        probs = teacher(x)
        missing = set(expert) - set(probs)
        if missing:
            raise ValueError(f'the teacher routers cover blocks {sorted(probs)}, not the MoE blocks {sorted(missing)}.')
        maps.teacher_expert = {i: patch_tokens(probs[i].argmax(-1), grid).cpu() for i in expert}
    return maps


class ClassExpertCounts:
    """Per MoE block, how many patch tokens of each class the router sent to each expert (top-1 choice,
    kept or dropped): ``counts[block]`` is ``[classes, experts]`` int64."""

    def __init__(self, num_classes: int, num_experts: int):
        self.num_classes, self.num_experts = num_classes, num_experts
        self.counts: Dict[int, torch.Tensor] = {}

    def update(self, maps: RoutingMaps, targets: torch.Tensor) -> None:
        targets = targets.reshape(-1).cpu().long()
        if targets.numel() and not 0 <= int(targets.min()) <= int(targets.max()) < self.num_classes:
            raise ValueError(f'class indices {int(targets.min())}..{int(targets.max())} do not fit '
                             f'{self.num_classes} classes.')
        for i, expert in maps.expert.items():
            cls = targets.view(-1, 1, 1).expand_as(expert)
            flat = cls.reshape(-1) * self.num_experts + expert.reshape(-1).long()
            counts = torch.bincount(flat, minlength=self.num_classes * self.num_experts)
            counts = counts.view(self.num_classes, self.num_experts)
            self.counts[i] = self.counts[i] + counts if i in self.counts else counts

    def tokens(self, block: int) -> torch.Tensor:
        """``[classes]``: patch tokens counted per class."""
        return self.counts[block].sum(1)

    def shares(self, block: int) -> torch.Tensor:
        """``[classes, experts]`` float64: each class's share of tokens per expert; every row of a class with
        tokens sums to 1, rows of classes never seen are zero."""
        counts = self.counts[block].double()
        return counts / counts.sum(1, keepdim=True).clamp_min(1.)


class AgreementCounts:
    """Per MoE block, patch tokens whose top-1 expert is the teacher router's, and tokens counted."""

    def __init__(self):
        self.agree: Dict[int, int] = {}
        self.total: Dict[int, int] = {}

    def update(self, maps: RoutingMaps) -> None:
        for i in maps.teacher_expert:
            a = maps.agreement(i)
            self.agree[i] = self.agree.get(i, 0) + int(a.sum())
            self.total[i] = self.total.get(i, 0) + a.numel()

    def shares(self) -> Dict[int, float]:
        return {i: self.agree[i] / self.total[i] for i in sorted(self.agree) if self.total[i]}


def class_order(shares: torch.Tensor, seen: Optional[Sequence[bool]] = None) -> List[int]:
    """Classes grouped by their dominant expert (in expert order), most concentrated first within a group,
    so a class-by-expert heatmap shows which classes share an expert; unseen classes are left out."""
    seen = [True] * shares.shape[0] if seen is None else list(seen)
    rows = [c for c in range(shares.shape[0]) if seen[c]]
    return sorted(rows, key=lambda c: (int(shares[c].argmax()), -float(shares[c].max()), c))


def collect_routing(
        model: nn.Module, batches: Iterable, num_classes: int, teacher: Optional[TeacherRouting] = None,
        device: Optional[torch.device] = None, max_samples: Optional[int] = None,
) -> Tuple[Optional[ClassExpertCounts], AgreementCounts, int]:
    """Class-by-expert counts and teacher agreement over ``(images, targets)`` batches; and the images seen."""
    counts, agreement, seen = None, AgreementCounts(), 0
    for x, y in batches:
        if max_samples is not None and seen >= max_samples:
            break
        if max_samples is not None and seen + x.shape[0] > max_samples:
            x, y = x[:max_samples - seen], y[:max_samples - seen]
        if device is not None:
            x = x.to(device)
        maps = routing_maps(model, x, teacher)
        if counts is None:
            counts = ClassExpertCounts(num_classes, maps.num_experts)
        counts.update(maps, _hard_targets(y))
        agreement.update(maps)
        seen += x.shape[0]
    return counts, agreement, seen


def _hard_targets(y: torch.Tensor) -> torch.Tensor:
    return y.argmax(-1) if y.ndim > 1 else y
