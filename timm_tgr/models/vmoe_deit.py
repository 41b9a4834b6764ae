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
from functools import partial
from numbers import Integral
from typing import Dict, Optional, Sequence, Union

import torch
import torch.nn as nn

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import Mlp
try:
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, OfflineModeIsEnabled
except ImportError:  # huggingface_hub < 0.23 keeps them in utils
    from huggingface_hub.utils import EntryNotFoundError, HfHubHTTPError, OfflineModeIsEnabled
from safetensors import SafetensorError
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model, resolve_pretrained_cfg
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import Block, VisionTransformer

from ..layers import RoutingInfo, SparseMoE, check_capacity, resolve_noise_std
from .upcycle import is_dense_state_dict, upcycle_checkpoint_filter_fn, upcycled_eval_capacity_factor

__all__ = ['MoEBlock', 'VMoEVisionTransformer', 'VMoEVisionTransformerDistilled', 'PAPER_MOE_LAYERS']

PAPER_MOE_LAYERS = (7, 9, 11)  # blocks 8, 10, 12 of the paper, 0-based

_logger = logging.getLogger(__name__)


class MoEBlock(Block):
    """timm ViT ``Block`` whose MLP is ``moe_layer`` (default :class:`SparseMoE`) when its index is in ``moe_layers``."""

    def __init__(self, *args, depth: int = 0, moe_layers: Sequence[int] = (), moe_cfg: Optional[dict] = None,
                 mlp_layer=Mlp, moe_layer=SparseMoE, **kwargs):
        if depth in moe_layers:
            mlp_layer = partial(moe_layer, **(moe_cfg or {}))
        super().__init__(*args, depth=depth, mlp_layer=mlp_layer, **kwargs)


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


def _check_moe_layers(moe_layers: Union[int, str, Sequence[int]], depth: int) -> tuple:
    layers = _moe_layer_indices(moe_layers, depth)
    bad = [i for i in layers if not 0 <= i < depth]
    if not layers or bad or len(set(layers)) != len(layers):
        raise ValueError(
            f'moe_layers={moe_layers!r} is invalid for a model of depth {depth}: give distinct 0-based '
            f'block indices in [0, {depth - 1}] (the paper\'s blocks 8, 10, 12 are moe_layers=(7, 9, 11)).')
    return tuple(sorted(layers))


class MoEVisionTransformerMixin:
    """Turns a timm ViT class into a V-MoE ViT and gives it the routing API.

    Keyword arguments (all reachable through ``timm.create_model``):
        num_experts: E (paper: 16 Tiny, 8 Small/Base).
        top_k: K (paper: 1).
        moe_layers: 0-based indices of the blocks whose MLP becomes MoE (paper: (7, 9, 11)); one int is one
            block, a string is comma-separated indices (``'7,9,11'``).
        capacity_factor / eval_capacity_factor: expert capacity in train / eval mode; ``'dropless'``: no token
            dropped and no capacity buffer, as for any factor >= E/K.
        router_noise_std: noise std on router logits in training, a number (paper: 1.0) or '1/E'.
        batch_prioritized_routing: V-MoE's BPR.
        capacity_group: 'sample' or 'batch' (see ``timm_tgr.layers.dispatch``).
        load_loss_weight: lambda_load per MoE layer (paper: 0.005).
        z_loss_weight: ST-MoE router z-loss weight (0 = off; the paper's comparison uses 1e-3).

    Teacher-guided-routing options for timm's own ``train.py`` (``--model-kwargs tgr_teacher=...``) are
    accepted as ``tgr_*`` kwargs, validated and kept in ``self.guidance_cfg``; the model itself never
    uses them (see :mod:`timm_tgr.task.timm_train`).

    Other MoE layers (``timm_tgr.models.moe_baselines``) subclass this mixin, set ``moe_layer`` and build
    their blocks through :meth:`_init_moe`.
    """

    moe_layer = SparseMoE  # the MLP class of the MoE blocks

    def __init__(
            self,
            *args,
            num_experts: int = 8,
            top_k: int = 1,
            moe_layers: Sequence[int] = PAPER_MOE_LAYERS,
            capacity_factor: Union[float, str, None] = 1.05,
            eval_capacity_factor: Union[float, str, None] = None,
            router_noise_std: Union[float, str, None] = 1.0,
            batch_prioritized_routing: bool = False,
            capacity_group: str = 'sample',
            load_loss_weight: float = 0.005,
            z_loss_weight: float = 0.,
            **kwargs,
    ):
        moe_cfg = dict(
            num_experts=num_experts,
            top_k=top_k,
            capacity_factor=capacity_factor,
            eval_capacity_factor=eval_capacity_factor,
            router_noise_std=router_noise_std,
            batch_prioritized_routing=batch_prioritized_routing,
            capacity_group=capacity_group,
            load_loss_weight=load_loss_weight,
            z_loss_weight=z_loss_weight,
        )
        self._init_moe(args, kwargs, moe_layers, moe_cfg)
        self.num_experts = num_experts
        self.top_k = top_k

    def _init_moe(self, args: tuple, kwargs: dict, moe_layers: Sequence[int], moe_cfg: dict) -> None:
        """Build the ViT (the next class in the MRO) with ``self.moe_layer(**moe_cfg)`` in ``moe_layers``."""
        from ..task.timm_train import pop_guidance_kwargs
        guidance_cfg = pop_guidance_kwargs(kwargs)
        depth = kwargs.get('depth', 12)
        moe_layers = _check_moe_layers(moe_layers, depth)
        if kwargs.get('block_fn', Block) is not Block:
            raise ValueError('V-MoE models build their own blocks; block_fn cannot be overridden.')
        kwargs['block_fn'] = partial(MoEBlock, moe_layers=moe_layers, moe_cfg=moe_cfg, moe_layer=self.moe_layer)
        super().__init__(*args, **kwargs)
        self.moe_layers = moe_layers
        self.guidance_cfg = guidance_cfg

    # --- routing API -------------------------------------------------------------------------
    def get_moe_layers(self) -> Dict[int, SparseMoE]:
        """``{block index: SparseMoE}`` of the MoE blocks, in block order."""
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
            raise ValueError(f'routing override for blocks {sorted(unknown)}, but the MoE blocks are {self.moe_layers}.')
        for i, moe in self.get_moe_layers().items():
            moe.routing_override = probs.get(i)

    # --- input checks ------------------------------------------------------------------------
    def _check_input(self, x: torch.Tensor) -> None:
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


