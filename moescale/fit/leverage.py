"""Efficiency Leverage measured from runs ([EL] Def. 3.1, Eq. 1; arXiv 2507.17702).

EL of an MoE run = C_dense(L_moe) / C_moe: the compute a dense model needs to reach the
MoE's loss, read off a dense loss frontier, over the MoE's compute. EL > 1 means the MoE
is better. Two dense frontiers:

- ``"power-law"`` ([EL]): L(C) = α·C^−β fitted (summed Huber on log loss) to the dense
  runs' final (compute, loss) points and inverted in closed form, C = (L/α)^(−1/β).
  By default (``frontier_points="budget-minima"``) only the frontier points enter the
  fit: at each compute budget the lowest-loss dense run (the IsoFLOP minimum; seed
  replicates of that same model are kept too), since [EL]'s dense frontier is the
  envelope of compute-optimal dense runs. ``"all"`` fits every dense run, off-optimal
  IsoFLOP ladder sizes included (which biases the frontier up and EL up);
- ``"envelope"``: the lower convex hull, in log C–log L, of every dense curve point (and
  final point), restricted to its decreasing part and interpolated linearly in log-log.

Losses outside the dense points' loss range are extrapolations (power law: beyond the
fitted points; envelope: the end segments extended) and are flagged ``extrapolated``.

Conventions: A = E_a/E, G = 2·d/d_expert ([EL]); ``el_published`` is [EL] Eq. 13 with the
published coefficients where A and G are known (its C is Ling's M·D, so it is comparable
only where the runs' ``flops_convention`` is ``ling``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from moescale.errors import ConfigError, DataError
from moescale.fit.fitters import ELJointFitter, ELSeparableFitter, PowerLawFitter
from moescale.fit.runs import BUDGET_RTOL, RunTable, assign_budgets
from moescale.laws import forms
from moescale.laws.el import ELCoefficients

__all__ = [
    "FRONTIERS",
    "FRONTIER_POINTS",
    "BUDGET_RTOL",
    "budget_minima",
    "DenseFrontier",
    "dense_frontier",
    "measure_el",
    "el_table",
    "published_el_coefficients",
    "el_published",
    "frontier_crossover_compute",
    "frontier_crossovers",
    "fit_el_joint",
    "fit_el_separable",
    "load_measured_el",
    "el_fit_report",
]

FRONTIERS = ("power-law", "envelope")
FRONTIER_POINTS = ("budget-minima", "all")
LABEL_COLUMNS = ("model_size_label", "num_experts", "router_type", "top_k", "n_experts",
                 "routing_frequency", "family", "seed")


@dataclass(frozen=True)
class DenseFrontier:
    """A dense loss frontier L(C) and its inverse C(L).

    ``log_compute``/``log_loss`` are the envelope's vertices (increasing C, decreasing L)
    or, for the power law, the fitted points' range; ``coef`` holds α, β for the power law.
    """

    kind: str
    log_compute: np.ndarray
    log_loss: np.ndarray
    coef: dict[str, float]
    n_points: int
    points: str = "all"
    """Which dense runs the fit used: ``budget-minima``, ``all`` or ``hull`` (envelope)."""

    @property
    def loss_range(self) -> tuple[float, float]:
        """(min, max) loss covered by the dense points (outside: extrapolation)."""
        return float(np.exp(self.log_loss.min())), float(np.exp(self.log_loss.max()))

    def loss(self, compute: Any) -> np.ndarray:
        """L(C) on the frontier."""
        lc = np.log(np.asarray(compute, dtype=float))
        if self.kind == "power-law":
            return forms.power_law(np.exp(lc), self.coef["alpha"], self.coef["beta"])
        x, y = self.log_compute, self.log_loss
        out = np.interp(lc, x, y)
        lo, hi = lc < x[0], lc > x[-1]
        out = np.where(lo, y[0] + (lc - x[0]) * (y[1] - y[0]) / (x[1] - x[0]), out)
        out = np.where(hi, y[-1] + (lc - x[-1]) * (y[-1] - y[-2]) / (x[-1] - x[-2]), out)
        return np.exp(out)

    def compute_for_loss(self, loss: Any) -> tuple[np.ndarray, np.ndarray]:
        """C_dense(L) and a mask of extrapolated values (L outside the dense loss range)."""
        ll = np.log(np.asarray(loss, dtype=float))
        lo_l, hi_l = self.log_loss.min(), self.log_loss.max()
        extrapolated = (ll < lo_l - 1e-12) | (ll > hi_l + 1e-12)
        if self.kind == "power-law":
            a, b = self.coef["alpha"], self.coef["beta"]
            log_c = -(ll - math.log(a)) / b
        else:
            x, y = self.log_compute, self.log_loss  # y decreasing
            log_c = np.interp(ll, y[::-1], x[::-1])
            below, above = ll < y[-1], ll > y[0]
            log_c = np.where(below, x[-1] + (ll - y[-1]) * (x[-1] - x[-2]) / (y[-1] - y[-2]),
                             log_c)
            log_c = np.where(above, x[0] + (ll - y[0]) * (x[1] - x[0]) / (y[1] - y[0]), log_c)
        # a (nearly) flat frontier puts C_dense beyond float64: no EL can be measured
        bad = ~np.isfinite(log_c) | (np.abs(log_c) > _MAX_LOG_COMPUTE)
        if np.any(bad):
            i = int(np.flatnonzero(np.ravel(bad))[0])
            raise DataError(
                f"the dense frontier ({self.kind}) cannot reach loss "
                f"{float(np.exp(np.ravel(ll)[i])):.4g}: C_dense is beyond 1e300 FLOPs (the dense "
                f"runs' loss barely falls with compute, {self._range_text()}); EL is undefined")
        return np.exp(log_c), extrapolated

    def _range_text(self) -> str:
        lo, hi = self.loss_range
        return f"loss {lo:.4g}–{hi:.4g} over {self.n_points} point(s)"

    def describe(self) -> dict[str, Any]:
        """JSON-ready description."""
        lo, hi = self.loss_range
        return {"kind": self.kind, **self.coef, "n_points": self.n_points,
                "frontier_points": self.points,
                "loss_min": lo, "loss_max": hi,
                "compute_min": float(np.exp(self.log_compute.min())),
                "compute_max": float(np.exp(self.log_compute.max()))}


_MAX_LOG_COMPUTE = math.log(1e300)


def _lower_hull(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lower convex hull (Andrew's monotone chain) of points sorted by x, ties by y."""
    hull: list[tuple[float, float]] = []
    for p in zip(x, y, strict=True):
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            if (x2 - x1) * (p[1] - y1) - (y2 - y1) * (p[0] - x1) <= 0:
                hull.pop()
            else:
                break
        hull.append(p)
    hx, hy = np.array([h[0] for h in hull]), np.array([h[1] for h in hull])
    stop = int(np.argmin(hy)) + 1  # keep the decreasing part
    return hx[:stop], hy[:stop]


