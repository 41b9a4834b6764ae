"""timm's ``build_model_with_cfg`` for the timm_tgr model families, with pretrained-loading errors that name the fix.

Every registered timm_tgr model is built through :func:`build_model_with_hub_cfg`: a cfg with no weights fails at
once saying how to make and load some, and a download, a corrupt file or weights of another architecture fail
with a message that says what to do instead of timm's bare exception.
"""
from typing import Optional

try:
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, OfflineModeIsEnabled
except ImportError:  # huggingface_hub < 0.23 keeps them in utils
    from huggingface_hub.utils import EntryNotFoundError, HfHubHTTPError, OfflineModeIsEnabled
from safetensors import SafetensorError
from timm.models import build_model_with_cfg, resolve_pretrained_cfg
from timm.models.vision_transformer import checkpoint_filter_fn

from .upcycle import is_upcycled_tag

__all__ = ['HF_HUB_ORG', 'build_model_with_hub_cfg', 'build_moe_vit', 'weights_location']


# Hugging Face Hub organization where trained timm_tgr weights will be published. Nothing is there yet, so no cfg
# points at it: a cfg gets an hf_hub_id only when its repo exists.
HF_HUB_ORG = 'timm-tgr'
_EXPORT_HOWTO = (
    "train one with train_tgr.py, export the student with `python -m timm_tgr.export CHECKPOINT --out DIR` "
    "(add `--push ORG/NAME` to publish it on the Hub), then load it with "
    "timm.create_model('local-dir:DIR', pretrained=True), timm.create_model('hf-hub:ORG/NAME', pretrained=True) "
    "or timm.create_model('{name}', pretrained=True, pretrained_cfg_overlay=dict(file='DIR/model.safetensors'))")


def weights_location(cfg) -> str:
    """Where the weights of a resolved pretrained cfg come from, as messages name it."""
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
    loc = weights_location(cfg)
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


def build_moe_vit(model_cls, variant: str, pretrained: bool = False, pretrained_filter_fn=checkpoint_filter_fn,
                  **kwargs):
    """An MoE ViT of ``model_cls`` by :func:`build_model_with_hub_cfg`, with timm ViT's feature extraction
    (``features_only``: the blocks' outputs, ``out_indices`` default 3)."""
    out_indices = kwargs.pop('out_indices', 3)
    return build_model_with_hub_cfg(
        model_cls,
        variant,
        pretrained,
        pretrained_filter_fn=pretrained_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls='getter'),
        **kwargs,
    )
