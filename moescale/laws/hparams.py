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

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from moescale.errors import ConfigError
from moescale.laws.base import (
    Coefficients,
    FittedRange,
    Law,
    Provenance,
    RangeReport,
    as_scalar_or_array,
    check_positive,
    format_number,
)

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

    NAMES = ("coefficient", "exponent")

    def validate(self) -> None:
        if self.coefficient <= 0:
            raise ConfigError(f"'coefficient' must be > 0; got {self.coefficient}")

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

    NAMES = ("lr_coefficient", "lr_exponent", "batch_coefficient", "batch_exponent")

    def validate(self) -> None:
        self.learning_rate_law()
        self.batch_law()

    def learning_rate_law(self) -> PowerLaw:
        return PowerLaw(coefficient=self.lr_coefficient, exponent=self.lr_exponent,
                        provenance=self.provenance)

    def batch_law(self) -> PowerLaw:
        return PowerLaw(coefficient=self.batch_coefficient, exponent=self.batch_exponent,
                        provenance=self.provenance)


HyperparameterCoefficients.register({
    "ling2025": HyperparameterCoefficients(
        lr_coefficient=1.1576, lr_exponent=-0.1529, batch_coefficient=0.0694,
        batch_exponent=0.3644, provenance=_EQ3, fitted_range=_UNKNOWN_RANGE),
}, default="ling2025")


@dataclass(frozen=True, kw_only=True)
class AllocationCoefficients(Coefficients):
    """``M_opt = m·C^mu`` (FLOPs per token) and ``D_opt = n·C^nu`` (tokens)."""

    m: float
    mu: float
    n: float
    nu: float

    NAMES = ("m", "mu", "n", "nu")

    def validate(self) -> None:
        self.flops_per_token_law()
        self.tokens_law()

    def flops_per_token_law(self) -> PowerLaw:
        return PowerLaw(coefficient=self.m, exponent=self.mu, provenance=self.provenance)

    def tokens_law(self) -> PowerLaw:
        return PowerLaw(coefficient=self.n, exponent=self.nu, provenance=self.provenance)


AllocationCoefficients.register({
    "dense": AllocationCoefficients(m=0.0655, mu=0.5422, n=15.2582, nu=0.4578, provenance=_T1,
                                    fitted_range=_UNKNOWN_RANGE),
    "moe": AllocationCoefficients(m=0.1915, mu=0.5095, n=5.2232, nu=0.4905, provenance=_T1,
                                  fitted_range=_UNKNOWN_RANGE),
}, default="moe")


@dataclass(frozen=True, kw_only=True)
class _ComputeLaw(Law):
    """A law of the compute C alone, for one architecture (``arch``)."""

    arch: str = "moe"

    CONVENTIONS = HPARAM_CONVENTIONS

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

    @classmethod
    def law_name(cls, set_name: str) -> str:
        return f"{set_name}-hparams"

    @classmethod
    def published(cls, name: str | None = None) -> HyperparameterLaw:
        """The MoE law of [EL] Eq. 3 (the only one with published coefficients)."""
        return super().published(name.removesuffix("-hparams") if name else name)

    @property
    def learning_rate_law(self) -> PowerLaw:
        return self.coefficients.learning_rate_law()

    @property
    def batch_law(self) -> PowerLaw:
        return self.coefficients.batch_law()

    def formula(self) -> str:
        """``lr = 1.1576·C^-0.1529; B_tokens = ...`` with this law's numbers."""
        return f"lr = {self.learning_rate_law.formula()}; B_tokens = {self.batch_law.formula()}"

    def learning_rate(self, C: ArrayLike) -> float | np.ndarray:
        """Optimal peak learning rate at compute C (Ling M·D FLOPs)."""
        return self.learning_rate_law(C)

    def batch_tokens(self, C: ArrayLike) -> float | np.ndarray:
        """Optimal batch size in tokens at compute C."""
        return self.batch_law(C)

    def predict(self, C: float) -> dict[str, float]:
        """``{"compute", "learning_rate", "batch_tokens"}`` at compute C."""
        return {
            "compute": float(check_positive("compute", C)),
            "learning_rate": float(self.learning_rate(C)),
            "batch_tokens": float(self.batch_tokens(C)),
        }


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

    @classmethod
    def published(cls, arch: str | None = None) -> AllocationLaw:
        """Table 1 row ``dense`` or ``moe``."""
        if arch is not None and arch not in AllocationCoefficients.SETS:
            raise ConfigError(f"'arch' must be one of 'dense', 'moe'; got {arch!r}")
        arch = arch or AllocationCoefficients.DEFAULT
        return cls(coefficients=AllocationCoefficients.published(arch), arch=arch,
                   name=f"ling2025-allocation-{arch}")

    @property
    def flops_per_token_law(self) -> PowerLaw:
        return self.coefficients.flops_per_token_law()

    @property
    def tokens_law(self) -> PowerLaw:
        return self.coefficients.tokens_law()

    def formula(self) -> str:
        """``M_opt = m·C^μ; D_opt = n·C^ν`` with this law's numbers."""
        return (f"M_opt = {self.flops_per_token_law.formula()}; "
                f"D_opt = {self.tokens_law.formula()}")

    def flops_per_token(self, C: ArrayLike) -> float | np.ndarray:
        """Compute-optimal Ling M (training FLOPs per token, non-embedding)."""
        return self.flops_per_token_law(C)

    def tokens(self, C: ArrayLike) -> float | np.ndarray:
        """Compute-optimal training tokens D."""
        return self.tokens_law(C)

    def predict(self, C: float) -> dict[str, float]:
        """``{"arch", "compute", "flops_per_token", "tokens"}`` at budget C."""
        return {
            "arch": self.arch,
            "compute": float(check_positive("compute", C)),
            "flops_per_token": float(self.flops_per_token(C)),
            "tokens": float(self.tokens(C)),
        }