def budget_minima(
    runs: pd.DataFrame, *, budget_rtol: float = BUDGET_RTOL, budget_column: str = "budget",
) -> pd.DataFrame:
    """The frontier points of a set of runs: the IsoFLOP minimum at each compute budget.

    Runs are grouped into budgets by ``budget_column`` when the frame has it (all values
    finite), else by compute: sorted by compute, a run more than ``budget_rtol`` (relative)
    above its group's first compute starts a new budget. In each budget the lowest-loss
    run is kept, with its seed replicates (runs of the same model and recipe: equal
    ``flops_per_token``, ``params_active``, ``params_total``, ``learning_rate`` and
    ``batch_tokens`` where known), so a budget whose runs are seeds of one run keeps them
    all (Clark et al.'s three 130M seeds).

    Returns
    -------
    DataFrame
        The kept rows (original columns, in the input's order) plus ``budget_id`` (0, 1, ...
        by increasing compute) and ``budget_n_runs`` (runs in that budget).
    """
    from moescale.errors import check_range

    check_range("budget_rtol", budget_rtol, low=0.0, high=1.0, error=ConfigError)
    if len(runs) == 0:
        return runs.assign(budget_id=pd.Series(dtype=int), budget_n_runs=pd.Series(dtype=int))
    frame = runs.reset_index(drop=True)
    if budget_column != "budget" and budget_column in frame.columns:
        frame = frame.assign(budget=frame[budget_column])
    budgets, _ = assign_budgets(frame, budget_rtol=budget_rtol)
    _, group = np.unique(budgets["budget"].to_numpy(dtype=float), return_inverse=True)
    loss = pd.to_numeric(frame["loss"], errors="coerce").to_numpy(dtype=float)
    keys = [c for c in ("flops_per_token", "params_active", "params_total", "learning_rate",
                        "batch_tokens") if c in frame.columns]
    keep = np.zeros(len(frame), dtype=bool)
    counts = np.bincount(group)
    for g in np.unique(group):
        idx = np.flatnonzero(group == g)
        best = idx[int(np.argmin(loss[idx]))]
        same = np.zeros(len(idx), dtype=bool) if not keys else np.ones(len(idx), dtype=bool)
        n_known = 0
        for k in keys:
            v = pd.to_numeric(frame[k], errors="coerce").to_numpy(dtype=float)
            if np.isfinite(v[best]):
                n_known += 1
                same &= np.isclose(v[idx], v[best], rtol=1e-9, atol=0.0)
        if n_known == 0:
            same[:] = False
        same[idx == best] = True
        keep[idx[same]] = True
    out = frame.loc[keep].copy()
    out["budget_id"] = group[keep]
    out["budget_n_runs"] = counts[group[keep]]
    return out


