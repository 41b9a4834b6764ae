"""E MLP experts evaluated at once, with no loop over experts in Python.

Two layouts:

- an expert-major capacity buffer ``[E, T, dim]`` (:meth:`GroupedExperts.forward`), with two matmul paths
  chosen by :attr:`GroupedExperts.impl` (one of :data:`EXPERT_IMPLS`):

  - ``'bmm'`` (:func:`bmm_linear`): ``torch.baddbmm`` / ``torch.bmm``; autocast casts as for any matmul.
  - ``'grouped_mm'`` (:func:`grouped_mm_linear`): ``torch._grouped_mm`` on the same layout
    (:func:`grouped_mm_available`).

- jagged rows ``[T, dim]`` sorted by expert, with group ends ``offs`` (:meth:`GroupedExperts.forward_jagged`,
  :func:`jagged_linear`): one grouped matmul over groups of any size, no padding (the dropless path of
  :class:`~timm_tgr.layers.sparse_moe.SparseMoE`). Needs :func:`grouped_mm_op`.
"""
from typing import Callable, Optional, Type

import torch
import torch.nn as nn
import torch.nn.functional as F

from .precision import autocast_dtype

__all__ = [
    'EXPERT_IMPLS', 'GroupedExperts', 'bmm_linear', 'grouped_mm_available', 'grouped_mm_linear', 'grouped_mm_op',
    'jagged_linear',
]

EXPERT_IMPLS = ('bmm', 'grouped_mm')
_GROUPED_MM_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def grouped_mm_available() -> bool:
    """Whether ``torch._grouped_mm`` exists (CUDA since torch 2.8; CPU and the CUDA fallback since 2.9)."""
    return hasattr(torch, '_grouped_mm')


def grouped_mm_op() -> Optional[Callable]:
    """The grouped matmul with jagged 2D x 3D groups (``offs``) of this torch, or None.

    ``torch.nn.functional.grouped_mm`` (public since torch 2.10), else ``torch._grouped_mm`` from torch 2.9 (the
    first release with a CPU kernel and a CUDA fallback for every GPU; 2.8 had a bf16 sm90 kernel only).
    """
    op = getattr(F, 'grouped_mm', None)
    if op is None and hasattr(torch, '_grouped_mm') and torch.__version__ >= '2.9':
        op = torch._grouped_mm
    return op


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward makes the incoming gradient contiguous."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous()


def bmm_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """Per-expert ``x @ weight^T + bias``: ``x`` ``[E, T, in]``, ``weight`` ``[E, out, in]``, ``bias`` ``[E, out]``."""
    if bias is None:
        return torch.bmm(x, weight.transpose(1, 2))
    return torch.baddbmm(bias.unsqueeze(1).to(x.dtype), x, weight.transpose(1, 2))


def grouped_mm_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """:func:`bmm_linear` through ``torch._grouped_mm``, with operands cast to the autocast dtype.

    Autocast does not cover ``_grouped_mm``, so the cast happens here and the bias is added after
    the matmul. Under ``torch.compile`` fp32 operands take :func:`bmm_linear` instead (torch's meta
    kernel for ``_grouped_mm`` accepts only bf16/fp16).
    """
    dtype = autocast_dtype(x.device.type) or x.dtype
    if dtype not in (torch.bfloat16, torch.float16) and torch.compiler.is_compiling():
        return bmm_linear(x, weight, bias)
    out = torch._grouped_mm(x.to(dtype), weight.to(dtype).transpose(1, 2))
    out = _ContiguousGrad.apply(out)  # its backward rejects expanded (stride-0) output grads
    if bias is not None:
        out = out + bias.to(out.dtype).unsqueeze(1)
    return out


def jagged_linear(
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: Optional[torch.Tensor],
        offs: torch.Tensor,
        row_expert: Optional[torch.Tensor],
        dtype: torch.dtype,
) -> torch.Tensor:
    """Row t of ``x`` (``[T, in]``, sorted by expert) times its expert's ``weight^T`` plus its bias, ``[T, out]``.

    ``offs`` (int32 ``[E]``) are the cumulative group ends (``offs[-1] == T``: every row belongs to a group),
    ``row_expert`` (``[T, E]`` one-hot in ``dtype``) each row's expert, for the bias: ``one_hot @ bias`` adds it
    in one matmul pass, without materializing a gathered ``[T, out]`` bias. Operands are cast to ``dtype``
    (autocast does not cover the grouped matmul).
    """
    out = grouped_mm_op()(x.to(dtype), weight.to(dtype).transpose(1, 2), offs=offs)
    if bias is not None:  # in place: the grouped matmul's backward needs its inputs only
        out = out.addmm_(row_expert, bias.to(out.dtype))
    return _ContiguousGrad.apply(out)  # the grouped matmul's backward rejects expanded (stride-0) output grads


