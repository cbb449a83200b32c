"""The scaffolding every law shares: coefficient sets, laws, provenance, fitted ranges.

A law object (:class:`Law`) is a pure form (:mod:`moescale.laws.forms`) plus a
coefficient set (:class:`Coefficients`). The coefficient set carries where its numbers
come from (:class:`Provenance`) and the region of inputs they were fitted on
(:class:`FittedRange`), because a different fit (e.g. one from :mod:`moescale.fit` on
the user's own runs) has its own source and its own range. Published sets are
registered once on their class (:meth:`Coefficients.register`); nothing outside
:mod:`moescale.laws` writes a published number (others print ``law.formula()``).

Status letters follow ``shared/data/scaling_law_coefficients.json``:
``V`` verbatim from the source, ``R`` reproduced numerically, ``I`` inferred or
derived, ``M`` missing (not published or not retrieved), ``F`` fitted by the user.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, ClassVar, Protocol, TypeVar, runtime_checkable

from moescale.errors import ConfigError
from moescale.laws.numeric import (
    as_scalar_or_array,
    check_positive,
    finite_params,
    format_number,
)

__all__ = [
    "Provenance",
    "Interval",
    "FittedRange",
    "RangeReport",
    "Coefficients",
    "Law",
    "LossLaw",
    "USER_FIT",
    "check_positive",
    "as_scalar_or_array",
    "COMPUTE_MAX",
]

COMPUTE_MAX = 1e30
"""Largest training compute (FLOPs) moescale plans or designs for: about 1e5× the largest
published runs (~1e25–1e26). Beyond it token counts leave 64-bit integers and searches
leave any tested range, so larger budgets are refused with this bound stated."""

_STATUSES = ("V", "R", "I", "M", "F")


@dataclass(frozen=True, kw_only=True)
class Provenance:
    """Where a coefficient set comes from.

    Examples
    --------
    >>> Provenance(paper="Tian et al. 2025", arxiv="2507.17702", locator="Eq. 13", status="V")
    Provenance(paper='Tian et al. 2025', arxiv='2507.17702', locator='Eq. 13', status='V', note='')
    """

    paper: str
    """Short citation (first author, year, title fragment)."""
    arxiv: str
    """arXiv id, or ``""`` for a user fit."""
    locator: str
    """Equation / table / figure the numbers come from."""
    status: str
    """V verbatim, R reproduced, I inferred, M missing, F fitted by the user."""
    note: str = ""
    """Free-form caveat (e.g. a sign convention chosen, a rounding)."""

    def __post_init__(self) -> None:
        if self.status not in _STATUSES:
            raise ConfigError(
                f"'status' must be one of {', '.join(_STATUSES)}; got {self.status!r}"
            )

    def cite(self) -> str:
        """One-line citation, e.g. ``Tian et al. 2025 (arXiv 2507.17702), Eq. 13 [V]``."""
        arx = f" (arXiv {self.arxiv})" if self.arxiv else ""
        return f"{self.paper}{arx}, {self.locator} [{self.status}]"

    def as_dict(self) -> dict[str, str]:
        return {
            "paper": self.paper,
            "arxiv": self.arxiv,
            "locator": self.locator,
            "status": self.status,
            "note": self.note,
        }


USER_FIT = Provenance(
    paper="fitted on the user's runs", arxiv="", locator="moescale.fit", status="F"
)
"""Default provenance of a coefficient set built without one (a user fit)."""


@dataclass(frozen=True, kw_only=True)
class Interval:
    """A closed interval ``[low, high]`` of one input; ``None`` bound = unbounded/unknown."""

    low: float | None = None
    high: float | None = None
    source: str = ""
    """Where the bounds come from (e.g. "ablation grid E_a=2, E in {2..256}, LAWS.md §3")."""
    label: str = ""
    """Name shown in messages (defaults to the variable name)."""

    def contains(self, x: float) -> bool:
        """Whether ``x`` lies in the interval (relative tolerance 1e-9 on each bound)."""
        if self.low is not None and x < self.low * (1 - 1e-9):
            return False
        return not (self.high is not None and x > self.high * (1 + 1e-9))

    def describe(self) -> str:
        lo = "(-inf" if self.low is None else f"[{self.low:.4g}"
        hi = "inf)" if self.high is None else f"{self.high:.4g}]"
        return f"{lo}, {hi}"

    def as_dict(self) -> dict:
        return {"low": self.low, "high": self.high, "source": self.source}


@dataclass(frozen=True)
class RangeReport:
    """Result of checking inputs against a fitted range."""

    inside: bool
    """True when every input with a known range is inside it."""
    violations: tuple[str, ...] = ()
    """One message per input outside its range, naming the range."""
    unknown: tuple[str, ...] = ()
    """Inputs whose fitted range the source does not give (not counted as violations)."""

    def as_dict(self) -> dict:
        return {
            "inside": self.inside,
            "violations": list(self.violations),
            "unknown": list(self.unknown),
        }


@dataclass(frozen=True, kw_only=True)
class FittedRange:
    """The region of inputs a coefficient set was fitted on.

    ``variables`` maps an input name to its :class:`Interval`; an input listed in
    ``unknown`` has no published range (it is reported, never silently assumed).
    """

    variables: tuple[tuple[str, Interval], ...] = ()
    unknown: tuple[str, ...] = ()
    note: str = ""
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    @classmethod
    def of(cls, *, unknown: tuple[str, ...] = (), note: str = "",
           **variables: tuple) -> FittedRange:
        """``FittedRange.of(N=(low, high, source[, label]), ...)``, one tuple per input.

        >>> FittedRange.of(N=(1.0, 2.0, "a table")).check(N=3.0).inside
        False
        """
        return cls(variables=tuple((name, Interval(low=v[0], high=v[1], source=v[2],
                                                   label=v[3] if len(v) > 3 else ""))
                                   for name, v in variables.items()),
                   unknown=tuple(unknown), note=note)

    def interval(self, name: str) -> Interval | None:
        for key, iv in self.variables:
            if key == name:
                return iv
        return None

    def check(self, **values: float | None) -> RangeReport:
        """Check scalar inputs; names without a range are listed in ``unknown``."""
        violations: list[str] = []
        unknown: list[str] = []
        for name, value in values.items():
            if value is None:
                continue
            iv = self.interval(name)
            if iv is None:
                unknown.append(name)
                continue
            if not iv.contains(float(value)):
                src = f" ({iv.source})" if iv.source else ""
                violations.append(
                    f"{iv.label or name} = {float(value):.4g} is outside the fitted range "
                    f"{iv.describe()}{src}"
                )
        return RangeReport(inside=not violations, violations=tuple(violations),
                           unknown=tuple(unknown))

    def as_dict(self) -> dict:
        return {
            "variables": {k: iv.as_dict() for k, iv in self.variables},
            "unknown": list(self.unknown),
            "note": self.note,
        }


_C = TypeVar("_C", bound="Coefficients")


@dataclass(frozen=True, kw_only=True)
class Coefficients:
    """A coefficient set of one law form: finite numbers, provenance, fitted range.

    A subclass declares its numbers as ``float`` fields (they are the form's keyword
    arguments, :meth:`params`) and may add constraints (:attr:`POSITIVE`, :attr:`ORDERED`,
    :meth:`validate`); its published sets are registered once with :meth:`register` and
    read back with :meth:`published`.
    """

    provenance: Provenance = USER_FIT
    fitted_range: FittedRange = field(default_factory=FittedRange)

    POSITIVE: ClassVar[tuple[str, ...]] = ()
    """Numbers that must be > 0."""
    ORDERED: ClassVar[tuple[str, str] | None] = None
    """``(low, high)``: two numbers with ``0 < low < high`` (e.g. A_start < A_max)."""
    SETS: ClassVar[Mapping[str, Coefficients]] = MappingProxyType({})
    DEFAULT: ClassVar[str] = ""

    def __post_init__(self) -> None:
        values = self.params()
        for name in self.POSITIVE:
            if values[name] <= 0:
                raise ConfigError(f"{name!r} must be > 0; got {values[name]}")
        if self.ORDERED:
            low, high = self.ORDERED
            if not 0 < values[low] < values[high]:
                raise ConfigError(f"{low!r} must be in (0, {high}={values[high]:g}); "
                                  f"got {values[low]!r}")
        self.validate()

    def validate(self) -> None:
        """Constraints beyond :attr:`POSITIVE` and :attr:`ORDERED`; raise ConfigError."""

    def params(self) -> dict[str, float]:
        """``{name: value}`` of every ``float`` field, in declaration order: the form's
        keyword arguments. Raises :class:`ConfigError` naming a field that is not finite."""
        return finite_params(self, self.names())

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The set's numbers: its fields declared ``float``."""
        return tuple(f.name for f in fields(cls) if f.type in ("float", float))

    @classmethod
    def register(cls: type[_C], sets: dict[str, _C], *, default: str) -> Mapping[str, _C]:
        """Make ``sets`` the class's published sets (read-only), ``default`` the default."""
        cls.SETS = MappingProxyType(dict(sets))
        cls.DEFAULT = default
        return cls.SETS

    @classmethod
    def published(cls: type[_C], name: str | None = None) -> _C:
        """The published set ``name`` (default :attr:`DEFAULT`)."""
        name = cls.DEFAULT if name is None else name
        try:
            return cls.SETS[name]
        except KeyError:
            raise ConfigError(
                f"'name' must be one of {', '.join(map(repr, cls.SETS))}; got {name!r}"
            ) from None


