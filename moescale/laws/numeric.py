"""Validation and formatting of the numbers laws take and hold.

Every law input goes through :func:`check_positive` and every coefficient through
:func:`finite_params`, so a bad value is one :class:`ConfigError` naming the field, the
allowed range and the value; :func:`format_number` prints a coefficient so that it reads
back exactly (``law.formula()``).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike

from moescale.errors import ConfigError

__all__ = ["finite_params", "check_positive", "as_scalar_or_array", "format_number"]


def finite_params(obj: object, names: tuple[str, ...]) -> dict[str, float]:
    """``{name: float}`` for the named attributes of ``obj`` (a coefficient set).

    Raises :class:`ConfigError` naming the first attribute that is not a finite number,
    so every coefficient dataclass validates itself and exposes its form's kwargs alike.
    """
    out = {}
    for name in names:
        v = getattr(obj, name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ConfigError(f"{name!r} must be a finite number; got {v!r}")
        out[name] = float(v)
    return out


def as_scalar_or_array(x: np.ndarray) -> float | np.ndarray:
    """A 0-d result as a Python float, anything else unchanged."""
    x = np.asarray(x, dtype=float)
    return float(x) if x.ndim == 0 else x


def check_positive(
    name: str, value: ArrayLike, *, high: float | None = None, high_inclusive: bool = True
) -> np.ndarray:
    """Validate that every element of ``value`` is a finite number in ``(0, high]``.

    Raises :class:`ConfigError` naming the input, the allowed range and the first bad value.
    """
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise ConfigError(f"{name!r} must be a number; got {value!r}") from None
    flat = arr.reshape(-1)
    close = "]" if high_inclusive else ")"
    interval = "(0, inf)" if high is None else f"(0, {high:g}{close}"
    for v in flat:
        bad = not math.isfinite(v) or v <= 0
        if not bad and high is not None:
            bad = v > high if high_inclusive else v >= high
        if bad:
            shown = v if arr.ndim == 0 else f"{v} (in an array)"
            raise ConfigError(f"{name!r} must be a number in {interval}; got {shown}")
    return arr


def format_number(x: float) -> str:
    """Shortest text that reads back as ``x`` (``repr``), exponent without ``+``."""
    return repr(float(x)).replace("e+", "e")
