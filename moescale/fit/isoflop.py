"""IsoFLOP optimum of one budget: a parabola in ln M through the ladder's (M, loss).

At a fixed compute budget C the final loss of a ladder of model sizes is, near its
minimum, a parabola in ln M ([EL] §2.3, Chinchilla "approach 2", arXiv 2203.15556 §3.2):

    L(x) = a + b·x + c·x²,   x = ln M,   vertex x* = −b/(2c),   L* = a − b²/(4c).

``M`` is the per-token FLOPs (or parameter count) of each rung — any positive size in
one convention; the optimum comes back in the same unit.

Method (:func:`fit_isoflop`):

- **Replicates.** Rows with the same M (relative 1e-9) are one rung: its loss is the mean,
  its standard error the replicate scatter sd/√n (floored at the mean ``loss_se``/√n the
  evaluation alone gives); a single-run rung uses its ``loss_se``.
- **Fit.** Weighted least squares with weights 1/SE². Without any SE the fit is unweighted
  and the SE is the residual scatter (needs ≥ 4 rungs). Where the residuals exceed their
  SEs (χ²/dof > 1, dof = rungs − 3 ≥ 1) every SE is inflated by √(χ²/dof), so lack of fit
  widens the interval instead of hiding.
- **Interval.** Parametric bootstrap: ``n_boot`` replicates of the rung losses drawn
  from N(fitted value, SE²), refitted in one matrix product. The optimum of a replicate is
  the minimum of its parabola *on the sampled range* [min ln M, max ln M] (an edge when
  its curvature is ≤ 0 or its vertex lies outside), so every replicate has an optimum and
  an interval that reaches an edge says the data do not pin the optimum down
  (flag ``interval-reaches-edge``). The interval is the central ``level`` percentile range.
- **Degenerate fits.** Curvature ≤ 0 (``non-positive-curvature``), vertex outside the
  rungs (``vertex-outside-rungs``), the lowest rung at an end of the ladder
  (``minimum-at-ladder-end``: a monotone ladder, whose interpolating parabola can still put
  a vertex between its last two rungs) or fewer than 3 rungs (``too-few-rungs``) make the fit
  degenerate: ``interior`` is False, ``m_opt``/``loss_opt`` are the best *rung*'s (the
  lowest mean loss — an edge of the ladder, not an optimum), and :attr:`usable` is False.
  Frontier fits leave such budgets out and say so.
- **Bracketing** (:func:`extension_side`): at least ``min_each_side`` rungs on each side of
  the lowest rung whose loss exceeds the minimum by more than their paired standard
  error √(SE_i² + SE_min²).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from moescale.errors import ConfigError, DataError, check_range

__all__ = ["IsoFlopOptimum", "fit_isoflop", "extension_side", "rungs", "bounded_vertex",
           "N_BOOT"]

N_BOOT = 2000
"""Default parametric-bootstrap replicates of an IsoFLOP fit (one matrix product each)."""
_SAME_M_RTOL = 1e-9


@dataclass(frozen=True)
class IsoFlopOptimum:
    """The optimum of one IsoFLOP ladder and its ``level`` interval (see module docstring).

    ``m_opt``/``loss_opt`` are the parabola's vertex when ``interior``; otherwise the best
    rung's M and mean loss, flagged. ``flags`` name every caveat in plain words.
    """

    m_opt: float
    m_opt_low: float
    m_opt_high: float
    loss_opt: float
    loss_opt_low: float
    loss_opt_high: float
    bracketed: bool
    n_rungs: int
    flags: tuple[str, ...] = ()
    budget: float | None = None
    interior: bool = False
    """True when the parabola has positive curvature and its vertex lies inside the rungs."""
    curvature: float = math.nan
    """c of L = a + b·ln M + c·(ln M)² (nats per (ln M)²)."""
    n_runs: int = 0
    level: float = 0.9
    seed_sd: float = math.nan
    """Pooled within-rung standard deviation of replicate losses (NaN without replicates)."""
    rung_m: tuple[float, ...] = field(default=(), repr=False)
    rung_loss: tuple[float, ...] = field(default=(), repr=False)
    rung_se: tuple[float, ...] = field(default=(), repr=False)
    rung_n: tuple[int, ...] = field(default=(), repr=False)

    @property
    def usable(self) -> bool:
        """True when the vertex may stand for the budget's optimum (an interior vertex)."""
        return self.interior

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields (the public keys of ``moescale report --json``)."""
        return {"budget": self.budget, "m_opt": self.m_opt, "m_opt_low": self.m_opt_low,
                "m_opt_high": self.m_opt_high, "loss_opt": self.loss_opt,
                "loss_opt_low": self.loss_opt_low, "loss_opt_high": self.loss_opt_high,
                "bracketed": self.bracketed, "interior": self.interior,
                "n_rungs": self.n_rungs, "n_runs": self.n_runs, "seed_sd": self.seed_sd,
                "flags": list(self.flags)}


def _as_arrays(m: Any, loss: Any, loss_se: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    m = np.atleast_1d(np.asarray(m, dtype=float))
    loss = np.atleast_1d(np.asarray(loss, dtype=float))
    if m.shape != loss.shape or m.ndim != 1:
        raise DataError(f"IsoFLOP ladder: 'm' and 'loss' must be 1-D of equal length; got "
                        f"shapes {m.shape} and {loss.shape}")
    if len(m) == 0:
        raise DataError("IsoFLOP ladder: no runs (need at least 3 model sizes to fit)")
    se = (np.full(len(m), np.nan) if loss_se is None
          else np.broadcast_to(np.asarray(loss_se, dtype=float), m.shape).astype(float))
    for name, v in (("m", m), ("loss", loss)):
        bad = ~np.isfinite(v) | (v <= 0)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(f"IsoFLOP ladder: {name!r} must be finite and > 0; got {v[i]!r} "
                            f"at row {i} ({int(bad.sum())} such row(s); a NaN loss is a "
                            "diverged or unfinished run — drop it or rerun it)")
    bad = np.isfinite(se) & (se < 0) | np.isinf(se)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"IsoFLOP ladder: 'loss_se' must be finite and ≥ 0 (or NaN if "
                        f"unknown); got {se[i]!r} at row {i}")
    return m, loss, se


def rungs(m: Any, loss: Any, loss_se: Any = None) -> dict[str, np.ndarray]:
    """Group replicates (equal M) into rungs, sorted by M.

    Returns arrays ``m``, ``loss`` (mean), ``se`` (standard error of the mean: replicate
    scatter sd/√n, at least the evaluation SE rms/√n; a single run's ``loss_se``; NaN if
    unknown), ``n`` (replicates) and ``sd`` (replicate sd, NaN for single runs).
    """
    m, loss, se = _as_arrays(m, loss, loss_se)
    order = np.argsort(m, kind="stable")
    m, loss, se = m[order], loss[order], se[order]
    starts = np.r_[0, np.flatnonzero(np.diff(m) > _SAME_M_RTOL * m[1:]) + 1]
    ends = np.r_[starts[1:], len(m)]
    out = {k: np.empty(len(starts)) for k in ("m", "loss", "se", "sd")}
    out["n"] = (ends - starts).astype(int)
    for j, (s, e) in enumerate(zip(starts, ends, strict=True)):
        y, n = loss[s:e], e - s
        out["m"][j] = float(m[s])
        out["loss"][j] = float(y.mean())
        eval_se = se[s:e]
        eval_part = (math.sqrt(float(np.mean(eval_se**2)) / n)
                     if np.isfinite(eval_se).all() else math.nan)
        if n >= 2:
            sd = float(y.std(ddof=1))
            out["sd"][j] = sd
            scatter = sd / math.sqrt(n)
            out["se"][j] = scatter if not math.isfinite(eval_part) else max(scatter, eval_part)
        else:
            out["sd"][j] = math.nan
            out["se"][j] = eval_part
    return out


def extension_side(m: Any, loss: Any, loss_se: Any = None, *,
                   min_each_side: int = 2) -> str | None:
    """Which side of an IsoFLOP ladder needs more rungs: ``"lower"``, ``"higher"``,
    ``"both"``, or None when the minimum is bracketed.

    Bracketed: at least ``min_each_side`` rungs below and above the lowest-loss rung (in
    M) whose mean loss exceeds the minimum by more than the paired standard error
    √(SE_i² + SE_min²). Unknown SEs count as 0 (any higher loss counts).
    """
    check_range("min_each_side", min_each_side, low=1, integer=True, error=ConfigError)
    r = rungs(m, loss, loss_se)
    se = np.nan_to_num(r["se"], nan=0.0)
    j = int(np.argmin(r["loss"]))
    clear = r["loss"] - r["loss"][j] > np.sqrt(se**2 + se[j] ** 2)
    idx = np.arange(len(r["m"]))
    lower_ok = int(np.sum(clear & (idx < j))) >= min_each_side
    higher_ok = int(np.sum(clear & (idx > j))) >= min_each_side
    if lower_ok and higher_ok:
        return None
    if not lower_ok and not higher_ok:
        return "both"
    return "lower" if not lower_ok else "higher"


def paired_se(m: Any, loss: Any, blocks: Any) -> list[float]:
    """Per run: the SE of its rung's loss minus the best rung's, paired over evaluation
    blocks shared by every run (replicates averaged block by block), scaled by √n_rung so
    that :func:`rungs` averaging the rung's n runs gives that SE back.

    Evaluation-sample noise common to all runs (the same validation blocks) cancels in the
    difference, so it is resolved far better than either loss's own ``val_loss_se``. This is
    the SE the bracketing test (:func:`extension_side`) uses, in the planner and in
    :func:`fit_isoflop` alike.

    Examples
    --------
    >>> common = [3.0, 2.0, 4.0, 1.0]      # block difficulty, shared by every run
    >>> blocks = [[c + d for c in common] for d in (0.2, 0.0, 0.01, 0.3)]
    >>> [round(s, 3) for s in paired_se([1, 2, 3, 4], [2.7, 2.5, 2.51, 2.8], blocks)]
    [0.0, 0.0, 0.0, 0.0]
    """
    b = np.asarray(blocks, dtype=float)
    m, loss = list(m), list(loss)
    ms = sorted(set(m))
    rung = np.array([ms.index(x) for x in m])
    means = np.array([np.mean([loss[i] for i in np.flatnonzero(rung == j)])
                      for j in range(len(ms))])
    vec = np.stack([b[rung == j].mean(axis=0) for j in range(len(ms))])
    diff = vec - vec[int(np.argmin(means))]
    se = diff.std(axis=1, ddof=1) / math.sqrt(b.shape[1])
    n = np.bincount(rung)
    return [float(se[j] * math.sqrt(n[j])) for j in rung]


def _design(x: np.ndarray) -> np.ndarray:
    return np.stack([np.ones_like(x), x, x * x], axis=1)


def bounded_vertex(coef: np.ndarray, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """(x_min, L_min) of parabolas ``coef[..., (a, b, c)]`` minimised on [lo, hi].

    The vertex when the curvature is positive and the vertex lies inside, else the lower
    of the two ends. Vectorised over leading axes.
    """
    a, b, c = coef[..., 0], coef[..., 1], coef[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        xv = np.where(c > 0, -b / (2 * c), np.nan)
    inside = np.isfinite(xv) & (xv >= lo) & (xv <= hi)
    f_lo, f_hi = a + b * lo + c * lo * lo, a + b * hi + c * hi * hi
    edge_x = np.where(f_lo <= f_hi, lo, hi)
    x = np.where(inside, xv, edge_x)
    return x, a + b * x + c * x * x


def fit_isoflop(
    m: Any, loss: Any, loss_se: Any = None, *, level: float = 0.9, n_boot: int = N_BOOT,
    seed: int = 0, budget: float | None = None, min_each_side: int = 2,
    bracket_se: Any = None,
) -> IsoFlopOptimum:
    """Fit one IsoFLOP ladder: the vertex of a parabola in ln M, with a ``level`` interval.

    Parameters
    ----------
    m, loss : array-like
        One entry per run: model size (e.g. Ling FLOPs/token M) and final loss. Runs with
        equal ``m`` are replicates (seeds) of one rung.
    loss_se : array-like or float, optional
        Standard error of each run's loss from its evaluation (``val_loss_se``); NaN where
        unknown.
    level : float
        Central coverage of the intervals (default 0.9).
    n_boot : int
        Parametric-bootstrap replicates (0: no interval, bounds NaN).
    budget : float, optional
        The budget the ladder belongs to (carried into the result).
    bracket_se : array-like, optional
        Per run, the SE of its loss difference to the best rung (:func:`paired_se` from
        shared evaluation blocks): the bracketing test uses it instead of ``loss_se``, as
        the sweep planner does, so both call the same ladders bracketed.

    Returns
    -------
    IsoFlopOptimum
        See the module docstring for the method, flags and degenerate cases.
    """
    check_range("level", level, low=0.0, high=1.0, low_inclusive=False, high_inclusive=False,
                error=ConfigError)
    check_range("n_boot", n_boot, low=0, integer=True, error=ConfigError)
    r = rungs(m, loss, loss_se)
    n_runs = int(r["n"].sum())
    k = len(r["m"])
    x = np.log(r["m"])
    flags: list[str] = []
    if bracket_se is not None and np.shape(bracket_se) != np.shape(np.atleast_1d(m)):
        raise DataError(f"IsoFLOP ladder: 'bracket_se' needs one value per run "
                        f"({np.size(m)}); got shape {np.shape(bracket_se)}")
    side = (extension_side(r["m"], r["loss"], r["se"], min_each_side=min_each_side)
            if bracket_se is None else
            extension_side(m, loss, bracket_se, min_each_side=min_each_side))
    if side is not None:
        flags.append(f"not-bracketed-{side}")
    sd = r["sd"][np.isfinite(r["sd"])]
    nrep = r["n"][np.isfinite(r["sd"])]
    seed_sd = (math.sqrt(float(np.sum((nrep - 1) * sd**2) / np.sum(nrep - 1)))
               if len(sd) else math.nan)
    j = int(np.argmin(r["loss"]))
    common = {"bracketed": side is None, "n_rungs": k, "budget": budget, "n_runs": n_runs,
              "level": level, "seed_sd": seed_sd, "rung_m": tuple(r["m"].tolist()),
              "rung_loss": tuple(r["loss"].tolist()), "rung_se": tuple(r["se"].tolist()),
              "rung_n": tuple(int(v) for v in r["n"])}
    if k < 3:
        flags.append("too-few-rungs")
        nan = math.nan
        return IsoFlopOptimum(float(r["m"][j]), nan, nan, float(r["loss"][j]), nan, nan,
                              flags=tuple(flags), interior=False, **common)
    se = r["se"].copy()
    known = np.isfinite(se) & (se > 0)
    weighted = bool(known.all())
    if not weighted:
        if known.any():
            flags.append("loss-se-partly-unknown")
        se = np.ones(k)
    X = _design(x - x.mean())
    W = 1.0 / se**2
    XtW = X.T * W
    P = np.linalg.solve(XtW @ X, XtW)  # (3, k): coefficients = P @ y
    coef = P @ r["loss"]
    resid = r["loss"] - X @ coef
    dof = k - 3
    if weighted:
        if dof >= 1:
            chi2 = float(np.sum(resid**2 * W))
            if chi2 / dof > 1.0:
                se = se * math.sqrt(chi2 / dof)
                flags.append(f"lack-of-fit (chi2/dof = {chi2 / dof:.3g}; intervals widened)")
    elif dof >= 1:
        s = math.sqrt(float(np.sum(resid**2)) / dof)
        se = np.full(k, s)
        flags.append("no-loss-se (interval from the parabola's residual scatter)")
    else:
        se = np.full(k, math.nan)
        flags.append("no-interval (3 rungs without a loss standard error)")
    xc = x - x.mean()
    lo, hi = float(xc.min()), float(xc.max())
    c = float(coef[2])
    end_min = j in (0, k - 1)
    interior = c > 0 and lo <= -coef[1] / (2 * c) <= hi and not end_min
    if c <= 0:
        flags.append("non-positive-curvature")
    elif not lo <= -coef[1] / (2 * c) <= hi:
        flags.append("vertex-outside-rungs")
    if end_min:
        flags.append("minimum-at-ladder-end")
    xv, lv = bounded_vertex(coef, lo, hi)
    if interior:
        m_opt, loss_opt = float(np.exp(xv + x.mean())), float(lv)
    else:
        m_opt, loss_opt = float(r["m"][j]), float(r["loss"][j])
    bounds = [math.nan] * 4
    if n_boot and np.isfinite(se).all():
        rng = np.random.default_rng(seed)
        fitted = X @ coef
        Y = fitted + rng.standard_normal((n_boot, k)) * se
        bx, bl = bounded_vertex(Y @ P.T, lo, hi)
        q = ((1 - level) / 2, (1 + level) / 2)
        m_lo, m_hi = np.exp(np.quantile(bx, q) + x.mean())
        l_lo, l_hi = np.quantile(bl, q)
        bounds = [float(m_lo), float(m_hi), float(l_lo), float(l_hi)]
        at_edge = np.mean((bx <= lo + 1e-12) | (bx >= hi - 1e-12))
        if at_edge > (1 - level) / 2:
            flags.append(f"interval-reaches-edge ({at_edge:.0%} of bootstrap optima at a "
                         "ladder end)")
    if not interior:
        # the bound is for the best rung, not for a vertex
        from scipy.stats import norm

        z = float(norm.ppf((1 + level) / 2))
        bounds[2:] = ([float(r["loss"][j] - z * se[j]), float(r["loss"][j] + z * se[j])]
                      if math.isfinite(se[j]) else [math.nan, math.nan])
    return IsoFlopOptimum(m_opt, bounds[0], bounds[1], loss_opt, bounds[2], bounds[3],
                          flags=tuple(flags), interior=bool(interior), curvature=c, **common)
