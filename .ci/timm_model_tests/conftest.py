"""conftest for timm's own ``tests/test_models.py`` (from the sdist of the installed timm, never copied here), run
on timm_tgr's models by ``.ci/timm_model_tests/run``.

It imports the plugin (which registers the models) and does two things, nothing else:

- our models are timm DeiTs (``VisionTransformer`` subclasses) registered from our own modules, so timm's
  test lists, which name its DeiTs by module (``'deit'``) and by name (``'deit*'``), would miss them or put them
  in the spatial-CNN groups. ``list_models`` is wrapped so each of our models is listed where timm lists its
  ``deit_*`` models: in the non-standard (ViT) default-cfg test, in the ``forward_intermediates`` tests, and out of
  the hook-based ``features_only`` test, exactly as timm treats its own DeiT.
- only our models run (``TIMM_TGR_TEST_MODELS``, fnmatch patterns separated by commas; default: the tiny model of
  each model class, ``tgr_moe_deit_tiny*`` being ``vmoe_deit_tiny*``'s class with another pretrained cfg);
  every other test item is deselected. Tests timm runs for its DeiT but that we do not support are deselected
  and named in ``docs/timm_compat.md``: TorchScript (not supported, see there).
"""
import fnmatch
import os

import pytest
import timm

import timm_tgr  # noqa: F401  (registers the models)

_MODULES = ['vmoe_deit', 'moe_baselines']  # timm_tgr.models.<module> that register models
_DEFAULT = 'vmoe_deit_tiny,vmoe_deit_tiny.*,vmoe_deit_tiny_distilled*,soft_moe_deit_tiny*,ec_moe_deit_tiny*'
_SELECT = [p.strip() for p in os.environ.get('TIMM_TGR_TEST_MODELS', _DEFAULT).split(',') if p.strip()]
# tests of timm's DeiT that timm_tgr does not support (docs/timm_compat.md says why)
_UNSUPPORTED = ['test_model_forward_torchscript', 'test_model_forward_fx_torchscript']
# tests that download pretrained weights from the Hugging Face Hub (CI has no Hub access)
_NEEDS_HUB = ['test_model_load_pretrained', 'test_model_features_pretrained', 'test_model_inference']

_list_models = timm.list_models


def _as_list(patterns):
    return [p for p in ([patterns] if isinstance(patterns, str) else list(patterns or [])) if p]


def _hit(name, patterns):
    return any(fnmatch.fnmatch(name, p) for p in _as_list(patterns))


def _listed_like_deit(name, filter, module, exclude_filters):
    """Whether timm's test lists would list our ``name`` where they list timm's ``deit_*`` models: ``name`` and a
    stand-in ``deit_<name>`` are matched against the name filters, and the module filter sees module ``deit``."""
    names = (name, 'deit_' + name)
    if _as_list(filter) and not any(_hit(n, filter) for n in names):
        return False
    if _as_list(module) and 'deit' not in _as_list(module):
        return False
    return not any(_hit(n, exclude_filters) for n in names)


def list_models(filter='', module='', pretrained=False, exclude_filters='', name_matches_cfg=False,
                include_tags=None):
    ours = _list_models(module=_MODULES, pretrained=pretrained, name_matches_cfg=name_matches_cfg,
                        include_tags=include_tags)
    return [n for n in ours if _hit(n, _SELECT) and _listed_like_deit(n, filter, module, exclude_filters)]


timm.list_models = list_models


def pytest_collection_modifyitems(config, items):
    ours = set(_list_models(module=_MODULES, include_tags=True)) | set(_list_models(module=_MODULES))
    keep, drop = [], []
    for item in items:
        name = getattr(getattr(item, 'callspec', None), 'params', {}).get('model_name')
        ok = name in ours and getattr(item, 'originalname', item.name) not in _UNSUPPORTED + _NEEDS_HUB
        (keep if ok else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
    items[:] = keep
