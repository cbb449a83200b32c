"""Loss–compute frontiers through IsoFLOP optima, fitted for many bootstrap replicates at once.

Two forms ([EL] Eq. 1 and its irreducible-loss variant, arXiv 2507.17702 §3):

- ``"power-law"``:    L(C) = α·C^−β
- ``"irreducible"``:  L(C) = E + α·C^−β   (E ≥ 0)

Both are fitted by weighted least squares on the loss itself (weights 1/SE² of each
frontier point; equal weights when no SE is known), so their errors are comparable. For a
fixed β both forms are linear in (E, α), so the fit profiles β: a log grid on
[1e-3, 3] solved in closed form for every β, then three finer grids around the best
(β to ~1e-6 relative). One call
fits every bootstrap replicate (rows of ``Y``) in a few array operations.

Which form is better is decided out of sample (:func:`heldout_error`): fit on every point
but the largest-compute one, predict that one, compare relative errors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from moescale.errors import ConfigError, DataError

__all__ = ["FORMS", "Frontier", "fit_frontier_coefs", "heldout_error", "frontier_loss",
           "frontier_compute"]

FORMS = ("power-law", "irreducible")
_B_GRID = np.geomspace(1e-3, 3.0, 240)
_B_FINE = np.linspace(-1.0, 1.0, 41)


def _check_form(form: str) -> None:
    if form not in FORMS:
        raise ConfigError(f"'form' must be one of {list(FORMS)}; got {form!r}")


def _profile(C: np.ndarray, Y: np.ndarray, w: np.ndarray, B: np.ndarray,
             irreducible: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(E, α', SSE) for every replicate × β candidate; ``B`` is (G,) or (R, G).

    α' is the coefficient of (C/C0)^−β. Infeasible irreducible solutions (E < 0 or α ≤ 0)
    fall back to the nested E = 0 solution.
    """
    lc = np.log(C)
    X = np.exp(-B[..., None] * lc)  # (G, n) or (R, G, n)
    if X.ndim == 2:
        X = X[None]
    Yw = (Y * w)[:, None, :]  # (R, 1, n)
    S2 = np.sum(w * X * X, axis=-1)
    T1 = np.sum(Yw * X, axis=-1)  # (R, G)
    Syy = np.sum(w * Y * Y, axis=-1)[:, None]
    a0 = T1 / S2
    sse0 = Syy - a0 * T1
    E = np.zeros_like(sse0)
    a = a0
    sse = sse0
    if irreducible:
        S0 = float(np.sum(w))
        S1 = np.sum(w * X, axis=-1)
        T0 = np.sum(Y * w, axis=-1)[:, None]
        det = S0 * S2 - S1 * S1
        with np.errstate(divide="ignore", invalid="ignore"):
            E1 = (S2 * T0 - S1 * T1) / det
            a1 = (S0 * T1 - S1 * T0) / det
        sse1 = Syy - E1 * T0 - a1 * T1
        ok = np.isfinite(E1) & (E1 >= 0) & (a1 > 0) & (det > 1e-300)
        ok &= Y.min(axis=-1, keepdims=True) > E1
        better = ok & (sse1 < sse0)
        E = np.where(better, E1, 0.0)
        a = np.where(better, a1, a0)
        sse = np.where(better, sse1, sse0)
    sse = np.where(a > 0, sse, np.inf)
    return E, a, sse


def fit_frontier_coefs(C: Any, Y: Any, se: Any = None, *,
                       form: str = "power-law") -> np.ndarray:
    """Least-squares frontier coefficients (E, α, β) for each row of ``Y``.

    Parameters
    ----------
    C : (n,) compute of each frontier point (FLOPs, one convention).
    Y : (n,) or (R, n) losses of the points (one row per bootstrap replicate).
    se : (n,), optional
        Standard error of each point's loss (weights 1/SE²); equal weights if None.
    form : "power-law" (E fixed to 0) or "irreducible".

    Returns
    -------
    (R, 3) array of E, α, β (a (3,) array for 1-D ``Y``).
    """
    _check_form(form)
    C = np.asarray(C, dtype=float)
    Y = np.asarray(Y, dtype=float)
    one = Y.ndim == 1
    Y = np.atleast_2d(Y)
    n = len(C)
    need = 3 if form == "irreducible" else 2
    if n < need or len(np.unique(C)) < need:
        raise DataError(f"a {form} frontier needs at least {need} points at distinct compute; "
                        f"got {len(np.unique(C))}")
    if se is None:
        w = np.ones(n)
    else:
        se = np.asarray(se, dtype=float)
        w = 1.0 / np.where(np.isfinite(se) & (se > 0), se, np.nan) ** 2
        w = np.ones(n) if not np.isfinite(w).all() else w / w.mean()
    c0 = float(np.exp(np.mean(np.log(C))))
    Cn = C / c0
    irr = form == "irreducible"
    _, _, sse = _profile(Cn, Y, w, _B_GRID, irr)
    r = np.arange(len(Y))
    b = _B_GRID[np.argmin(sse, axis=1)]
    step = math.log(_B_GRID[1] / _B_GRID[0])
    for _ in range(3):  # each pass narrows β to 1/20 of the previous step
        Bf = b[:, None] * np.exp(step * _B_FINE)[None, :]  # (R, 41)
        E, a, sse = _profile(Cn, Y, w, Bf, irr)
        k = np.argmin(sse, axis=1)
        b = Bf[r, k]
        step /= 20.0
    out = np.stack([E[r, k], a[r, k] * c0 ** b, b], axis=1)
    return out[0] if one else out


