"""Teacher routers and the two TGR losses (TGR-MoE, arXiv 2604.21330, Sec. 3.2-3.3).

- :class:`TeacherRouter`: p_t = softmax(R_t h_t), a bias-free linear teacher dim -> E per MoE layer;
  :class:`TeacherRouters` (built by :func:`teacher_routers`) holds one per student MoE block: ``{block: h_t}`` in,
  ``{block: p_t}`` out.
- :class:`TeacherRouting`: the one place teacher and routers give p_t: the frozen
  :class:`~timm_tgr.task.teacher.TeacherGuidance` and the routers, for a student (:meth:`TeacherRouting.create`,
  used by :class:`~timm_tgr.task.tgr_task.TGRTask` and the routing pictures).
- :func:`teacher_router_loss`: L_teacher = sum_i lambda_load L_load(p_t^i) + lambda_ent L_ent(p_t^i),
  the teacher routers' only objective (no task loss).
- :func:`routing_distillation_loss`: 1/|S| sum_i KL(stopgrad(p_t^i) || p^i), the student's
  L_distill before the lambda_distill weight (``reduction='sum'``: sum_i, Eq. S2 of the upper bound).
- :func:`read_teacher_routers` / :func:`check_teacher_router_state`: teacher routers carried over
  from another run's checkpoint (``task_state['teacher_routers']``), e.g. to continue TGR while
  fine-tuning; they must route the same MoE blocks over the same experts from the same teacher width.
"""
from typing import Dict, Iterable, List, Mapping, Optional, Tuple

import torch
import torch.nn as nn
from timm.utils import unwrap_model

from ..layers.losses import load_balance_loss, routing_entropy_loss, routing_kl_divergence
from ..models import moe_model
from .options import paper_value
from .teacher import TeacherGuidance

__all__ = [
    'TeacherRouter', 'TeacherRouters', 'teacher_routers', 'num_experts_of', 'TeacherRouting', 'teacher_router_loss',
    'routing_distillation_loss', 'read_teacher_routers', 'check_teacher_router_state',
]


class TeacherRouter(nn.Module):
    """p_t = softmax(R_t h_t): bias-free linear router on teacher features, computed in fp32."""

    def __init__(self, dim: int, num_experts: int, device=None, dtype=None):
        super().__init__()
        self.proj = nn.Linear(dim, num_experts, bias=False, device=device, dtype=dtype)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=h.device.type, enabled=False):
            return torch.softmax(nn.functional.linear(h.float(), self.proj.weight.float()), dim=-1)


class TeacherRouters(nn.ModuleDict):
    """One :class:`TeacherRouter` per student MoE block: ``forward({block: h_t}) -> {block: p_t}``.

    Blocks are ints on every side (``routers[7]``, ``blocks``, the features in, the probabilities out); a
    ModuleDict stores them as ``str(block)``, which is the checkpoint format: ``task_state['teacher_routers']``
    holds ``'{block}.proj.weight'``.
    """

    def __init__(self, dim: int, num_experts: int, blocks: Iterable[int], device=None, dtype=None):
        super().__init__({str(i): TeacherRouter(dim, num_experts, device=device, dtype=dtype) for i in sorted(blocks)})

    @property
    def blocks(self) -> List[int]:
        return [int(k) for k in self.keys()]

    def __getitem__(self, block) -> nn.Module:
        return super().__getitem__(str(block))

    def forward(self, features: Mapping[int, torch.Tensor]) -> Dict[int, torch.Tensor]:
        return {int(k): router(features[int(k)]) for k, router in self.items()}


def teacher_routers(dim: int, num_experts: int, blocks: Iterable[int], device=None, dtype=None) -> TeacherRouters:
    """One :class:`TeacherRouter` per student MoE block, in ascending block order (:class:`TeacherRouters`)."""
    return TeacherRouters(dim, num_experts, blocks, device=device, dtype=dtype)


def num_experts_of(student: nn.Module) -> int:
    """E of a timm_tgr MoE student; TGR needs the same E in every MoE layer."""
    num_experts = {m.num_experts for m in moe_model(student, required=True).get_moe_layers().values()}
    if len(num_experts) != 1:
        raise ValueError('TGR needs the same number of experts in every MoE layer.')
    return num_experts.pop()


class TeacherRouting(nn.Module):
    """The frozen teacher and its routers: ``forward(x)`` gives p_t ``{block: [B, N, E]}``, no grad.

    ``guidance`` is a :class:`~timm_tgr.task.teacher.TeacherGuidance` (h_t per student MoE block), ``routers``
    the :class:`TeacherRouters`. Training keeps the two apart (the routers train inside the module DDP wraps, the
    teacher stays outside): :class:`~timm_tgr.task.tgr_task.TGRTask` builds them here and holds them
    separately; :meth:`from_task` puts a task's back together.
    """

    def __init__(self, guidance: nn.Module, routers: TeacherRouters):
        super().__init__()
        self.guidance = guidance
        self.routers = routers

    @classmethod
    def create(cls, student: nn.Module, teacher: nn.Module, layer_map=None, device=None,
               dtype=None) -> 'TeacherRouting':
        """Guidance from the built ``teacher`` (a timm ViT or a :class:`~timm_tgr.task.teacher.FeatureTeacher`)
        for ``student`` through ``layer_map``, and fresh routers for the student's MoE blocks."""
        student = moe_model(student, required=True)
        guidance = TeacherGuidance.create(student, teacher, layer_map, device=device, dtype=dtype)
        routers = teacher_routers(guidance.teacher.embed_dim, num_experts_of(student), student.get_moe_layers(),
                                  device=device, dtype=dtype)
        return cls(guidance, routers)

    @classmethod
    def from_task(cls, task) -> Optional['TeacherRouting']:
        """The teacher side of a :class:`~timm_tgr.task.tgr_task.TGRTask`; None for other tasks."""
        guidance = getattr(task, 'guidance', None)
        routers = getattr(unwrap_model(getattr(task, 'trainable_module', None)), 'teacher_routers', None)
        if guidance is None or routers is None:
            return None
        return cls(guidance, routers)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> Dict[int, torch.Tensor]:
        return self.routers(self.guidance(x))


