"""Sparse upcycling (Komatsuzaki et al., ICLR 2023): V-MoE / TGR-MoE DeiT weights from a dense ViT checkpoint.

Every expert of an MoE block starts as a copy of the dense block's MLP. A V-MoE block then computes
``y = sum_k p_k * MLP(x)`` over the kept top-K choices, with the un-renormalized softmax gates p_k of
:mod:`timm_tgr.layers.router`, and a choice over its expert's capacity adds nothing. Three choices make the eval-mode
outputs those of the dense model (measurements: docs/upcycling.md):

- ``expert_scale`` (default E/K) multiplies every expert's fc2 weight and bias, so that near-uniform gates
  p_k = 1/E give ``sum_k 1/E * E/K * MLP(x) = MLP(x)``.
- The router is random with a tiny per-token logit std ``router_logit_std`` (1e-5): gates are 1/E to about
  ``3 * router_logit_std`` (relative), yet the top-K choice still differs from token to token (a zero router ties
  every token onto expert 0). Its rows are orthogonal to the dense block's norm2 bias, a constant that would
  otherwise favour one expert for every token.
- No choice may be dropped. Only an expert capacity C >= S, i.e. ``eval_capacity_factor >= E/K``, guarantees that
  whatever the routing; the ``*.fb_in1k_upcycled`` cfgs of :mod:`timm_tgr.models.vmoe_deit` default to it. There the
  MoE layers take the dropless path (no capacity buffer), so eval costs about what the dense model's does.

The checkpoint first goes through timm's ViT ``checkpoint_filter_fn`` (patch / position embedding resampling for
another image or patch size, layer-scale renaming; the first conv is adapted to another channel count as timm's
pretrained loading does; each logged), then the MLPs of the MoE blocks are upcycled; the rest is loaded as is.

Before that, the checkpoint's layout is checked against the model's, naming both values and the model kwargs that
fix a difference: width, depth, distillation token, class token, register tokens, layer scale (``init_values``),
position embedding without the prefix tokens (``no_embed_class``), ``qkv_bias``, ``fc_norm``, ``pre_norm``. DeiT-III
checkpoints (``deit3_*``: layer scale, ``no_embed_class``) upcycle into a model created with
``no_embed_class=True, init_values=1e-6`` (the layer-scale values come from the checkpoint).
"""
import logging
import os
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import torch
import torch.nn as nn
from timm.models import adapt_input_conv
from timm.models.vision_transformer import checkpoint_filter_fn

from ..layers import SparseMoE
from ._moe_vit import moe_model

try:
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled
except ImportError:  # huggingface_hub < 0.23 keeps them in utils
    from huggingface_hub.utils import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

__all__ = [
    'UPCYCLED_TAG', 'UPCYCLE_ROUTER_LOGIT_STD', 'is_upcycled_tag', 'init_upcycled_router', 'is_dense_state_dict',
    'load_dense_state_dict', 'upcycle_checkpoint_filter_fn', 'upcycle_dense_state_dict', 'upcycle_from',
    'upcycled_eval_capacity_factor',
]

_logger = logging.getLogger(__name__)

UPCYCLE_ROUTER_LOGIT_STD = 1e-5
UPCYCLED_TAG = 'fb_in1k_upcycled'  # the pretrained tag of dense DeiT weights upcycled on load
_DEIT_WIDTHS = {192: 'tiny', 384: 'small', 768: 'base'}
_FILE_SUFFIXES = ('.safetensors', '.pth', '.tar', '.pt', '.bin', '.ckpt')
# what timm's hub download raises offline or for a repo it cannot reach
_HUB_ERRORS = (LocalEntryNotFoundError, HfHubHTTPError, OfflineModeIsEnabled)


def is_upcycled_tag(tag: Optional[str]) -> bool:
    """Whether a pretrained tag names dense weights upcycled on load (``*.fb_in1k_upcycled``)."""
    return bool(tag) and tag.endswith('_upcycled')


def upcycled_eval_capacity_factor(num_experts: int, top_k: int = 1) -> float:
    """E/K: the eval capacity factor at which C = ceil(S * K * cf / E) = S, so no choice is ever dropped."""
    return num_experts / top_k


