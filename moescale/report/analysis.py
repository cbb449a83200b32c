"""What a sweep says: frontiers, Efficiency Leverage, allocation and hyper-parameter laws.

Methods follow [EL] (arXiv 2507.17702):

- Loss frontier of an architecture, ``L(C) = α·C^-β`` (§3, no irreducible term),
  fitted on the IsoFLOP minima: the dense frontier is
  :func:`moescale.fit.leverage.dense_frontier` with its default
  ``frontier_points="budget-minima"`` (the lowest-loss dense run per budget), exactly
  what ``moescale leverage`` fits; intervals from a bootstrap over runs within budgets.
- EL of a run (Eq. 1): :func:`moescale.fit.leverage.measure_el` on that frontier (so the
  report and ``moescale leverage`` print the same EL for the same store), next to the
  published Eq. 13 prediction at the run's (A, G, C).
- Crossover compute C*: where an MoE configuration's fitted frontier meets the dense one
  (EL = 1, :func:`moescale.fit.leverage.crossover_compute`); published: where Eq. 13's
  exponent is zero.
- Separable EL laws: ``EL = Â^a_A`` per budget (A_start, A_max fixed to Eq. 13's, a
  one-parameter least squares), and ``ln EL = a_G + b_G·ln G·(ln G + c_G)``,
  ``ln EL = a_C·ln C + c_C`` with :func:`moescale.fit.leverage.fit_el_separable`.
- Compute-optimal allocation (Table 1) from the IsoFLOP minima, and hyper-parameter laws
  (Eq. 3) from the near-optimal runs (loss within 0.25% of the best at each budget).

Every fit needs a minimum number of points; below it the analysis records a plain
"not enough runs to fit X" note instead of failing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from moescale.errors import DataError
from moescale.fit.leverage import (
    budget_minima,
    crossover_compute,
    dense_frontier,
    fit_el_separable,
    measure_el,
)
from moescale.fit.runs import RunTable
from moescale.report.data import budget_groups

__all__ = ["Analysis", "analyze", "PowerFit", "NEAR_OPTIMAL"]

NEAR_OPTIMAL = 0.0025
"""[EL]'s near-optimal band for hyper-parameter laws: within 0.25% of the best loss."""
N_BOOT = 100
"""Bootstrap replicates per fitted law (resampling runs within each budget)."""


@dataclass
class PowerFit:
    """``y = k·x^p`` fitted in log space, with bootstrap 90% intervals."""

    k: float
    p: float
    k_ci: tuple[float, float] | None
    p_ci: tuple[float, float] | None
    n: int
    rmse_log: float

    def __call__(self, x: Any) -> np.ndarray:
        return self.k * np.asarray(x, dtype=float) ** self.p

    def as_dict(self) -> dict[str, Any]:
        return {"k": self.k, "p": self.p, "k_ci": self.k_ci, "p_ci": self.p_ci, "n": self.n,
                "rmse_log": self.rmse_log}


@dataclass
class Analysis:
    """Everything the report shows (plain data, no plotting)."""

    records: pd.DataFrame
    """Finished runs with finite loss, plus ``budget`` and measured/published EL columns."""
    curves: pd.DataFrame
    info: dict[str, Any]
    dense_frontier: PowerFit | None = None
    dense_points: pd.DataFrame | None = None
    """The dense frontier's points, one per budget (:func:`moescale.fit.leverage.budget_minima`):
    ``budget``, ``compute`` and ``loss`` of the lowest-loss dense run, its M (``m_opt``),
    ``n_runs`` in the budget."""
    moe_groups: list[dict[str, Any]] = field(default_factory=list)
    """Per MoE configuration (A, G, S): runs, frontier fit, crossover C* (fit and law)."""
    el_activation: list[dict[str, Any]] = field(default_factory=list)
    el_granularity: list[dict[str, Any]] = field(default_factory=list)
    el_compute: list[dict[str, Any]] = field(default_factory=list)
    allocation: dict[str, Any] | None = None
    hparams: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    """"not enough runs to fit X" and other caveats, in plain words."""
    n_boot: int = N_BOOT