def teacher_router_loss(
        teacher_probs: Mapping[int, torch.Tensor],
        load_weight: float = paper_value('teacher_load_weight'),
        entropy_weight: float = paper_value('teacher_entropy_weight'),
) -> Dict[str, torch.Tensor]:
    """L_teacher = sum_i (lambda_load L_load(p_t^i) + lambda_ent L_ent(p_t^i)); returns the parts too."""
    loads = torch.stack([load_balance_loss(p) for p in teacher_probs.values()])
    ents = torch.stack([routing_entropy_loss(p) for p in teacher_probs.values()])
    total = load_weight * loads.sum() + entropy_weight * ents.sum()
    return {'loss': total, 'load': loads.mean(), 'entropy': ents.mean()}


def routing_distillation_loss(
        teacher_probs: Mapping[int, torch.Tensor],
        student_probs: Mapping[int, torch.Tensor],
        reduction: str = 'mean',
) -> torch.Tensor:
    """1/|S| sum_i KL(stopgrad(p_t^i) || p^i) (multiply by lambda_distill).

    ``reduction='mean'`` averages over the MoE layers as the main paper's L_student does; ``'sum'`` sums them,
    as Eq. S2 of the teacher-route upper bound does.
    """
    if reduction not in ('mean', 'sum'):
        raise ValueError(f"reduction must be 'mean' (main paper) or 'sum' (Eq. S2), got {reduction!r}.")
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
    kls = torch.stack(kls)
    return kls.sum() if reduction == 'sum' else kls.mean()


def _one(values: list):
    return values[0] if len(values) == 1 else values


def _describe_routers(shapes: Mapping[str, Tuple[int, ...]]) -> str:
    """'MoE blocks [7, 9, 11], E=4 experts, teacher width 32' from ``{'{block}.proj.weight': (E, dim)}``."""
    blocks = sorted(int(k.split('.')[0]) for k in shapes if k.split('.')[0].isdigit())
    experts = sorted({s[0] for s in shapes.values() if len(s) == 2})
    widths = sorted({s[1] for s in shapes.values() if len(s) == 2})
    return f'MoE blocks {blocks}, E={_one(experts)} experts, teacher width {_one(widths)}'


def check_teacher_router_state(state_dict: Mapping[str, torch.Tensor], routers: nn.ModuleDict,
                               source: str = 'the checkpoint') -> None:
    """Raise, naming both, unless ``state_dict`` (``'{block}.proj.weight'``: [E, teacher dim]) fits ``routers``."""
    have = {k: tuple(v.shape) for k, v in state_dict.items()}
    want = {k: tuple(v.shape) for k, v in routers.state_dict().items()}
    if have == want:
        return
    raise ValueError(
        f'teacher routers of {source} ({_describe_routers(have)}) do not fit this run\'s ({_describe_routers(want)}): '
        f'carry routers over only from a run with the same MoE blocks and expert count (--model-kwargs '
        f'num_experts=..., moe_layers=...) and a teacher of the same width (--teacher / --teacher-kwargs '
        f'embed_dim=...), or start fresh teacher routers (drop --teacher-routers-from / tgr_teacher_routers).')


def read_teacher_routers(path: str, trust_checkpoint: bool = False) -> Dict[str, torch.Tensor]:
    """``task_state['teacher_routers']`` of the TGR checkpoint ``path`` (``'{block}.proj.weight'`` tensors);
    routers holding NaN / Inf are refused."""
    from ..utils.checkpoint import check_finite, read_checkpoint
    ckpt = read_checkpoint(path, trust_checkpoint=trust_checkpoint, what='--teacher-routers-from')
    state = ckpt.get('task_state') if isinstance(ckpt, dict) else None
    routers = state.get('teacher_routers') if isinstance(state, dict) else None
    if not isinstance(routers, dict) or not routers:
        raise ValueError(
            f"{path} holds no teacher routers (task_state['teacher_routers']): give a checkpoint of a TGR run "
            f'(train_tgr.py with a teacher, or timm\'s train.py with a tgr_moe_* model), or start fresh routers.')
    check_finite(routers, f"the teacher routers of {path} (task_state['teacher_routers'])",
                 'Carry them over from a checkpoint of an epoch before that run diverged (checkpoint-N.pth.tar).')
    return dict(routers)
