"""Teacher routers and the two TGR losses (TGR-MoE, arXiv 2604.21330, Sec. 3.2-3.3).

- :class:`TeacherRouter`: p_t = softmax(R_t h_t), a bias-free linear teacher dim -> E per MoE layer;
  :func:`teacher_routers` builds one per student MoE block, keyed by ``str(block)``.
- :func:`teacher_router_loss`: L_teacher = sum_i lambda_load L_load(p_t^i) + lambda_ent L_ent(p_t^i),
  the teacher routers' only objective (no task loss).
- :func:`routing_distillation_loss`: 1/|S| sum_i KL(stopgrad(p_t^i) || p^i), the student's
  L_distill before the lambda_distill weight.
"""
from typing import Dict, Iterable, Mapping

import torch
import torch.nn as nn

from ..layers.losses import load_balance_loss, routing_entropy_loss, routing_kl_divergence

__all__ = ['TeacherRouter', 'teacher_routers', 'teacher_router_loss', 'routing_distillation_loss']


class TeacherRouter(nn.Module):
    """p_t = softmax(R_t h_t): bias-free linear router on teacher features, computed in fp32."""

    def __init__(self, dim: int, num_experts: int, device=None, dtype=None):
        super().__init__()
        self.proj = nn.Linear(dim, num_experts, bias=False, device=device, dtype=dtype)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=h.device.type, enabled=False):
            return torch.softmax(nn.functional.linear(h.float(), self.proj.weight.float()), dim=-1)


def teacher_routers(dim: int, num_experts: int, blocks: Iterable[int], device=None, dtype=None) -> nn.ModuleDict:
    """One :class:`TeacherRouter` per student MoE block, keyed ``str(block)`` in ascending block order.

    The keys are the checkpoint format: ``task_state['teacher_routers']`` holds ``'{block}.proj.weight'``.
    """
    return nn.ModuleDict({
        str(i): TeacherRouter(dim, num_experts, device=device, dtype=dtype) for i in sorted(blocks)})


def teacher_router_loss(
        teacher_probs: Mapping[int, torch.Tensor],
        load_weight: float = 0.005,
        entropy_weight: float = 0.005,
) -> Dict[str, torch.Tensor]:
    """L_teacher = sum_i (lambda_load L_load(p_t^i) + lambda_ent L_ent(p_t^i)); returns the parts too."""
    loads = torch.stack([load_balance_loss(p) for p in teacher_probs.values()])
    ents = torch.stack([routing_entropy_loss(p) for p in teacher_probs.values()])
    total = load_weight * loads.sum() + entropy_weight * ents.sum()
    return {'loss': total, 'load': loads.mean(), 'entropy': ents.mean()}


def routing_distillation_loss(
        teacher_probs: Mapping[int, torch.Tensor],
        student_probs: Mapping[int, torch.Tensor],
) -> torch.Tensor:
    """1/|S| sum_i KL(stopgrad(p_t^i) || p^i): the mean over MoE layers (multiply by lambda_distill)."""
    if set(teacher_probs) != set(student_probs):
        raise ValueError(f'teacher routes blocks {sorted(teacher_probs)}, student {sorted(student_probs)}.')
    kls = []
    for i, p in student_probs.items():
        pt = teacher_probs[i]
        if pt.shape != p.shape:
            raise ValueError(
                f'token-grid mismatch at block {i}: teacher probabilities {tuple(pt.shape)} vs student '
                f'{tuple(p.shape)}; teacher and student must see the same image size and patch grid.')
        kls.append(routing_kl_divergence(pt, p))
    return torch.stack(kls).mean()
