"""The TGR-MoE paper's routing baselines as timm models: Soft-MoE and Expert-Choice DeiT.

Same placement and expert counts as ``vmoe_deit_*`` (MoE MLP in blocks 8, 10, 12 1-based, i.e.
``moe_layers=(7, 9, 11)``; E=16 Tiny, 8 Small/Base), and, as in the paper's supplement, expert
compute matched to a top-1 V-MoE: each expert processes about 1/E of the tokens.

- ``soft_moe_deit_*``: :class:`~timm_tgr.layers.soft_moe.SoftMoE` with ``slots_per_expert = ceil(N/E)``
  (N = tokens per image, class token included: 13 slots for Tiny, 25 for Small/Base at 224x224).
- ``ec_moe_deit_*``: :class:`~timm_tgr.layers.expert_choice.ExpertChoiceMoE` with capacity factor 1:
  each expert takes ``ceil(N/E)`` tokens per image.

The StableMoE baseline (C.3) is a training schedule on a V-MoE model, not an architecture: see
:mod:`timm_tgr.task.stablemoe`. Every model has the routing API of :mod:`timm_tgr.models.vmoe_deit`
(``get_moe_layers``, ``routing_infos``, ``moe_aux_loss``, ``set_routing_override``).
"""
import math
from typing import Optional, Sequence, Union

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import to_2tuple
from timm.models import generate_default_cfgs, register_model
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

from ..layers import ExpertChoiceMoE
from ..layers import SoftMoE, soft_moe_slots
from .vmoe_deit import PAPER_MOE_LAYERS, MoEVisionTransformerMixin, build_model_with_hub_cfg

__all__ = [
    'SoftMoEVisionTransformerMixin', 'SoftMoEVisionTransformer',
    'ExpertChoiceVisionTransformerMixin', 'ExpertChoiceVisionTransformer', 'vit_num_tokens',
]


