"""V-MoE DeiT and TGR-MoE DeiT models for timm.

A DeiT Vision Transformer whose MLP in some blocks is a sparse top-K Mixture-of-Experts
(V-MoE, Riquelme et al. 2021), as used by TGR-MoE (Teacher-Guided Routing for Sparse Vision
MoE, CVPR 2026, arXiv 2604.21330). Paper setup (supplement Table S1): DeiT Tiny/Small/Base,
MoE in blocks 8, 10, 12 (1-based; ``moe_layers=(7, 9, 11)`` here, 0-based like timm's indices),
K=1, E=16 for Tiny and 8 for Small/Base, bias-free routers.

``tgr_moe_deit_*`` is the same student architecture as ``vmoe_deit_*``: teacher guidance is a
training-time loss (``timm_tgr.task``), so a TGR-MoE model needs no teacher at inference.

Two layouts are registered: ``*_deit_{tiny,small,base}`` on timm's plain DeiT
(``VisionTransformer``), and ``*_distilled`` on DeiT's distilled layout (class + distillation
token, two heads; ``VisionTransformerDistilled``), which reproduces Table S2's parameter counts.

Pretrained tags: no trained TGR-MoE / V-MoE weights are published yet, so every architecture's only (and so
default) tag is ``*.fb_in1k_upcycled``: ``timm.create_model('tgr_moe_deit_small', pretrained=True)`` loads timm's
dense DeiT weights from the Hub and upcycles them on load (:mod:`timm_tgr.models.upcycle`). In eval mode the model
then computes the dense DeiT's function, on the dropless expert path. When trained weights are published, their
tag goes first in ``default_cfgs`` (the new default) and the upcycled tags stay.
"""
import logging
from typing import Dict

import torch.nn as nn

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import generate_default_cfgs, register_model, resolve_pretrained_cfg
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import VisionTransformer

from ..layers import SparseMoE, check_capacity, resolve_noise_std
from ._builder import build_moe_vit, weights_location
from ._moe_vit import MoEBlock, MoEVisionTransformerMixin, PAPER_MOE_LAYERS
from .upcycle import (
    UPCYCLED_TAG, is_dense_state_dict, is_upcycled_tag, upcycle_checkpoint_filter_fn, upcycled_eval_capacity_factor,
)

__all__ = [
    'MoEBlock', 'VMoEVisionTransformer', 'VMoEVisionTransformerDistilled', 'PAPER_MOE_LAYERS', 'UPCYCLED_TAG',
    'UPCYCLED_FINETUNE_DEFAULTS',
]

_logger = logging.getLogger(__name__)


class VMoEVisionTransformer(MoEVisionTransformerMixin, VisionTransformer):
    """V-MoE on timm's plain DeiT / ViT layout (one class token, one head).

    The MoE layer is :class:`~timm_tgr.layers.SparseMoE`: its arguments (``num_experts``, ``top_k``,
    ``capacity_factor``, ``eval_capacity_factor``, ``router_noise_std``, ``batch_prioritized_routing``,
    ``capacity_group``, ``load_loss_weight``, ``z_loss_weight``) are model kwargs, with its defaults.
    """


class VMoEVisionTransformerDistilled(MoEVisionTransformerMixin, VisionTransformerDistilled):
    """V-MoE on DeiT's distilled layout (class and distillation tokens, two heads).

    Behaves like timm's ``VisionTransformerDistilled``: ``set_distilled_training(True)`` makes
    the training forward return ``(logits, dist_logits)`` for timm's TokenDistillationTask.
    """

    extra_prefix_tokens = 1  # the distillation token


# Model kwargs that upcycled weights change from V-MoE's defaults, for fine-tuning from them (kwargs given to
# create_model win). Chosen by the fine-tuning study (benchmarks/results/upcycle-finetune/, which holds its
# numbers): V-MoE's code's noise '1/E' keeps the training-mode MoE output close to the dense MLP's at
# step 0, where the paper's 1.0 moves it further. Eval mode always gets eval_capacity_factor=E/K (nothing dropped:
# the dense function).
UPCYCLED_FINETUNE_DEFAULTS: Dict[str, object] = {'router_noise_std': '1/E'}


def _named_tag(pretrained_cfg) -> str:
    """The tag named in the model name (``create_model('arch.tag')`` passes it as the ``pretrained_cfg`` string).

    A dict or cfg (``local-dir:`` / ``hf-hub:`` config.json, or given by the caller) names none: its weights may be
    anything, and are judged when loaded.
    """
    return pretrained_cfg if isinstance(pretrained_cfg, str) else ''


