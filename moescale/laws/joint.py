"""[JOINT] MoE scaling law in active parameters, data and expert count.

Ludziejewski et al., "Joint MoE Scaling Laws", arXiv 2502.05172 (Eq. 1/6, Ê Eq. 4,
Table 3 coefficients, Table 1 compute optima). Conventions (LAWS.md §5):

- N_act = active parameters **including embeddings** (their vocabulary 50,257,
  untied: ``N_act = 2·d·V + 13·N_blocks·d²``, N_blocks = d/64, top-1 routing with
  SwiGLU experts of width 3d, i.e. 9d² per expert);
- E = number of experts (E = 1 is dense), transformed to Ê;
- compute F = 6·N_act·D (routing cost negligible for E <= 32 at G = 1).

At fixed E the law is Chinchilla-shaped, so the compute optimum has a closed form.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from moescale.errors import ConfigError, check_range
from moescale.laws import forms
from moescale.laws.base import Coefficients, FittedRange, Law, Provenance, RangeReport
from moescale.laws.numeric import as_scalar_or_array, check_positive
from moescale.spec.accounting import count_params
from moescale.spec.model_spec import ModelSpec

__all__ = ["JointCoefficients", "JointLRCoefficients", "JointLaw", "JOINT_CONVENTIONS",
           "JOINT_VOCAB"]

JOINT_VOCAB = 50257
"""Vocabulary of the [JOINT] runs (embedding and untied head are in N_act)."""

JOINT_CONVENTIONS: dict[str, str] = {
    "N_act": "active parameters including embedding and untied head [JOINT] (vocab 50,257)",
    "experts": "E routed experts, top-1, G = 1 (E = 1 is dense); Ehat = Eq. 4 transform",
    "D": "training tokens",
    "compute": "F = 6*N_act*D",
}

_JOINT_PROV = Provenance(
    paper="Ludziejewski et al. 2025, Joint MoE Scaling Laws", arxiv="2502.05172",
    locator="Eq. 1/6 with Ehat of Eq. 4, Table 3 coefficients", status="V",
)
_JOINT_RANGE = FittedRange.of(
    experts=(1, 32, "[JOINT] Table 4 per-E fits, E in {1,2,4,8,16,32}"),
    N_act=(None, 2.7e9, "[JOINT] abstract: up to 2.7B active parameters"),
    unknown=("D",),
    note="[JOINT] reports over 280 runs with up to 2.7B active / 5B total parameters; the "
    "lower N_act bound and the D range are not recorded here",
)


@dataclass(frozen=True, kw_only=True)
class JointCoefficients(Coefficients):
    """Coefficients of [JOINT] Eq. 6 (α, β, ζ negative as published)."""

    a: float
    alpha: float
    delta: float
    gamma: float
    b: float
    beta: float
    omega: float
    zeta: float
    E_start: float
    E_max: float
    c: float

    ORDERED = ("E_start", "E_max")


JointCoefficients.register({
    "joint": JointCoefficients(
        a=35.91, alpha=-0.1889, delta=-0.2285, gamma=0.0098, b=35.98, beta=-0.1775,
        omega=0.5529, zeta=-0.0259, E_start=2.0732, E_max=290.4521, c=1.3637,
        provenance=_JOINT_PROV, fitted_range=_JOINT_RANGE),
}, default="joint")


@dataclass(frozen=True, kw_only=True)
class JointLRCoefficients(Coefficients):
    """``ln lr = intercept + n_slope·ln N_act,nonemb + e_slope·ln E`` ([JOINT] learning rate)."""

    intercept: float
    n_slope: float
    e_slope: float


JointLRCoefficients.register({
    "joint": JointLRCoefficients(
        intercept=8.39, n_slope=-0.81, e_slope=-0.25,
        provenance=Provenance(paper=_JOINT_PROV.paper, arxiv="2502.05172",
                              locator="learning-rate law (N_act without embeddings)",
                              status="V")),
}, default="joint")


@dataclass(frozen=True, kw_only=True)
class JointLaw(Law):
    """[JOINT] loss ``L = a·Ê^δ·N_act^(α+γ ln Ê) + b·Ê^ω·D^(β+ζ ln Ê) + c``.

    Examples
    --------
    >>> law = JointLaw.published()
    >>> N, D = law.compute_optimal(1e21, 8)
    >>> round(N / 1e9, 1), round(D / 1e9)
    (3.8, 44)
    """

    coefficients: JointCoefficients
    name: str = "joint"

    KIND = "loss"
    EQUATION = ("L = a*Ehat^delta*N_act^(alpha+gamma ln Ehat) + "
                "b*Ehat^omega*D^(beta+zeta ln Ehat) + c")
    CONVENTIONS = JOINT_CONVENTIONS
    COEFFICIENTS = JointCoefficients
    N_CONVENTION = "active parameters including embeddings"

    def expert_transform(self, E: ArrayLike) -> float | np.ndarray:
        """Ê of Eq. 4."""
        E = check_positive("experts", E)
        c = self.coefficients
        return as_scalar_or_array(forms.joint_expert_transform(E, c.E_start, c.E_max))

    def predict(self, N_act: ArrayLike, D: ArrayLike, E: ArrayLike) -> float | np.ndarray:
        """Loss at N_act (incl. embeddings), D tokens, E experts (E >= 1)."""
        N_act = check_positive("N_act", N_act)
        D = check_positive("D", D)
        E = check_positive("experts", E)
        if np.any(E < 1):
            raise ConfigError(f"'experts' must be >= 1 (1 = dense); got {E.min()}")
        return as_scalar_or_array(forms.joint_loss(N_act, D, E, **self.coefficients.params()))

    __call__ = predict

    def per_expert_coefficients(self, E: float) -> dict[str, float]:
        """At fixed E the law is ``m·N_act^μ + n·D^ν + c``: returns m, μ, n, ν, c (cf. Table 4)."""
        c = self.coefficients
        lnE = math.log(float(self.expert_transform(E)))
        Eh = math.exp(lnE)
        return {
            "m": c.a * Eh**c.delta,
            "mu": c.alpha + c.gamma * lnE,
            "n": c.b * Eh**c.omega,
            "nu": c.beta + c.zeta * lnE,
            "c": c.c,
        }

    def compute_optimal(
        self, F: ArrayLike, E: float
    ) -> tuple[float | np.ndarray, float | np.ndarray]:
        """``(N_act_opt, D_opt)`` on ``6·N_act·D = F`` at E experts (closed form)."""
        F = check_positive("compute", F)
        p = self.per_expert_coefficients(E)
        if p["mu"] >= 0 or p["nu"] >= 0:
            raise ConfigError(
                f"the law has no compute optimum at E = {E}: exponents must be negative "
                f"(mu = {p['mu']:.4g}, nu = {p['nu']:.4g})"
            )
        N, D = forms.compute_optimal_split(F, p["m"], -p["mu"], p["n"], -p["nu"], k=6.0)
        return as_scalar_or_array(N), as_scalar_or_array(D)

    def optimal_loss(self, F: float, E: float) -> float:
        """Loss at the compute optimum for E experts."""
        N, D = self.compute_optimal(F, E)
        return float(self.predict(N, D, E))

    @staticmethod
    def learning_rate(N_act_non_embedding: float, E: float,
                      coefficients: JointLRCoefficients | None = None) -> float:
        """[JOINT] learning-rate law ``exp(k + n·ln N_act,nonemb + e·ln E)`` (published set
        by default)."""
        c = coefficients or JointLRCoefficients.published()
        n = float(check_positive("N_act_non_embedding", N_act_non_embedding))
        e = float(check_positive("experts", E))
        return math.exp(c.intercept + c.n_slope * math.log(n) + c.e_slope * math.log(e))

    def check_range(self, N_act: float, D: float, E: float) -> RangeReport:
        return self.fitted_range.check(N_act=N_act, D=D, experts=E)

    # ------------------------------------------------------------------ LossLaw
    def inputs_from_spec(self, spec: ModelSpec, tokens: float) -> tuple[dict, list[str]]:
        """N_act = active params incl. embeddings (accounting), E = routed experts (1 dense)."""
        notes = []
        if spec.is_moe and (spec.top_k != 1 or spec.n_shared_experts):
            notes.append(
                "the joint law was fitted on top-1 routing without shared experts "
                f"(G = 1); this spec has top_k = {spec.top_k}, {spec.n_shared_experts} shared"
            )
        E = spec.n_experts if spec.is_moe else 1
        return {"params": count_params(spec).active, "tokens": tokens, "experts": E}, notes

    def inputs_from_args(self, params: float | None, tokens: float, *,
                         granularity_fg: float | None = None,
                         experts: float | None = None) -> dict[str, float]:
        if params is None or experts is None:
            raise ConfigError("'params' (N_act incl. embeddings) and 'experts' are required "
                              "for the joint law")
        check_range("experts", experts, low=1, integer=True)
        return {"params": params, "tokens": tokens, "experts": experts}

    def optimum(self, compute: float, *, experts: float | None = None) -> dict:
        if experts is None:
            raise ConfigError("'experts' is required for the joint optimum")
        check_range("experts", experts, low=1, integer=True)
        N, D = self.compute_optimal(compute, experts)
        return {"compute": compute, "experts": float(experts), "active_params": float(N),
                "tokens": float(D), "loss": self.optimal_loss(compute, experts),
                "flops_convention": "6*N_act*D (embeddings included)"}
