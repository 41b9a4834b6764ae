"""What every timm_tgr MoE ViT shares: the MoE block, the mixin that turns a timm ViT class into an MoE ViT with
the routing API, and the checks of its inputs and of ``moe_layers``.

The MoE layer is a constructor argument, as timm's ViT takes ``mlp_layer``: a model class names its
``moe_layer`` (:class:`~timm_tgr.layers.SparseMoE` for V-MoE, :class:`~timm_tgr.layers.SoftMoE`,
:class:`~timm_tgr.layers.ExpertChoiceMoE` for the baselines), and the layer's own keyword arguments pass through
``timm.create_model`` to it. The model families (:mod:`.vmoe_deit`, :mod:`.moe_baselines`) only pick the layer,
the ViT layout, the sizes and the pretrained cfgs.
"""
import inspect
import math
from functools import partial
from numbers import Integral
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from timm.layers import Mlp, to_2tuple
from timm.models.vision_transformer import Block
from timm.utils import unwrap_model

from ..layers import RoutingInfo, SparseMoE
from ..layers.graph_tools import refuse_torchscript

__all__ = ['PAPER_MOE_LAYERS', 'MoEBlock', 'MoEVisionTransformerMixin', 'moe_layer_args', 'moe_model', 'vit_num_tokens']

PAPER_MOE_LAYERS = (7, 9, 11)  # blocks 8, 10, 12 of the paper, 0-based

# timm Mlp's constructor arguments: the block gives them to its MLP, whatever the MLP's class
_MLP_ARGS = {'in_features', 'hidden_features', 'out_features', 'act_layer', 'norm_layer', 'bias', 'drop', 'device',
             'dtype'}


def moe_model(model: nn.Module, required: bool = False) -> Optional[nn.Module]:
    """The one answer to "is this an MoE model?": the timm_tgr MoE model inside ``model`` (unwrapped from DDP,
    ``torch.compile``, EMA), i.e. one with the routing API (``get_moe_layers``, ``routing_infos``, ...); None for any
    other model, or with ``required`` a TypeError naming the fix."""
    base = unwrap_model(model)
    if callable(getattr(base, 'get_moe_layers', None)):
        return base
    if required:
        raise TypeError(
            f'{type(base).__name__} is not a timm_tgr MoE model (no get_moe_layers()); create it with '
            f"timm.create_model('vmoe_deit_small') or another model registered by timm_tgr.")
    return None


class MoEBlock(Block):
    """timm ViT ``Block`` whose MLP is ``moe_layer(**moe_cfg)`` (default :class:`SparseMoE`) when its index is in
    ``moe_layers``."""

    def __init__(self, *args, depth: int = 0, moe_layers: Sequence[int] = (), moe_cfg: Optional[dict] = None,
                 mlp_layer=Mlp, moe_layer=SparseMoE, **kwargs):
        if depth in moe_layers:
            mlp_layer = partial(moe_layer, **(moe_cfg or {}))
        super().__init__(*args, depth=depth, mlp_layer=mlp_layer, **kwargs)


def moe_layer_args(moe_layer) -> Tuple[str, ...]:
    """The keyword arguments of an MoE layer class besides timm ``Mlp``'s: those a model passes through to it."""
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return tuple(name for name, p in inspect.signature(moe_layer).parameters.items()
                 if p.kind in kinds and name not in _MLP_ARGS)


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


