"""[EL] recipe laws: optimal hyperparameters (Eq. 3) and compute-optimal allocation (Table 1).

Both are power laws in the training compute C = M·D (Ling's M, non-embedding
training FLOPs per token, ``flops_per_token(spec, convention="ling")``):

- Eq. 3, MoE: ``lr_opt = c_lr·C^e_lr``, ``B_opt = c_B·C^e_B`` (tokens);
- Table 1: ``M_opt = m·C^μ`` (FLOPs per token) and ``D_opt = n·C^ν`` (tokens),
  dense and MoE rows (Tian et al., arXiv 2507.17702).

The published numbers live here once; other modules print them with ``formula()``.

The dense Eq. 3 law is shown only in a figure (no coefficients): none is provided.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from numpy.typing import ArrayLike

from moescale.errors import ConfigError
from moescale.laws.base import Coefficients, FittedRange, Law, Provenance, RangeReport
from moescale.laws.numeric import as_scalar_or_array, check_positive, format_number

__all__ = [
    "PowerLaw",
    "HyperparameterCoefficients",
    "HyperparameterLaw",
    "AllocationCoefficients",
    "AllocationLaw",
    "HPARAM_CONVENTIONS",
]

HPARAM_CONVENTIONS: dict[str, str] = {
    "compute": "C = M*D, M = Ling non-embedding training FLOPs/token (convention 'ling', "
    "s=4096 by default) [EL] Appendix C corrected (LAWS.md §2)",
    "batch_tokens": "batch size in tokens (not sequences)",
    "flops_per_token": "Ling M (training, non-embedding)",
}

_UNKNOWN_RANGE = FittedRange(
    unknown=("compute",),
    note="the compute range of the fit is not stated in LAWS.md or the coefficient file",
)


@dataclass(frozen=True, kw_only=True)
class PowerLaw(Coefficients):
    """``y = coefficient · C^exponent`` with provenance."""

    coefficient: float
    exponent: float

    POSITIVE = ("coefficient",)

    def __call__(self, C: ArrayLike) -> float | np.ndarray:
        C = check_positive("compute", C)
        return as_scalar_or_array(self.coefficient * C**self.exponent)

    def formula(self, variable: str = "C") -> str:
        """The law as text with its numbers, e.g. ``0.0655·C^0.5422``."""
        return f"{format_number(self.coefficient)}·{variable}^{format_number(self.exponent)}"

    def inverse(self, y: ArrayLike) -> float | np.ndarray:
        """C such that ``coefficient · C^exponent = y``."""
        y = check_positive("value", y)
        if self.exponent == 0:
            raise ConfigError("'exponent' must be non-zero to invert a power law; got 0")
        return as_scalar_or_array((y / self.coefficient) ** (1.0 / self.exponent))


_EQ3 = Provenance(
    paper="Tian et al. 2025, Towards Greater Leverage", arxiv="2507.17702",
    locator="Eq. 3 (MoE optimal learning rate and batch size)", status="V",
    note="check: C = 1e20 gives lr 1.013e-3 and B 1.35e6 tokens; reproduces the Ling 2.0 peak "
    "LRs with Ling M at s = 4096 and D = 20T (LAWS.md §3, FACTS.md)",
)
_T1 = Provenance(
    paper="Tian et al. 2025, Towards Greater Leverage", arxiv="2507.17702",
    locator="Table 1 (compute-optimal M and D)", status="V",
)


@dataclass(frozen=True, kw_only=True)
class HyperparameterCoefficients(Coefficients):
    """``lr = lr_coefficient·C^lr_exponent``, ``B_tokens = batch_coefficient·C^batch_exponent``."""

    lr_coefficient: float
    lr_exponent: float
    batch_coefficient: float
    batch_exponent: float

    POSITIVE = ("lr_coefficient", "batch_coefficient")


@dataclass(frozen=True, kw_only=True)
class AllocationCoefficients(Coefficients):
    """``M_opt = m·C^mu`` (FLOPs per token) and ``D_opt = n·C^nu`` (tokens)."""

    m: float
    mu: float
    n: float
    nu: float

    POSITIVE = ("m", "n")


HyperparameterCoefficients.register({
    "ling2025": HyperparameterCoefficients(
        lr_coefficient=1.1576, lr_exponent=-0.1529, batch_coefficient=0.0694,
        batch_exponent=0.3644, provenance=_EQ3, fitted_range=_UNKNOWN_RANGE),
}, default="ling2025")
AllocationCoefficients.register({
    "dense": AllocationCoefficients(m=0.0655, mu=0.5422, n=15.2582, nu=0.4578, provenance=_T1,
                                    fitted_range=_UNKNOWN_RANGE),
    "moe": AllocationCoefficients(m=0.1915, mu=0.5095, n=5.2232, nu=0.4905, provenance=_T1,
                                  fitted_range=_UNKNOWN_RANGE),
}, default="moe")


def _evaluate(quantity: str, doc: str) -> Callable:
    def method(self: _ComputeLaw, C: ArrayLike) -> float | np.ndarray:
        return self.power_law(quantity)(C)

    method.__doc__ = doc
    return method


@dataclass(frozen=True, kw_only=True)
class _ComputeLaw(Law):
    """Power laws of the compute C alone (one per quantity), for one architecture."""

    arch: str = "moe"

    CONVENTIONS = HPARAM_CONVENTIONS
    POWER_LAWS: ClassVar[dict[str, tuple[str, str]]] = {}
    """Quantity -> names of its (coefficient, exponent) in the coefficient set."""

    def power_law(self, quantity: str) -> PowerLaw:
        """The power law of ``quantity`` (a key of :attr:`POWER_LAWS`)."""
        coefficient, exponent = self.POWER_LAWS[quantity]
        c = self.coefficients
        return PowerLaw(coefficient=getattr(c, coefficient), exponent=getattr(c, exponent),
                        provenance=c.provenance)

    def formula(self) -> str:
        """``quantity = k·C^p; ...`` with this law's numbers."""
        return "; ".join(f"{q} = {self.power_law(q).formula()}" for q in self.POWER_LAWS)

    def predict(self, C: float) -> dict[str, float | str]:
        """``{"arch", "compute", <quantity>: value, ...}`` at compute C."""
        out: dict[str, float | str] = {"arch": self.arch,
                                       "compute": float(check_positive("compute", C))}
        out.update({q: float(self.power_law(q)(C)) for q in self.POWER_LAWS})
        return out

    def check_range(self, C: float) -> RangeReport:
        return self.fitted_range.check(compute=C)

    def describe(self) -> dict:
        return {**super().describe(), "arch": self.arch}


