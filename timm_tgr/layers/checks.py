"""Argument checks shared by the MoE layers, models and tasks: every number is checked where it is given.

A value that would only fail at the first forward (``capacity_factor=inf``), or never fail and quietly
spoil training (a NaN loss weight), is refused at construction with a message naming the argument.
"""
import math
from numbers import Integral, Real
from typing import Optional

__all__ = ['check_count', 'check_weight', 'check_positive']


def _is_number(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def check_count(name: str, value, minimum: Optional[int] = 1, meaning: str = '') -> int:
    """``value`` as an int >= ``minimum`` (None: any int); a bool, float or string is an error (``top_k=1.5``
    is no count)."""
    if isinstance(value, bool) or not isinstance(value, Integral) or (minimum is not None and value < minimum):
        extra = f' ({meaning})' if meaning else ''
        what = f'>= {minimum} and an integer' if minimum is not None else 'an integer'
        raise ValueError(f'{name} must be {what}{extra}, got {value!r}.')
    return int(value)


def check_weight(name: str, value, meaning: str = '') -> float:
    """``value`` as a finite float >= 0: a loss weight or a noise std (0 turns it off)."""
    if not _is_number(value) or not math.isfinite(value) or value < 0:
        extra = f' ({meaning})' if meaning else ''
        raise ValueError(f'{name} must be >= 0 and finite{extra}, got {value!r}.')
    return float(value)


def check_positive(name: str, value: Optional[float], meaning: str = '', allow_none: bool = False) -> Optional[float]:
    """``value`` as a finite float > 0 (None passes when ``allow_none``)."""
    if value is None and allow_none:
        return None
    if not _is_number(value) or not math.isfinite(value) or not value > 0:
        extra = f' ({meaning})' if meaning else ''
        raise ValueError(f'{name} must be > 0 and finite{extra}, got {value!r}.')
    return float(value)