# ---------------------------------------------------------------------------- fitting
def _fit_once(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(k, p) of ``y = k·x^p`` with :class:`moescale.fit.PowerLawFitter` (its L = α·C^-β
    form: k = α, p = −β; Huber on log residuals, [EL] Eq. 1)."""
    from moescale.fit import PowerLawFitter

    f = PowerLawFitter(max_starts=3).fit(np.asarray(x, float), np.asarray(y, float))
    return float(f.coef_["alpha"]), -float(f.coef_["beta"])


def _powerfit(x: np.ndarray, y: np.ndarray, boot: list[tuple[np.ndarray, np.ndarray]] | None
              = None, *, coef: tuple[float, float] | None = None) -> PowerFit:
    """Point fit (or the given ``coef`` = (k, p) of a fit made elsewhere, on these points)
    plus percentile intervals from refits on bootstrap replicates ``boot`` (each replicate:
    the points recomputed from runs resampled within each budget)."""
    k, p = coef if coef is not None else _fit_once(x, y)
    resid = np.log(y) - np.log(k * np.asarray(x, float) ** p)
    k_ci = p_ci = None
    if boot:
        ks, ps = [], []
        for bx, by in boot:
            if len(np.unique(bx)) < 2:
                continue
            bk, bp = _fit_once(bx, by)
            ks.append(bk)
            ps.append(bp)
        if len(ps) >= 20:
            k_ci = (float(np.quantile(ks, 0.05)), float(np.quantile(ks, 0.95)))
            p_ci = (float(np.quantile(ps, 0.05)), float(np.quantile(ps, 0.95)))
    return PowerFit(k=k, p=p, k_ci=k_ci, p_ci=p_ci, n=len(x),
                    rmse_log=float(np.sqrt(np.mean(resid**2))))


def _isoflop_min(df: pd.DataFrame) -> tuple[float, float]:
    """(loss_min, M_opt) of one budget's runs: parabola in ln M through ≥ 3 sizes when its
    vertex lies inside the sampled range, else the best run."""
    best = df.iloc[int(np.argmin(df["loss"].to_numpy(float)))]
    if len(df) >= 3 and df["flops_per_token"].nunique() >= 3:
        lm = np.log(df["flops_per_token"].to_numpy(float))
        a, b, c = np.polyfit(lm, df["loss"].to_numpy(float), 2)
        if a > 0:
            v = -b / (2 * a)
            if lm.min() <= v <= lm.max():
                return float(c - b * b / (4 * a)), float(math.exp(v))
    return float(best["loss"]), float(best["flops_per_token"])


def _run_table(df: pd.DataFrame) -> RunTable:
    """The finished runs as :mod:`moescale.fit` reads the store (``moescale leverage``):
    the report's own ``budget`` label is left out, so budgets are grouped the same way."""
    return RunTable.from_frame(df.drop(columns=["budget"], errors="ignore"), source="report")


def _frontier_points(dense: pd.DataFrame) -> pd.DataFrame:
    """The dense frontier points (:func:`moescale.fit.leverage.budget_minima`, one row per
    budget: the lowest-loss run), with the report's ``budget`` label and ``m_opt`` = that
    run's M."""
    kept = budget_minima(dense.drop(columns=["budget"]).assign(_budget=dense["budget"].values))
    rows = []
    for _, g in kept.groupby("budget_id"):
        best = g.iloc[int(np.argmin(g["loss"].to_numpy(float)))]
        rows.append({"budget": float(best["_budget"]), "compute": float(best["compute"]),
                     "loss": float(best["loss"]), "m_opt": float(best["flops_per_token"]),
                     "n_runs": int(best["budget_n_runs"])})
    return pd.DataFrame(rows).sort_values("compute").reset_index(drop=True)


def _isoflop_points(df: pd.DataFrame) -> pd.DataFrame:
    """Per budget of an IsoFLOP ladder: loss and M_opt at the IsoFLOP minimum (parabola)."""
    rows = []
    for b, g in df.groupby("budget"):
        loss, m = _isoflop_min(g)
        rows.append({"budget": float(b), "loss": loss, "m_opt": m, "n_runs": len(g)})
    return pd.DataFrame(rows).sort_values("budget").reset_index(drop=True)


def _bootstrap_frontier(df: pd.DataFrame, rng: np.random.Generator, n_boot: int) -> list:
    """Replicates of the frontier points: runs resampled within each budget, the
    lowest-loss resampled run kept per budget (as the fit's points)."""
    groups = [g for _, g in df.groupby("budget")]
    out = []
    for _ in range(n_boot):
        pts = []
        for g in groups:
            s = g.iloc[rng.integers(0, len(g), len(g))]
            best = s.iloc[int(np.argmin(s["loss"].to_numpy(float)))]
            pts.append((float(best["compute"]), float(best["loss"])))
        x, y = np.array(pts).T
        out.append((x, y))
    return out


# ---------------------------------------------------------------------------- analysis
def analyze(records: pd.DataFrame, curves: pd.DataFrame | None = None,
            info: dict[str, Any] | None = None, *, seed: int = 0,
            n_boot: int = N_BOOT) -> Analysis:
    """Fit what the runs allow; record a note for everything they do not.

    ``n_boot`` bootstrap replicates per fitted law give its 90% intervals (none below 20).
    """
    from moescale.laws.el import ELLaw

    law = ELLaw.published()
    rng = np.random.default_rng(seed)
    info = dict(info or {})
    df = records.copy()
    df = df[(df["status"] == "done") & np.isfinite(pd.to_numeric(df["loss"], errors="coerce"))]
    df = df.astype({"loss": float, "compute": float, "flops_per_token": float})
    an = Analysis(records=df, curves=curves if curves is not None else pd.DataFrame(), info=info,
                  n_boot=n_boot)
    n_other = len(records) - len(df)
    if n_other:
        an.notes.append(f"{n_other} run(s) not finished or without a loss are left out.")
    if df.empty:
        an.notes.append("No finished runs: nothing to fit.")
        return an
    df["budget"] = budget_groups(df["compute"])
    dense = df[df["arch"] == "dense"]
    moe = df[df["arch"] == "moe"].copy()
    dense_ladder = dense[dense["family"].fillna("dense") == "dense"] if "family" in dense \
        else dense
    if dense_ladder.empty:
        dense_ladder = dense

    # --- dense frontier: moescale.fit.leverage.dense_frontier, as `moescale leverage` fits it
    table = _run_table(df)
    fr = None
    if not dense.empty:
        try:
            fr = dense_frontier(table, "power-law")
        except DataError:
            fr = None
    an.dense_points = _frontier_points(dense) if not dense.empty else None
    if fr is not None:
        pts = an.dense_points
        boot = _bootstrap_frontier(dense, rng, n_boot)
        an.dense_frontier = _powerfit(pts["compute"].to_numpy(), pts["loss"].to_numpy(), boot,
                                      coef=(fr.coef["alpha"], -fr.coef["beta"]))
        if fr.n_points < 3:
            an.notes.append("The dense frontier rests on 2 points: its exponent is exact "
                            "through them, with no check of the power-law form.")
    else:
        an.notes.append("Not enough dense runs to fit the dense frontier (need 2 budgets); "
                        "EL cannot be measured.")

    # --- per-run EL (Eq. 1 against the dense frontier) and the published Eq. 13
    if not moe.empty:
        A = moe["activation_ratio"].astype(float).to_numpy()
        G = moe["granularity"].astype(float).to_numpy()
        moe["el_published"] = np.asarray(law.predict(A, G, moe["compute"].to_numpy()),
                                         dtype=float)
        if fr is not None:
            m = measure_el(table, fr).set_index("run")
            moe["el_measured"] = m.loc[moe["run"].astype(str), "el"].to_numpy(dtype=float)
            moe["el_extrapolated"] = m.loc[moe["run"].astype(str), "extrapolated"] \
                .to_numpy(dtype=bool)
        else:
            moe["el_measured"] = np.nan
            moe["el_extrapolated"] = True
        df = df.merge(moe[["run", "el_measured", "el_published", "el_extrapolated"]],
                      on="run", how="left")
        an.records = df
        _moe_groups(an, moe, law)
        _separable(an, moe, law)
    else:
        an.notes.append("No finished MoE runs: no Efficiency Leverage to measure.")
    _allocation(an, dense_ladder)
    _hparams(an, df)
    return an


def _config_label(row: pd.Series) -> str:
    return (f"A={row['activation_ratio']:.3g} G={row['granularity']:.3g} "
            f"S={row['shared_ratio']:.2g}")


def _moe_groups(an: Analysis, moe: pd.DataFrame, law: Any) -> None:
    keys = ["activation_ratio", "granularity", "shared_ratio", "n_dense_layers"]
    for _, g in moe.groupby(keys, dropna=False):
        g = g.drop_duplicates(subset=["compute", "loss", "n_experts", "top_k"])
        row = g.iloc[0]
        A, G = float(row["activation_ratio"]), float(row["granularity"])
        entry: dict[str, Any] = {
            "label": _config_label(row), "activation_ratio": A, "granularity": G,
            "shared_ratio": float(row["shared_ratio"]), "runs": list(g["run"]),
            "n_budgets": int(g["budget"].nunique()), "frontier": None, "crossover_fit": None,
            "crossover_far": False,
            "crossover_law": float(law.break_even_compute(G)) if A < 1 else None,
        }
        if entry["n_budgets"] >= 2:
            pts = g.groupby("budget").agg(compute=("compute", "median"), loss=("loss", "min"))
            boot = []
            for _ in range(an.n_boot):
                s = g.iloc[np.random.default_rng(len(boot)).integers(0, len(g), len(g))]
                p = s.groupby("budget").agg(compute=("compute", "median"), loss=("loss", "min"))
                boot.append((p["compute"].to_numpy(), p["loss"].to_numpy()))
            fit = _powerfit(pts["compute"].to_numpy(), pts["loss"].to_numpy(), boot)
            entry["frontier"] = fit
            d = an.dense_frontier
            if d is not None and abs(fit.p - d.p) > 1e-12:
                # frontiers L = α·C^-β with α = k, β = -p ([EL] Eq. 1): EL = 1 at C*
                c_star = crossover_compute(d.k, -d.p, fit.k, -fit.p)
                ok = 0.0 < c_star < math.inf
                entry["crossover_fit"] = c_star if ok else None
                lo, hi = an.records["compute"].min(), an.records["compute"].max()
                entry["crossover_far"] = not (ok and lo / 1e3 <= c_star <= hi * 1e3)
        an.moe_groups.append(entry)
    if not any(e["frontier"] for e in an.moe_groups):
        an.notes.append("Not enough budgets per MoE configuration (need 2) to fit an MoE "
                        "frontier or a crossover compute C*.")


def _separable(an: Analysis, moe: pd.DataFrame, law: Any) -> None:
    from moescale.laws.forms import saturating_transform

    a_start, a_max = law.coefficients.A_start, law.coefficients.A_max
    ok = moe[np.isfinite(moe["el_measured"]) & (moe["el_measured"] > 0)]
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
        g = ok[ok["run"].isin(e["runs"])]
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


def _allocation(an: Analysis, dense: pd.DataFrame) -> None:
    from moescale.laws.hparams import AllocationLaw

    pub = AllocationLaw.published("dense")
    if dense.empty:
        return
    pts = _isoflop_points(dense)
    sized = [b for b, g in dense.groupby("budget") if g["flops_per_token"].nunique() >= 3]
    if len(sized) < 2:
        an.notes.append("Not enough IsoFLOP ladders (need ≥ 3 dense sizes at ≥ 2 budgets) to "
                        "fit the compute-optimal allocation M_opt(C), D_opt(C).")
        return
    p = pts[pts["budget"].isin(sized)]
    boot = []
    for _ in range(an.n_boot):
        bb = []
        for b in sized:
            g = dense[dense["budget"] == b]
            s = g.iloc[an_rng(len(boot), b).integers(0, len(g), len(g))]
            bb.append((float(b), _isoflop_min(s)[1]))
        x, y = np.array(bb).T
        boot.append((x, y))
    m_fit = _powerfit(p["budget"].to_numpy(), p["m_opt"].to_numpy(), boot)
    d_fit = PowerFit(k=1.0 / m_fit.k, p=1.0 - m_fit.p, k_ci=None, p_ci=None, n=m_fit.n,
                     rmse_log=m_fit.rmse_log)
    an.allocation = {
        "points": p[["budget", "m_opt", "loss"]].assign(d_opt=p["budget"] / p["m_opt"])
        .to_dict("records"),
        "m_opt": m_fit, "d_opt": d_fit,
        "published": {"m_opt": (pub.flops_per_token(1.0), _exp(pub, "flops_per_token")),
                      "d_opt": (pub.tokens(1.0), _exp(pub, "tokens"))},
    }


def an_rng(i: int, b: float) -> np.random.Generator:
    """Deterministic bootstrap stream per (replicate, budget)."""
    return np.random.default_rng([i, int(math.log10(b) * 1000)])


def _exp(law: Any, method: str) -> float:
    f = getattr(law, method)
    return float(math.log(f(10.0) / f(1.0)) / math.log(10.0))


def _hparams(an: Analysis, df: pd.DataFrame) -> None:
    from moescale.laws.hparams import HyperparameterLaw

    pub = HyperparameterLaw.published()
    tags = df.get("tags", pd.Series([""] * len(df), index=df.index)).fillna("")
    hp = df[tags.str.startswith("hparam")]
    if hp.empty:
        return
    rows = []
    for b, g in hp.groupby("budget"):
        if g["learning_rate"].nunique() < 2 and g["batch_tokens"].nunique() < 2:
            continue
        best = g["loss"].min()
        near = g[g["loss"] <= best * (1 + NEAR_OPTIMAL)]
        rows.append({"budget": float(b), "best_loss": float(best), "n_near": len(near),
                     "n_runs": len(g),
                     "lr_opt": float(np.exp(np.log(near["learning_rate"].astype(float)).mean())),
                     "batch_opt": float(np.exp(np.log(near["batch_tokens"].astype(float))
                                               .mean())),
                     "lr_published": float(pub.learning_rate(b)),
                     "batch_published": float(pub.batch_tokens(b))})
    out: dict[str, Any] = {"points": rows, "lr": None, "batch": None}
    if len(rows) >= 2:
        x = np.array([r["budget"] for r in rows])
        out["lr"] = _powerfit(x, np.array([r["lr_opt"] for r in rows]))
        out["batch"] = _powerfit(x, np.array([r["batch_opt"] for r in rows]))
    else:
        an.notes.append("Not enough budgets with a hyper-parameter grid (need 2) to fit "
                        "lr_opt(C) and B_opt(C); per-budget optima are shown.")
    out["published"] = {"lr": (float(pub.learning_rate(1.0)), _exp(pub, "learning_rate")),
                        "batch": (float(pub.batch_tokens(1.0)), _exp(pub, "batch_tokens"))}
    an.hparams = out