def dense_frontier(
    runs: RunTable, kind: str = "power-law", *, fitter: PowerLawFitter | None = None,
    frontier_points: str = "budget-minima", budget_rtol: float = BUDGET_RTOL,
) -> DenseFrontier:
    """Fit the dense frontier from the dense runs of ``runs``.

    Parameters
    ----------
    kind : {"power-law", "envelope"}
        Power law on final points, or lower convex hull of all dense curve points.
    fitter : PowerLawFitter, optional
        The power-law fitter to use (default ``PowerLawFitter()``, no irreducible term).
    frontier_points : {"budget-minima", "all"}
        Power law only: fit the IsoFLOP minimum of each compute budget
        (:func:`budget_minima`, [EL]'s envelope of compute-optimal dense runs; default) or
        every dense run. The envelope is a lower hull, so off-optimal runs never enter it.
    budget_rtol : float
        Relative compute tolerance grouping runs into one budget (:func:`budget_minima`),
        used when the runs have no ``budget`` column.
    """
    if kind not in FRONTIERS:
        raise ConfigError(f"'dense_frontier' must be one of {list(FRONTIERS)}; got {kind!r}")
    if frontier_points not in FRONTIER_POINTS:
        raise ConfigError(f"'frontier_points' must be one of {list(FRONTIER_POINTS)}; "
                          f"got {frontier_points!r}")
    dense = runs.dense()
    if len(dense) == 0:
        raise DataError(f"{runs.source}: no dense runs (arch == 'dense') to build the frontier")
    C, L = dense.column("compute"), dense.column("loss")
    if kind == "power-law":
        if len(np.unique(C)) < 2:
            raise DataError(f"{runs.source}: the dense runs have a single distinct compute value; "
                            "a power-law frontier needs at least 2")
        if frontier_points == "budget-minima":
            pts = budget_minima(dense.runs, budget_rtol=budget_rtol)
            C = pts["compute"].to_numpy(dtype=float)
            L = pts["loss"].to_numpy(dtype=float)
            if len(np.unique(C)) < 2:
                raise DataError(f"{runs.source}: the dense runs cover a single compute budget; "
                                "a power-law frontier needs at least 2")
        f = (fitter or PowerLawFitter()).fit(C, L)
        if f.irreducible:
            raise ConfigError("the power-law dense frontier has no irreducible term "
                              "([EL] Eq. 1); use PowerLawFitter(irreducible=False)")
        order = np.argsort(C)
        return DenseFrontier("power-law", np.log(C[order]), np.log(L[order]),
                             dict(f.coef_), len(C), frontier_points)
    pts = dense.curve_points()
    Cp = np.concatenate([pts["compute"].to_numpy(float), C])
    Lp = np.concatenate([pts["loss"].to_numpy(float), L])
    order = np.lexsort((Lp, Cp))
    hx, hy = _lower_hull(np.log(Cp[order]), np.log(Lp[order]))
    if len(hx) < 2:
        raise DataError(f"{runs.source}: the dense envelope has fewer than 2 decreasing points")
    return DenseFrontier("envelope", hx, hy, {}, len(Cp), "hull")


