"""torch.hub entrypoints: every model timm_tgr registers with timm.

    model = torch.hub.load('/path/to/timm-tgr', 'tgr_moe_deit_small', source='local', num_classes=100)
    # timm's dense DeiT-Small weights upcycled on load (the default tag until trained weights are published)
    model = torch.hub.load('/path/to/timm-tgr', 'tgr_moe_deit_small', source='local', pretrained=True)
    model = torch.hub.load('/path/to/timm-tgr', 'tgr_moe_deit_small', source='local', pretrained=True,
                           pretrained_cfg_overlay=dict(file='DIR/model.safetensors'))

Each entrypoint is ``timm.create_model(name, pretrained=pretrained, **kwargs)``.
"""
import os as _os
import sys as _sys

dependencies = ['torch', 'timm']

_here = _os.path.dirname(_os.path.abspath(__file__))
_added = _here not in _sys.path
if _added:
    _sys.path.insert(0, _here)  # import timm_tgr from this repository
try:
    import timm as _timm
    import timm_tgr as _timm_tgr  # noqa: F401  (registers the models)
finally:
    if _added:
        _sys.path.remove(_here)


def _entrypoint(name: str):
    def entrypoint(pretrained: bool = False, **kwargs):
        return _timm.create_model(name, pretrained=pretrained, **kwargs)
    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__doc__ = _timm.models.model_entrypoint(name).__doc__
    return entrypoint


_models = [n for n in _timm.list_models() if _timm.models.model_entrypoint(n).__module__.startswith('timm_tgr.')]
globals().update({_n: _entrypoint(_n) for _n in _models})