def _cfg(dense: str, distilled: bool = False, tgr: bool = False, **kwargs) -> dict:
    """timm's dense DeiT weights on the Hub, upcycled on load; data config of the dense weights (crop_pct .9)."""
    method = 'TGR-MoE' if tgr else 'V-MoE'
    return {
        'url': '', 'hf_hub_id': f'timm/{dense}.fb_in1k',
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': None, 'fixed_input_size': True,
        'crop_pct': .9, 'interpolation': 'bicubic',
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'patch_embed.proj', 'classifier': ('head', 'head_dist') if distilled else 'head',
        'license': 'apache-2.0',
        'paper_name': 'Teacher-Guided Routing for Sparse Vision Mixture-of-Experts' if tgr
        else 'Scaling Vision with Sparse Mixture of Experts',
        'paper_ids': 'arXiv:2604.21330' if tgr else 'arXiv:2106.05974',
        'notes': (f'Sparse upcycling (arXiv:2212.05055) of the dense timm/{dense}.fb_in1k on load: every expert a copy '
                  f'of the dense MLP (fc2 scaled by E/K), router near uniform, eval_capacity_factor=E/K by default '
                  f'(dropless), so eval outputs are the dense DeiT\'s. A starting point for {method} fine-tuning, not '
                  f'trained as an MoE; no trained {method} weights are published yet.',),
        **kwargs,
    }


# The first tag of an architecture is its default (timm): the upcycled tags until trained weights are published.
default_cfgs = generate_default_cfgs({
    'vmoe_deit_tiny.fb_in1k_upcycled': _cfg('deit_tiny_patch16_224'),
    'vmoe_deit_small.fb_in1k_upcycled': _cfg('deit_small_patch16_224'),
    'vmoe_deit_base.fb_in1k_upcycled': _cfg('deit_base_patch16_224'),
    'vmoe_deit_tiny_distilled.fb_in1k_upcycled': _cfg('deit_tiny_distilled_patch16_224', distilled=True),
    'vmoe_deit_small_distilled.fb_in1k_upcycled': _cfg('deit_small_distilled_patch16_224', distilled=True),
    'vmoe_deit_base_distilled.fb_in1k_upcycled': _cfg('deit_base_distilled_patch16_224', distilled=True),
    'tgr_moe_deit_tiny.fb_in1k_upcycled': _cfg('deit_tiny_patch16_224', tgr=True),
    'tgr_moe_deit_small.fb_in1k_upcycled': _cfg('deit_small_patch16_224', tgr=True),
    'tgr_moe_deit_base.fb_in1k_upcycled': _cfg('deit_base_patch16_224', tgr=True),
    'tgr_moe_deit_tiny_distilled.fb_in1k_upcycled': _cfg('deit_tiny_distilled_patch16_224', distilled=True, tgr=True),
    'tgr_moe_deit_small_distilled.fb_in1k_upcycled': _cfg(
        'deit_small_distilled_patch16_224', distilled=True, tgr=True),
    'tgr_moe_deit_base_distilled.fb_in1k_upcycled': _cfg('deit_base_distilled_patch16_224', distilled=True, tgr=True),
})

_TINY = dict(patch_size=16, embed_dim=192, depth=12, num_heads=3, num_experts=16)
_SMALL = dict(patch_size=16, embed_dim=384, depth=12, num_heads=6, num_experts=8)
_BASE = dict(patch_size=16, embed_dim=768, depth=12, num_heads=12, num_experts=8)


def _finetune_defaults(given: dict) -> dict:
    """:data:`UPCYCLED_FINETUNE_DEFAULTS` less the kwargs given to ``create_model``: what upcycled weights get."""
    return {k: v for k, v in UPCYCLED_FINETUNE_DEFAULTS.items() if k not in given}


def _set_upcycled_defaults(model: nn.Module, given: dict) -> None:
    """Every SparseMoE of ``model``: eval capacity E/K and :data:`UPCYCLED_FINETUNE_DEFAULTS`, except kwargs given."""
    for moe in model.modules():
        if not isinstance(moe, SparseMoE):
            continue
        opts = _finetune_defaults(given)
        if 'eval_capacity_factor' not in given:
            opts['eval_capacity_factor'] = upcycled_eval_capacity_factor(moe.num_experts, moe.top_k)
        if 'router_noise_std' in opts:
            moe.router.noise_std = resolve_noise_std(opts.pop('router_noise_std'), moe.num_experts)
        cf = opts.pop('capacity_factor', moe.capacity_factor)
        eval_cf = opts.pop('eval_capacity_factor', moe.eval_capacity_factor)
        if opts:
            raise ValueError(f'UPCYCLED_FINETUNE_DEFAULTS has keys {sorted(opts)}; it takes capacity_factor, '
                             f'eval_capacity_factor and router_noise_std.')
        moe.capacity_factor, moe.eval_capacity_factor, _ = check_capacity(
            cf, eval_cf, moe.capacity_group, 'the upcycled defaults', dropless=True)


def _finetune_note(given: dict) -> str:
    """The part of the upcycled-load log line naming the training defaults the weights got (none: empty)."""
    applied = _finetune_defaults(given)
    if not applied:
        return ''
    shown = ', '.join(f'{k}={v!r}' for k, v in applied.items())
    return f' (training defaults of upcycled weights: {shown}; pass them to create_model to change)'