def _unwrap(state_dict: Dict) -> Dict[str, torch.Tensor]:
    """A state_dict nested as timm's filters read it: ``{'model': ...}`` (FB DeiT) or ``{'state_dict': ...}``."""
    for key in ('model', 'state_dict'):
        if isinstance(state_dict.get(key), dict):
            state_dict = state_dict[key]
    return state_dict


def _model_name(model: nn.Module) -> str:
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    return cfg.get('architecture') or type(model).__name__


def _moe_layers(model: nn.Module) -> Dict[int, SparseMoE]:
    """``{block index: SparseMoE}`` of ``model``; errors (never TypeError: timm retries filters on it) otherwise."""
    base = moe_model(model)
    layers = base.get_moe_layers() if base is not None else {}
    if not layers:
        raise ValueError(
            f'{type(model).__name__} has no MoE blocks to upcycle into: create a vmoe_deit_* or tgr_moe_deit_* model.')
    for i, moe in layers.items():
        if not isinstance(moe, SparseMoE):
            raise ValueError(
                f'block {i} of {_model_name(model)} is a {type(moe).__name__}; upcycling builds top-K SparseMoE '
                f'experts only: use a vmoe_deit_* or tgr_moe_deit_* model.')
    return layers


def is_dense_state_dict(state_dict: Dict) -> bool:
    """Whether ``state_dict`` is a dense ViT's: MLPs (``blocks.{i}.mlp.fc1.weight``) and no MoE layer tensors."""
    keys = list(_unwrap(state_dict))
    return any(k.endswith('.mlp.fc1.weight') for k in keys) and not any(
        '.mlp.experts.' in k or '.mlp.router.' in k for k in keys)


def _size_hint(width: int) -> str:
    size = _DEIT_WIDTHS.get(width)
    hint = f' (vmoe_deit_{size} / tgr_moe_deit_{size})' if size else ''
    return f'upcycle it into a model of width {width}{hint}, or create the model with embed_dim={width}'


def _check_fits(sd: Dict[str, torch.Tensor], model: nn.Module) -> None:
    """Width, depth and token layout of a dense ViT state_dict against ``model``; errors name both and the fix."""
    name = _model_name(model)
    if 'blocks.0.norm1.weight' not in sd:
        raise ValueError(
            f'the dense checkpoint is not a timm ViT / DeiT state_dict (no blocks.0.norm1.weight; keys start '
            f'{sorted(sd)[:5]}): give a timm DeiT checkpoint, e.g. deit_small_patch16_224.fb_in1k.')
    width, own_width = sd['blocks.0.norm1.weight'].shape[0], model.blocks[0].norm1.weight.shape[0]
    if width != own_width:
        raise ValueError(
            f'the dense checkpoint has width {width} (blocks.0.norm1.weight of shape ({width},)) but {name} has width '
            f'{own_width}: {_size_hint(width)}.')
    depth = 1 + max(int(k.split('.')[1]) for k in sd if k.startswith('blocks.'))
    if depth != len(model.blocks):
        raise ValueError(
            f'the dense checkpoint has depth {depth} (blocks.0-{depth - 1}) but {name} has depth {len(model.blocks)}: '
            f'create the model with depth={depth} and moe_layers inside range({depth}).')
    distilled, own_distilled = 'dist_token' in sd, getattr(model, 'dist_token', None) is not None
    if distilled != own_distilled:
        layouts = ('the distilled DeiT layout (class + distillation token, head_dist)', 'the plain layout')
        fix = 'a *_distilled model (e.g. vmoe_deit_small_distilled)' if distilled else 'a model without _distilled'
        raise ValueError(
            f'the dense checkpoint has {layouts[not distilled]} but {name} has {layouts[not own_distilled]}: '
            f'upcycle it into {fix}.')
    _check_layout(sd, model, name)


def _is_square(n: int) -> bool:
    return n >= 0 and int(round(n ** 0.5)) ** 2 == n


def _has_layer_scale(sd: Dict[str, torch.Tensor]) -> bool:
    return any(k in sd for k in ('blocks.0.ls1.gamma', 'blocks.0.gamma_1'))


