"""What a sweep says: the presentation of :func:`moescale.fit.measure_leverage`'s result.

Every number here comes from one :class:`moescale.fit.Measurement` (the object
``moescale leverage`` prints): IsoFLOP optima per configuration and budget, frontiers
``L = α·C^-β`` (or ``E + α·C^-β``) through them, frontier-ratio and per-run EL, all with
intervals from its one joint bootstrap. This module adds no second fit of those, no second
bootstrap and no second budget grouping; it only derives what [EL] reads off them:

- crossover compute C* where an MoE frontier meets the dense one
  (:func:`moescale.fit.leverage.frontier_crossover_compute`);
- separable EL laws (``EL = Â^a_A`` per budget with Eq. 13's A_start/A_max, and the G and
  C forms of :func:`moescale.fit.leverage.fit_el_separable`) on the per-run EL;
- the compute-optimal allocation M_opt(C) through the dense IsoFLOP optima (power law in
  log space; interval by redrawing each optimum from its own interval);
- learning-rate and batch laws from the measurement's hyper-parameter grid ([EL] §2.2).

Small sweeps get plain notes ("not enough runs to fit X") instead of errors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from moescale.errors import DataError
from moescale.fit.frontier import Frontier
from moescale.fit.leverage import el_published, fit_el_separable, frontier_crossover_compute
from moescale.fit.measure import Measurement, measure_leverage
from moescale.fit.runs import RunTable, assign_budgets, assign_configs

__all__ = ["Analysis", "analyze", "PowerFit", "N_BOOT"]

N_BOOT = 1000
"""Joint-bootstrap replicates of the measurement behind a report."""


@dataclass
class PowerFit:
    """``y = E + k·x^p`` (E = 0: a pure power law) with 90% intervals on k and p."""

    k: float
    p: float
    k_ci: tuple[float, float] | None
    p_ci: tuple[float, float] | None
    n: int
    rmse_log: float
    E: float = 0.0

    def __call__(self, x: Any) -> np.ndarray:
        return self.E + self.k * np.asarray(x, dtype=float) ** self.p

    def as_dict(self) -> dict[str, Any]:
        return {"k": self.k, "p": self.p, "k_ci": self.k_ci, "p_ci": self.p_ci, "n": self.n,
                "rmse_log": self.rmse_log, "E": self.E}

    @classmethod
    def from_frontier(cls, fr: Frontier) -> PowerFit:
        """The frontier L = E + α·C^-β as k = α, p = −β, intervals from its bootstrap."""
        lo, hi = fr.interval()
        c = fr.coef_dict()
        C, L = np.asarray(fr.compute), np.asarray(fr.loss)
        rmse = float(np.sqrt(np.mean((np.log(L) - np.log(fr.loss_at(C))) ** 2)))
        ok = all(math.isfinite(v) for v in (*lo.values(), *hi.values()))
        return cls(k=c["alpha"], p=-c["beta"], k_ci=(lo["alpha"], hi["alpha"]) if ok else None,
                   p_ci=(-hi["beta"], -lo["beta"]) if ok else None, n=len(C), rmse_log=rmse,
                   E=c.get("E", 0.0))


@dataclass
class Analysis:
    """Everything the report shows (plain data, no plotting)."""

    records: pd.DataFrame
    """Finished runs with ``budget``, ``config`` and, for MoE runs, ``el_measured`` (the
    per-run EL of the run's replicate group), ``el_low``/``el_high``, ``el_claim``,
    ``el_extrapolated`` and ``el_published`` (Eq. 13 at the run's A, G, C)."""
    curves: pd.DataFrame
    info: dict[str, Any]
    measurement: Measurement | None = None
    dense_frontier: PowerFit | None = None
    dense_points: pd.DataFrame | None = None
    """The dense frontier's points: one IsoFLOP optimum per budget (``budget``, ``compute``,
    ``loss``, ``m_opt`` with intervals, ``bracketed``, ``n_rungs``, ``n_runs``)."""
    moe_groups: list[dict[str, Any]] = field(default_factory=list)
    el_activation: list[dict[str, Any]] = field(default_factory=list)
    el_granularity: list[dict[str, Any]] = field(default_factory=list)
    el_compute: list[dict[str, Any]] = field(default_factory=list)
    allocation: dict[str, Any] | None = None
    hparams: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    n_boot: int = N_BOOT


def analyze(table: RunTable, *, seed: int = 0, n_boot: int = N_BOOT, level: float = 0.9,
            form: str = "power-law") -> Analysis:
    """Measure (:func:`moescale.fit.measure_leverage`) and derive what the runs allow.

    ``n_boot`` below 20 gives point estimates without intervals.
    """
    from moescale.laws.el import ELLaw

    info = dict(table.info)
    info.setdefault("source", table.source)
    curves = table.curves if table.curves is not None else pd.DataFrame()
    if len(table) == 0:
        an = Analysis(records=table.runs, curves=curves, info=info, n_boot=n_boot)
        an.notes.append("No finished runs: nothing to fit.")
        return an
    df, _ = assign_budgets(table.runs)
    df = assign_configs(df)
    an = Analysis(records=df, curves=curves, info=info, n_boot=n_boot)
    n_other = sum(v for k, v in info.get("counts", {}).items() if k != "done")
    if n_other:
        an.notes.append(f"{n_other} run(s) not finished are left out.")
    try:
        m = measure_leverage(table, form=form, level=level, n_boot=max(n_boot, 1), seed=seed)
    except DataError as exc:
        an.notes.append(f"Not enough dense runs to fit the dense frontier, so EL cannot be "
                        f"measured: {exc}")
        m = None
    law = ELLaw.published()
    moe = df[df["arch"] == "moe"].copy()
    if m is not None:
        an.measurement = m
        an.notes += [f if f.endswith(".") else f"{f}." for f in m.flags]
        an.dense_frontier = PowerFit.from_frontier(m.frontier("dense"))
        if len(m.frontier("dense").compute) < 3:
            an.notes.append("The dense frontier rests on 2 points: its exponent is exact "
                            "through them, with no check of the power-law form.")
        opt = m.optima[(m.optima["config"] == "dense") & m.optima["used"]]
        an.dense_points = opt.assign(compute=opt["budget"], loss=opt["loss_opt"])[
            ["budget", "compute", "loss", "m_opt", "m_opt_low", "m_opt_high", "bracketed",
             "interior", "n_rungs", "n_runs"]].reset_index(drop=True)
    if moe.empty:
        an.notes.append("No finished MoE runs: no Efficiency Leverage to measure.")
    else:
        A = moe["activation_ratio"].astype(float).to_numpy()
        G = moe["granularity"].astype(float).to_numpy()
        moe["el_published"] = el_published(A, G, moe["compute"].to_numpy(float))  # NaN: A/G
        # unknown or outside Eq. 13's domain
        per_run = _per_run_columns(m, moe["run"].astype(str))
        for col, values in per_run.items():
            moe[col] = values
        cols = ["run", "el_measured", "el_low", "el_high", "el_claim", "el_extrapolated",
                "el_published"]
        an.records = df.merge(moe[cols], on="run", how="left")
        _moe_groups(an, moe, law)
        _separable(an, moe, law)
    _allocation(an, seed)
    _hparams(an)
    return an


def _per_run_columns(m: Measurement | None, runs: pd.Series) -> dict[str, np.ndarray]:
    """The measurement's per-run EL (one value per replicate group) spread to its runs."""
    n = len(runs)
    out = {"el_measured": np.full(n, np.nan), "el_low": np.full(n, np.nan),
           "el_high": np.full(n, np.nan), "el_claim": np.full(n, None, dtype=object),
           "el_extrapolated": np.ones(n, dtype=bool)}
    if m is None or m.runs.empty:
        return out
    where = {name: i for i, name in enumerate(runs)}
    for r in m.runs.itertuples():
        for name in r.runs:
            i = where.get(name)
            if i is not None:
                out["el_measured"][i], out["el_low"][i], out["el_high"][i] = r.el, r.el_low, \
                    r.el_high
                out["el_claim"][i], out["el_extrapolated"][i] = r.claim, r.extrapolated
    return out


def _config_label(row: pd.Series) -> str:
    return (f"A={row['activation_ratio']:.3g} G={row['granularity']:.3g} "
            f"S={row['shared_ratio']:.2g}")


def _moe_groups(an: Analysis, moe: pd.DataFrame, law: Any) -> None:
    """Per MoE configuration: its frontier, frontier-ratio EL rows and crossover C*."""
    m = an.measurement
    for cfg, g in moe.groupby("config", sort=True):
        row = g.iloc[0]
        A, G = float(row["activation_ratio"]), float(row["granularity"])
        fr = m.frontier(cfg, "power-law") if m is not None else None
        entry: dict[str, Any] = {
            "config": cfg, "label": _config_label(row), "activation_ratio": A,
            "granularity": G, "shared_ratio": float(row["shared_ratio"]),
            "runs": list(g["run"]), "n_budgets": int(g["budget"].nunique()),
            "frontier": PowerFit.from_frontier(fr) if fr is not None else None,
            "el": [] if m is None else m.el[m.el["config"] == cfg].to_dict("records"),
            "crossover_fit": None, "crossover_far": False,
            "crossover_law": float(law.break_even_compute(G)) if A < 1 and G > 0 else None,
        }
        d = an.dense_frontier
        f = entry["frontier"]
        if f is not None and d is not None and d.E == 0 and abs(f.p - d.p) > 1e-12:
            c_star = frontier_crossover_compute(d.k, -d.p, f.k, -f.p)
            ok = 0.0 < c_star < math.inf
            entry["crossover_fit"] = c_star if ok else None
            lo, hi = an.records["compute"].min(), an.records["compute"].max()
            entry["crossover_far"] = not (ok and lo / 1e3 <= c_star <= hi * 1e3)
        an.moe_groups.append(entry)
    if not any(e["frontier"] for e in an.moe_groups):
        an.notes.append("Not enough budgets per MoE configuration (need 2 usable IsoFLOP "
                        "points) to fit an MoE frontier, a frontier-ratio EL or a crossover "
                        "compute C*.")


def _el_points(an: Analysis, moe: pd.DataFrame) -> pd.DataFrame:
    """The EL values the separable fits (EL vs A, G, C) use: the frontier-ratio EL of each
    configuration at each budget where it has a frontier ([EL] Def. 3.1: one value per
    configuration and budget, at the optimum), else each of its runs' EL (a configuration
    at one budget, external runs of one size). Columns as ``moe``'s; ``run`` names the
    configuration for frontier-ratio rows."""
    m = an.measurement
    el = m.el if m is not None else pd.DataFrame(columns=["config", "el"])
    el = el[np.isfinite(el["el"].astype(float)) & (el["el"].astype(float) > 0)]
    runs = moe[~moe["config"].isin(el["config"])]
    runs = runs[np.isfinite(runs["el_measured"]) & (runs["el_measured"] > 0)]
    if el.empty:
        return runs
    shared = moe.drop_duplicates("config").set_index("config")["shared_ratio"]
    fr = el[el["config"].isin(shared.index)].copy()
    fr["shared_ratio"] = fr["config"].map(shared).astype(float)
    fr["run"] = fr["config"]
    fr = fr.assign(el_measured=fr["el"].astype(float)).drop(columns="el")
    fr["el_published"] = el_published(fr["activation_ratio"].to_numpy(float),
                                      fr["granularity"].to_numpy(float),
                                      fr["budget"].to_numpy(float))
    return pd.concat([fr, runs], ignore_index=True)


def _separable(an: Analysis, moe: pd.DataFrame, law: Any) -> None:
    from moescale.laws.forms import saturating_transform

    a_start, a_max = law.coefficients.A_start, law.coefficients.A_max
    ok = _el_points(an, moe)
    # EL vs A at fixed G (and S), per budget
    for (b, gval, s), g in ok.groupby(["budget", "granularity", "shared_ratio"]):
        g = g.drop_duplicates(subset=["activation_ratio"])
        if g["activation_ratio"].nunique() < 2:
            continue
        lah = np.log(saturating_transform(g["activation_ratio"].to_numpy(float), a_start, a_max))
        lel = np.log(g["el_measured"].to_numpy(float))
        a_fit = float(np.sum(lah * lel) / np.sum(lah * lah))
        an.el_activation.append({"budget": float(b), "granularity": float(gval),
                                 "shared_ratio": float(s), "a_A": a_fit,
                                 "a_A_published": float(law.exponent(gval, b)),
                                 "points": g[["run", "activation_ratio", "el_measured",
                                              "el_published"]].to_dict("records")})
    if not an.el_activation:
        an.notes.append("Not enough runs to fit EL vs A (need ≥ 2 activation ratios at one "
                        "budget and granularity).")
    # EL vs G at fixed A-family (granularity family: E = c·G, A constant), per budget
    for (b, a), g in ok.groupby(["budget", "activation_ratio"]):
        g = g.drop_duplicates(subset=["granularity"])
        if g["granularity"].nunique() < 2:
            continue
        entry = {"budget": float(b), "activation_ratio": float(a),
                 "points": g[["run", "granularity", "el_measured", "el_published"]]
                 .to_dict("records"), "fit": None}
        if len(g) >= 3:  # ln EL = a_G + b_G·ln G·(ln G + c_G)
            fit = fit_el_separable(g.rename(columns={"el_measured": "el"}), "G").iloc[0]
            q2, c_g = float(fit["b_G"]), float(fit["c_G"])
            entry["fit"] = {"a_G": float(fit["a_G"]), "b_G": q2, "c_G": c_g,
                            "g_opt": float(math.exp(-c_g / 2)) if q2 > 0 else None}
        an.el_granularity.append(entry)
    if not an.el_granularity:
        an.notes.append("Not enough runs to fit EL vs G (need ≥ 2 granularities at one budget "
                        "and activation ratio; ≥ 3 for the quadratic form).")
    # EL vs C per configuration
    for e in an.moe_groups:
        g = ok[ok["config"] == e["config"]]
        pts = g.groupby("budget")["el_measured"].max()
        if len(pts) < 2:
            continue
        fit = fit_el_separable(pd.DataFrame({"compute": pts.index.to_numpy(float),
                                             "el": pts.to_numpy(float)}), "C").iloc[0]
        an.el_compute.append({"label": e["label"], "activation_ratio": e["activation_ratio"],
                              "granularity": e["granularity"], "a_C": float(fit["a_C"]),
                              "c_C": float(fit["c_C"]),
                              "points": [{"compute": float(k), "el_measured": float(v)}
                                         for k, v in pts.items()]})
    if not an.el_compute:
        an.notes.append("Not enough budgets to fit EL vs C (need one MoE configuration at "
                        "≥ 2 budgets).")


def _allocation(an: Analysis, seed: int) -> None:
    """M_opt(C) = k·C^p through the dense IsoFLOP optima with an interior vertex; interval
    by redrawing each ln M_opt from its own interval (normal, same 90% width)."""
    from scipy.stats import norm

    pts = an.dense_points
    if pts is None:
        return
    pts = pts[pts["interior"]]
    if len(pts) < 2:
        an.notes.append("Not enough IsoFLOP ladders with an interior optimum (need ≥ 2 "
                        "budgets) to fit the compute-optimal allocation M_opt(C).")
        return
    x = np.log(pts["budget"].to_numpy(float))
    y = np.log(pts["m_opt"].to_numpy(float))
    sd = (np.log(pts["m_opt_high"].to_numpy(float)) - np.log(pts["m_opt_low"].to_numpy(float))
          ) / (2 * norm.ppf(0.95))
    X = np.stack([np.ones_like(x), x], axis=1)
    pinv = np.linalg.pinv(X)
    c0 = pinv @ y
    rng = np.random.default_rng(seed)
    k_ci = p_ci = None
    if np.isfinite(sd).all():  # an optimum without an interval leaves the law without one
        cb = (y + sd * rng.standard_normal((max(an.n_boot, 200), len(y)))) @ pinv.T
        k_ci = tuple(float(v) for v in np.exp(np.quantile(cb[:, 0], (0.05, 0.95))))
        p_ci = tuple(float(v) for v in np.quantile(cb[:, 1], (0.05, 0.95)))
    resid = y - X @ c0
    m_fit = PowerFit(k=float(np.exp(c0[0])), p=float(c0[1]), k_ci=k_ci, p_ci=p_ci,
                     n=len(y), rmse_log=float(np.sqrt(np.mean(resid**2))))
    d_fit = PowerFit(k=1.0 / m_fit.k, p=1.0 - m_fit.p, k_ci=None,
                     p_ci=None if p_ci is None else (1.0 - p_ci[1], 1.0 - p_ci[0]), n=m_fit.n,
                     rmse_log=m_fit.rmse_log)
    an.allocation = {
        "points": pts[["budget", "m_opt", "m_opt_low", "m_opt_high", "loss"]]
        .assign(d_opt=pts["budget"] / pts["m_opt"]).to_dict("records"),
        "m_opt": m_fit, "d_opt": d_fit,
    }


def _hparams(an: Analysis) -> None:
    """The measurement's lr_opt(C), B_opt(C) of the dense configuration, with Eq. 3."""
    from moescale.laws.hparams import HyperparameterLaw

    m = an.measurement
    if m is None or not m.hparams:
        return
    pub = HyperparameterLaw.published()
    entry = next((h for h in m.hparams if h["config"] == "dense"), m.hparams[0])
    points = [{**p, "lr_published": float(pub.learning_rate(p["budget"])),
               "batch_published": float(pub.batch_tokens(p["budget"]))}
              for p in entry["points"]]
    out: dict[str, Any] = {"config": entry["config"], "points": points, "lr": None,
                           "batch": None}
    for name in ("lr", "batch"):
        f = entry.get(name)
        if f is not None:
            out[name] = PowerFit(k=f["k"], p=f["p"], k_ci=(f["k_low"], f["k_high"]),
                                 p_ci=(f["p_low"], f["p_high"]), n=f["n_budgets"],
                                 rmse_log=math.nan)
    if out["lr"] is None:
        an.notes.append("Not enough budgets with a hyper-parameter grid (need 2) to fit "
                        "lr_opt(C) and B_opt(C); per-budget optima are shown.")
    an.hparams = out