def published_el_coefficients() -> dict[str, float]:
    """[EL] Eq. 13 published coefficients (:meth:`moescale.laws.ELCoefficients.published`)."""
    return ELCoefficients.published().params()


def el_published(A: Any, G: Any, C: Any) -> np.ndarray:
    """[EL] Eq. 13 with published coefficients; NaN where A or G is unknown or A ∉ (0, 1]."""
    A, G, C = (np.asarray(v, dtype=float) for v in np.broadcast_arrays(A, G, C))
    ok = np.isfinite(A) & np.isfinite(G) & np.isfinite(C) & (A > 0) & (A <= 1) & (G > 0) & (C > 0)
    out = np.full(A.shape, np.nan)
    if ok.any():
        out[ok] = forms.el_joint(A[ok], G[ok], C[ok], **published_el_coefficients())
    return out


def measure_el(
    runs: RunTable,
    frontier: str | DenseFrontier = "power-law",
    *,
    per_point: bool = False,
    frontier_points: str = "budget-minima",
) -> pd.DataFrame:
    """EL = C_dense(L_moe)/C_moe for every MoE run (or every point of its curve).

    ``frontier`` is a kind (built with :func:`dense_frontier` and ``frontier_points``,
    by default the IsoFLOP minima of the dense runs) or a ready :class:`DenseFrontier`.

    Returns
    -------
    DataFrame with ``run``, (``step`` if per point), ``compute``, ``loss``, ``el``,
    ``compute_dense``, ``extrapolated``, ``activation_ratio``, ``granularity``,
    ``el_published`` and the label columns present (model size, expert count, router...).
    """
    fr = (frontier if isinstance(frontier, DenseFrontier)
          else dense_frontier(runs, frontier, frontier_points=frontier_points))
    moe = runs.moe()
    if len(moe) == 0:
        raise DataError(f"{runs.source}: no MoE runs (arch == 'moe') to measure EL for")
    pts = moe.curve_points() if per_point else moe.runs.copy()
    C = pts["compute"].to_numpy(dtype=float)
    L = pts["loss"].to_numpy(dtype=float)
    c_dense, extrap = fr.compute_for_loss(L)
    A = pts["activation_ratio"].to_numpy(dtype=float)
    G = pts["granularity"].to_numpy(dtype=float)
    out = pd.DataFrame({"run": pts["run"].astype(str).to_numpy()})
    if per_point:
        out["step"] = pts["step"].to_numpy(dtype=float)
    out["compute"] = C
    out["loss"] = L
    out["el"] = c_dense / C
    out["compute_dense"] = c_dense
    out["extrapolated"] = extrap
    out["activation_ratio"] = A
    out["granularity"] = G
    out["el_published"] = el_published(A, G, C)
    for col in LABEL_COLUMNS:
        if col in pts.columns and pts[col].notna().any():
            out[col] = pts[col].to_numpy()
    out.attrs["frontier"] = fr.describe()
    return out


def el_table(
    measured: pd.DataFrame,
    index: tuple[str, ...] = ("model_size_label", "router_type"),
    columns: str = "num_experts",
    value: str = "el",
) -> pd.DataFrame:
    """Pivot of measured EL (median over duplicate configurations)."""
    missing = [c for c in (*index, columns, value) if c not in measured.columns]
    if missing:
        raise DataError(f"el_table: measured EL has no column(s) {missing}")
    pivot = measured.pivot_table(index=list(index), columns=columns, values=value,
                                 aggfunc="median")
    if index and index[0] == "model_size_label":  # "15M" < "130M" < "1.3B", not text order
        scale = {"K": 1e3, "M": 1e6, "B": 1e9, "T": 1e12}

        def size(label: object) -> float:
            text = str(label).strip().upper()
            try:
                return float(text[:-1]) * scale[text[-1]] if text[-1:] in scale else float(text)
            except ValueError:
                return math.inf

        keys = pivot.index.get_level_values(0) if pivot.index.nlevels > 1 else pivot.index
        order = sorted(range(len(pivot)), key=lambda i: (size(keys[i]), i))
        pivot = pivot.iloc[order]
    return pivot