def _build(variant: str, size: dict, pretrained: bool, distilled: bool, kwargs: dict):
    """The model; upcycled on load when the weights are a dense checkpoint (then logged, with the upcycled defaults)."""
    given = dict(kwargs)
    kwargs = dict(size, **kwargs)
    loaded = {}

    def filter_fn(state_dict, model):
        loaded['dense'] = is_dense_state_dict(state_dict)
        return upcycle_checkpoint_filter_fn(state_dict, model)

    model_cls = VMoEVisionTransformerDistilled if distilled else VMoEVisionTransformer
    model = build_moe_vit(model_cls, variant, pretrained=pretrained, pretrained_filter_fn=filter_fn, **kwargs)
    if loaded.get('dense') or is_upcycled_tag(_named_tag(given.get('pretrained_cfg'))):
        # eval: no token dropped (C = S, dropless path), so the upcycled model computes the dense function there
        _set_upcycled_defaults(model, given)
    if loaded.get('dense'):
        cfg = resolve_pretrained_cfg(
            variant, given.get('pretrained_cfg'), dict(given.get('pretrained_cfg_overlay') or {}))
        _logger.warning(
            f'{variant}: loaded the dense weights of the {weights_location(cfg)}, upcycled into '
            f'{kwargs["num_experts"]} experts per MoE block (sparse upcycling, not trained MoE weights: none are '
            f'published yet). At eval capacity E/K the outputs are the dense model\'s; the routers start near '
            f'uniform, so fine-tune, with TGR, before relying on routing{_finetune_note(given)}.')
    return model


@register_model
def vmoe_deit_tiny(pretrained: bool = False, **kwargs) -> VMoEVisionTransformer:
    """V-MoE DeiT-Tiny: E=16, K=1, MoE in blocks 8/10/12."""
    return _build('vmoe_deit_tiny', _TINY, pretrained, False, kwargs)


@register_model
def vmoe_deit_small(pretrained: bool = False, **kwargs) -> VMoEVisionTransformer:
    """V-MoE DeiT-Small: E=8, K=1, MoE in blocks 8/10/12."""
    return _build('vmoe_deit_small', _SMALL, pretrained, False, kwargs)


@register_model
def vmoe_deit_base(pretrained: bool = False, **kwargs) -> VMoEVisionTransformer:
    """V-MoE DeiT-Base: E=8, K=1, MoE in blocks 8/10/12."""
    return _build('vmoe_deit_base', _BASE, pretrained, False, kwargs)


@register_model
def vmoe_deit_tiny_distilled(pretrained: bool = False, **kwargs) -> VMoEVisionTransformerDistilled:
    """V-MoE DeiT-Tiny, distilled layout (Table S2: 19.23M parameters)."""
    return _build('vmoe_deit_tiny_distilled', _TINY, pretrained, True, kwargs)


@register_model
def vmoe_deit_small_distilled(pretrained: bool = False, **kwargs) -> VMoEVisionTransformerDistilled:
    """V-MoE DeiT-Small, distilled layout (Table S2: 47.26M parameters)."""
    return _build('vmoe_deit_small_distilled', _SMALL, pretrained, True, kwargs)


@register_model
def vmoe_deit_base_distilled(pretrained: bool = False, **kwargs) -> VMoEVisionTransformerDistilled:
    """V-MoE DeiT-Base, distilled layout (Table S2: 186.53M parameters)."""
    return _build('vmoe_deit_base_distilled', _BASE, pretrained, True, kwargs)


@register_model
def tgr_moe_deit_tiny(pretrained: bool = False, **kwargs) -> VMoEVisionTransformer:
    """TGR-MoE DeiT-Tiny student (train with a DeiT-III-Small teacher)."""
    return _build('tgr_moe_deit_tiny', _TINY, pretrained, False, kwargs)


@register_model
def tgr_moe_deit_small(pretrained: bool = False, **kwargs) -> VMoEVisionTransformer:
    """TGR-MoE DeiT-Small student (train with a DeiT-III-Base teacher)."""
    return _build('tgr_moe_deit_small', _SMALL, pretrained, False, kwargs)


@register_model
def tgr_moe_deit_base(pretrained: bool = False, **kwargs) -> VMoEVisionTransformer:
    """TGR-MoE DeiT-Base student (train with a DeiT-III-Base teacher)."""
    return _build('tgr_moe_deit_base', _BASE, pretrained, False, kwargs)


@register_model
def tgr_moe_deit_tiny_distilled(pretrained: bool = False, **kwargs) -> VMoEVisionTransformerDistilled:
    """TGR-MoE DeiT-Tiny student, distilled layout (Table S2 student: 19.23M)."""
    return _build('tgr_moe_deit_tiny_distilled', _TINY, pretrained, True, kwargs)


@register_model
def tgr_moe_deit_small_distilled(pretrained: bool = False, **kwargs) -> VMoEVisionTransformerDistilled:
    """TGR-MoE DeiT-Small student, distilled layout (Table S2 student: 47.26M)."""
    return _build('tgr_moe_deit_small_distilled', _SMALL, pretrained, True, kwargs)


@register_model
def tgr_moe_deit_base_distilled(pretrained: bool = False, **kwargs) -> VMoEVisionTransformerDistilled:
    """TGR-MoE DeiT-Base student, distilled layout (Table S2 student: 186.53M)."""
    return _build('tgr_moe_deit_base_distilled', _BASE, pretrained, True, kwargs)
