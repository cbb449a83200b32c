"""The one error family users see.

Every user-facing failure (a bad spec, a bad flag, a bad data file) raises a
subclass of :class:`MoescaleError` whose message names the field, the allowed
values and the value received. The CLI turns these into one line on stderr and
exit code 2; library users catch them like any ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "MoescaleError", "ConfigError", "DataError", "NotFittedError", "check_keys", "check_range",
]


class MoescaleError(ValueError):
    """Base class of every error moescale raises for bad user input."""


class ConfigError(MoescaleError):
    """An invalid architecture, law, training or sweep configuration."""


class DataError(MoescaleError):
    """An unreadable, incomplete or invalid data file or run table."""


class NotFittedError(MoescaleError, AttributeError):
    """``predict`` (or a fitted attribute) was used before ``fit``."""


def check_keys(data: Iterable[str], allowed: Iterable[str], what: str) -> None:
    """Raise :class:`ConfigError` naming the keys of ``data`` not in ``allowed``, and those allowed.

    ``what`` names one key in the message, e.g. ``"train option"``.

    >>> check_keys({"top_k": 2}, ("top_k", "n_experts"), "MoE option")
    """
    allowed = set(allowed)
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(
            f"unknown {what}(s) {', '.join(map(repr, unknown))}; "
            f"allowed: {', '.join(sorted(allowed))}"
        )


def check_range(
    name: str,
    value: float,
    *,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
    integer: bool = False,
    error: type[MoescaleError] = ConfigError,
) -> None:
    """Raise ``error`` naming ``name``, the allowed range and ``value`` if out of range.

    >>> check_range("top_k", 3, low=1, high=8, integer=True)
    """
    import math

    kind = "an int" if integer else "a number"
    lo = "-inf" if low is None else f"{low:g}"
    hi = "inf" if high is None else f"{high:g}"
    interval = f"{'[' if low_inclusive else '('}{lo}, {hi}{']' if high_inclusive else ')'}"
    bad = isinstance(value, bool) or not isinstance(value, (int, float))
    if not bad and integer and not float(value).is_integer():
        bad = True
    if not bad and not math.isfinite(float(value)):
        bad = True
    if not bad and low is not None:
        bad = value < low if low_inclusive else value <= low
    if not bad and high is not None:
        bad = value > high if high_inclusive else value >= high
    if bad:
        raise error(f"{name!r} must be {kind} in {interval}; got {value!r}")