@dataclass(frozen=True, kw_only=True)
class Law:
    """A law form with a coefficient set; subclasses add the form's methods.

    Class attributes name the form: ``KIND`` (``loss``, ``efficiency_leverage``, ...),
    ``EQUATION`` (text), ``CONVENTIONS`` (the convention of every input) and
    ``COEFFICIENTS`` (the :class:`Coefficients` subclass holding its published sets).
    """

    coefficients: Coefficients
    name: str = ""

    KIND: ClassVar[str] = ""
    EQUATION: ClassVar[str] = ""
    CONVENTIONS: ClassVar[Mapping[str, str]] = MappingProxyType({})
    COEFFICIENTS: ClassVar[type[Coefficients]] = Coefficients

    @classmethod
    def published(cls, name: str | None = None) -> Any:
        """The law with the published coefficient set ``name``."""
        coefficients = cls.COEFFICIENTS.published(name)
        return cls(coefficients=coefficients,
                   name=cls.law_name(cls.COEFFICIENTS.DEFAULT if name is None else name))

    @classmethod
    def law_name(cls, set_name: str) -> str:
        """Registry name of the law built on the published set ``set_name``."""
        return set_name

    @property
    def conventions(self) -> dict[str, str]:
        return dict(self.CONVENTIONS)

    @property
    def provenance(self) -> Provenance:
        return self.coefficients.provenance

    @property
    def fitted_range(self) -> FittedRange:
        return self.coefficients.fitted_range

    def formula(self) -> str:
        """The equation followed by this law's numbers."""
        nums = ", ".join(f"{k} = {format_number(v)}" for k, v in self.coefficients.params().items())
        return f"{self.EQUATION} with {nums}"

    def check_range(self, *inputs: float) -> RangeReport:  # pragma: no cover - abstract
        raise NotImplementedError

    def in_range(self, *inputs: float) -> bool:
        """Whether :meth:`check_range` finds every input inside the fitted range."""
        return self.check_range(*inputs).inside

    def describe(self) -> dict:
        """Name, kind, equation, coefficients, provenance, conventions, fitted range."""
        return {
            "name": self.name,
            "kind": self.KIND,
            "equation": self.EQUATION,
            "coefficients": self.coefficients.params(),
            "provenance": self.provenance.as_dict(),
            "conventions": self.conventions,
            "fitted_range": self.fitted_range.as_dict(),
        }


@runtime_checkable
class LossLaw(Protocol):
    """A loss law ``L(N, D, ...)`` usable by ``moescale predict loss`` and ``optimum``.

    Inputs are an ordered ``{"params", "tokens", ...}`` dict in the law's own
    conventions (``N_CONVENTION`` says what ``params`` counts); ``predict`` and
    ``check_range`` take them positionally in that order.
    """

    name: str
    N_CONVENTION: ClassVar[str]

    def inputs_from_spec(self, spec: Any, tokens: float) -> tuple[dict[str, float], list[str]]:
        """The law's inputs for a :class:`ModelSpec` trained on ``tokens``, and notes."""

    def inputs_from_args(self, params: float | None, tokens: float, *,
                         granularity_fg: float | None = None,
                         experts: float | None = None) -> dict[str, float]:
        """The law's inputs from explicit numbers; :class:`ConfigError` names what is missing."""

    def predict(self, *inputs: Any) -> Any: ...

    def check_range(self, *inputs: float) -> RangeReport: ...

    def optimum(self, compute: float, *, experts: float | None = None) -> dict[str, Any]:
        """Compute-optimal allocation at ``compute`` (the law's own FLOPs convention)."""