class GroupedExperts(nn.Module):
    """E two-layer MLP experts (fc1 -> act -> drop -> fc2 -> drop) evaluated with batched matmuls.

    Weights are stored like E stacked ``nn.Linear`` layers (``fc1_weight`` is ``[E, hidden, dim]``),
    so a dense timm ``Mlp`` can be copied into any expert (sparse upcycling).
    Input ``[E, T, dim]`` (T slots per expert), output ``[E, T, dim]``.

    ``impl`` picks the matmul (set it at construction or later, e.g. ``moe.experts.impl = 'grouped_mm'``):

    - ``'bmm'`` (default): ``torch.baddbmm`` / ``torch.bmm``; autocast casts as for any matmul.
    - ``'grouped_mm'``: ``torch._grouped_mm`` on the same ``[E, T, dim]`` layout (torch >= 2.9 for
      the CPU kernel; the CUDA grouped-GEMM kernel is bf16 on sm90/sm100, other cases take
      PyTorch's fallback). Autocast does not cover ``_grouped_mm``, so operands are cast to the
      autocast dtype here; the bias is added after the matmul. ``dim`` and ``hidden_dim`` must be
      multiples of 8 (16-byte strides in bf16). Under ``torch.compile`` only bf16/fp16 operands take
      ``_grouped_mm`` (torch's meta kernel rejects fp32); fp32 there falls back to ``'bmm'``.
      Same results as ``'bmm'`` up to float rounding; no speed claim is made for it (docs/moe_layer.md).

    :meth:`forward_jagged` runs the experts on rows sorted by expert instead (one grouped matmul per layer over
    groups of any size, no padding); :meth:`jagged_dtype` says whether this torch can, for a given input.
    """

    def __init__(
            self,
            num_experts: int,
            dim: int,
            hidden_dim: int,
            act_layer: Type[nn.Module] = nn.GELU,
            bias: bool = True,
            drop: float = 0.,
            impl: str = 'bmm',
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.num_experts = num_experts
        self.fc1_weight = nn.Parameter(torch.empty(num_experts, hidden_dim, dim, **dd))
        self.fc1_bias = nn.Parameter(torch.empty(num_experts, hidden_dim, **dd)) if bias else None
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.fc2_weight = nn.Parameter(torch.empty(num_experts, dim, hidden_dim, **dd))
        self.fc2_bias = nn.Parameter(torch.empty(num_experts, dim, **dd)) if bias else None
        self.drop2 = nn.Dropout(drop)
        self.impl = impl
        self.init_weights()

    def init_weights(self) -> None:
        """timm's ViT init for every expert: truncated normal std 0.02, zero bias."""
        for w in (self.fc1_weight, self.fc2_weight):
            nn.init.trunc_normal_(w, std=.02)
        for b in (self.fc1_bias, self.fc2_bias):
            if b is not None:
                nn.init.zeros_(b)

    @property
    def impl(self) -> str:
        return self._impl

    @impl.setter
    def impl(self, impl: str) -> None:
        if impl not in EXPERT_IMPLS:
            raise ValueError(f'GroupedExperts impl must be one of {EXPERT_IMPLS}, got {impl!r}.')
        if impl == 'grouped_mm':
            if not grouped_mm_available():
                raise RuntimeError(
                    f"impl='grouped_mm' needs torch._grouped_mm (torch >= 2.9), this is torch {torch.__version__}; "
                    f"use impl='bmm'.")
            hidden_dim, dim = self.fc1_weight.shape[1:]
            if dim % 8 or hidden_dim % 8:
                raise ValueError(
                    f"impl='grouped_mm' needs dim and hidden_dim divisible by 8 (16-byte strides in bf16), got "
                    f"dim={dim}, hidden_dim={hidden_dim}; use impl='bmm'.")
        self._impl = impl

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        linear = grouped_mm_linear if self.impl == 'grouped_mm' else bmm_linear
        x = linear(x, self.fc1_weight, self.fc1_bias)
        x = self.drop1(self.act(x))
        x = linear(x, self.fc2_weight, self.fc2_bias)
        return self.drop2(x)

    def jagged_dtype(self, x: torch.Tensor) -> Optional[torch.dtype]:
        """The compute dtype of :meth:`forward_jagged` on ``x``, or None where it cannot run.

        It cannot without :func:`grouped_mm_op`, for dtypes other than fp32/bf16/fp16, for ``dim`` or
        ``hidden_dim`` whose rows are not 16-byte aligned in that dtype, and under ``torch.compile`` or on the
        ``meta`` device in fp32 (torch's meta kernel of the grouped matmul accepts only bf16/fp16).
        """
        dtype = autocast_dtype(x.device.type) or x.dtype
        if grouped_mm_op() is None or dtype not in _GROUPED_MM_DTYPES:
            return None
        hidden_dim, dim = self.fc1_weight.shape[1:]
        align = 128 // torch.finfo(dtype).bits  # elements per 16 bytes
        if dim % align or hidden_dim % align:
            return None
        if dtype == torch.float32 and (torch.compiler.is_compiling() or x.device.type == 'meta'):
            return None
        return dtype

    def forward_jagged(self, x: torch.Tensor, counts: torch.Tensor, row_expert: torch.Tensor) -> torch.Tensor:
        """Experts on rows sorted by expert: ``x`` ``[T, dim]``, ``counts`` ``[E]`` rows per expert (summing to T),
        ``row_expert`` ``[T]`` each row's expert; output ``[T, dim]``. Check :meth:`jagged_dtype` first."""
        dtype = self.jagged_dtype(x)
        offs = counts.cumsum(0).to(torch.int32)
        one_hot = None
        if self.fc1_bias is not None or self.fc2_bias is not None:
            one_hot = F.one_hot(row_expert, self.num_experts).to(dtype)
        x = jagged_linear(x, self.fc1_weight, self.fc1_bias, offs, one_hot, dtype)
        x = self.drop1(self.act(x))
        x = jagged_linear(x, self.fc2_weight, self.fc2_bias, offs, one_hot, dtype)
        return self.drop2(x)

    def extra_repr(self) -> str:
        hidden_dim, dim = self.fc1_weight.shape[1:]
        return f'num_experts={self.num_experts}, dim={dim}, hidden_dim={hidden_dim}, impl={self.impl!r}'