class VMoEVisionTransformer(MoEVisionTransformerMixin, VisionTransformer):
    """V-MoE on timm's plain DeiT / ViT layout (one class token, one head)."""


class VMoEVisionTransformerDistilled(MoEVisionTransformerMixin, VisionTransformerDistilled):
    """V-MoE on DeiT's distilled layout (class and distillation tokens, two heads).

    Behaves like timm's ``VisionTransformerDistilled``: ``set_distilled_training(True)`` makes
    the training forward return ``(logits, dist_logits)`` for timm's TokenDistillationTask.
    """


# Hugging Face Hub organization where trained timm_tgr weights will be published. Nothing is there yet, so no cfg
# points at it: a cfg gets an hf_hub_id only when its repo exists.
HF_HUB_ORG = 'timm-tgr'
_EXPORT_HOWTO = (
    "train one with train_tgr.py, export the student with `python -m timm_tgr.export CHECKPOINT --out DIR` "
    "(add `--push ORG/NAME` to publish it on the Hub), then load it with "
    "timm.create_model('local-dir:DIR', pretrained=True), timm.create_model('hf-hub:ORG/NAME', pretrained=True) "
    "or timm.create_model('{name}', pretrained=True, pretrained_cfg_overlay=dict(file='DIR/model.safetensors'))")


def _weights_location(cfg) -> str:
    if cfg.source == 'local-dir':
        return f'local folder {cfg.file}'
    if cfg.file:
        return f'file {cfg.file}'
    if cfg.state_dict:
        return 'given state_dict'
    return f'Hugging Face Hub repo {cfg.hf_hub_id}' if cfg.hf_hub_id else f'url {cfg.url}'


def _download_error(variant: str, cfg, loc: str, e: Exception) -> Optional[RuntimeError]:
    """The error that names the fix when the dense Hub weights of an upcycled cfg cannot be had; None for others."""
    if not is_upcycled_tag(cfg.tag) or cfg.source == 'hf-hub':
        return None
    reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else ''
    return RuntimeError(
        f'Could not load the dense weights that {variant}.{cfg.tag} upcycles: model.safetensors of the {loc} is '
        f'neither in the local Hugging Face cache nor downloadable ({type(e).__name__}: {reason}). Download them once '
        f'online (HF_HUB_OFFLINE unset), or point at a local copy of the dense checkpoint with '
        f"pretrained_cfg_overlay=dict(file='PATH.safetensors').")


def build_model_with_hub_cfg(model_cls, variant: str, pretrained: bool = False, **kwargs):
    """timm's ``build_model_with_cfg`` whose pretrained loading fails with messages that name the fix.

    ``pretrained=True`` for a cfg with no weights (and no ``file``, ``url``, ``hf_hub_id`` or ``state_dict`` in
    ``pretrained_cfg_overlay``) fails at once, without asking the Hub, saying how to make and load weights.
    """
    if not pretrained:
        return build_model_with_cfg(model_cls, variant, pretrained, **kwargs)

    cfg = resolve_pretrained_cfg(
        variant, kwargs.get('pretrained_cfg'), dict(kwargs.get('pretrained_cfg_overlay') or {}))
    if not (cfg.has_weights or cfg.state_dict):
        tag = f'.{cfg.tag}' if cfg.tag else ''
        raise RuntimeError(
            f'No weights are published for {variant}{tag}, so pretrained=True has nothing to load. To get '
            f'weights, {_EXPORT_HOWTO.format(name=variant)}.')
    loc = _weights_location(cfg)
    try:
        return build_model_with_cfg(model_cls, variant, pretrained, **kwargs)
    except (EntryNotFoundError, HfHubHTTPError, OfflineModeIsEnabled) as e:
        error = _download_error(variant, cfg, loc, e)
        if error is None:
            raise
        raise error from e
    except SafetensorError as e:
        raise RuntimeError(
            f'The weights in the {loc} are not a readable safetensors file ({e}): the file is corrupt or truncated '
            f'(an interrupted download or copy). Delete it and download or export it again.') from e
    except RuntimeError as e:
        if 'Error(s) in loading state_dict' not in str(e):
            raise
        detail = str(e) if len(str(e)) < 1500 else str(e)[:1500] + ' ...'
        raise RuntimeError(
            f'The weights in the {loc} do not fit {variant} built with these kwargs: they were saved for another '
            f"architecture or other model args. Load an exported folder with timm.create_model('local-dir:DIR', "
            f"pretrained=True) or timm.create_model('hf-hub:ORG/NAME', pretrained=True), which rebuild the model "
            f'from its config.json, or pass the model args the weights were trained with.\n{detail}') from e


