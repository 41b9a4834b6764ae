"""How the MoE layers meet torch's graph tools.

- torch.fx: the layers are leaf modules (``timm.layers.register_notrace_module``): their routing depends on the
  data (expert capacity, the dropless path, shapes read in Python), so a traced model calls each layer whole, as
  timm's traced models call its own such layers. timm's ``features_only=True, feature_cls='fx'``,
  ``timm.models.create_feature_extractor`` and torchvision's ``create_feature_extractor`` given timm's
  ``tracer_kwargs`` (``leaf_modules=timm.models.get_notrace_modules()``) pick the registration up.
- TorchScript is not supported (dataclass routing records, ``**kwargs`` forwards, properties with setters; and
  ``torch.jit.script`` is deprecated in favour of ``torch.compile`` / ``torch.export``, which work):
  :func:`refuse_torchscript` makes ``torch.jit.script`` stop at once with a message saying so, instead of failing
  deep inside on a source it cannot read.
"""
import torch.nn as nn
from timm.layers import register_notrace_module

__all__ = ['TORCHSCRIPT_UNSUPPORTED', 'refuse_torchscript', 'register_graph_tools']

TORCHSCRIPT_UNSUPPORTED = (
    'timm_tgr MoE models and layers do not support TorchScript (torch.jit.script, deprecated by torch): use '
    'torch.compile or torch.export, or torch.fx with the MoE layers as leaves (timm.models.create_feature_extractor, '
    "features_only=True with feature_cls='fx'); see docs/timm_compat.md.")


def refuse_torchscript(module: nn.Module):
    """``__prepare_scriptable__`` of our modules: ``torch.jit.script`` calls it first, on the module and every
    submodule."""
    raise RuntimeError(f'{type(module).__name__}: {TORCHSCRIPT_UNSUPPORTED}')


def register_graph_tools(*classes):
    """Make each MoE layer class a torch.fx leaf and refuse it to TorchScript."""
    for cls in classes:
        register_notrace_module(cls)
        cls.__prepare_scriptable__ = refuse_torchscript