def _dense_no_embed_class(sd: Dict[str, torch.Tensor], prefix: int, model: nn.Module) -> Optional[bool]:
    """Whether the dense position embedding leaves out the prefix tokens (DeiT-III): its length is a square grid,
    or a grid plus the prefix tokens. None when that cannot be told (no pos_embed, no prefix tokens)."""
    pos = sd.get('pos_embed')
    if pos is None or pos.ndim != 3 or prefix == 0:
        return None
    n = pos.shape[1]
    square, square_after_prefix = _is_square(n), _is_square(n - prefix)
    if square != square_after_prefix:
        return square
    own = getattr(model, 'pos_embed', None)
    if own is not None and own.shape[1] == n:  # both readings possible: the model's own layout has this length
        return bool(getattr(model, 'no_embed_class', False))
    return None


def _layouts(sd: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, Tuple[Any, Any, Dict[str, Any]]]:
    """``{field: (dense value, model value, create_model kwargs that give the model the dense value)}`` of the
    token and block layout fields that decide whether the tensors fit (width, depth and distillation are
    checked before)."""
    class_token = 'cls_token' in sd
    reg = sd['reg_token'].shape[1] if 'reg_token' in sd else 0
    prefix = int(class_token) + reg + int('dist_token' in sd)
    own_pool = getattr(model, 'global_pool', 'token')
    block = model.blocks[0]
    fields = {
        'class_token': (class_token, getattr(model, 'cls_token', None) is not None,
                        dict(class_token=class_token, **({} if class_token or own_pool != 'token'
                                                         else {'global_pool': 'avg'}))),
        'reg_tokens': (reg, getattr(model, 'num_reg_tokens', 0), dict(reg_tokens=reg)),
        'layer scale (init_values)': (_has_layer_scale(sd), not isinstance(getattr(block, 'ls1', nn.Identity()),
                                                                           nn.Identity),
                                      dict(init_values=1e-6 if _has_layer_scale(sd) else None)),
        'qkv_bias': ('blocks.0.attn.qkv.bias' in sd, getattr(block.attn.qkv, 'bias', None) is not None,
                     dict(qkv_bias='blocks.0.attn.qkv.bias' in sd)),
        'fc_norm': ('fc_norm.weight' in sd, not isinstance(getattr(model, 'fc_norm', nn.Identity()), nn.Identity),
                    dict(fc_norm='fc_norm.weight' in sd)),
        'pre_norm': ('norm_pre.weight' in sd, not isinstance(getattr(model, 'norm_pre', nn.Identity()), nn.Identity),
                     dict(pre_norm='norm_pre.weight' in sd)),
    }
    no_embed_class = _dense_no_embed_class(sd, prefix, model)
    if no_embed_class is not None:
        fields['no_embed_class'] = (no_embed_class, bool(getattr(model, 'no_embed_class', False)),
                                    dict(no_embed_class=no_embed_class))
    return fields


def _kwargs_text(kwargs: Dict[str, Any]) -> Tuple[str, str]:
    """``('no_embed_class=True, init_values=1e-06', 'no_embed_class=True init_values=1e-06')``: Python and CLI."""
    items = [f'{k}={v!r}' if isinstance(v, str) else f'{k}={v}' for k, v in kwargs.items()]
    return ', '.join(items), ' '.join(items)


def _check_layout(sd: Dict[str, torch.Tensor], model: nn.Module, name: str) -> None:
    """Every layout field of :func:`_layouts` must agree; the error names both values and the model kwargs that fix
    it (a DeiT-III checkpoint, ``deit3_*``, needs ``no_embed_class=True, init_values=1e-6``)."""
    differ = {f: v for f, v in _layouts(sd, model).items() if v[0] != v[1]}
    if not differ:
        return
    fix = {}
    for _, _, kwargs in differ.values():
        fix.update(kwargs)
    py, cli = _kwargs_text(fix)
    parts = '; '.join(f'{f}: checkpoint {d}, model {m}' for f, (d, m, _) in differ.items())
    deit3 = ' (the layout of DeiT-III, deit3_* checkpoints)' if fix.get('no_embed_class') and fix.get('init_values') \
        else ''
    raise ValueError(
        f'the dense checkpoint\'s token / block layout differs from {name}\'s ({parts}): create the model with '
        f'{py}{deit3} (train_tgr.py: --model-kwargs {cli}).')


