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

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike

from moescale.errors import ConfigError
from moescale.laws.base import (
    USER_FIT,
    FittedRange,
    Provenance,
    as_scalar_or_array,
    check_positive,
    finite_params,
)

__all__ = [
    "PowerLaw",
    "HyperparameterLaw",
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


def _num(x: float) -> str:
    """Shortest text that reads back as ``x`` (``repr``), exponent without ``+``."""
    return repr(float(x)).replace("e+", "e")


@dataclass(frozen=True, kw_only=True)
class PowerLaw:
    """``y = coefficient · C^exponent`` with provenance."""

    coefficient: float
    exponent: float
    provenance: Provenance = USER_FIT

    _NAMES = ("coefficient", "exponent")

    def __post_init__(self) -> None:
        finite_params(self, self._NAMES)
        if self.coefficient <= 0:
            raise ConfigError(f"'coefficient' must be > 0; got {self.coefficient}")

    def __call__(self, C: ArrayLike) -> float | np.ndarray:
        C = check_positive("compute", C)
        return as_scalar_or_array(self.coefficient * C**self.exponent)

    def formula(self, variable: str = "C") -> str:
        """The law as text with its numbers, e.g. ``0.0655·C^0.5422``."""
        return f"{_num(self.coefficient)}·{variable}^{_num(self.exponent)}"

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
class HyperparameterLaw:
    """[EL] Eq. 3: optimal peak learning rate and batch size (tokens) vs compute.

    Examples
    --------
    >>> law = HyperparameterLaw.published()
    >>> f"{law.learning_rate(1e20):.4g}", f"{law.batch_tokens(1e20):.3g}"
    ('0.001013', '1.35e+06')
    """

    learning_rate_law: PowerLaw
    batch_law: PowerLaw
    name: str = "ling2025-hparams"
    arch: str = "moe"
    fitted_range: FittedRange = _UNKNOWN_RANGE
    conventions: dict = field(default_factory=lambda: dict(HPARAM_CONVENTIONS), compare=False)

    @classmethod
    def published(cls, name: str = "ling2025") -> HyperparameterLaw:
        """The MoE law of [EL] Eq. 3 (the only one with published coefficients)."""
        if name not in ("ling2025", "ling2025-hparams"):
            raise ConfigError(f"'name' must be 'ling2025'; got {name!r}")
        return cls(
            learning_rate_law=PowerLaw(coefficient=1.1576, exponent=-0.1529, provenance=_EQ3),
            batch_law=PowerLaw(coefficient=0.0694, exponent=0.3644, provenance=_EQ3),
        )

    @property
    def provenance(self) -> Provenance:
        return self.learning_rate_law.provenance

    def learning_rate(self, C: ArrayLike) -> float | np.ndarray:
        """Optimal peak learning rate at compute C (Ling M·D FLOPs)."""
        return self.learning_rate_law(C)

    def batch_tokens(self, C: ArrayLike) -> float | np.ndarray:
        """Optimal batch size in tokens at compute C."""
        return self.batch_law(C)

    def formula(self) -> str:
        """``lr = 1.1576·C^-0.1529; B_tokens = ...`` with this law's numbers."""
        return (f"lr = {self.learning_rate_law.formula()}; "
                f"B_tokens = {self.batch_law.formula()}")

    def predict(self, C: float) -> dict[str, float]:
        """``{"compute", "learning_rate", "batch_tokens"}`` at compute C."""
        return {
            "compute": float(check_positive("compute", C)),
            "learning_rate": float(self.learning_rate(C)),
            "batch_tokens": float(self.batch_tokens(C)),
        }

    def describe(self) -> dict:
        return {
            "name": self.name,
            "kind": "hyperparameters",
            "arch": self.arch,
            "equation": "lr = c_lr*C^e_lr; B_tokens = c_B*C^e_B",
            "coefficients": {
                "lr_coefficient": self.learning_rate_law.coefficient,
                "lr_exponent": self.learning_rate_law.exponent,
                "batch_coefficient": self.batch_law.coefficient,
                "batch_exponent": self.batch_law.exponent,
            },
            "provenance": self.provenance.as_dict(),
            "conventions": dict(self.conventions),
            "fitted_range": self.fitted_range.as_dict(),
        }


@dataclass(frozen=True, kw_only=True)
class AllocationLaw:
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

    flops_per_token_law: PowerLaw
    tokens_law: PowerLaw
    arch: str
    name: str = ""
    fitted_range: FittedRange = _UNKNOWN_RANGE
    conventions: dict = field(default_factory=lambda: dict(HPARAM_CONVENTIONS), compare=False)

    @classmethod
    def published(cls, arch: str = "moe") -> AllocationLaw:
        """Table 1 row ``dense`` or ``moe``."""
        if arch == "dense":
            m, d = (0.0655, 0.5422), (15.2582, 0.4578)
        elif arch == "moe":
            m, d = (0.1915, 0.5095), (5.2232, 0.4905)
        else:
            raise ConfigError(f"'arch' must be one of 'dense', 'moe'; got {arch!r}")
        return cls(
            flops_per_token_law=PowerLaw(coefficient=m[0], exponent=m[1], provenance=_T1),
            tokens_law=PowerLaw(coefficient=d[0], exponent=d[1], provenance=_T1),
            arch=arch,
            name=f"ling2025-allocation-{arch}",
        )

    @property
    def provenance(self) -> Provenance:
        return self.flops_per_token_law.provenance

    def flops_per_token(self, C: ArrayLike) -> float | np.ndarray:
        """Compute-optimal Ling M (training FLOPs per token, non-embedding)."""
        return self.flops_per_token_law(C)

    def tokens(self, C: ArrayLike) -> float | np.ndarray:
        """Compute-optimal training tokens D."""
        return self.tokens_law(C)

    def formula(self) -> str:
        """``M_opt = m·C^μ; D_opt = n·C^ν`` with this law's numbers."""
        return (f"M_opt = {self.flops_per_token_law.formula()}; "
                f"D_opt = {self.tokens_law.formula()}")

    def predict(self, C: float) -> dict[str, float]:
        """``{"arch", "compute", "flops_per_token", "tokens"}`` at budget C."""
        return {
            "arch": self.arch,
            "compute": float(check_positive("compute", C)),
            "flops_per_token": float(self.flops_per_token(C)),
            "tokens": float(self.tokens(C)),
        }

    def describe(self) -> dict:
        return {
            "name": self.name,
            "kind": "allocation",
            "arch": self.arch,
            "equation": "M_opt = m*C^mu; D_opt = n*C^nu",
            "coefficients": {
                "m": self.flops_per_token_law.coefficient,
                "mu": self.flops_per_token_law.exponent,
                "n": self.tokens_law.coefficient,
                "nu": self.tokens_law.exponent,
            },
            "provenance": self.provenance.as_dict(),
            "conventions": dict(self.conventions),
            "fitted_range": self.fitted_range.as_dict(),
        }