def vit_num_tokens(kwargs: dict, extra_prefix_tokens: int = 0) -> Optional[int]:
    """Tokens per image of a timm ViT built with ``kwargs`` (patches + class/register tokens).

    None when the patch grid is not known from the arguments.
    """
    img_size, patch_size = kwargs.get('img_size', 224), kwargs.get('patch_size', 16)
    if img_size is None or patch_size is None:
        return None
    img_size, patch_size = to_2tuple(img_size), to_2tuple(patch_size)
    div = (lambda s, p: math.ceil(s / p)) if kwargs.get('dynamic_img_pad', False) else (lambda s, p: s // p)
    patches = div(img_size[0], patch_size[0]) * div(img_size[1], patch_size[1])
    prefix = int(kwargs.get('class_token', True)) + int(kwargs.get('reg_tokens', 0)) + extra_prefix_tokens
    return patches + prefix


class SoftMoEVisionTransformerMixin(MoEVisionTransformerMixin):
    """Turns a timm ViT class into a Soft-MoE ViT with the routing API of the V-MoE models.

    Keyword arguments (all reachable through ``timm.create_model``):
        num_experts: E (16 Tiny, 8 Small/Base, as V-MoE).
        moe_layers: 0-based MoE blocks (default (7, 9, 11)).
        slots_per_expert: p; None (default) sizes the slots to a top-``match_top_k`` V-MoE's expert
            compute, ``ceil(N * match_top_k / E)`` with N the tokens per image at ``img_size``.
        match_top_k: K used for the default slot count (1).
        normalize: L2-normalized tokens and slot parameters with a learned scale (True).
    """

    moe_layer = SoftMoE
    extra_prefix_tokens = 0  # distilled layouts add one

    def __init__(
            self,
            *args,
            num_experts: int = 8,
            moe_layers: Sequence[int] = PAPER_MOE_LAYERS,
            slots_per_expert: Optional[int] = None,
            match_top_k: int = 1,
            normalize: bool = True,
            **kwargs,
    ):
        num_tokens = None
        if slots_per_expert is None:
            if not match_top_k >= 1:
                raise ValueError(f'match_top_k must be >= 1 (the K whose compute the slots match), got {match_top_k}.')
            num_tokens = vit_num_tokens(kwargs, self.extra_prefix_tokens)
            if num_tokens is None:
                raise ValueError(
                    'Soft-MoE cannot size its slots without img_size and patch_size: pass slots_per_expert.')
            if num_experts >= 1:  # num_experts < 1 is reported by the layer
                slots_per_expert = soft_moe_slots(num_tokens, num_experts, match_top_k)
        moe_cfg = dict(num_experts=num_experts, slots_per_expert=slots_per_expert, normalize=normalize)
        self._init_moe(args, kwargs, moe_layers, moe_cfg)
        if num_tokens is not None and num_tokens != self.patch_embed.num_patches + self.num_prefix_tokens:
            raise ValueError(
                f'Soft-MoE sized its slots for {num_tokens} tokens per image but the model makes '
                f'{self.patch_embed.num_patches + self.num_prefix_tokens}: pass slots_per_expert explicitly.')
        self.num_experts = num_experts
        self.slots_per_expert = slots_per_expert
        self.top_k = 1


class ExpertChoiceVisionTransformerMixin(MoEVisionTransformerMixin):
    """Turns a timm ViT class into an Expert-Choice MoE ViT with the routing API of the V-MoE models.

    Keyword arguments (all reachable through ``timm.create_model``):
        num_experts: E (16 Tiny, 8 Small/Base, as V-MoE).
        moe_layers: 0-based MoE blocks (default (7, 9, 11)).
        capacity_factor: average experts per token c; each expert takes ceil(S*c/E) tokens of a group
            of S (default 1.0: a top-1 V-MoE's compute).
        eval_capacity_factor: c in eval mode (None = ``capacity_factor``).
        capacity_group: 'sample' (default) or 'batch'.
        router_noise_std: noise std on the router logits in training (default 0, as Expert-Choice).
        z_loss_weight: ST-MoE router z-loss weight (0 = off).
    """

    moe_layer = ExpertChoiceMoE

    def __init__(
            self,
            *args,
            num_experts: int = 8,
            moe_layers: Sequence[int] = PAPER_MOE_LAYERS,
            capacity_factor: float = 1.0,
            eval_capacity_factor: Optional[float] = None,
            capacity_group: str = 'sample',
            router_noise_std: Union[float, str, None] = 0.,
            z_loss_weight: float = 0.,
            **kwargs,
    ):
        moe_cfg = dict(
            num_experts=num_experts,
            capacity_factor=capacity_factor,
            eval_capacity_factor=eval_capacity_factor,
            capacity_group=capacity_group,
            router_noise_std=router_noise_std,
            z_loss_weight=z_loss_weight,
        )
        self._init_moe(args, kwargs, moe_layers, moe_cfg)
        self.num_experts = num_experts
        self.top_k = 1


class SoftMoEVisionTransformer(SoftMoEVisionTransformerMixin, VisionTransformer):
    """Soft-MoE on timm's plain DeiT / ViT layout."""


class ExpertChoiceVisionTransformer(ExpertChoiceVisionTransformerMixin, VisionTransformer):
    """Expert-Choice MoE on timm's plain DeiT / ViT layout."""


def _create(model_cls, variant: str, pretrained: bool = False, **kwargs):
    out_indices = kwargs.pop('out_indices', 3)
    return build_model_with_hub_cfg(
        model_cls,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls='getter'),
        **kwargs,
    )


def _create_soft_moe_deit(variant: str, pretrained: bool = False, **kwargs) -> SoftMoEVisionTransformer:
    return _create(SoftMoEVisionTransformer, variant, pretrained, **kwargs)


def _create_ec_moe_deit(variant: str, pretrained: bool = False, **kwargs) -> ExpertChoiceVisionTransformer:
    return _create(ExpertChoiceVisionTransformer, variant, pretrained, **kwargs)