def _moe_layer_indices(moe_layers: Union[int, str, Sequence[int]], depth: int) -> tuple:
    """``moe_layers`` as a tuple of block indices: an int is one block, a string is comma-separated indices
    (``'7,9,11'``, as YAML or a command line may give it), a sequence holds ints; anything else is an error."""
    how = (f'give distinct 0-based block indices in [0, {depth - 1}] as a tuple, a list, one int or a string '
           f'of comma-separated ints (the paper\'s blocks 8, 10, 12 are moe_layers=(7, 9, 11), or \'7,9,11\')')
    if isinstance(moe_layers, str):
        parts = [p.strip() for p in moe_layers.split(',')]
        if not all(p.lstrip('-').isdigit() for p in parts):
            raise ValueError(f'moe_layers={moe_layers!r} is not a list of block indices: {how}.')
        return tuple(int(p) for p in parts)
    if isinstance(moe_layers, Integral) and not isinstance(moe_layers, bool):
        return (int(moe_layers),)
    try:
        items = tuple(moe_layers)
    except TypeError:
        raise ValueError(f'moe_layers={moe_layers!r} is not a list of block indices: {how}.') from None
    if not all(isinstance(i, Integral) and not isinstance(i, bool) for i in items):
        raise ValueError(f'moe_layers={moe_layers!r} holds non-integer entries: {how}.')
    return tuple(int(i) for i in items)


def check_moe_layers(moe_layers: Union[int, str, Sequence[int]], depth: int) -> tuple:
    """``moe_layers`` as sorted distinct block indices of a model of ``depth`` blocks; an error that says how else."""
    layers = _moe_layer_indices(moe_layers, depth)
    bad = [i for i in layers if not 0 <= i < depth]
    if not layers or bad or len(set(layers)) != len(layers):
        raise ValueError(
            f'moe_layers={moe_layers!r} is invalid for a model of depth {depth}: give distinct 0-based '
            f'block indices in [0, {depth - 1}] (the paper\'s blocks 8, 10, 12 are moe_layers=(7, 9, 11)).')
    return tuple(sorted(layers))