def frontier_loss(coef: Any, C: Any) -> np.ndarray:
    """L(C) = E + α·C^−β for coefficient rows ``coef[..., (E, α, β)]``.

    With (R, 3) replicate coefficients and (n,) computes the result is (R, n).
    """
    coef = np.asarray(coef, dtype=float)
    C = np.asarray(C, dtype=float)
    E, a, b = coef[..., 0], coef[..., 1], coef[..., 2]
    if coef.ndim > 1 and C.ndim >= 1:
        E, a, b = E[:, None], a[:, None], b[:, None]
    return E + a * C ** (-b)


def frontier_compute(coef: Any, L: Any) -> np.ndarray:
    """C(L) = (α/(L − E))^(1/β), the inverse frontier; NaN where L ≤ E (never reached).

    With (R, 3) replicate coefficients, ``L`` is a scalar, an (R,) vector (one loss per
    replicate) or an (R, n) matrix (n losses per replicate).
    """
    coef = np.asarray(coef, dtype=float)
    L = np.asarray(L, dtype=float)
    E, a, b = coef[..., 0], coef[..., 1], coef[..., 2]
    if coef.ndim > 1 and L.ndim == 2:
        E, a, b = E[:, None], a[:, None], b[:, None]
    elif coef.ndim > 1 and L.ndim == 1 and len(L) != len(coef):
        raise ValueError(f"frontier_compute: {len(coef)} coefficient rows but {len(L)} losses")
    with np.errstate(divide="ignore", invalid="ignore"):
        gap = L - E
        return np.where(gap > 0, (a / np.where(gap > 0, gap, 1.0)) ** (1.0 / b), np.nan)


def heldout_error(C: Any, loss: Any, se: Any = None, *, form: str = "power-law") -> float:
    """Relative error of the largest-compute point predicted by a fit on all the others.

    ``(L̂ − L)/L`` at the largest C; NaN when too few points remain to fit ``form``.
    """
    C = np.asarray(C, dtype=float)
    loss = np.asarray(loss, dtype=float)
    order = np.argsort(C)
    train = order[:-1]
    need = 3 if form == "irreducible" else 2
    if len(np.unique(C[train])) < need:
        return math.nan
    s = None if se is None else np.asarray(se, dtype=float)[train]
    coef = fit_frontier_coefs(C[train], loss[train], s, form=form)
    last = order[-1]
    return float((frontier_loss(coef, C[last]) - loss[last]) / loss[last])


@dataclass(frozen=True)
class Frontier:
    """A fitted frontier of one architecture configuration, with bootstrap replicates.

    ``boot`` holds (E, α, β) per replicate of the joint bootstrap; intervals are its
    central ``level`` percentiles.
    """

    config: str
    arch: str
    form: str
    coef: np.ndarray
    """(E, α, β); E = 0 for the power law."""
    boot: np.ndarray = field(repr=False)
    compute: tuple[float, ...] = ()
    loss: tuple[float, ...] = ()
    loss_se: tuple[float, ...] = ()
    budgets: tuple[float, ...] = ()
    level: float = 0.9
    heldout_rel_error: float = math.nan
    rmse_rel: float = math.nan
    flags: tuple[str, ...] = ()
    activation_ratio: float = math.nan
    granularity: float = math.nan

    @property
    def names(self) -> tuple[str, ...]:
        return ("alpha", "beta", "E") if self.form == "irreducible" else ("alpha", "beta")

    def _named(self, row: np.ndarray) -> dict[str, float]:
        d = {"alpha": float(row[1]), "beta": float(row[2]), "E": float(row[0])}
        return {k: d[k] for k in self.names}

    def coef_dict(self) -> dict[str, float]:
        return self._named(self.coef)

    def interval(self) -> tuple[dict[str, float], dict[str, float]]:
        """(low, high) of every coefficient at ``level`` (percentile bootstrap)."""
        q = ((1 - self.level) / 2, (1 + self.level) / 2)
        if not np.isfinite(self.boot).any():  # no noise model: no interval
            nan = np.full(3, np.nan)
            return self._named(nan), self._named(nan)
        lo, hi = np.nanquantile(self.boot, q, axis=0)
        return self._named(lo), self._named(hi)

    @property
    def loss_range(self) -> tuple[float, float]:
        return float(min(self.loss)), float(max(self.loss))

    @property
    def compute_range(self) -> tuple[float, float]:
        return float(min(self.compute)), float(max(self.compute))

    def loss_at(self, C: Any) -> np.ndarray:
        return frontier_loss(self.coef, C)

    def compute_for_loss(self, L: Any) -> np.ndarray:
        return frontier_compute(self.coef, L)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (the ``frontiers`` entries of ``moescale leverage --json``)."""
        lo, hi = self.interval()
        return {"config": self.config, "arch": self.arch,
                "activation_ratio": _num(self.activation_ratio),
                "granularity": _num(self.granularity), "form": self.form,
                "coef": self.coef_dict(), "coef_low": lo, "coef_high": hi,
                "n_points": len(self.compute), "compute_min": self.compute_range[0],
                "compute_max": self.compute_range[1], "loss_min": self.loss_range[0],
                "loss_max": self.loss_range[1], "heldout_rel_error": _num(self.heldout_rel_error),
                "rmse_rel": _num(self.rmse_rel), "level": self.level, "flags": list(self.flags)}


def _num(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None