def frontier_crossover_compute(alpha_d: float, beta_d: float, alpha_m: float,
                               beta_m: float) -> float:
    """Compute C* where two power-law frontiers cross, i.e. EL = 1 ([EL] Eq. 1).

    ``ln C* = ln(α_d/α_m) / (β_d − β_m)``; ``inf`` for parallel frontiers (β_d = β_m).
    EL grows with C when β_m > β_d (EL > 1 above C*), shrinks otherwise.
    """
    if beta_d == beta_m:
        return math.inf
    lc = math.log(alpha_d / alpha_m) / (beta_d - beta_m)
    return math.exp(lc) if lc < 700 else math.inf


def frontier_crossovers(
    runs: RunTable,
    by: tuple[str, ...] = ("router_type", "num_experts"),
    *,
    dense: DenseFrontier | None = None,
    fitter: PowerLawFitter | None = None,
) -> pd.DataFrame:
    """Per-configuration MoE frontier fits, EL from frontiers, and the crossover C*.

    Each group of MoE runs (``by`` columns, ≥ 2 distinct compute values) gets its own
    power-law frontier; EL(C) = (α_d/α_m)^(1/β_d)·C^(β_m/β_d − 1)
    (:func:`moescale.laws.forms.el_from_frontiers`) is reported at the group's smallest and
    largest compute, with C* where it equals 1.
    """
    fr = dense if dense is not None else dense_frontier(runs, "power-law")
    if fr.kind != "power-law":
        raise ConfigError("frontier_crossovers needs a power-law dense frontier")
    moe = runs.moe().runs
    missing = [c for c in by if c not in moe.columns]
    if missing:
        raise DataError(f"frontier_crossovers: runs have no column(s) {missing}")
    ad, bd = fr.coef["alpha"], fr.coef["beta"]
    rows = []
    for key, grp in moe.groupby(list(by), sort=True, dropna=False):
        C, L = grp["compute"].to_numpy(float), grp["loss"].to_numpy(float)
        if len(np.unique(C)) < 2:
            continue
        f = (fitter or PowerLawFitter()).fit(C, L)
        am, bm = f.coef_["alpha"], f.coef_["beta"]
        key = key if isinstance(key, tuple) else (key,)
        rows.append({**dict(zip(by, key, strict=True)), "n_runs": len(grp),
                     "alpha": am, "beta": bm,
                     "el_at_min_compute": float(forms.el_from_frontiers(C.min(), ad, bd, am, bm)),
                     "el_at_max_compute": float(forms.el_from_frontiers(C.max(), ad, bd, am, bm)),
                     "crossover_compute": frontier_crossover_compute(ad, bd, am, bm),
                     "el_grows_with_compute": bool(bm > bd)})
    return pd.DataFrame(rows)


def _el_frame(measured: pd.DataFrame, exclude_extrapolated: bool) -> pd.DataFrame:
    if "el" not in measured.columns:
        raise DataError("measured EL table needs an 'el' column (see measure_el)")
    frame = measured
    if exclude_extrapolated and "extrapolated" in frame.columns:
        frame = frame.loc[~frame["extrapolated"].astype(bool)]
    return frame.reset_index(drop=True)


def fit_el_joint(
    measured: pd.DataFrame, *, use_granularity: bool | None = None,
    exclude_extrapolated: bool = False, **fitter_params: Any,
) -> ELJointFitter:
    """Fit [EL] Eq. 13 to measured EL; G terms only if G is known (≥ 3 distinct values)."""
    frame = _el_frame(measured, exclude_extrapolated)
    if use_granularity is None:
        g = frame["granularity"] if "granularity" in frame.columns else pd.Series(dtype=float)
        use_granularity = bool(g.notna().all() and g.nunique() >= 3)
    return ELJointFitter(use_granularity=use_granularity, **fitter_params).fit(frame)


