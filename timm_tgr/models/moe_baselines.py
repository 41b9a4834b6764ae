"""The TGR-MoE paper's routing baselines as timm models: Soft-MoE and Expert-Choice DeiT.

Same placement and expert counts as ``vmoe_deit_*`` (MoE MLP in blocks 8, 10, 12 1-based, i.e.
``moe_layers=(7, 9, 11)``; E=16 Tiny, 8 Small/Base), and, as in the paper's supplement, expert
compute matched to a top-1 V-MoE: each expert processes about 1/E of the tokens.

- ``soft_moe_deit_*``: :class:`~timm_tgr.layers.soft_moe.SoftMoE` with ``slots_per_expert = ceil(N/E)``
  (N = tokens per image, class token included: 13 slots for Tiny, 25 for Small/Base at 224x224).
- ``ec_moe_deit_*``: :class:`~timm_tgr.layers.expert_choice.ExpertChoiceMoE` with capacity factor 1:
  each expert takes ``ceil(N/E)`` tokens per image.

The StableMoE baseline (C.3) is a training schedule on a V-MoE model, not an architecture: see
:mod:`timm_tgr.task.stablemoe`. Every model is a V-MoE model with another ``moe_layer``
(:class:`~timm_tgr.models.MoEVisionTransformerMixin`): the same routing API (``get_moe_layers``,
``routing_infos``, ``moe_aux_loss``, ``set_routing_override``), the layer's arguments as model kwargs.
"""
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import generate_default_cfgs, register_model
from timm.models.vision_transformer import VisionTransformer

from ..layers import ExpertChoiceMoE, SoftMoE
from ._builder import build_moe_vit
from ._moe_vit import MoEVisionTransformerMixin

__all__ = ['SoftMoEVisionTransformer', 'ExpertChoiceVisionTransformer']


class SoftMoEVisionTransformer(MoEVisionTransformerMixin, VisionTransformer):
    """Soft-MoE on timm's plain DeiT / ViT layout.

    The MoE layer is :class:`~timm_tgr.layers.SoftMoE`: its arguments (``num_experts``, ``slots_per_expert``,
    ``match_top_k``, ``normalize``) are model kwargs. By default (``slots_per_expert=None``) the slots match a
    top-``match_top_k`` V-MoE's expert compute, ``ceil(N * match_top_k / E)`` with N the tokens per image at
    ``img_size`` (given to the layer as ``num_tokens``).
    """

    moe_layer = SoftMoE

    @property
    def slots_per_expert(self) -> int:
        """p, the slots of each expert (the same in every MoE block)."""
        return self.blocks[self.moe_layers[0]].mlp.slots_per_expert


class ExpertChoiceVisionTransformer(MoEVisionTransformerMixin, VisionTransformer):
    """Expert-Choice MoE on timm's plain DeiT / ViT layout.

    The MoE layer is :class:`~timm_tgr.layers.ExpertChoiceMoE`: its arguments (``num_experts``,
    ``capacity_factor`` (default 1.0: a top-1 V-MoE's compute), ``eval_capacity_factor``, ``capacity_group``,
    ``router_noise_std`` (default 0), ``z_loss_weight``) are model kwargs.
    """

    moe_layer = ExpertChoiceMoE


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
    return build_moe_vit(SoftMoEVisionTransformer, 'soft_moe_deit_tiny', pretrained, **dict(_TINY, **kwargs))


@register_model
def soft_moe_deit_small(pretrained: bool = False, **kwargs) -> SoftMoEVisionTransformer:
    """Soft-MoE DeiT-Small: E=8, 25 slots per expert at 224 (top-1 compute), MoE in blocks 8/10/12."""
    return build_moe_vit(SoftMoEVisionTransformer, 'soft_moe_deit_small', pretrained, **dict(_SMALL, **kwargs))


@register_model
def soft_moe_deit_base(pretrained: bool = False, **kwargs) -> SoftMoEVisionTransformer:
    """Soft-MoE DeiT-Base: E=8, 25 slots per expert at 224 (top-1 compute), MoE in blocks 8/10/12."""
    return build_moe_vit(SoftMoEVisionTransformer, 'soft_moe_deit_base', pretrained, **dict(_BASE, **kwargs))


@register_model
def ec_moe_deit_tiny(pretrained: bool = False, **kwargs) -> ExpertChoiceVisionTransformer:
    """Expert-Choice DeiT-Tiny: E=16, capacity factor 1 (top-1 compute), MoE in blocks 8/10/12."""
    return build_moe_vit(ExpertChoiceVisionTransformer, 'ec_moe_deit_tiny', pretrained, **dict(_TINY, **kwargs))


@register_model
def ec_moe_deit_small(pretrained: bool = False, **kwargs) -> ExpertChoiceVisionTransformer:
    """Expert-Choice DeiT-Small: E=8, capacity factor 1 (top-1 compute), MoE in blocks 8/10/12."""
    return build_moe_vit(ExpertChoiceVisionTransformer, 'ec_moe_deit_small', pretrained, **dict(_SMALL, **kwargs))


@register_model
def ec_moe_deit_base(pretrained: bool = False, **kwargs) -> ExpertChoiceVisionTransformer:
    """Expert-Choice DeiT-Base: E=8, capacity factor 1 (top-1 compute), MoE in blocks 8/10/12."""
    return build_moe_vit(ExpertChoiceVisionTransformer, 'ec_moe_deit_base', pretrained, **dict(_BASE, **kwargs))