@dataclass(frozen=True, kw_only=True)
class HyperparameterLaw(_ComputeLaw):
    """[EL] Eq. 3: optimal peak learning rate and batch size (tokens) vs compute.

    Examples
    --------
    >>> law = HyperparameterLaw.published()
    >>> f"{law.learning_rate(1e20):.4g}", f"{law.batch_tokens(1e20):.3g}"
    ('0.001013', '1.35e+06')
    """

    coefficients: HyperparameterCoefficients
    name: str = "ling2025-hparams"

    KIND = "hyperparameters"
    EQUATION = "lr = lr_coefficient*C^lr_exponent; B_tokens = batch_coefficient*C^batch_exponent"
    COEFFICIENTS = HyperparameterCoefficients
    POWER_LAWS = {"learning_rate": ("lr_coefficient", "lr_exponent"),
                  "batch_tokens": ("batch_coefficient", "batch_exponent")}

    learning_rate = _evaluate("learning_rate", "Optimal peak learning rate at compute C (Ling "
                              "M·D FLOPs).")
    batch_tokens = _evaluate("batch_tokens", "Optimal batch size in tokens at compute C.")

    @classmethod
    def law_name(cls, set_name: str) -> str:
        return f"{set_name}-hparams"

    @classmethod
    def published(cls, name: str | None = None) -> HyperparameterLaw:
        """The MoE law of [EL] Eq. 3 (the only one with published coefficients)."""
        return super().published(name.removesuffix("-hparams") if name else name)


@dataclass(frozen=True, kw_only=True)
class AllocationLaw(_ComputeLaw):
    """[EL] Table 1: compute-optimal FLOPs per token M and tokens D for a budget C.

    ``M_opt·D_opt`` equals C only to the rounding of the published constants
    (0.9994 dense, 1.0002 MoE); :meth:`predict` reports both and ``tokens`` as
    published.

    Examples
    --------
    >>> moe = AllocationLaw.published("moe")
    >>> f"{moe.flops_per_token(1e20):.3g}"
    '2.97e+09'
    """

    coefficients: AllocationCoefficients
    name: str = "ling2025-allocation-moe"

    KIND = "allocation"
    EQUATION = "M_opt = m*C^mu; D_opt = n*C^nu"
    COEFFICIENTS = AllocationCoefficients
    POWER_LAWS = {"flops_per_token": ("m", "mu"), "tokens": ("n", "nu")}

    flops_per_token = _evaluate("flops_per_token", "Compute-optimal Ling M (training FLOPs per "
                                "token, non-embedding).")
    tokens = _evaluate("tokens", "Compute-optimal training tokens D.")

    @classmethod
    def published(cls, arch: str | None = None) -> AllocationLaw:
        """Table 1 row ``dense`` or ``moe``."""
        if arch is not None and arch not in AllocationCoefficients.SETS:
            raise ConfigError(f"'arch' must be one of 'dense', 'moe'; got {arch!r}")
        arch = arch or AllocationCoefficients.DEFAULT
        return cls(coefficients=AllocationCoefficients.published(arch), arch=arch,
                   name=f"ling2025-allocation-{arch}")