def _create_vmoe_deit(variant: str, pretrained: bool = False, distilled: bool = False,
                      pretrained_filter_fn=upcycle_checkpoint_filter_fn, **kwargs):
    out_indices = kwargs.pop('out_indices', 3)
    model_cls = VMoEVisionTransformerDistilled if distilled else VMoEVisionTransformer
    return build_model_with_hub_cfg(
        model_cls,
        variant,
        pretrained,
        pretrained_filter_fn=pretrained_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls='getter'),
        **kwargs,
    )


UPCYCLED_TAG = 'fb_in1k_upcycled'

# Model kwargs that upcycled weights change from V-MoE's defaults, for fine-tuning from them (kwargs given to
# create_model win). This is the one line to switch after the fine-tuning study (BENCHMARKS.md, "Fine-tuning from
# upcycled weights"): dict(router_noise_std='1/E') for V-MoE's code's noise, dict(capacity_factor='dropless')
# for dropless training. Eval mode always gets eval_capacity_factor=E/K (nothing dropped: the dense function).
UPCYCLED_FINETUNE_DEFAULTS: Dict[str, object] = {}


def is_upcycled_tag(tag: Optional[str]) -> bool:
    """Whether a pretrained tag names dense weights upcycled on load (``*.fb_in1k_upcycled``)."""
    return bool(tag) and tag.endswith('_upcycled')


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


def _set_upcycled_defaults(model: nn.Module, given: dict) -> None:
    """Every SparseMoE of ``model``: eval capacity E/K and :data:`UPCYCLED_FINETUNE_DEFAULTS`, except kwargs given."""
    for moe in model.modules():
        if not isinstance(moe, SparseMoE):
            continue
        opts = dict(UPCYCLED_FINETUNE_DEFAULTS,
                    eval_capacity_factor=upcycled_eval_capacity_factor(moe.num_experts, moe.top_k))
        opts = {k: v for k, v in opts.items() if k not in given}
        if 'router_noise_std' in opts:
            moe.router.noise_std = resolve_noise_std(opts.pop('router_noise_std'), moe.num_experts)
        cf = opts.pop('capacity_factor', moe.capacity_factor)
        eval_cf = opts.pop('eval_capacity_factor', moe.eval_capacity_factor)
        if opts:
            raise ValueError(f'UPCYCLED_FINETUNE_DEFAULTS has keys {sorted(opts)}; it takes capacity_factor, '
                             f'eval_capacity_factor and router_noise_std.')
        moe.capacity_factor, moe.eval_capacity_factor, _ = check_capacity(
            cf, eval_cf, moe.capacity_group, 'the upcycled defaults', dropless=True)


def _build(variant: str, size: dict, pretrained: bool, distilled: bool, kwargs: dict):
    """The model; upcycled on load when the weights are a dense checkpoint (then logged, with the upcycled defaults)."""
    given = dict(kwargs)
    kwargs = dict(size, **kwargs)
    loaded = {}

    def filter_fn(state_dict, model):
        loaded['dense'] = is_dense_state_dict(state_dict)
        return upcycle_checkpoint_filter_fn(state_dict, model)

    model = _create_vmoe_deit(variant, pretrained=pretrained, distilled=distilled, pretrained_filter_fn=filter_fn,
                              **kwargs)
    if loaded.get('dense') or is_upcycled_tag(_named_tag(given.get('pretrained_cfg'))):
        # eval: no token dropped (C = S, dropless path), so the upcycled model computes the dense function there
        _set_upcycled_defaults(model, given)
    if loaded.get('dense'):
        cfg = resolve_pretrained_cfg(
            variant, given.get('pretrained_cfg'), dict(given.get('pretrained_cfg_overlay') or {}))
        _logger.warning(
            f'{variant}: loaded the dense weights of the {_weights_location(cfg)}, upcycled into '
            f'{kwargs["num_experts"]} experts per MoE block (sparse upcycling, not trained MoE weights: none are '
            f'published yet). At eval capacity E/K the outputs are the dense model\'s; the routers start near '
            f'uniform, so fine-tune, with TGR, before relying on routing.')
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
