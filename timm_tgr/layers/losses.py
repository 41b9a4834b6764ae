"""Routing losses of V-MoE and TGR-MoE, as pure functions of router outputs.

All functions take router probabilities or logits with the expert axis last
(``[..., E]``) and flatten every other axis into the token axis, so they work on
``[B, N, E]`` and ``[T, E]`` alike. They compute in fp32.

Equation references are to the TGR-MoE paper (arXiv 2604.21330) and its
supplement (``shared/paper``).
"""
import math

import torch

__all__ = [
    'importance', 'load_balance_loss', 'importance_loss', 'noisy_load_loss', 'routing_entropy_loss', 'router_z_loss',
    'routing_kl_divergence', 'normalized_utilization_entropy',
]


def _tokens(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1]).float()


def importance(probs: torch.Tensor) -> torch.Tensor:
    """Imp_e(p) = 1/N sum_i p_{i,e}: the mean router probability of each expert, ``[E]``."""
    return _tokens(probs).mean(dim=0)


def load_balance_loss(probs: torch.Tensor) -> torch.Tensor:
    """L_load(p) = (std(Imp(p)) / mean(Imp(p)))^2, the squared coefficient of variation.

    V-MoE's importance loss over all tokens as one group: the teacher router's L_load (L_teacher). The student's
    MoE layers take it per routing group (:func:`importance_loss`). std is the population std over experts, as in
    V-MoE. Zero when every expert has the same importance.
    """
    return importance_loss(_tokens(probs).unsqueeze(0))[0]


def _cv_squared(x: torch.Tensor) -> torch.Tensor:
    """(std / mean)^2 over the last axis (population std, as V-MoE's ``jnp.std``)."""
    return x.var(dim=-1, unbiased=False) / x.mean(dim=-1).square().clamp_min(1e-12)


def importance_loss(probs: torch.Tensor) -> torch.Tensor:
    """L_load per routing group: ``probs`` ``[G, S, E]`` -> ``[G]``, the squared coefficient of variation of each
    group's expert importance (V-MoE's ``_importance_auxiliary_loss``, computed on the clean softmax per group)."""
    return _cv_squared(probs.float().mean(dim=-2))


def noisy_load_loss(logits: torch.Tensor, noisy_logits: torch.Tensor, noise_std: float, top_k: int) -> torch.Tensor:
    """V-MoE's load loss per routing group (Riquelme et al., 2021, App. A.2): ``[G, S, E]`` logits -> ``[G]``.

    A token's threshold is its K-th largest noisy logit. With fresh noise of the same std, expert e would be among
    its top-K with probability P_e = 1 - Phi((threshold - logit_e) / noise_std); the loss is the squared
    coefficient of variation over experts of P_e averaged over the group's tokens. Differentiable, unlike the
    token counts it stands for; it needs the noise (no noise: no loss).
    """
    threshold = noisy_logits.float().topk(top_k, dim=-1).values[..., -1:]
    z = (threshold - logits.float()) / noise_std
    p_selected = 0.5 * torch.erfc(z / math.sqrt(2.))
    return _cv_squared(p_selected.mean(dim=-2))


def routing_entropy_loss(probs: torch.Tensor) -> torch.Tensor:
    """L_ent(p) = -1/N sum_i sum_e p_{i,e} log p_{i,e}: mean per-token entropy.

    Minimized for the teacher router so its assignments are confident
    (lambda_ent = 0.005, L_teacher); L_load keeps the minimum from collapsing.
    """
    p = _tokens(probs)
    return -(p * torch.log(p.clamp_min(1e-20))).sum(dim=-1).mean()


def router_z_loss(logits: torch.Tensor) -> torch.Tensor:
    """ST-MoE router z-loss: mean over tokens of logsumexp(logits)^2 (paper's comparison, lambda 1e-3)."""
    return torch.logsumexp(_tokens(logits), dim=-1).square().mean()


def routing_kl_divergence(target_probs: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """L_distill = KL(stopgrad(p_t) || p), summed over experts, averaged over tokens.

    ``target_probs`` (the teacher router's p_t) is detached here, so no gradient can reach
    the teacher router through this term whatever the caller passes.
    """
    pt = _tokens(target_probs).detach()
    p = _tokens(probs)
    if pt.shape != p.shape:
        raise ValueError(
            f'routing KL needs teacher and student probabilities of the same shape, got {tuple(pt.shape)} '
            f'(teacher) and {tuple(p.shape)} (student): the two models must route the same tokens over the '
            f'same number of experts.')
    log_p = torch.log(p.clamp_min(1e-20))
    log_pt = torch.log(pt.clamp_min(1e-20))
    return (pt * (log_pt - log_p)).sum(dim=-1).mean()


def normalized_utilization_entropy(expert_counts: torch.Tensor) -> torch.Tensor:
    """Table S2's normalized routing entropy: H(u) / log E of the expert-utilization distribution u.

    ``expert_counts`` is ``[..., E]`` (how many tokens each expert received); returns a value in
    [0, 1] per leading index: 1 is perfectly balanced use, 0 is collapse onto one expert.
    """
    counts = expert_counts.float()
    num_experts = counts.shape[-1]
    u = counts / counts.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    ent = -(u * torch.log(u.clamp_min(1e-20))).sum(dim=-1)
    return ent / torch.log(torch.tensor(float(max(num_experts, 2))))
