"""Argument checks shared by every layer (ops to cli): one wording for one kind of mistake.

A leaf module: it imports nothing from mambakit, so ops/ may use it too.
"""
from __future__ import annotations

import math


def require_int(name: str, value, minimum: int = 1) -> int:
    """`value` if it is an int (not a bool) >= `minimum`, else a ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def require_finite(name: str, value, low: float | None = None, low_inclusive: bool = True) -> float:
    """`value` if it is a finite number (not a bool; nan and inf are refused) above `low`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    if low is not None and (value < low or (value == low and not low_inclusive)):
        raise ValueError(f"{name} must be {'>=' if low_inclusive else '>'} {low}, got {value}")
    return value
