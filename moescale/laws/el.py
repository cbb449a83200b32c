"""The [EL] joint Efficiency Leverage law (Tian et al., arXiv 2507.17702, Eq. 13).

Conventions (LAWS.md §1-3), fixed by this law and named in every API:

- A = E_a / E, routed experts only (``ModelSpec.activation_ratio``);
- G = 2·d_model / d_expert ([EL] convention, ``ModelSpec.granularity``), log2 in the law;
- C = M·D training FLOPs with M Ling's non-embedding FLOPs per token
  (``flops_per_token(spec, convention="ling")``), log10 in the law.

``EL(A, G, C) = Â^(a + d·log10 C + γ·(log2 G)² + β·log2 G)``, Â the saturating
transform of A. EL > 1 means the MoE needs less compute than dense for the same loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from moescale.errors import ConfigError
from moescale.laws import forms
from moescale.laws.base import Coefficients, FittedRange, Law, Provenance, RangeReport
from moescale.laws.numeric import as_scalar_or_array, check_positive

__all__ = [
    "ELCoefficients",
    "ELLaw",
    "EL_CONVENTIONS",
    "EL_FIT_THRESHOLD",
    "published_el",
    "el_break_even_compute",
]

EL_CONVENTIONS: dict[str, str] = {
    "activation_ratio": "A = E_a/E, routed experts only (shared excluded) [EL] Eq. 13",
    "granularity": "G = 2*d_model/d_expert ([EL]; G_fg = 2G), log2 G in the law",
    "compute": "C = M*D, M = Ling non-embedding training FLOPs/token "
    "(accounting convention 'ling', s=4096 by default), log10 C in the law",
}

GRANULARITY_MAX = 1e6
"""Largest granularity the EL law evaluates, and 1/GRANULARITY_MAX the smallest (G =
2·d_model/d_expert; log2 G beyond ±20 overflows the crossover in float64); the fitted
grid is G ∈ [2, 16]."""

EL_FIT_THRESHOLD = 6.0
"""[EL] fitted Eq. 13 on points with EL < 6 and held out EL >= 6 for validation (LAWS.md §3)."""

_EL_PROVENANCE = Provenance(
    paper="Tian et al. 2025, Towards Greater Leverage",
    arxiv="2507.17702",
    locator="Eq. 13 (joint EL law) with the saturating transform of Clark et al. 2022",
    status="V",
    note="bases not stated in the paper: log10 for C and log2 for G reproduce its G* of 8-12 "
    "and EL > 7 at 1e22 (LAWS.md §3); d printed negative (text says positive), the negative "
    "value makes EL grow with C",
)

_EL_RANGE = FittedRange.of(
    activation_ratio=(2 / 256, 1.0, "[EL] activation ablation grid E_a=2, E in {2..256} "
                      "(LAWS.md §3)"),
    granularity=(2.0, 16.0, "[EL] granularity ablation grid G in {2,4,6,8,12,16} (LAWS.md §3)"),
    el=(None, EL_FIT_THRESHOLD, "[EL] fitted on points with EL < 6; EL >= 6 held out for "
        "validation", "predicted EL"),
    compute=(1e18, 6e20, "approximate span of the [EL] §3 ablation budgets (about 1e18 to "
             "6e20 FLOPs); the paper prints no exact range and LAWS.md gives none, so treat "
             "the edges as approximate", "compute C"),
    note="The law's EL = 1 break-even compute (el_break_even_compute) marks where it "
    "predicts MoE no better than dense; below ~1e18 FLOPs any comparison with Eq. 13 is an "
    "extrapolation.",
)


@dataclass(frozen=True, kw_only=True)
class ELCoefficients(Coefficients):
    """Coefficients of [EL] Eq. 13 (published or fitted by :mod:`moescale.fit`).

    Examples
    --------
    >>> c = ELCoefficients.published()
    >>> c.a, c.d
    (1.23, -0.0761)
    """

    a: float
    d: float
    gamma: float
    beta: float
    A_start: float
    A_max: float

    ORDERED = ("A_start", "A_max")


ELCoefficients.register({
    "ling2025": ELCoefficients(a=1.23, d=-7.61e-2, gamma=1.67e-2, beta=-1.17e-1,
                               A_start=1.63e-2, A_max=5.28e16, provenance=_EL_PROVENANCE,
                               fitted_range=_EL_RANGE),
}, default="ling2025")


@dataclass(frozen=True, kw_only=True)
class ELLaw(Law):
    """[EL] joint Efficiency Leverage law: a form plus a coefficient set.

    Examples
    --------
    >>> law = ELLaw.published("ling2025")
    >>> round(law.predict(1 / 32, 12, 1e22), 2)
    7.22
    >>> round(law.optimal_granularity(), 2)
    11.34
    """

    coefficients: ELCoefficients
    name: str = "ling2025"

    KIND = "efficiency_leverage"
    EQUATION = "EL = Ahat^(a + d*log10 C + gamma*(log2 G)^2 + beta*log2 G)"
    CONVENTIONS = EL_CONVENTIONS
    COEFFICIENTS = ELCoefficients

    # ------------------------------------------------------------------ evaluation
    @staticmethod
    def _validate(A: ArrayLike | None, G: ArrayLike | None, C: ArrayLike | None) -> tuple:
        out = []
        if A is not None:
            out.append(check_positive("activation_ratio", A, high=1.0))
        if G is not None:
            # G = 2·d_model/d_expert; beyond GRANULARITY_MAX the quadratic in log2 G
            # overflows float64 in the crossover (and no buildable model gets there)
            g = check_positive("granularity", G)
            bad = (g < 1 / GRANULARITY_MAX) | (g > GRANULARITY_MAX)
            if np.any(bad):
                raise ConfigError(f"'granularity' must be a number in [{1 / GRANULARITY_MAX:g}, "
                                  f"{GRANULARITY_MAX:g}]; got {float(g[bad].flat[0]):g}")
            out.append(g)
        if C is not None:
            out.append(check_positive("compute", C))
        return tuple(out)

    def exponent(self, G: ArrayLike, C: ArrayLike) -> float | np.ndarray:
        """The exponent ``a + d·log10 C + γ·(log2 G)² + β·log2 G`` of Â."""
        G, C = self._validate(None, G, C)
        c = self.coefficients
        return as_scalar_or_array(forms.el_exponent(G, C, c.a, c.d, c.gamma, c.beta))

    def predict(self, A: ArrayLike, G: ArrayLike, C: ArrayLike) -> float | np.ndarray:
        """EL at activation ratio A (E_a/E), granularity G (2d/d_expert), compute C (Ling M·D).

        Raises :class:`ConfigError` for A outside (0, 1], G <= 0 or C <= 0.
        """
        A, G, C = self._validate(A, G, C)
        return as_scalar_or_array(forms.el_joint(A, G, C, **self.coefficients.params()))

    __call__ = predict

    def activation_transform(self, A: ArrayLike) -> float | np.ndarray:
        """Â, the saturating transform of A ([CLARK] arXiv 2202.01169)."""
        (A,) = self._validate(A, None, None)
        c = self.coefficients
        return as_scalar_or_array(forms.saturating_transform(A, c.A_start, c.A_max))

    def optimal_granularity(self) -> float:
        """G* = 2^(−β/(2γ)), the G minimising the exponent (maximising EL) at any A < 1, C.

        Only defined for γ > 0 (a U-shape in log G); raises :class:`ConfigError` otherwise.
        """
        c = self.coefficients
        if c.gamma <= 0:
            raise ConfigError(f"'gamma' must be > 0 for an optimal granularity; got {c.gamma}")
        return 2.0 ** (-c.beta / (2.0 * c.gamma))

    def break_even_compute(self, G: ArrayLike) -> float | np.ndarray:
        """Compute C where EL = 1 (exponent 0) at granularity G, for every A < 1.

        Not a frontier crossing (:func:`moescale.fit.leverage`): it is where Eq. 13
        itself predicts the MoE and dense equally good.

        ``log10 C = −(a + γ·(log2 G)² + β·log2 G)/d``. With d < 0, MoE beats dense
        (EL > 1) above this compute and loses to it below; the law is an extrapolation there.
        """
        (G,) = self._validate(None, G, None)
        c = self.coefficients
        if c.d == 0:
            raise ConfigError("'d' must be non-zero for an EL = 1 break-even compute; got 0")
        lg = np.log2(G)
        return as_scalar_or_array(10.0 ** (-(c.a + c.gamma * lg**2 + c.beta * lg) / c.d))

    # ------------------------------------------------------------------ separable forms
    def separable_activation(self, G: float, C: float) -> dict[str, float]:
        """Coefficients of the separable form in A at fixed G, C: ``EL = Â^a_A``.

        Returns ``{"a_A", "A_start", "A_max"}`` for :func:`forms.el_vs_activation`.
        """
        c = self.coefficients
        return {"a_A": float(self.exponent(G, C)), "A_start": c.A_start, "A_max": c.A_max}

    def separable_granularity(self, A: float, C: float) -> dict[str, float]:
        """Coefficients of ``log EL = a_G + b_G·ln G·(ln G + c_G)`` at fixed A, C.

        Derived from Eq. 13 with natural logs: with ℓ = ln Â,
        ``a_G = ℓ·(a + d·log10 C)``, ``b_G = ℓ·γ/ln²2``, ``c_G = β·ln 2/γ``.
        """
        c = self.coefficients
        A_, _, C_ = self._validate(A, 1.0, C)
        ell = math.log(float(self.activation_transform(float(A_))))
        if c.gamma == 0:
            raise ConfigError("'gamma' must be non-zero for the separable form in G; got 0")
        return {
            "a_G": ell * (c.a + c.d * math.log10(float(C_))),
            "b_G": ell * c.gamma / math.log(2) ** 2,
            "c_G": c.beta * math.log(2) / c.gamma,
        }

    def separable_compute(self, A: float, G: float) -> dict[str, float]:
        """Coefficients of ``log EL = a_C·ln C + c_C`` at fixed A, G.

        ``a_C = ℓ·d/ln 10``, ``c_C = ℓ·(a + γ·(log2 G)² + β·log2 G)`` with ℓ = ln Â.
        """
        c = self.coefficients
        self._validate(A, G, None)
        ell = math.log(float(self.activation_transform(A)))
        lg = math.log2(float(G))
        return {
            "a_C": ell * c.d / math.log(10),
            "c_C": ell * (c.a + c.gamma * lg**2 + c.beta * lg),
        }

    # ------------------------------------------------------------------ ranges
    def check_range(self, A: float, G: float, C: float) -> RangeReport:
        """Check scalar inputs (and the predicted EL) against the fitted range."""
        el = float(self.predict(A, G, C))
        return self.fitted_range.check(activation_ratio=A, granularity=G, compute=C, el=el)



_PUBLISHED = ELLaw.published("ling2025")


def published_el(A: ArrayLike, G: ArrayLike, C: ArrayLike) -> float | np.ndarray:
    """EL from the published [EL] Eq. 13 (A = E_a/E, G = 2d/d_expert, C = Ling M·D).

    >>> round(published_el(1 / 32, 8, 1e22), 2)
    7.13
    """
    return _PUBLISHED.predict(A, G, C)


def el_break_even_compute(A: float, G: ArrayLike) -> float | np.ndarray:
    """Compute where the published Eq. 13 gives EL = 1 (independent of A for A < 1).

    ``A`` is validated (0 < A < 1: at A = 1 there is no MoE and Â ≈ 1) but does not
    enter: Â^0 = 1 for every A. Example: A = 1/8, G = 2 → ≈ 7e14 FLOPs.
    """
    check_positive("activation_ratio", A, high=1.0, high_inclusive=False)
    return _PUBLISHED.break_even_compute(G)
