"""Construction-time validation of hyper-parameters shared by every kind of method: a bad value raises a
``ValueError`` naming the method, the argument, the value and what is valid."""

from __future__ import annotations

import math


def check_fraction(method: str, name: str, value: float, low_open: bool = True, high_open: bool = False) -> float:
    """Validate a fraction hyper-parameter in (0, 1] (or the interval the flags give)."""
    ok = (
        is_finite_number(value) and (value > 0 if low_open else value >= 0) and (value < 1 if high_open else value <= 1)
    )
    if not ok:
        lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
        raise ValueError(f"{method}: {name} must be in {lo}0, 1{hi}, got {value!r}")
    return float(value)


def is_finite_number(value: object) -> bool:
    """A finite int or float (a bool is not a number here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_nonnegative(method: str, name: str, value: float) -> float:
    """Validate a non-negative finite coefficient."""
    if not (is_finite_number(value) and value >= 0):
        raise ValueError(f"{method}: {name} must be a non-negative finite number, got {value!r}")
    return float(value)


def check_positive(method: str, name: str, value: float) -> float:
    """Validate a positive finite number."""
    if not (is_finite_number(value) and value > 0):
        raise ValueError(f"{method}: {name} must be a positive finite number, got {value!r}")
    return float(value)


def check_positive_int(method: str, name: str, value: int) -> int:
    """Validate a positive integer."""
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        raise ValueError(f"{method}: {name} must be a positive integer, got {value!r}")
    return value


def check_choice(method: str, name: str, value: str, valid: tuple[str, ...]) -> str:
    """Validate a string option."""
    if value not in valid:
        raise ValueError(f"{method}: {name} must be one of {valid}, got {value!r}")
    return value