def fit_el_separable(
    measured: pd.DataFrame, form: str, by: str | None = None, *,
    exclude_extrapolated: bool = False, **fitter_params: Any,
) -> pd.DataFrame:
    """Fit a separable EL form ("A", "G" or "C") overall or per group of ``by`` (e.g. budget).

    Returns one row per group with the coefficients, ``n_points`` and ``rmse_log``;
    groups with too few distinct values are skipped.
    """
    frame = _el_frame(measured, exclude_extrapolated)
    if by is not None and by not in frame.columns:
        cols = [c for c in frame.columns if c not in ("run", "el")]
        raise ConfigError(f"'by' must be a column of the measured EL table ({', '.join(cols)}); "
                          f"got {by!r}")
    groups = [(None, frame)] if by is None else list(frame.groupby(by, sort=True))
    rows = []
    for key, grp in groups:
        f = ELSeparableFitter(form=form, **fitter_params)
        try:
            f.fit(grp)
        except DataError:
            if by is None:
                raise
            continue
        row = {} if by is None else {by: key}
        row.update(f.coef_)
        row["n_points"] = f.n_points_
        row["rmse_log"] = float(np.sqrt(np.mean(f.residuals_ ** 2)))
        rows.append(row)
    return pd.DataFrame(rows)


def load_measured_el(
    source: str | Any, frontier: str = "power-law", *, loss_column: str | None = None,
    per_point: bool = False, frontier_points: str = "budget-minima",
) -> pd.DataFrame:
    """Measured EL from a path or RunTable: a table with an ``el`` column is used as is,
    anything else is read as runs (:func:`moescale.fit.runs.read_runs`) and measured."""
    from pathlib import Path

    from moescale.fit.runs import read_runs

    if isinstance(source, RunTable):
        return measure_el(source, frontier, per_point=per_point,
                          frontier_points=frontier_points)
    path = Path(source)
    if path.suffix in (".csv", ".parquet") and path.is_file():
        try:
            head = (pd.read_parquet(path) if path.suffix == ".parquet"
                    else pd.read_csv(path, nrows=5))
        except Exception:  # unreadable: let read_runs produce the error message
            head = pd.DataFrame()
        if "el" in head.columns:
            frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
            return frame
    return measure_el(read_runs(path, loss_column=loss_column), frontier, per_point=per_point,
                      frontier_points=frontier_points)


def el_fit_report(
    measured: pd.DataFrame,
    *,
    form: str = "joint",
    use_granularity: bool | None = None,
    by: str | None = None,
    heldout_compute: float | None = None,
    exclude_extrapolated: bool = False,
    **fitter_params: Any,
) -> dict[str, Any]:
    """Fit an EL law (``joint`` = Eq. 13, or separable ``A``/``G``/``C``) to measured EL.

    Returns a JSON-ready dict: the coefficients (``ci`` when bootstrapped), ``n_points``,
    the measured range, and, with ``heldout_compute``, the held-out error of a fit on the
    points below that compute (:func:`moescale.fit.heldout_score`).
    """
    from moescale.fit.base import heldout_score

    if form not in ("joint", "A", "G", "C"):
        raise ConfigError(f"'form' must be one of ['joint', 'A', 'G', 'C']; got {form!r}")
    # options of the other form are refused, never ignored
    if form == "joint" and by is not None:
        raise ConfigError(f"'by' applies to the separable forms A, G, C only; got by={by!r} "
                          "with form 'joint'")
    if form != "joint":
        for name, value in (("heldout_compute", heldout_compute),
                            ("use_granularity", use_granularity)):
            if value is not None:
                raise ConfigError(f"{name!r} applies to form 'joint' only; got {value!r} "
                                  f"with form {form!r}")
    frame = _el_frame(measured, exclude_extrapolated)
    out: dict[str, Any] = {"form": form}
    if form == "joint":
        f = fit_el_joint(frame, use_granularity=use_granularity, **fitter_params)
        out.update(f.summary())
        out["use_granularity"] = f.use_granularity
        out["rmse_log"] = float(np.sqrt(np.mean(f.residuals_ ** 2)))
        if heldout_compute is not None:
            h = heldout_score(ELJointFitter(use_granularity=f.use_granularity, **fitter_params),
                              frame, heldout_compute)
            h.pop("fitter")
            out["heldout"] = h
    else:
        table = fit_el_separable(frame, form, by, **fitter_params)
        out["fits"] = table.to_dict(orient="records")
    out["el_min"] = float(frame["el"].min())
    out["el_max"] = float(frame["el"].max())
    return out
