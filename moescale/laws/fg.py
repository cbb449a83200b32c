"""[FG] fine-grained MoE loss law, its FLOPs model and compute-optimal solver.

Krajewski et al., "Scaling Laws for Fine-Grained Mixture of Experts", arXiv 2402.07871
(Eq. 9, Tables 1/2/5/8, Eq. 6 for FLOPs). Conventions (LAWS.md §4), named in every API:

- N = **total non-embedding** parameters (FG's own shapes: non-gated FFN, 2 matrices);
- G_fg = d_ffn / d_expert with d_ffn = 4·d_model (= 2 × [EL]'s G at equal d_expert);
- E = FG's expansion rate (64 for the main law): each layer has E·G_fg experts of width
  4d/G_fg and routes every token to G_fg of them, so N_act is independent of G_fg;
- FLOPs with router cost: ``F = (12·d²·c_f + d·E·G_fg·c_r)·D·n_blocks``, c_f = 6, c_r = 14;
- shapes: d = 64·n_blocks, N = d²·(8E+4)·n_blocks, N_act = 12·d²·n_blocks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike

from moescale.errors import ConfigError, check_range
from moescale.laws import forms
from moescale.laws.base import Coefficients, FittedRange, Law, Provenance, RangeReport
from moescale.laws.numeric import as_scalar_or_array, check_positive
from moescale.spec.accounting import count_params
from moescale.spec.model_spec import ModelSpec

__all__ = [
    "FGCoefficients",
    "FGLaw",
    "FGOptimum",
    "FG_SETS",
    "FG_CONVENTIONS",
    "fg_shape",
    "fg_flops_per_token",
]

FG_CONVENTIONS: dict[str, str] = {
    "N": "total non-embedding parameters in FG's shapes (non-gated FFN) [FG] Eq. 9",
    "granularity_fg": "G_fg = d_ffn/d_expert = 4*d_model/d_expert (= 2x [EL]'s G)",
    "D": "training tokens",
    "compute": "FG FLOPs with router: F = (12 d^2 c_f + d E G_fg c_r) D n_blocks, "
    "c_f = 6, c_r = 14 [FG] Eq. 6",
}
C_F = 6.0
"""c_f of [FG]: training FLOPs per (active) parameter per token."""
C_R = 14.0
"""c_r of [FG]: training FLOPs per router weight per token (plausible range 6-20)."""

_FG_PAPER = "Krajewski et al. 2024, Scaling Laws for Fine-Grained MoE"
_FG_RANGE = FittedRange(
    unknown=("N", "D", "granularity_fg"),
    note="the N, D and G ranges of the fitted runs are not recorded in LAWS.md or the "
    "coefficient file; Table 2 optima beyond ~1B active parameters are extrapolations",
)


@dataclass(frozen=True, kw_only=True)
class FGCoefficients(Coefficients):
    """``a, alpha, b, beta, g, gamma, c`` of [FG] Eq. 9 (g = 0: the dense row)."""

    a: float
    alpha: float
    b: float
    beta: float
    g: float = 0.0
    gamma: float = 0.0
    c: float
    E: int = 64
    """Expansion rate the set was fitted at (1 for the dense row)."""

    def validate(self) -> None:
        check_range("E", self.E, low=1, integer=True)

    @property
    def is_dense(self) -> bool:
        return self.g == 0.0 and self.E == 1


FG_SETS = FGCoefficients.register({
    "moe_e64": FGCoefficients(
        a=18.1, alpha=0.115, b=30.8, beta=0.147, g=2.1, gamma=0.58, c=0.47, E=64,
        fitted_range=_FG_RANGE,
        provenance=Provenance(paper=_FG_PAPER, arxiv="2402.07871",
                              locator="Table 1, MoE E=64 (Eq. 9)", status="V"),
    ),
    "dense": FGCoefficients(
        a=16.3, alpha=0.126, b=26.7, beta=0.127, c=0.47, E=1, fitted_range=_FG_RANGE,
        provenance=Provenance(paper=_FG_PAPER, arxiv="2402.07871",
                              locator="Table 1, dense (L = c + a N^-alpha + b D^-beta)",
                              status="V"),
    ),
    "moe_e64_validation": FGCoefficients(
        a=17.6, alpha=0.114, b=26.7, beta=0.14, g=2.07, gamma=0.57, c=0.472, E=64,
        fitted_range=_FG_RANGE,
        provenance=Provenance(paper=_FG_PAPER, arxiv="2402.07871",
                              locator="Table 5 (fit with the 20% lowest-perplexity models "
                              "excluded)", status="V"),
    ),
    "moe_e16": FGCoefficients(
        a=19.64, alpha=0.124, b=57.07, beta=0.169, g=1.18, gamma=0.986, c=0.472, E=16,
        fitted_range=_FG_RANGE,
        provenance=Provenance(paper=_FG_PAPER, arxiv="2402.07871",
                              locator="Table 8, MoE E=16", status="V"),
    ),
}, default="moe_e64")


def fg_shape(n_blocks: ArrayLike, E: int, G_fg: ArrayLike) -> dict[str, np.ndarray]:
    """[FG]'s model shape for ``n_blocks`` blocks (continuous allowed).

    Returns ``d_model = 64·n_blocks``, ``n_total = d²(8E+4)·n_blocks`` (non-embedding),
    ``n_active = 12·d²·n_blocks`` and ``flops_per_token`` (FG convention, router included).
    """
    n = np.asarray(n_blocks, dtype=float)
    d = 64.0 * n
    return {
        "d_model": d,
        "n_total": d**2 * (8 * E + 4) * n,
        "n_active": 12.0 * d**2 * n,
        "flops_per_token": fg_flops_per_token(d, n, E, G_fg),
    }


def fg_flops_per_token(
    d_model: ArrayLike, n_blocks: ArrayLike, E: int, G_fg: ArrayLike,
    *, c_f: float = C_F, c_r: float = C_R,
) -> np.ndarray:
    """[FG] Eq. 6 per token: ``(12·d²·c_f + d·E·G_fg·c_r)·n_blocks`` training FLOPs.

    Equivalently ``(c_f + c_r·E·G_fg/(12·d))·N_act`` with N_act = 12·d²·n_blocks.
    """
    d = np.asarray(d_model, dtype=float)
    return (12.0 * d**2 * c_f + d * E * np.asarray(G_fg, dtype=float) * c_r) * np.asarray(
        n_blocks, dtype=float
    )


@dataclass(frozen=True)
class FGOptimum:
    """Compute-optimal configuration of [FG] for one budget."""

    compute: float
    granularity_fg: int
    n_blocks: float
    d_model: float
    n_active: float
    n_total: float
    tokens: float
    loss: float
    by_granularity: dict = field(default_factory=dict, compare=False)
    """``{G_fg: (n_active, tokens, loss)}`` at each G_fg tried."""

    def as_dict(self) -> dict:
        return {
            "compute": self.compute,
            "granularity_fg": self.granularity_fg,
            "n_blocks": self.n_blocks,
            "d_model": self.d_model,
            "active_params": self.n_active,
            "total_params_non_embedding": self.n_total,
            "tokens": self.tokens,
            "loss": self.loss,
        }


@dataclass(frozen=True, kw_only=True)
class FGLaw(Law):
    """[FG] loss law ``L = c + (g/G_fg^γ + a)·N^-α + b·D^-β`` with a coefficient set.

    Examples
    --------
    >>> law = FGLaw.published("moe_e64")
    >>> opt = law.compute_optimal(2.95e18)
    >>> opt.granularity_fg, round(opt.n_active / 1e6, -1)
    (8, 100.0)
    """

    coefficients: FGCoefficients
    name: str = "fg"

    KIND = "loss"
    EQUATION = "L = c + (g/G_fg^gamma + a)*N^-alpha + b*D^-beta"
    CONVENTIONS = FG_CONVENTIONS
    COEFFICIENTS = FGCoefficients
    N_CONVENTION = "total non-embedding parameters (FG shapes)"

    @classmethod
    def law_name(cls, set_name: str) -> str:
        return "fg" if set_name == "moe_e64" else f"fg-{set_name}"

    def predict(self, N: ArrayLike, D: ArrayLike, G_fg: ArrayLike = 1.0) -> float | np.ndarray:
        """Loss at N total non-embedding params, D tokens, granularity G_fg (FG convention)."""
        N = check_positive("N", N)
        D = check_positive("D", D)
        G = check_positive("granularity_fg", G_fg)
        return as_scalar_or_array(forms.fg_loss(N, D, G, **self.coefficients.params()))

    __call__ = predict

    def loss_at_shape(self, n_blocks: ArrayLike, G_fg: ArrayLike, F: ArrayLike) -> np.ndarray:
        """Loss of FG's shape with ``n_blocks`` blocks trained on budget F (FG FLOPs)."""
        E = self.coefficients.E
        shape = fg_shape(n_blocks, E, G_fg)
        D = np.asarray(F, dtype=float) / shape["flops_per_token"]
        return forms.fg_loss(shape["n_total"], D, G_fg, **self.coefficients.params())

    def compute_optimal(
        self, F: float, granularities: tuple[int, ...] = tuple(2**i for i in range(11))
    ) -> FGOptimum:
        """Minimise the loss subject to FG FLOPs = F, G_fg over powers of two ([FG] §6).

        For each G_fg the 1-D problem in log n_blocks is solved with Brent's method (as
        in the paper); the best G_fg wins. ``granularities`` defaults to 1, 2, ..., 1024.
        """
        from scipy.optimize import minimize_scalar  # lazy: ~0.3 s import

        F = float(check_positive("compute", F))
        if not granularities:
            raise ConfigError("'granularities' must list at least one G_fg; got none")
        E = self.coefficients.E
        results = {}
        for G in granularities:
            check_range("granularity_fg", G, low=1, integer=True)

            def obj(x: float, G: int = G) -> float:
                return float(self.loss_at_shape(math.exp(x), G, F))

            # n_blocks from 1 to 1e5 (d_model from 64 to 6.4M) brackets every useful budget.
            res = minimize_scalar(obj, bounds=(0.0, math.log(1e5)), method="bounded",
                                  options={"xatol": 1e-9})
            n = math.exp(res.x)
            shape = fg_shape(n, E, G)
            results[int(G)] = (n, shape, F / float(shape["flops_per_token"]), float(res.fun))
        best = min(results, key=lambda g: results[g][3])
        n, shape, D, loss = results[best]
        return FGOptimum(
            compute=F, granularity_fg=best, n_blocks=n, d_model=float(shape["d_model"]),
            n_active=float(shape["n_active"]), n_total=float(shape["n_total"]), tokens=D,
            loss=loss,
            by_granularity={g: (float(r[1]["n_active"]), r[2], r[3]) for g, r in results.items()},
        )

    def check_range(self, N: float, D: float, G_fg: float | None = None) -> RangeReport:
        return self.fitted_range.check(N=N, D=D, granularity_fg=G_fg)

    def describe(self) -> dict:
        out = super().describe()
        out["coefficients"]["E"] = self.coefficients.E
        return out

    # ------------------------------------------------------------------ LossLaw
    def inputs_from_spec(self, spec: ModelSpec, tokens: float) -> tuple[dict, list[str]]:
        """N = non-embedding params (accounting), G_fg = 4d/d_expert (1 for dense)."""
        notes = []
        c = self.coefficients
        if spec.is_moe and c.is_dense:
            raise ConfigError(f"law {self.name!r} is the dense row; the spec is an MoE")
        if spec.is_moe and spec.n_experts / spec.top_k != c.E:
            notes.append(
                f"law {self.name!r} was fitted at expansion rate E = {c.E} "
                f"(experts/top_k); this spec has {spec.n_experts / spec.top_k:g}"
            )
        G = spec.granularity_fg if spec.is_moe else 1.0
        return {"params": count_params(spec).non_embedding, "tokens": tokens,
                "granularity_fg": G}, notes

    def inputs_from_args(self, params: float | None, tokens: float, *,
                         granularity_fg: float | None = None,
                         experts: float | None = None) -> dict[str, float]:
        if params is None:
            raise ConfigError("'params' (N, total non-embedding) is required for FG laws")
        if granularity_fg is None and not self.coefficients.is_dense:
            raise ConfigError("'granularity_fg' (G_fg = d_ffn/d_expert) is required for "
                              f"law {self.name!r}")
        G = 1.0 if granularity_fg is None else granularity_fg
        return {"params": params, "tokens": tokens, "granularity_fg": G}

    def optimum(self, compute: float, *, experts: float | None = None) -> dict:
        if self.coefficients.is_dense:
            raise ConfigError(f"law {self.name!r} is the dense FG row; use 'fg' for the MoE "
                              "optimum")
        return {**self.compute_optimal(compute).as_dict(),
                "flops_convention": "fg (router included)"}