class MoEVisionTransformerMixin:
    """Turns a timm ViT class into an MoE ViT whose MLP in ``moe_layers`` is ``moe_layer``; adds the routing API.

    Keyword arguments (all reachable through ``timm.create_model``):
        moe_layer: the MoE layer class (default: the class attribute ``moe_layer``, :class:`SparseMoE` here).
        moe_layers: 0-based indices of the blocks whose MLP becomes MoE (paper: (7, 9, 11)); one int is one
            block, a string is comma-separated indices (``'7,9,11'``).
        the layer's own arguments: every keyword argument of the layer's constructor besides timm ``Mlp``'s
            goes to the layer (``num_experts``, ``top_k``, ``capacity_factor``, ... of :class:`SparseMoE`; the
            layer documents them and owns their defaults). A layer taking ``num_tokens`` is given the tokens per
            image at the model's ``img_size`` unless the kwargs give it.
        tgr_*: teacher-guided-routing options for timm's own ``train.py`` (``--model-kwargs tgr_teacher=...``),
            kept without the prefix in ``self.guidance_cfg``, a plain dict the model never uses: the training
            task reads and checks them (:mod:`timm_tgr.task.timm_train`).

    Every other kwarg goes to the ViT class. ``num_experts`` and ``top_k`` of the MoE layers are also model
    attributes.
    """

    moe_layer = SparseMoE  # the MLP class of the MoE blocks
    extra_prefix_tokens = 0  # prefix tokens of the layout besides class and register tokens (distilled: one)

    def __init__(self, *args, moe_layer=None, moe_layers: Union[int, str, Sequence[int]] = PAPER_MOE_LAYERS,
                 **kwargs):
        moe_layer = moe_layer if moe_layer is not None else type(self).moe_layer
        layer_args = moe_layer_args(moe_layer)
        moe_cfg = {k: kwargs.pop(k) for k in layer_args if k in kwargs}
        guidance_cfg = {k[len('tgr_'):]: kwargs.pop(k) for k in [k for k in kwargs if k.startswith('tgr_')]}
        moe_layers = check_moe_layers(moe_layers, kwargs.get('depth', 12))
        if kwargs.get('block_fn', Block) is not Block:
            raise ValueError('V-MoE models build their own blocks; block_fn cannot be overridden.')
        if 'num_tokens' in layer_args and 'num_tokens' not in moe_cfg:
            moe_cfg['num_tokens'] = vit_num_tokens(kwargs, self.extra_prefix_tokens)
        kwargs['block_fn'] = partial(MoEBlock, moe_layers=moe_layers, moe_cfg=moe_cfg, moe_layer=moe_layer)
        super().__init__(*args, **kwargs)
        self.moe_layers = moe_layers
        self.guidance_cfg = guidance_cfg
        first = self.blocks[moe_layers[0]].mlp
        self.num_experts, self.top_k = first.num_experts, first.top_k
        self._check_sized_tokens(first)

    def _check_sized_tokens(self, moe: nn.Module) -> None:
        """A layer sized for a number of tokens (``num_tokens``) must get that many per image."""
        sized = getattr(moe, 'num_tokens', None)
        tokens = self.patch_embed.num_patches + self.num_prefix_tokens
        if sized is not None and sized != tokens:
            raise ValueError(
                f'{type(moe).__name__} was sized for {sized} tokens per image but the model makes {tokens}: pass '
                f'num_tokens={tokens}, or the size of the layer itself (e.g. slots_per_expert) explicitly.')

    # --- routing API -------------------------------------------------------------------------
    def get_moe_layers(self) -> Dict[int, nn.Module]:
        """``{block index: MoE layer}`` of the MoE blocks, in block order."""
        return {i: self.blocks[i].mlp for i in self.moe_layers if i < len(self.blocks)}

    def routing_infos(self) -> Dict[int, RoutingInfo]:
        """``{block index: RoutingInfo}`` from the last forward (probs, chosen experts, drops, losses)."""
        infos = {}
        for i, moe in self.get_moe_layers().items():
            if moe.routing is None:
                raise RuntimeError('routing_infos() needs a forward pass first.')
            infos[i] = moe.routing
        return infos

    def moe_aux_loss(self) -> torch.Tensor:
        """Sum over MoE layers of lambda_load * L_load (+ lambda_z * z-loss) of the last forward."""
        return torch.stack([info.aux_loss for info in self.routing_infos().values()]).sum()

    def set_routing_override(self, probs: Optional[Dict[int, torch.Tensor]]) -> None:
        """Route MoE block i from ``probs[i]`` ([B, N, E]) instead of its router; None restores the routers."""
        probs = probs or {}
        unknown = set(probs) - set(self.moe_layers)
        if unknown:
            raise ValueError(
                f'routing override for blocks {sorted(unknown)}, but the MoE blocks are {self.moe_layers}.')
        for i, moe in self.get_moe_layers().items():
            moe.routing_override = probs.get(i)

    # TorchScript is not supported: torch.jit.script stops here with a message that says so
    __prepare_scriptable__ = refuse_torchscript

    # --- input checks ------------------------------------------------------------------------
    def _check_input(self, x: torch.Tensor) -> None:
        """Shape checks of the images, with a message that names the fix; skipped while torch.fx traces (``x`` is
        a Proxy there, whose shape is not known)."""
        if isinstance(x, torch.fx.Proxy):
            return
        if x.ndim != 4:
            raise ValueError(f'{type(self).__name__} expects images as [B, C, H, W], got shape {tuple(x.shape)}.')
        if x.shape[1] != self.in_chans:
            raise ValueError(
                f'input has {x.shape[1]} channels but the model was built with in_chans={self.in_chans}: '
                f'create it with in_chans={x.shape[1]} or convert the images to {self.in_chans} channels.')
        pe = self.patch_embed
        if not self.dynamic_img_size and getattr(pe, 'strict_img_size', False) and pe.img_size is not None:
            if tuple(x.shape[-2:]) != tuple(pe.img_size):
                raise ValueError(
                    f'input is {x.shape[-2]}x{x.shape[-1]} but the model was built for '
                    f'{pe.img_size[0]}x{pe.img_size[1]}: resize the images, or create the model with '
                    f'img_size=({x.shape[-2]}, {x.shape[-1]}) (or dynamic_img_size=True).')

    def forward_features(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        self._check_input(x)
        return super().forward_features(x, *args, **kwargs)

    def forward_intermediates(self, x: torch.Tensor, *args, **kwargs):
        self._check_input(x)
        return super().forward_intermediates(x, *args, **kwargs)
