"""Autocast where a device has it: the fp32 region of the routers, the dtype the grouped matmuls run in.

``torch.autocast(device_type='meta', enabled=False)`` raises ("unsupported scalarType"), and a model built on the
``meta`` device (timm's default-config tests, tools that build models without memory) must still run a forward:
there, and on any device without autocast, the region is a no-op (nothing can autocast there anyway).
"""
import contextlib
from typing import Optional

import torch

__all__ = ['autocast_dtype', 'autocast_off']


def _has_autocast(device_type: str) -> bool:
    available = getattr(getattr(torch, 'amp', None), 'is_autocast_available', None)
    if available is not None:
        return available(device_type)
    return device_type != 'meta'


def autocast_off(device_type: str):
    """A context with autocast disabled on ``device_type`` (a no-op context where it has no autocast)."""
    if _has_autocast(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


def autocast_dtype(device_type: str) -> Optional[torch.dtype]:
    """The autocast dtype for ``device_type`` if autocast is on there, else None (torch >= 2.4 API)."""
    if not _has_autocast(device_type):
        return None
    try:
        if torch.is_autocast_enabled(device_type):
            return torch.get_autocast_dtype(device_type)
    except TypeError:  # older torch: no device_type argument
        if device_type == 'cuda' and torch.is_autocast_enabled():
            return torch.get_autocast_gpu_dtype()
    return None