def _note_resampling(sd: Dict[str, torch.Tensor], model: nn.Module, adapt_in_chans: bool = True) -> None:
    """Log what timm's checkpoint filter resamples or adapts: another patch size, grid (image size) or channels."""
    w = sd.get('patch_embed.proj.weight')
    own = model.patch_embed.proj.weight
    if w is None or w.ndim != 4:
        return
    notes = []
    if tuple(w.shape[-2:]) != tuple(own.shape[-2:]):
        notes.append(f'patch size {tuple(w.shape[-2:])} -> {tuple(own.shape[-2:])} (patch embedding resampled)')
    pos, own_pos = sd.get('pos_embed'), getattr(model, 'pos_embed', None)
    if pos is not None and own_pos is not None and pos.shape[1] != own_pos.shape[1]:
        grid, size = tuple(model.patch_embed.grid_size), tuple(model.patch_embed.img_size)
        notes.append(f'{pos.shape[1]} -> {own_pos.shape[1]} position embeddings (resampled to the {grid} patch grid '
                     f'of image size {size})')
    if w.shape[1] != own.shape[1] and adapt_in_chans:
        notes.append(f'{w.shape[1]} -> {own.shape[1]} input channels (first conv adapted as timm\'s pretrained '
                     f'loading does)')
    if notes:
        _logger.info(f'Upcycling into {_model_name(model)}: {"; ".join(notes)}.')