_PAPERS = {
    'soft': ('From Sparse to Soft Mixtures of Experts', 'arXiv:2308.00951', 'Soft-MoE'),
    'ec': ('Mixture-of-Experts with Expert Choice Routing', 'arXiv:2202.09368', 'Expert-Choice MoE'),
}


def _cfg(method: str, **kwargs) -> dict:
    paper_name, paper_id, label = _PAPERS[method]
    return {
        'url': '',
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': None, 'fixed_input_size': True,
        'crop_pct': .875, 'interpolation': 'bicubic',
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'patch_embed.proj', 'classifier': 'head',
        'license': 'apache-2.0',
        'paper_name': paper_name,
        'paper_ids': paper_id,
        'notes': (
            f'{label} DeiT architecture only, a routing baseline of TGR-MoE (arXiv:2604.21330): '
            f'no pretrained weights are published for it.',),
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    'soft_moe_deit_tiny': _cfg('soft'),
    'soft_moe_deit_small': _cfg('soft'),
    'soft_moe_deit_base': _cfg('soft'),
    'ec_moe_deit_tiny': _cfg('ec'),
    'ec_moe_deit_small': _cfg('ec'),
    'ec_moe_deit_base': _cfg('ec'),
})

_TINY = dict(patch_size=16, embed_dim=192, depth=12, num_heads=3, num_experts=16)
_SMALL = dict(patch_size=16, embed_dim=384, depth=12, num_heads=6, num_experts=8)
_BASE = dict(patch_size=16, embed_dim=768, depth=12, num_heads=12, num_experts=8)


@register_model
def soft_moe_deit_tiny(pretrained: bool = False, **kwargs) -> SoftMoEVisionTransformer:
    """Soft-MoE DeiT-Tiny: E=16, 13 slots per expert at 224 (top-1 compute), MoE in blocks 8/10/12."""
    return _create_soft_moe_deit('soft_moe_deit_tiny', pretrained, **dict(_TINY, **kwargs))


@register_model
def soft_moe_deit_small(pretrained: bool = False, **kwargs) -> SoftMoEVisionTransformer:
    """Soft-MoE DeiT-Small: E=8, 25 slots per expert at 224 (top-1 compute), MoE in blocks 8/10/12."""
    return _create_soft_moe_deit('soft_moe_deit_small', pretrained, **dict(_SMALL, **kwargs))


@register_model
def soft_moe_deit_base(pretrained: bool = False, **kwargs) -> SoftMoEVisionTransformer:
    """Soft-MoE DeiT-Base: E=8, 25 slots per expert at 224 (top-1 compute), MoE in blocks 8/10/12."""
    return _create_soft_moe_deit('soft_moe_deit_base', pretrained, **dict(_BASE, **kwargs))


@register_model
def ec_moe_deit_tiny(pretrained: bool = False, **kwargs) -> ExpertChoiceVisionTransformer:
    """Expert-Choice DeiT-Tiny: E=16, capacity factor 1 (top-1 compute), MoE in blocks 8/10/12."""
    return _create_ec_moe_deit('ec_moe_deit_tiny', pretrained, **dict(_TINY, **kwargs))


@register_model
def ec_moe_deit_small(pretrained: bool = False, **kwargs) -> ExpertChoiceVisionTransformer:
    """Expert-Choice DeiT-Small: E=8, capacity factor 1 (top-1 compute), MoE in blocks 8/10/12."""
    return _create_ec_moe_deit('ec_moe_deit_small', pretrained, **dict(_SMALL, **kwargs))


@register_model
def ec_moe_deit_base(pretrained: bool = False, **kwargs) -> ExpertChoiceVisionTransformer:
    """Expert-Choice DeiT-Base: E=8, capacity factor 1 (top-1 compute), MoE in blocks 8/10/12."""
    return _create_ec_moe_deit('ec_moe_deit_base', pretrained, **dict(_BASE, **kwargs))
