"""Token-choice top-K router of V-MoE (Riquelme et al., 2021) in fp32.

The router is a bias-free linear map from token features to E expert logits.
During training Gaussian noise is added to the logits, the softmax is taken over
*all* experts, and each token picks its top-K experts. The combine weight (gate)
of a chosen expert is its probability under that softmax, not renormalized over
the K choices: with K=1 a renormalized gate would be the constant 1 and the task
loss would no longer reach the router. This is V-MoE's convention.
"""
from dataclasses import dataclass
from typing import Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .precision import autocast_off
from .checks import check_count, check_weight

__all__ = ['RouterOutput', 'TopKRouter', 'resolve_noise_std']


@dataclass
class RouterOutput:
    """What one routing decision holds; every tensor has the token axes of the input first.

    Attributes:
        logits: fp32 router logits before noise, ``[..., E]``.
        probs: fp32 softmax over experts of the (noisy, in training) logits, ``[..., E]``:
            the routing distribution p that the losses use.
        expert_index: chosen experts, ``[..., K]`` (int64), best first.
        gates: fp32 combine weights of the chosen experts, ``[..., K]`` (``probs`` at ``expert_index``).
        noisy_logits: the logits with the training noise added, ``[..., E]`` (None without noise: eval mode or
            noise 0), for V-MoE's load loss.
    """
    logits: torch.Tensor
    probs: torch.Tensor
    expert_index: torch.Tensor
    gates: torch.Tensor
    noisy_logits: Optional[torch.Tensor] = None


def resolve_noise_std(noise_std: Union[float, str, None], num_experts: int) -> float:
    """Noise std on router logits: a number, or ``'1/E'`` (V-MoE's code: its config value 1.0 is scaled by 1/E)."""
    if noise_std is None:
        return 0.
    if isinstance(noise_std, str):
        if noise_std.replace(' ', '').lower() in ('1/e', 'inv_experts'):
            return 1. / num_experts
        try:
            noise_std = float(noise_std)
        except ValueError:
            raise ValueError(
                f"router_noise_std={noise_std!r} is not understood: pass a number >= 0 "
                f"(Table S1's literal 1.0) or '1/E' (V-MoE's code, the default).") from None
    return check_weight('router_noise_std', noise_std, '0 disables the noise')


class TopKRouter(nn.Module):
    """Linear fp32 router with training noise and top-K selection.

    Args:
        dim: token feature size.
        num_experts: E.
        top_k: K experts per token, 1 <= K <= E.
        noise_std: std of the Gaussian noise added to the logits in training. Default ``'1/E'``: V-MoE's code
            multiplies its config value (1.0, also Table S1's) by 1/E; a number is an absolute std.
    """

    def __init__(
            self,
            dim: int,
            num_experts: int,
            top_k: int = 1,
            noise_std: Union[float, str, None] = '1/E',
            device=None,
            dtype=None,
    ):
        super().__init__()
        num_experts = check_count('num_experts', num_experts)
        top_k = check_count('top_k', top_k, minimum=None, meaning='experts per token')
        if not 1 <= top_k <= num_experts:
            raise ValueError(
                f'top_k={top_k} is not in [1, num_experts={num_experts}]: each token picks top_k distinct '
                f'experts, so lower top_k or raise num_experts.')
        self.num_experts = num_experts
        self.top_k = top_k
        self.noise_std = resolve_noise_std(noise_std, num_experts)
        self.proj = nn.Linear(dim, num_experts, bias=False, device=device, dtype=dtype)

    def compute_logits(self, x: torch.Tensor) -> torch.Tensor:
        """fp32 logits ``[..., E]``, with autocast disabled so bf16/fp16 never reaches the router."""
        with autocast_off(x.device.type):
            return F.linear(x.float(), self.proj.weight.float())

    def route(self, logits: torch.Tensor, choice_probs: Optional[torch.Tensor] = None) -> RouterOutput:
        """Noise, softmax and top-K on given logits.

        ``choice_probs`` (same shape as ``probs``) makes the top-K choice and gates come from another
        distribution (the paper's teacher-route experiment) while ``probs`` stays this router's own.
        """
        noisy_logits = None
        if self.training and self.noise_std > 0:
            noisy_logits = logits + torch.randn_like(logits) * self.noise_std
        probs = torch.softmax(logits if noisy_logits is None else noisy_logits, dim=-1)
        if choice_probs is not None and choice_probs.shape != probs.shape:
            raise ValueError(
                f'routing override has shape {tuple(choice_probs.shape)} but the router produces '
                f'{tuple(probs.shape)}: it must give every token a distribution over the {self.num_experts} experts.')
        gates, expert_index = torch.topk(probs if choice_probs is None else choice_probs, self.top_k, dim=-1)
        return RouterOutput(logits=logits, probs=probs, expert_index=expert_index, gates=gates,
                            noisy_logits=noisy_logits)

    def forward(self, x: torch.Tensor) -> RouterOutput:
        return self.route(self.compute_logits(x))

    def extra_repr(self) -> str:
        return f'num_experts={self.num_experts}, top_k={self.top_k}, noise_std={self.noise_std:g}'
