"""[CHIN] / [EPOCH] parametric loss ``L(N, D) = E + A·N^-α + B·D^-β`` and its optimum.

Hoffmann et al., arXiv 2203.15556 (Eq. 2, Approach 3); Besiroglu et al. (Epoch),
arXiv 2404.10102 (replication on the 245 points extracted from Chinchilla Fig. 4).
Conventions: N = model parameters as counted by Chinchilla (dense), D = training
tokens, compute F = 6·N·D. The coefficient names ``E, A, B`` are Chinchilla's and
are unrelated to the expert count E and activation ratio A elsewhere in moescale.
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
from moescale.spec.accounting import count_params
from moescale.spec.model_spec import ModelSpec

__all__ = ["ChinchillaCoefficients", "ChinchillaLaw", "CHINCHILLA_SETS", "CHIN_CONVENTIONS"]

CHIN_CONVENTIONS: dict[str, str] = {
    "N": "dense model parameters as counted by Chinchilla (arXiv 2203.15556)",
    "D": "training tokens",
    "compute": "F = 6*N*D",
}

_CHIN_PAPER = "Hoffmann et al. 2022, Training Compute-Optimal LLMs (Chinchilla)"
_EPOCH_PAPER = "Besiroglu et al. 2024, Chinchilla Scaling: A replication attempt (Epoch)"

_CHIN_RANGE = FittedRange.of(
    N=(7e7, 1.6e10, "Chinchilla abstract: 70M to over 16B parameters"),
    D=(5e9, 5e11, "Chinchilla abstract: 5 to 500 billion tokens"),
)
_EPOCH_RANGE = FittedRange.of(
    N=(5.73e7, 1.62e10, "min/max N of data/chinchilla_svg_extracted_data.csv"),
    compute=(1.40e18, 1.30e22, "min/max FLOP of data/chinchilla_svg_extracted_data.csv"),
    unknown=("D",),
    note="D = FLOP/(6N) per point; its range follows from N and FLOP",
)


@dataclass(frozen=True, kw_only=True)
class ChinchillaCoefficients(Coefficients):
    """``E, A, B, alpha, beta`` of ``L = E + A·N^-α + B·D^-β``."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float

    POSITIVE = ("A", "B", "alpha", "beta")


CHINCHILLA_SETS = ChinchillaCoefficients.register({
    "chinchilla": ChinchillaCoefficients(
        E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28, fitted_range=_CHIN_RANGE,
        provenance=Provenance(paper=_CHIN_PAPER, arxiv="2203.15556",
                              locator="Eq. 2 / §3.3 Approach 3 (rounded)", status="V"),
    ),
    "chinchilla-tex": ChinchillaCoefficients(
        E=math.exp(0.5267228), A=math.exp(6.0073404), B=math.exp(6.0179186),
        alpha=0.33917084, beta=0.2849083, fitted_range=_CHIN_RANGE,
        provenance=Provenance(paper=_CHIN_PAPER, arxiv="2203.15556",
                              locator="unrounded values from the TeX source, as coded in the "
                              "Epoch replication repository", status="V"),
    ),
    "epoch": ChinchillaCoefficients(
        E=1.8172, A=482.01, B=2085.43, alpha=0.3478, beta=0.3658, fitted_range=_EPOCH_RANGE,
        provenance=Provenance(paper=_EPOCH_PAPER, arxiv="2404.10102",
                              locator="published maximum-likelihood fit (Huber density, "
                              "delta 1e-3) on 240 of the 245 extracted points", status="V"),
    ),
    "epoch-huber": ChinchillaCoefficients(
        E=1.8172, A=477.84, B=2143.86, alpha=0.3473, beta=0.3672, fitted_range=_EPOCH_RANGE,
        provenance=Provenance(paper=_EPOCH_PAPER, arxiv="2404.10102",
                              locator="notebook 'Replicate exactly': summed Huber (1e-3) in "
                              "log space, L-BFGS over the Chinchilla init grid", status="V"),
    ),
}, default="chinchilla")


@dataclass(frozen=True, kw_only=True)
class ChinchillaLaw(Law):
    """The Chinchilla parametric loss with a named coefficient set.

    Examples
    --------
    >>> law = ChinchillaLaw.published("chinchilla")
    >>> N, D = law.compute_optimal(5.76e23)
    >>> round(N / 1e9)
    32
    """

    coefficients: ChinchillaCoefficients
    name: str = "chinchilla"

    KIND = "loss"
    EQUATION = "L = E + A*N^-alpha + B*D^-beta"
    CONVENTIONS = CHIN_CONVENTIONS
    COEFFICIENTS = ChinchillaCoefficients
    N_CONVENTION = "dense parameters as counted by Chinchilla"

    def predict(self, N: ArrayLike, D: ArrayLike) -> float | np.ndarray:
        """Loss at N parameters and D tokens."""
        N = check_positive("N", N)
        D = check_positive("D", D)
        return as_scalar_or_array(forms.chinchilla_loss(N, D, **self.coefficients.params()))

    __call__ = predict

    def compute_optimal(self, F: ArrayLike) -> tuple[float | np.ndarray, float | np.ndarray]:
        """``(N_opt, D_opt)`` minimising the loss on ``6·N·D = F`` ([CHIN] Approach 3)."""
        F = check_positive("compute", F)
        c = self.coefficients
        N, D = forms.compute_optimal_split(F, c.A, c.alpha, c.B, c.beta, k=6.0)
        return as_scalar_or_array(N), as_scalar_or_array(D)

    def exponents(self) -> tuple[float, float]:
        """``(a, b)`` with N_opt ∝ F^a, D_opt ∝ F^b: a = β/(α+β), b = α/(α+β)."""
        c = self.coefficients
        return c.beta / (c.alpha + c.beta), c.alpha / (c.alpha + c.beta)

    def check_range(self, N: float, D: float) -> RangeReport:
        return self.fitted_range.check(N=N, D=D, compute=6.0 * N * D)

    # ------------------------------------------------------------------ LossLaw
    def inputs_from_spec(self, spec: ModelSpec, tokens: float) -> tuple[dict, list[str]]:
        """N = total parameters (accounting, embeddings included) of a dense spec."""
        if spec.is_moe:
            raise ConfigError(f"law {self.name!r} is a dense law; the spec is an MoE")
        return {"params": count_params(spec).total, "tokens": tokens}, []

    def inputs_from_args(self, params: float | None, tokens: float, *,
                         granularity_fg: float | None = None,
                         experts: float | None = None) -> dict[str, float]:
        if params is None:
            raise ConfigError(f"'params' (N, dense parameters) is required for law {self.name!r}")
        return {"params": params, "tokens": tokens}

    def optimum(self, compute: float, *, experts: float | None = None) -> dict:
        N, D = self.compute_optimal(compute)
        return {"compute": compute, "params": float(N), "tokens": float(D),
                "loss": float(self.predict(N, D)), "flops_convention": "6*N*D"}