def init_upcycled_router(
        num_experts: int,
        dim: int,
        norm_weight: Optional[torch.Tensor] = None,
        norm_bias: Optional[torch.Tensor] = None,
        logit_std: float = UPCYCLE_ROUTER_LOGIT_STD,
        generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Router weight ``[E, dim]``: Gaussian rows orthogonal to the norm2 bias, each giving logits of std ``logit_std``.

    The router reads ``LayerNorm(x) = gamma * x_hat + beta``; with x_hat of unit variance per feature, row w gives
    token logits of std ``|w * gamma|`` plus the constant ``w . beta``, which is projected out.
    """
    w = torch.randn(num_experts, dim, generator=generator, dtype=torch.float64)
    if norm_bias is not None and norm_bias.double().norm() > 0:
        b = norm_bias.double() / norm_bias.double().norm()
        w = w - (w @ b)[:, None] * b
    gamma = norm_weight.double() if norm_weight is not None else torch.ones(dim, dtype=torch.float64)
    w = w / (w * gamma).norm(dim=1, keepdim=True).clamp_min(1e-12)
    return (w * logit_std).float()


def _upcycle_block(
        sd: Dict[str, torch.Tensor],
        i: int,
        moe: SparseMoE,
        expert_scale: float,
        router_logit_std: float,
        generator: torch.Generator,
) -> Dict[str, torch.Tensor]:
    """Pop block ``i``'s dense MLP from ``sd``; return its SparseMoE tensors (E copies, fc2 * expert_scale, router)."""
    p, experts, E = f'blocks.{i}.mlp.', moe.experts, moe.num_experts
    dense = {k: sd.pop(p + k, None) for k in ('fc1.weight', 'fc1.bias', 'fc2.weight', 'fc2.bias')}
    want = {'fc1.weight': experts.fc1_weight, 'fc1.bias': experts.fc1_bias,
            'fc2.weight': experts.fc2_weight, 'fc2.bias': experts.fc2_bias}
    for k, param in want.items():
        got = None if dense[k] is None else tuple(dense[k].shape)
        need = None if param is None else tuple(param.shape[1:])
        if got != need:
            raise ValueError(
                f'block {i}: the dense mlp.{k} is {got or "absent"} but each expert of the MoE layer needs '
                f'{need or "none"}: create the model with the dense model\'s mlp_ratio and bias settings.')
    out = {}
    for k, param in want.items():
        if param is not None:
            t = dense[k] * expert_scale if k.startswith('fc2') else dense[k]
            out[p + 'experts.' + k.replace('.', '_')] = t.unsqueeze(0).expand(E, *t.shape).contiguous()
    norm_w, norm_b = sd.get(f'blocks.{i}.norm2.weight'), sd.get(f'blocks.{i}.norm2.bias')
    dim = experts.fc1_weight.shape[2]
    out[p + 'router.proj.weight'] = init_upcycled_router(E, dim, norm_w, norm_b, router_logit_std, generator)
    return out


def upcycle_dense_state_dict(
        state_dict: Dict,
        model: nn.Module,
        expert_scale: Optional[float] = None,
        router_logit_std: float = UPCYCLE_ROUTER_LOGIT_STD,
        seed: int = 0,
        adapt_in_chans: bool = True,
) -> Dict[str, torch.Tensor]:
    """A dense timm ViT / DeiT state_dict made into one for ``model`` (a V-MoE / TGR-MoE DeiT) by sparse upcycling.

    Args:
        state_dict: dense weights (keys like ``blocks.7.mlp.fc1.weight``; ``{'model'|'state_dict': ...}`` unwrapped).
        model: the target model; its MoE blocks get E copies of the dense MLP, the other keys pass through timm's
            ViT ``checkpoint_filter_fn`` (position / patch embedding resampling). The head is left as in the
            checkpoint (``upcycle_from`` and timm's pretrained loading drop it when num_classes differs).
        expert_scale: factor on every expert's fc2 weight and bias; None = E/K (function-preserving at gates 1/E).
        router_logit_std: per-token std of the initial router logits (0 = zero router: every token ties on expert 0).
        seed: seed of the router init.
        adapt_in_chans: adapt the first conv to the model's ``in_chans`` (timm's ``adapt_input_conv``); False leaves
            it as in the checkpoint, for timm's pretrained loading, which adapts it itself after the filter.
    """
    sd = _unwrap(state_dict)
    layers = _moe_layers(model)
    _check_fits(sd, model)
    _note_resampling(sd, model, adapt_in_chans)
    sd = dict(checkpoint_filter_fn(sd, model, adapt_layer_scale=True))
    w, own = sd.get('patch_embed.proj.weight'), model.patch_embed.proj.weight
    if adapt_in_chans and w is not None and w.ndim == 4 and w.shape[1] != own.shape[1]:
        sd['patch_embed.proj.weight'] = adapt_input_conv(own.shape[1], w)
    generator = torch.Generator().manual_seed(seed)
    for i, moe in layers.items():
        if f'blocks.{i}.mlp.fc1.weight' not in sd:
            continue  # already an MoE layer
        scale = upcycled_eval_capacity_factor(moe.num_experts, moe.top_k) if expert_scale is None else expert_scale
        sd.update(_upcycle_block(sd, i, moe, scale, router_logit_std, generator))
    return sd


def upcycle_checkpoint_filter_fn(state_dict: Dict, model: nn.Module) -> Dict[str, torch.Tensor]:
    """``pretrained_filter_fn`` of the V-MoE DeiT models: upcycles a dense checkpoint, gives others to timm's.

    The first conv keeps the checkpoint's channels: timm's pretrained loading adapts it to the model's ``in_chans``
    after the filter, and says so ("Converted input conv ... from 3 to N channel(s)"). Adapted here, timm would
    adapt it again (timm 1.0.29: a no-op for 1 channel, random init for others) or log that the weights "already
    match ... Loading unchanged" (1.0.31), which is not what happened.
    """
    if is_dense_state_dict(state_dict):
        return upcycle_dense_state_dict(state_dict, model, adapt_in_chans=False)
    return checkpoint_filter_fn(state_dict, model)


def _checkpoint_state_dict(path: Path, ema: Optional[bool], trust_checkpoint: bool = False) -> Dict[str, torch.Tensor]:
    """The student state_dict of a file: bare state_dict (.safetensors / .pth) or a timm / train_tgr.py checkpoint,
    its weights picked by :func:`timm_tgr.utils.checkpoint.select_weights`."""
    from ..utils.checkpoint import check_finite, describe_weights, read_checkpoint, select_weights, student_state_dict
    ckpt = read_checkpoint(path, trust_checkpoint=trust_checkpoint, what='dense checkpoint')
    raw, key = select_weights(ckpt, path, ema=ema, what='dense checkpoint', ema_flag='ema=True')
    sd = student_state_dict(raw)[0]
    check_finite(sd, f'dense checkpoint {path} [{key or "state_dict"}]',
                 'Upcycle an earlier checkpoint of that run (checkpoint-N.pth.tar of an epoch before it diverged).')
    _logger.info(f'Upcycling {describe_weights(key)} of {path}')
    return sd


def load_dense_state_dict(source: Union[str, os.PathLike], ema: Optional[bool] = None,
                          trust_checkpoint: bool = False) -> Dict[str, torch.Tensor]:
    """The state_dict of ``source``: a file (``.safetensors``, ``.pth`` state_dict, timm / train_tgr.py checkpoint
    ``.pth.tar``; ``ema`` picks its weights as :func:`timm_tgr.utils.checkpoint.select_weights`), a folder saved by
    timm (``local-dir:``), or anything ``timm.create_model(source, pretrained=True)`` takes
    (``deit_small_patch16_224.fb_in1k``, ``hf-hub:ORG/NAME``; offline, from the Hugging Face cache)."""
    import timm
    path = Path(os.path.expanduser(str(source)))
    if path.is_file():
        return _checkpoint_state_dict(path, ema, trust_checkpoint)
    if path.is_dir():
        source = f'local-dir:{path}'
    elif str(source).endswith(_FILE_SUFFIXES):
        raise FileNotFoundError(f'dense checkpoint {source} not found.')
    try:
        return timm.create_model(str(source), pretrained=True).state_dict()
    except RuntimeError as e:
        if not str(e).startswith('Unknown model'):
            raise
        raise ValueError(
            f'{source!r} is neither a checkpoint file nor a timm model: give a .safetensors / .pth / .pth.tar file, '
            f"a saved folder, 'hf-hub:ORG/NAME' or a timm name such as 'deit_small_patch16_224.fb_in1k'.") from e
    except _HUB_ERRORS as e:
        reason = (str(e).strip().splitlines() or [''])[0][:200]
        raise RuntimeError(
            f'could not get the dense weights of {source!r} ({type(e).__name__}: {reason}): they are neither in the '
            f'local Hugging Face cache nor downloadable (offline, or no such repo). Download them once online '
            f'(HF_HUB_OFFLINE unset), or give a local file: e.g. save timm.create_model({str(source)!r}, '
            f'pretrained=True).state_dict() with safetensors.torch.save_file and pass that .safetensors.') from e


def _keep_own_head(sd: Dict[str, torch.Tensor], model: nn.Module) -> bool:
    """As timm's pretrained loading when num_classes differs: classifier tensors that do not fit keep the model's."""
    own = model.state_dict()
    names = (getattr(model, 'pretrained_cfg', None) or {}).get('classifier') or ('head', 'head_dist')
    names = (names,) if isinstance(names, str) else names
    kept = False
    for k in [n + s for n in names for s in ('.weight', '.bias')]:
        if k in sd and (k not in own or own[k].shape != sd[k].shape):
            sd.pop(k)
            kept = True
            if k in own:
                sd[k] = own[k]
    return kept


def _drops_nothing_in_eval(moe: SparseMoE) -> bool:
    cf = moe.eval_capacity_factor if moe.eval_capacity_factor is not None else moe.capacity_factor
    return isinstance(cf, str) or cf >= upcycled_eval_capacity_factor(moe.num_experts, moe.top_k)  # or 'dropless'


def upcycle_from(source: Union[str, os.PathLike], model: nn.Module, ema: Optional[bool] = None,
                 trust_checkpoint: bool = False, **kwargs) -> nn.Module:
    """Load ``model`` (a V-MoE / TGR-MoE DeiT) in place from the dense checkpoint ``source`` by sparse upcycling.

    ``source`` is whatever :func:`load_dense_state_dict` takes; ``kwargs`` go to :func:`upcycle_dense_state_dict`.
    A classifier of another num_classes keeps the model's own init (as timm's pretrained loading does). In eval mode
    the model computes the dense function when no choice is dropped: ``eval_capacity_factor >= E/K`` guarantees it.
    """
    sd = upcycle_dense_state_dict(load_dense_state_dict(source, ema, trust_checkpoint), model, **kwargs)
    if _keep_own_head(sd, model):
        _logger.info(f'Upcycling {source}: its classifier does not fit num_classes={model.num_classes}, kept new init.')
    try:
        model.load_state_dict(sd)
    except RuntimeError as e:
        raise RuntimeError(
            f'the upcycled weights of {source} do not fit {_model_name(model)}: create the model with the dense '
            f'model\'s architecture args (patch_size, num_heads, qkv_bias, init_values, ...).\n{e}') from e
    short = [i for i, m in _moe_layers(model).items() if not _drops_nothing_in_eval(m)]
    if short:
        _logger.info(f'MoE blocks {short} may drop tokens in eval mode, so the upcycled model is not exactly the '
                     f'dense one there: create it with eval_capacity_factor=E/K for that.')
    return model
