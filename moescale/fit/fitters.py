"""Concrete law fitters: one per form of :mod:`moescale.laws.forms`.

Every fitter works on log-space residuals with analytic Jacobians; forms that are a sum
of positive terms compute log L̂ by logsumexp (the Chinchilla/Epoch parametrisation:
A = e^a, B = e^b, E = e^e). See :class:`moescale.fit.base.LawFitter` for the method and
the common parameters.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from moescale.errors import ConfigError
from moescale.fit.base import LawFitter
from moescale.laws.el import ELCoefficients

__all__ = [
    "PowerLawFitter",
    "ChinchillaFitter",
    "FGFitter",
    "JointFitter",
    "ELJointFitter",
    "ELSeparableFitter",
    "CHINCHILLA_GRID",
]

CHINCHILLA_GRID: dict[str, tuple[float, ...]] = {
    "alpha": (0.0, 0.5, 1.0, 1.5, 2.0),
    "beta": (0.0, 0.5, 1.0, 1.5, 2.0),
    "e": (-1.0, -0.5, 0.0, 0.5, 1.0),
    "a": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
    "b": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
}
"""Initialisation grid of Hoffmann et al. as coded by the Epoch replication (LAWS.md §6)."""


def _lse(T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """logsumexp over axis 0 and the softmax weights (terms × n)."""
    m = T.max(axis=0)
    e = np.exp(T - m)
    s = e.sum(axis=0)
    return m + np.log(s), e / s


def _saturating_log(x: np.ndarray, log_start: float, log_max: float) -> tuple[np.ndarray, ...]:
    """u = log x̂ of the [CLARK] saturating transform and du/dlog(start), du/dlog(max)."""
    start, maximum = math.exp(log_start), math.exp(log_max)
    s = 1.0 / (1.0 / start - 1.0 / maximum)
    xs = x + s
    q = 1.0 / xs + 1.0 / maximum
    u = -np.log(q)
    du_dls = s * s / (start * q * xs * xs)
    du_dlm = (1.0 - s * s / (xs * xs)) / (q * maximum)
    return u, du_dls, du_dlm


def _lstsq(design: np.ndarray, target: np.ndarray) -> np.ndarray:
    coef, *_ = np.linalg.lstsq(design, target, rcond=None)
    return coef


class PowerLawFitter(LawFitter):
    """Loss frontier ``L = α·C^−β`` (+ E if ``irreducible``), [EL] Eq. 1 (arXiv 2507.17702).

    Parameters
    ----------
    irreducible : bool
        Add an irreducible term E (log L̂ = logsumexp(a − β·log C, e)).
    compute_column : str
        Run-table column holding C.

    Examples
    --------
    >>> import numpy as np
    >>> C = np.logspace(17, 21, 9)
    >>> f = PowerLawFitter().fit(C, 40.0 * C ** -0.06)
    >>> round(f.coef_["alpha"], 3), round(f.coef_["beta"], 4)
    (40.0, 0.06)
    """

    def __init__(self, *, irreducible: bool = False, compute_column: str = "compute",
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.irreducible = irreducible
        self.compute_column = compute_column

    @property
    def coef_names(self) -> tuple[str, ...]:  # type: ignore[override]
        return ("alpha", "beta", "E") if self.irreducible else ("alpha", "beta")

    def _validate_form_params(self) -> None:
        if not isinstance(self.irreducible, bool):
            raise ConfigError(f"'irreducible' must be a bool; got {self.irreducible!r}")

    def _feature_columns(self) -> tuple[str, ...]:
        return (self.compute_column,)

    def _log_predict(self, theta, F):
        lc = np.log(F[:, 0])
        if not self.irreducible:
            a, b = theta
            return a - b * lc, np.vstack([np.ones_like(lc), -lc])
        a, b, e = theta
        f, w = _lse(np.vstack([a - b * lc, np.full_like(lc, e)]))
        return f, np.vstack([w[0], -w[0] * lc, w[1]])

    def _starts(self, F, logy):
        lc = np.log(F[:, 0])
        design = np.column_stack([np.ones_like(lc), -lc])
        if not self.irreducible:
            a, b = _lstsq(design, logy)
            return np.array([[a, b], [a, 0.0], [logy.mean(), 0.05]])
        y = np.exp(logy)
        starts = []
        for frac in (1e-3, 0.3, 0.6, 0.8, 0.9, 0.95):
            E = frac * y.min()
            a, b = _lstsq(design, np.log(y - E))
            starts.append([a, b, math.log(E)])
        return np.array(starts)

    def _coef(self, theta):
        out = {"alpha": math.exp(theta[0]), "beta": float(theta[1])}
        if self.irreducible:
            out["E"] = math.exp(theta[2])
        return out

    def _theta_from_coef(self, coef):
        t = [math.log(coef["alpha"]), coef["beta"]]
        return np.array(t + ([math.log(coef["E"])] if self.irreducible else []))


class ChinchillaFitter(LawFitter):
    """``L(N, D) = E + A·N^−α + B·D^−β``, Hoffmann et al. Eq. 2 (arXiv 2203.15556).

    Internal parameters as the replication (arXiv 2404.10102): log L̂ = logsumexp(a − α·log
    N, b − β·log D, e), A = e^a, B = e^b, E = e^e; starts from :data:`CHINCHILLA_GRID`
    (4,500 points; the ``max_starts`` best by initial objective are optimised).

    Parameters
    ----------
    params_column, tokens_column : str
        Run-table columns for N and D (default ``params_active``, ``tokens``).
    """

    coef_names = ("E", "A", "B", "alpha", "beta")

    def __init__(self, *, params_column: str = "params_active", tokens_column: str = "tokens",
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.params_column = params_column
        self.tokens_column = tokens_column

    def _feature_columns(self):
        return (self.params_column, self.tokens_column)

    def _theta_names(self):
        return ("A", "B", "E", "alpha", "beta")

    def _log_predict(self, theta, F):
        a, b, e, al, be = theta
        ln, ld = np.log(F[:, 0]), np.log(F[:, 1])
        f, w = _lse(np.vstack([a - al * ln, b - be * ld, np.full_like(ln, e)]))
        return f, np.vstack([w[0], w[1], w[2], -w[0] * ln, -w[1] * ld])

    def _starts(self, F, logy):
        g = CHINCHILLA_GRID
        return np.array([(a, b, e, al, be) for al, be, e, a, b in
                         itertools.product(g["alpha"], g["beta"], g["e"], g["a"], g["b"])])

    def _coef(self, theta):
        a, b, e, al, be = theta
        return {"E": math.exp(e), "A": math.exp(a), "B": math.exp(b), "alpha": float(al),
                "beta": float(be)}

    def _theta_from_coef(self, coef):
        return np.array([math.log(coef["A"]), math.log(coef["B"]), math.log(coef["E"]),
                         coef["alpha"], coef["beta"]])


class FGFitter(LawFitter):
    """Fine-grained MoE law ``L = c + (g/G^γ + a)·N^−α + b·D^−β`` ([FG] arXiv 2402.07871 Eq. 9).

    N = total non-embedding parameters, D tokens, G in [FG]'s convention G_fg =
    d_ffn/d_expert. The run table stores [EL]'s G = 2·d/d_expert, so with
    ``granularity_convention="el"`` (default) the column is doubled (G_fg = 2·G, LAWS.md §1);
    pass ``"fg"`` if the values already are G_fg. All terms positive (log-parametrised).
    """

    coef_names = ("a", "alpha", "b", "beta", "g", "gamma", "c")

    def __init__(self, *, params_column: str = "params_total_non_embedding",
                 tokens_column: str = "tokens", granularity_column: str = "granularity",
                 granularity_convention: str = "el", **kwargs) -> None:
        super().__init__(**kwargs)
        self.params_column = params_column
        self.tokens_column = tokens_column
        self.granularity_column = granularity_column
        self.granularity_convention = granularity_convention

    def _validate_form_params(self) -> None:
        if self.granularity_convention not in ("el", "fg"):
            raise ConfigError("'granularity_convention' must be one of ['el', 'fg']; got "
                              f"{self.granularity_convention!r}")

    def _feature_columns(self):
        return (self.params_column, self.tokens_column, self.granularity_column)

    def _transform_features(self, F):
        if self.granularity_convention == "el":
            F = F.copy()
            F[:, 2] = 2.0 * F[:, 2]
        return F

    def _log_predict(self, theta, F):
        la, al, lb, be, lg, ga, lc = theta
        ln, ld, lG = np.log(F[:, 0]), np.log(F[:, 1]), np.log(F[:, 2])
        f, w = _lse(np.vstack([lg - ga * lG - al * ln, la - al * ln, lb - be * ld,
                               np.full_like(ln, lc)]))
        J = np.vstack([w[1], -(w[0] + w[1]) * ln, w[2], -w[2] * ld, w[0], -w[0] * lG, w[3]])
        return f, J

    def _starts(self, F, logy):
        return np.array(list(itertools.product((1.0, 3.0), (0.1, 0.3), (1.0, 3.0), (0.1, 0.3),
                                               (-1.0, 1.0), (0.3, 1.0), (-1.0, 0.0, 0.5))))

    def _coef(self, theta):
        la, al, lb, be, lg, ga, lc = theta
        return {"a": math.exp(la), "alpha": float(al), "b": math.exp(lb), "beta": float(be),
                "g": math.exp(lg), "gamma": float(ga), "c": math.exp(lc)}

    def _theta_from_coef(self, coef):
        return np.array([math.log(coef["a"]), coef["alpha"], math.log(coef["b"]), coef["beta"],
                         math.log(coef["g"]), coef["gamma"], math.log(coef["c"])])


class JointFitter(LawFitter):
    """[JOINT] law ``L = a·Ê^δ·N^(α+γ·ln Ê) + b·Ê^ω·D^(β+ζ·ln Ê) + c`` (arXiv 2502.05172 Eq. 6).

    N = active parameters including embeddings (``params_active``), D tokens, E routed
    experts (dense: ``n_experts`` 0 → E = 1); Ê the saturating transform of E − 1
    (Eq. 4, E_start and E_max fitted). α, β are negative as published.
    """

    coef_names = ("a", "alpha", "delta", "gamma", "b", "beta", "omega", "zeta", "E_start",
                  "E_max", "c")

    def __init__(self, *, params_column: str = "params_active", tokens_column: str = "tokens",
                 experts_column: str = "n_experts", **kwargs) -> None:
        super().__init__(**kwargs)
        self.params_column = params_column
        self.tokens_column = tokens_column
        self.experts_column = experts_column

    def _feature_columns(self):
        return (self.params_column, self.tokens_column, self.experts_column)

    def _transform_features(self, F):
        F = F.copy()
        F[:, 2] = np.where(F[:, 2] == 0, 1.0, F[:, 2])  # schema: n_experts 0 = dense = E 1
        return F

    def _bounds(self):
        b = [(None, None)] * 11
        b[8] = (math.log(0.05), math.log(50.0))
        b[9] = (math.log(60.0), math.log(1e8))
        return b

    def _log_predict(self, theta, F):
        la, al, de, ga, lb, be, om, ze, ls, lm, lc = theta
        ln, ld = np.log(F[:, 0]), np.log(F[:, 1])
        u, du_s, du_m = _saturating_log(F[:, 2] - 1.0, ls, lm)
        t1 = la + de * u + (al + ga * u) * ln
        t2 = lb + om * u + (be + ze * u) * ld
        f, w = _lse(np.vstack([t1, t2, np.full_like(ln, lc)]))
        k = w[0] * (de + ga * ln) + w[1] * (om + ze * ld)
        J = np.vstack([w[0], w[0] * ln, w[0] * u, w[0] * u * ln, w[1], w[1] * ld, w[1] * u,
                       w[1] * u * ld, k * du_s, k * du_m, w[2]])
        return f, J

    def _starts(self, F, logy):
        three = (-0.5, 0.0, 0.5)
        rows = []
        for al, be, a, b, c, de, om in itertools.product(
                (-0.05, -0.25, -0.5), (-0.05, -0.25, -0.5), (30.0, 100.0, 300.0),
                (30.0, 100.0, 300.0), (0.5, 1.0, 2.0), three, three):
            rows.append([math.log(a), al, de, 0.0, math.log(b), be, om, 0.0, math.log(2.0),
                         math.log(300.0), math.log(c)])
        return np.array(rows)

    def _coef(self, theta):
        la, al, de, ga, lb, be, om, ze, ls, lm, lc = theta
        return {"a": math.exp(la), "alpha": float(al), "delta": float(de), "gamma": float(ga),
                "b": math.exp(lb), "beta": float(be), "omega": float(om), "zeta": float(ze),
                "E_start": math.exp(ls), "E_max": math.exp(lm), "c": math.exp(lc)}

    def _theta_from_coef(self, coef):
        c = coef
        return np.array([math.log(c["a"]), c["alpha"], c["delta"], c["gamma"], math.log(c["b"]),
                         c["beta"], c["omega"], c["zeta"], math.log(c["E_start"]),
                         math.log(c["E_max"]), math.log(c["c"])])


_A_START_GRID = (0.005, ELCoefficients.published().A_start, 0.05, 0.15)
"""Starts for A_start, one of them the published [EL] value."""
_A_MAX_GRID = (10.0, 1e4, 1e16)
_A_BOUNDS = [(math.log(1e-6), math.log(0.5)), (math.log(1.0), math.log(1e20))]


class _ELFitter(LawFitter):
    """Shared columns of the EL fitters: A = E_a/E, G = 2·d/d_expert ([EL]) and C (FLOPs)."""

    target_name = "el"

    def __init__(self, *, activation_column: str = "activation_ratio",
                 granularity_column: str = "granularity", compute_column: str = "compute",
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.activation_column = activation_column
        self.granularity_column = granularity_column
        self.compute_column = compute_column


class ELJointFitter(_ELFitter):
    """Joint EL law, [EL] Eq. 13 (arXiv 2507.17702), fitted on log EL.

    ``EL = Â^(a + d·log10 C + γ·(log2 G)² + β·log2 G)``, Â the saturating transform of
    A = E_a/E with A_start, A_max fitted (A_start ∈ [1e-6, 0.5], A_max ∈ [1, 1e20]; A_max
    is only weakly identified when it is large, as in the published set). G = 2·d/d_expert
    ([EL] convention), C in FLOPs. With ``use_granularity=False`` the G terms are dropped
    (γ = β = 0) for data without G, e.g. EL against expert count only.

    Starts: for each (A_start, A_max) of a small grid the exponent coefficients are solved
    by linear least squares (log EL is linear in them at fixed Â).
    """

    def __init__(self, *, use_granularity: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        self.use_granularity = use_granularity

    coef_names = ("a", "d", "gamma", "beta", "A_start", "A_max")

    def _n_theta(self) -> int:
        return 6 if self.use_granularity else 4

    def _theta_names(self):
        if self.use_granularity:
            return self.coef_names
        return ("a", "d", "A_start", "A_max")

    def _validate_form_params(self) -> None:
        if not isinstance(self.use_granularity, bool):
            raise ConfigError(f"'use_granularity' must be a bool; got {self.use_granularity!r}")

    def _feature_columns(self):
        if self.use_granularity:
            return (self.activation_column, self.granularity_column, self.compute_column)
        return (self.activation_column, self.compute_column)

    def _min_distinct(self):
        if self.use_granularity:
            return {0: 2, 1: 3, 2: 2}
        return {0: 2, 1: 2}

    def _bounds(self):
        return [(None, None)] * (self._n_theta() - 2) + _A_BOUNDS

    def _design(self, F: np.ndarray) -> np.ndarray:
        lc = np.log10(F[:, -1])
        if not self.use_granularity:
            return np.vstack([np.ones_like(lc), lc])
        lg = np.log2(F[:, 1])
        return np.vstack([np.ones_like(lc), lc, lg * lg, lg])

    def _log_predict(self, theta, F):
        X = self._design(F)
        c, ls, lm = theta[:-2], theta[-2], theta[-1]
        u, du_s, du_m = _saturating_log(F[:, 0], ls, lm)
        expo = c @ X
        return expo * u, np.vstack([X * u, expo * du_s, expo * du_m])

    def _starts(self, F, logy):
        X = self._design(F)
        starts = []
        for s, m in itertools.product(_A_START_GRID, _A_MAX_GRID):
            u, _, _ = _saturating_log(F[:, 0], math.log(s), math.log(m))
            c = _lstsq((X * u).T, logy)
            starts.append([*c, math.log(s), math.log(m)])
        return np.array(starts)

    def _coef(self, theta):
        if self.use_granularity:
            a, d, g, b = theta[:4]
        else:
            (a, d), g, b = theta[:2], 0.0, 0.0
        return {"a": float(a), "d": float(d), "gamma": float(g), "beta": float(b),
                "A_start": math.exp(theta[-2]), "A_max": math.exp(theta[-1])}

    def _theta_from_coef(self, coef):
        head = [coef["a"], coef["d"]] + ([coef["gamma"], coef["beta"]]
                                         if self.use_granularity else [])
        return np.array(head + [math.log(coef["A_start"]), math.log(coef["A_max"])])


class ELSeparableFitter(_ELFitter):
    """Separable EL forms of [EL] (arXiv 2507.17702 §4), fitted on log EL.

    ``form="A"``: EL = Â^a_A (A_start, A_max fitted); ``"G"``: log EL = a_G + b_G·ln G·(ln G
    + c_G); ``"C"``: log EL = a_C·ln C + c_C (natural logs, as :mod:`moescale.laws.forms`).
    Fit each at fixed values of the other two variables.
    """

    _FORMS = {"A": ("a_A", "A_start", "A_max"), "G": ("a_G", "b_G", "c_G"), "C": ("a_C", "c_C")}

    def __init__(self, *, form: str = "A", **kwargs) -> None:
        super().__init__(**kwargs)
        self.form = form

    @property
    def coef_names(self) -> tuple[str, ...]:  # type: ignore[override]
        return self._FORMS.get(self.form, ())

    def _validate_form_params(self) -> None:
        if self.form not in self._FORMS:
            raise ConfigError(f"'form' must be one of {list(self._FORMS)}; got {self.form!r}")

    def _feature_columns(self):
        return ({"A": self.activation_column, "G": self.granularity_column,
                 "C": self.compute_column}[self.form],)

    def _min_distinct(self):
        return {0: 3 if self.form == "G" else 2}

    def _bounds(self):
        return [(None, None)] + _A_BOUNDS if self.form == "A" else None

    def _log_predict(self, theta, F):
        x = F[:, 0]
        if self.form == "A":
            a, ls, lm = theta
            u, du_s, du_m = _saturating_log(x, ls, lm)
            return a * u, np.vstack([u, a * du_s, a * du_m])
        lx = np.log(x)
        if self.form == "G":
            a, b, c = theta
            return a + b * lx * (lx + c), np.vstack([np.ones_like(lx), lx * (lx + c), b * lx])
        a, c = theta
        return a * lx + c, np.vstack([lx, np.ones_like(lx)])

    def _starts(self, F, logy):
        x = F[:, 0]
        if self.form == "A":
            starts = []
            for s, m in itertools.product(_A_START_GRID, _A_MAX_GRID):
                u, _, _ = _saturating_log(x, math.log(s), math.log(m))
                starts.append([float(np.dot(u, logy) / np.dot(u, u)), math.log(s), math.log(m)])
            return np.array(starts)
        lx = np.log(x)
        if self.form == "G":
            p0, p1, p2 = _lstsq(np.column_stack([np.ones_like(lx), lx, lx * lx]), logy)
            b = p2 if abs(p2) > 1e-12 else 1e-3
            return np.array([[p0, b, p1 / b], [p0, 0.01, 0.0], [p0, -0.01, 0.0]])
        a, c = _lstsq(np.column_stack([lx, np.ones_like(lx)]), logy)
        return np.array([[a, c]])

    def _coef(self, theta):
        if self.form == "A":
            return {"a_A": float(theta[0]), "A_start": math.exp(theta[1]),
                    "A_max": math.exp(theta[2])}
        return {k: float(v) for k, v in zip(self.coef_names, theta, strict=True)}

    def _theta_from_coef(self, coef):
        if self.form == "A":
            return np.array([coef["a_A"], math.log(coef["A_start"]), math.log(coef["A_max"])])
        return np.array([coef[k] for k in self.coef_names])
