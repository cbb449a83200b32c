"""Efficiency Leverage measured the [EL] way, with one joint bootstrap (issue #10).

[EL] (arXiv 2507.17702) §2–3: for every architecture configuration (``config``; dense
too) each compute budget's IsoFLOP ladder gives an optimum (:mod:`moescale.fit.isoflop`);
a loss–compute frontier is fitted through the optima (:mod:`moescale.fit.frontier`), and

- **frontier-ratio EL** (Eq. 1 / Def. 3.1): EL(C) = C_dense(L_moe(C)) / C, the ratio of the
  two frontiers, at each budget of the MoE configuration;
- **per-run EL**: C_dense(L_run) / C_run, a run's (seed-mean) loss read off the dense
  frontier.

Uncertainty: one joint bootstrap drives everything. Each replicate

1. redraws every run's loss from its evaluation: the mean of its evaluation blocks
   (``eval_block_losses``) resampled with replacement, re-centred on the run's loss; else
   N(loss, ``val_loss_se``²); else the loss as recorded;
2. resamples the seeds of every rung (replicates: equal config, budget and size) with
   replacement and averages them;
3. refits every ladder's parabola (its optimum: the parabola's minimum on the sampled
   range, so no replicate is dropped) and every frontier, after adding the frontier's own
   lack of fit: when its weighted residuals exceed their SEs (χ²/dof > 1), or when no SE
   is known at all, each point gets extra normal noise of the residual variance not
   explained by the SEs (a parametric residual bootstrap);
4. recomputes each EL.

Point estimates do not depend on the bootstrap: a frontier is weighted by 1/SE² of its
points only when every point has an SE (an optimum's interval from
:func:`~moescale.fit.isoflop.fit_isoflop`, or a single rung's SE), else unweighted.
Intervals are central percentile intervals (``level``, default 90%). Nothing is a
minimum over resampled runs (which could only lower a frontier). EL > 1 is claimed only
where the interval's lower end exceeds 1 (``claim``).

Degenerate ladders (:attr:`IsoFlopOptimum.usable` False: minimum at a ladder end,
curvature ≤ 0, vertex outside the rungs) never contribute their vertex: by default their
best rung stands in as an upper bound on the optimum loss, named in the flags
(``degenerate="exclude"`` leaves the budget out instead). A budget with only one or two
sizes (external data, one run per size) contributes its best rung's loss, flagged as not
an IsoFLOP optimum.

Conventions: C in the runs' ``flops_convention`` ([EL]: Ling M·D); the sensitivity rows
use ``flops_per_token_full`` (embedding, unembedding and router FLOPs counted).
A = E_a/E, G = 2·d_model/d_expert.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import norm

from moescale.errors import ConfigError, DataError, check_range
from moescale.fit.frontier import (
    FORMS,
    Frontier,
    fit_frontier_coefs,
    frontier_compute,
    frontier_loss,
    heldout_error,
)
from moescale.fit.isoflop import bounded_vertex, fit_isoflop, paired_se
from moescale.fit.leverage import LABEL_COLUMNS
from moescale.fit.runs import RunTable, assign_budgets, assign_configs

__all__ = ["Measurement", "measure_leverage", "main_grid", "N_BOOT", "NEAR_OPTIMAL",
           "REPLICATE_KEYS"]

N_BOOT = 1000
"""Default joint-bootstrap replicates."""
NEAR_OPTIMAL = 0.0025
"""[EL] §2.2: a run is near-optimal within 0.25% of its budget's best loss."""
DEGENERATE = ("best-rung", "exclude")
REPLICATE_KEYS = ("learning_rate", "batch_tokens", "d_model", "n_layers", "n_experts",
                  "top_k", "n_shared_experts", "d_expert", "seq_len", "lr_multiplier")
"""Columns replicates (same config, budget and size) must agree on, where known."""


@dataclass
class Measurement:
    """Everything measured from one run table; the report and the CLI print this object."""

    optima: pd.DataFrame
    """Per (config, budget): the IsoFLOP optimum (``m_opt`` … ``flags``) and ``used``."""
    frontiers: dict[tuple[str, str], Frontier]
    """Per (config, form) with enough usable budgets."""
    form: str
    """The form EL is computed with (``power-law`` [EL] default, or ``irreducible``)."""
    el: pd.DataFrame
    """Frontier-ratio EL per MoE config and budget (``el``, ``el_low``, ``el_high``, ...)."""
    runs: pd.DataFrame
    """Per-run EL of every MoE replicate group (seed mean), with interval."""
    sensitivity: pd.DataFrame
    """Frontier-ratio EL with C counting embedding/unembedding/router FLOPs (if known)."""
    hparams: list[dict[str, Any]]
    heldout: dict[str, Any]
    flags: list[str]
    level: float
    n_boot: int
    seed_sd: float
    source: str = ""
    better_form: dict[str, str] = field(default_factory=dict)

    def frontier(self, config: str, form: str | None = None) -> Frontier | None:
        return self.frontiers.get((config, form or self.form))

    def leverage_json(self) -> dict[str, Any]:
        """``moescale leverage --json``: {"runs", "frontiers", "flags"} (public keys)."""
        fronts = []
        for (config, _form), fr in sorted(self.frontiers.items()):
            d = fr.as_dict()
            d["better_form"] = self.better_form.get(config)
            if fr.form == self.form and config in set(self.el.get("config", [])):
                d["el"] = _records(self.el[self.el["config"] == config])
            fronts.append(d)
        return {"runs": _records(self.runs), "frontiers": fronts, "flags": list(self.flags)}

    def analysis_json(self) -> dict[str, Any]:
        """``moescale report --json`` / ``analysis.json`` (public keys)."""
        return {"source": self.source, "level": self.level, "n_boot": self.n_boot,
                "form": self.form, "optima": _records(self.optima), "el": _records(self.el),
                "frontiers": [fr.as_dict() for fr in self.frontiers.values()],
                "better_form": dict(self.better_form), "runs": _records(self.runs),
                "sensitivity": _records(self.sensitivity), "hparams": self.hparams,
                "heldout": self.heldout, "seed_sd": _num(self.seed_sd),
                "flags": list(self.flags)}


def _num(x: Any) -> Any:
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, tuple):
        return list(x)
    return x


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [{k: _num(v) for k, v in row.items()} for row in frame.to_dict(orient="records")]


def _q(level: float) -> tuple[float, float]:
    return (1 - level) / 2, (1 + level) / 2


def _interval(boot: np.ndarray, level: float) -> tuple[float, float]:
    b = boot[np.isfinite(boot)]
    if len(b) < max(20, 0.5 * len(boot)):
        return math.nan, math.nan
    lo, hi = np.quantile(b, _q(level))
    return float(lo), float(hi)


def _claim(lo: float, hi: float) -> str:
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "no interval"
    if lo > 1:
        return "EL > 1"
    if hi < 1:
        return "EL < 1"
    return "consistent with 1"


# ------------------------------------------------------------------ preparation
def _sizes(df: pd.DataFrame) -> np.ndarray:
    """Model size of each run: Ling FLOPs/token M, else active, else total parameters
    (a lone run of its config and budget may have none)."""
    for col in ("flops_per_token", "params_active", "params_total"):
        v = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=float)
        if np.isfinite(v).all():
            return v
    m = pd.to_numeric(df["flops_per_token"], errors="coerce").to_numpy(dtype=float)
    for col in ("params_active", "params_total"):
        alt = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=float)
        m = np.where(np.isfinite(m), m, alt)
    unknown = ~np.isfinite(m)
    if unknown.any():
        # a run without a size can only stand alone at its (config, budget): a single run
        # needs no parabola, so any placeholder size serves; two cannot be told apart
        cell = df.loc[unknown, ["config", "budget"]].astype(str).agg("|".join, axis=1)
        cells = df[["config", "budget"]].astype(str).agg("|".join, axis=1)
        for c in cell.unique():
            runs = df.loc[(cells == c).to_numpy(), "run"].astype(str).tolist()
            if len(runs) > 1:
                raise DataError(f"runs {', '.join(runs[:4])} share config and budget but run "
                                f"{df.loc[unknown, 'run'].iloc[0]!r} has no model size "
                                "(flops_per_token, params_active, params_total all unknown): "
                                "an IsoFLOP ladder needs each run's size")
        m = np.where(unknown, 1.0, m)
    return m


def _diverged(df: pd.DataFrame, flags: list[str]) -> pd.DataFrame:
    """Drop runs whose loss exceeds ln V (worse than uniform prediction): diverged."""
    V = pd.to_numeric(df["vocab_size"], errors="coerce").to_numpy(dtype=float)
    loss = df["loss"].to_numpy(dtype=float)
    bad = np.isfinite(V) & (V > 1) & (loss > np.log(np.where(V > 1, V, 2.0)))
    if bad.any():
        names = ", ".join(df.loc[bad, "run"].astype(str).tolist()[:5])
        flags.append(f"{int(bad.sum())} diverged run(s) left out (loss above ln V, the "
                     f"uniform-prediction loss): {names}")
    return df.loc[~bad].reset_index(drop=True)


def _is_hparam(df: pd.DataFrame) -> np.ndarray:
    tags = df["tags"].astype("string").fillna("")
    return tags.str.startswith("hparam").to_numpy(dtype=bool)


def _check_replicates(df: pd.DataFrame, groups: np.ndarray) -> None:
    for col in REPLICATE_KEYS + ("tokens",):
        if col not in df.columns:
            continue
        v = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=float)
        for g in np.unique(groups):
            idx = np.flatnonzero(groups == g)
            vals = v[idx][np.isfinite(v[idx])]
            if len(idx) < 2 or len(vals) < 2:
                continue
            rtol = 0.02 if col == "tokens" else 1e-6
            if np.any(np.abs(vals - vals[0]) > rtol * abs(vals[0])):
                runs = ", ".join(df["run"].iloc[idx].astype(str).tolist()[:4])
                raise DataError(
                    f"replicates with inconsistent configs: runs {runs} share config "
                    f"{df['config'].iloc[idx[0]]!r}, budget {df['budget'].iloc[idx[0]]:.4g} "
                    f"and size, but differ in {col!r} ({vals.min():.6g} vs {vals.max():.6g}); "
                    "replicates may differ only in 'seed' and 'run'")


def _fixed_d(dense: pd.DataFrame) -> bool:
    """True when ≥ 2 dense runs of different size all share one token count."""
    if len(dense) < 2 or dense["_m"].nunique() < 2:
        return False
    for col in ("tokens", "last_step"):
        if col in dense.columns:
            v = pd.to_numeric(dense[col], errors="coerce").to_numpy(dtype=float)
            if np.isfinite(v).all():
                return bool(np.all(np.abs(v - v[0]) <= 1e-6 * abs(v[0])))
    return False


def _bracket_se(sub: pd.DataFrame) -> list[float] | None:
    """Paired SEs for the bracketing test when every run of the ladder was evaluated on
    the same number of blocks (:func:`~moescale.fit.isoflop.paired_se`, as the planner)."""
    if "eval_block_losses" not in sub or len(sub) < 2:
        return None
    blocks = [_blocks(v, r) for v, r in zip(sub["eval_block_losses"], sub["run"], strict=True)]
    if any(b is None for b in blocks) or len({len(b) for b in blocks}) != 1 \
            or len(blocks[0]) < 2:
        return None
    return paired_se(sub["_m"].to_numpy(float).tolist(), sub["loss"].to_numpy(float).tolist(),
                     [b.tolist() for b in blocks])


def _run_boot(df: pd.DataFrame, R: int, rng: np.random.Generator) -> np.ndarray:
    """(R, n_runs) replicate losses from each run's evaluation blocks or SE."""
    loss = df["loss"].to_numpy(dtype=float)
    out = np.repeat(loss[None, :], R, axis=0)
    se = pd.to_numeric(df["val_loss_se"], errors="coerce").to_numpy(dtype=float)
    blocks = df["eval_block_losses"].to_numpy()
    for i in range(len(df)):
        b = _blocks(blocks[i], df["run"].iloc[i])
        if b is not None and len(b) >= 2:
            draws = b[rng.integers(0, len(b), (R, len(b)))].mean(axis=1)
            out[:, i] = loss[i] + draws - b.mean()
        elif math.isfinite(se[i]) and se[i] > 0:
            out[:, i] = loss[i] + se[i] * rng.standard_normal(R)
    return out


def _blocks(value: Any, run: str) -> np.ndarray | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    try:
        arr = np.asarray(json.loads(value) if isinstance(value, str) else value, dtype=float)
    except (ValueError, TypeError):
        raise DataError(f"run {run!r}: 'eval_block_losses' must be a JSON list of numbers; "
                        f"got {str(value)[:60]!r}") from None
    if arr.ndim != 1 or not np.isfinite(arr).all():
        raise DataError(f"run {run!r}: 'eval_block_losses' must be a flat list of finite "
                        f"numbers; got {str(value)[:60]!r}")
    return arr


# ------------------------------------------------------------------ measurement
def measure_leverage(
    table: RunTable, *, form: str = "power-law", level: float = 0.9, n_boot: int = N_BOOT,
    seed: int = 0, dense_config: str = "dense", degenerate: str = "best-rung",
) -> Measurement:
    """Measure frontiers, frontier-ratio EL and per-run EL with one joint bootstrap.

    Parameters
    ----------
    table : RunTable
        Finished runs (any source read by :mod:`moescale.fit.runs`).
    form : {"power-law", "irreducible"}
        Frontier form used for EL; both forms are fitted and compared out of sample.
    level : float
        Interval coverage (default 0.9).
    n_boot : int
        Joint-bootstrap replicates (below 20: no intervals).
    dense_config : str
        The ``config`` key of the dense reference.
    degenerate : {"best-rung", "exclude"}
        A ladder of ≥ 3 sizes whose parabola is degenerate (minimum at a ladder end,
        curvature ≤ 0, vertex outside): its frontier point is its best rung — an upper
        bound on the budget's optimum loss, named in the flags — or the budget is left
        out of the frontier. The vertex itself is never used.

    Raises
    ------
    DataError
        Unusable input: no dense runs, fewer than two usable dense budgets (the message
        names each budget and why), inconsistent replicates, bad evaluation blocks.
    """
    if form not in FORMS:
        raise ConfigError(f"'form' must be one of {list(FORMS)}; got {form!r}")
    check_range("level", level, low=0.5, high=1.0, high_inclusive=False, error=ConfigError)
    check_range("n_boot", n_boot, low=1, integer=True, error=ConfigError)
    rng = np.random.default_rng(seed)
    flags: list[str] = []
    df, derived = assign_budgets(table.runs)
    if derived:
        flags.append("budgets derived once from compute (runs within 1% share a budget): "
                     "the table has no 'budget' column")
    df = assign_configs(df)
    df = _diverged(df, flags)
    df["_m"] = _sizes(df)
    hp = _is_hparam(df)
    ladder = df.loc[~hp].reset_index(drop=True)
    if (ladder["config"] == dense_config).sum() == 0:
        raise DataError(f"{table.source}: no dense runs (config {dense_config!r}) to build the "
                        "dense frontier; EL needs a dense reference")
    # replicate groups: same config, budget and size
    key = list(zip(ladder["config"], ladder["budget"], np.round(np.log(ladder["_m"]), 9),
                   strict=True))
    codes = pd.factorize(pd.Series(key, dtype=object))[0]
    _check_replicates(ladder, codes)
    seeds = pd.to_numeric(ladder["seed"], errors="coerce").to_numpy(dtype=float)
    dup = pd.DataFrame({"g": codes, "s": seeds}).dropna().duplicated(keep=False)
    if dup.any():
        names = ladder["run"].astype(str).to_numpy()[dup[dup].index.to_numpy()]
        flags.append(f"{len(names)} run(s) repeat another run's config and seed "
                     f"({', '.join(names[:6])}{', ...' if len(names) > 6 else ''}): averaged "
                     "as replicates, though a repeated seed is not an independent draw")
    Lrun = _run_boot(ladder, n_boot, rng)
    n_groups = int(codes.max()) + 1
    Lgrp = np.empty((n_boot, n_groups))
    members = [np.flatnonzero(codes == g) for g in range(n_groups)]
    for g, idx in enumerate(members):
        if len(idx) == 1:
            Lgrp[:, g] = Lrun[:, idx[0]]
        else:
            pick = idx[rng.integers(0, len(idx), (n_boot, len(idx)))]
            Lgrp[:, g] = np.take_along_axis(Lrun, pick, axis=1).mean(axis=1)
    if _fixed_d(ladder[ladder["config"] == dense_config]):
        flags.append("the dense runs all share one token count: their frontier is a fixed-D "
                     "curve, not compute-optimal (IsoFLOP) — EL read off it is relative to "
                     "that recipe, and a pure power law bends on it; compare "
                     "--form irreducible")

    if degenerate not in DEGENERATE:
        raise ConfigError(f"'degenerate' must be one of {list(DEGENERATE)}; got {degenerate!r}")
    optima, points = _ladders(ladder, members, Lgrp, level, flags, degenerate)
    seed_sd = _pooled_sd(optima)
    frontiers, better = _frontiers(points, ladder, level, rng, flags)
    dense_fr = frontiers.get((dense_config, form))
    if dense_fr is None:
        why = optima[optima["config"] == dense_config]
        n_used = int(why["used"].sum())
        detail = "; ".join(f"budget {r.budget:.3g}: {r.reason}" for r in why.itertuples())
        raise DataError(f"{table.source}: the dense frontier needs ≥ "
                        f"{3 if form == 'irreducible' else 2} usable budgets; the finished "
                        f"dense runs give {n_used} of {len(why)} (one per budget: {detail})")
    el = _frontier_el(frontiers, form, dense_config, level)
    runs = _per_run_el(ladder, members, Lgrp, dense_fr, level)
    n_extra = int(runs["extrapolated"].sum()) if len(runs) else 0
    if n_extra:
        flags.append(f"{n_extra} run(s) have a loss outside the dense frontier's loss range "
                     f"[{dense_fr.loss_range[0]:.4g}, {dense_fr.loss_range[1]:.4g}]: their EL "
                     "extrapolates the dense frontier")
    sens = _sensitivity(points, ladder, form, dense_config, level, flags)
    heldout = {"form": form, "config": dense_config,
               "rel_error": _num(dense_fr.heldout_rel_error),
               "budget_predicted": dense_fr.budgets[-1] if dense_fr.budgets else None,
               "n_train": len(dense_fr.compute) - 1}
    hparams = _hparams(df.loc[hp].reset_index(drop=True), rng=rng, n_boot=n_boot, level=level)
    return Measurement(optima=optima, frontiers=frontiers, form=form, el=el, runs=runs,
                       sensitivity=sens, hparams=hparams, heldout=heldout, flags=flags,
                       level=level, n_boot=n_boot, seed_sd=seed_sd, source=table.source,
                       better_form=better)


def _why(flags: tuple[str, ...]) -> str:
    """The degenerate-fit flags of an IsoFLOP optimum, comma-separated."""
    return ", ".join(f for f in flags if not f.startswith(("not-bracketed", "lack", "no-",
                                                           "interval")))


def _pooled_sd(optima: pd.DataFrame) -> float:
    sd = optima["seed_sd"].to_numpy(dtype=float)
    ok = np.isfinite(sd)
    return float(np.sqrt(np.mean(sd[ok] ** 2))) if ok.any() else math.nan


@dataclass
class _Point:
    config: str
    arch: str
    budget: float
    loss: float
    boot: np.ndarray
    x_boot: np.ndarray
    m_opt: float
    rung_m: np.ndarray
    rung_full: np.ndarray
    A: float
    G: float
    se: float = 0.0
    """Deterministic SE of the point (0: unknown): the optimum's interval half-width over
    z, or the best rung's SE; frontier fits weight by 1/SE² only when every point has one."""


def _ladders(ladder: pd.DataFrame, members: list[np.ndarray], Lgrp: np.ndarray,
             level: float, flags: list[str], degenerate: str) -> tuple[pd.DataFrame, list[_Point]]:
    """IsoFLOP optimum per (config, budget) and its bootstrap replicates."""
    rows, points = [], []
    first = np.array([idx[0] for idx in members])
    gcfg = ladder["config"].to_numpy()[first]
    gbud = ladder["budget"].to_numpy(dtype=float)[first]
    gm = ladder["_m"].to_numpy(dtype=float)[first]
    full = pd.to_numeric(ladder["flops_per_token_full"], errors="coerce").to_numpy(float)
    se_run = pd.to_numeric(ladder["val_loss_se"], errors="coerce").to_numpy(float)
    for (cfg, bud), _ in pd.DataFrame({"c": gcfg, "b": gbud}).groupby(["c", "b"], sort=True):
        gs = np.flatnonzero((gcfg == cfg) & (gbud == bud))
        gs = gs[np.argsort(gm[gs])]
        idx = np.concatenate([members[g] for g in gs])
        sub = ladder.iloc[idx]
        opt = fit_isoflop(sub["_m"].to_numpy(float), sub["loss"].to_numpy(float),
                          se_run[idx], level=level, budget=float(bud),
                          bracket_se=_bracket_se(sub))  # fixed seed: the optimum and its
        # interval (the frontier weights) never depend on the joint bootstrap
        row0 = sub.iloc[0]
        k = opt.n_rungs
        rep = Lgrp[:, gs]
        x = np.log(gm[gs])
        xc = x - x.mean()
        reason = "usable"
        if opt.usable:
            se = np.asarray(opt.rung_se, dtype=float)
            w = 1.0 / se**2 if np.isfinite(se).all() and (se > 0).all() else np.ones(k)
            X = np.stack([np.ones(k), xc, xc * xc], axis=1)
            P = np.linalg.solve((X.T * w) @ X, X.T * w)
            bx, bl = bounded_vertex(rep @ P.T, float(xc.min()), float(xc.max()))
            loss, boot, xb, used = opt.loss_opt, bl, bx + x.mean(), True
            pse = (opt.loss_opt_high - opt.loss_opt_low) / (2 * float(norm.ppf((1 + level) / 2)))
        elif k <= 2 or degenerate == "best-rung":
            j = int(np.argmin(opt.rung_loss))
            loss, boot, xb, used = opt.rung_loss[j], rep[:, j], np.full(len(rep), x[j]), True
            pse = opt.rung_se[j]
            reason = (f"{k} size(s): the frontier point is the best run, not an IsoFLOP "
                      "optimum") if k <= 2 else ("best rung (an upper bound on the optimum "
                                                 "loss): " + _why(opt.flags))
        else:
            loss, boot, xb, used = opt.loss_opt, None, None, False
            pse = math.nan
            reason = "left out: " + _why(opt.flags)
        rung_full = np.array([full[members[g]].mean() for g in gs])
        rows.append({"config": cfg, "arch": row0["arch"],
                     "activation_ratio": float(row0["activation_ratio"]),
                     "granularity": float(row0["granularity"]), **opt.as_dict(),
                     "used": used, "reason": reason})
        rows[-1]["flags"] = ";".join(opt.flags)
        if used:
            points.append(_Point(cfg, str(row0["arch"]), float(bud), float(loss), boot, xb,
                                 float(opt.m_opt), np.asarray(gm[gs]), rung_full,
                                 float(row0["activation_ratio"]), float(row0["granularity"]),
                                 float(pse) if math.isfinite(pse) and pse > 0 else 0.0))
    optima = pd.DataFrame(rows)
    for r in optima[~optima["interior"] & (optima["n_rungs"] >= 3)].itertuples():
        what = ("the budget is left out of its frontier" if not r.used else
                "its frontier point is the best rung, an upper bound on the optimum loss "
                "(extend the ladder to bracket it)")
        flags.append(f"{r.config} at budget {r.budget:.3g}: IsoFLOP fit degenerate "
                     f"({r.reason.split(': ', 1)[1]}); {what}")
    unb = optima[optima["interior"] & ~optima["bracketed"]]
    if len(unb):
        flags.append(f"{len(unb)} of {int((optima['n_rungs'] >= 3).sum())} IsoFLOP ladder(s) "
                     "have an interior vertex but are not bracketed (fewer than 2 rungs each "
                     "side clear of the minimum by their paired SE): their optimum's interval "
                     "is wide")
    few = optima[optima["n_rungs"] <= 2]
    if len(few):
        flags.append(f"{len(few)} (config, budget) point(s) have ≤ 2 model sizes: those "
                     "frontier points are single runs, not IsoFLOP optima")
    return optima, points


def _frontiers(points: list[_Point], ladder: pd.DataFrame, level: float,
               rng: np.random.Generator,
               flags: list[str]) -> tuple[dict[tuple[str, str], Frontier], dict[str, str]]:
    """Both frontier forms per config, with lack-of-fit noise added to the replicates."""
    by: dict[str, list[_Point]] = {}
    for p in points:
        by.setdefault(p.config, []).append(p)
    out: dict[tuple[str, str], Frontier] = {}
    better: dict[str, str] = {}
    for cfg, pts in sorted(by.items()):
        pts = sorted(pts, key=lambda p: p.budget)
        C = np.array([p.budget for p in pts])
        y0 = np.array([p.loss for p in pts])
        Y = np.stack([p.boot for p in pts], axis=1)
        se = np.array([p.se for p in pts])
        se_arg = se if (se > 0).all() else None
        errs = {}
        for form in FORMS:
            need = 3 if form == "irreducible" else 2
            if len(pts) < need:
                continue
            coef = fit_frontier_coefs(C, y0, se_arg, form=form)
            resid = y0 - frontier_loss(coef, C)
            dof = len(pts) - need
            f_flags = []
            extra = np.zeros(len(pts))
            if dof >= 1:
                if se_arg is not None:
                    chi2 = float(np.sum((resid / se) ** 2)) / dof
                    if chi2 > 1:
                        extra = se * math.sqrt(chi2 - 1)
                        f_flags.append(f"lack of fit (chi2/dof = {chi2:.3g}); its residual "
                                       "scatter is added to the bootstrap")
                else:
                    extra = np.full(len(pts), math.sqrt(float(np.sum(resid**2)) / dof))
                    f_flags.append("no loss uncertainty known: interval from the frontier's "
                                   "residual scatter alone")
            else:
                f_flags.append(f"{len(pts)} points for {need} coefficients: no residual "
                               "degrees of freedom, the form itself is untested")
            Yb = Y + extra * rng.standard_normal(Y.shape)
            if not extra.any() and np.all(Y.std(axis=0) <= 1e-9 * np.abs(y0)):
                # no noise model at all (no SEs, no seeds, no residual dof): no interval
                boot = np.full((len(Y), 3), np.nan)
                f_flags.append("no uncertainty information (no loss SE, seeds or residual "
                               "degrees of freedom): no interval")
            else:
                boot = fit_frontier_coefs(C, Yb, se_arg, form=form)
            ho = heldout_error(C, y0, se_arg, form=form)
            errs[form] = ho
            out[(cfg, form)] = Frontier(
                config=cfg, arch=pts[0].arch, form=form, coef=coef, boot=boot,
                compute=tuple(C.tolist()), loss=tuple(y0.tolist()), loss_se=tuple(se.tolist()),
                budgets=tuple(C.tolist()), level=level, heldout_rel_error=ho,
                rmse_rel=float(np.sqrt(np.mean((resid / y0) ** 2))), flags=tuple(f_flags),
                activation_ratio=pts[0].A, granularity=pts[0].G)
        fin = {f: abs(e) for f, e in errs.items() if math.isfinite(e)}
        if len(fin) == 2:  # a tie (E fitted at 0) goes to the simpler power law
            better[cfg] = ("irreducible" if fin["irreducible"] < fin["power-law"] - 1e-6
                           else "power-law")
    return out, better


def _frontier_el(frontiers: dict[tuple[str, str], Frontier], form: str, dense_config: str,
                 level: float) -> pd.DataFrame:
    """EL(C) = C_dense(L_moe(C))/C at each budget of each MoE configuration, and the same
    ratio against the A = 1 same-backbone control where the sweep has one."""
    dense = frontiers[(dense_config, form)]
    moe = [fr for (c, f), fr in frontiers.items() if f == form and c != dense_config]
    controls = [fr for fr in moe if fr.arch == "moe" and fr.activation_ratio == 1.0]
    rows = []
    for fr in moe:
        C = np.asarray(fr.compute)
        L = fr.loss_at(C)
        el0 = dense.compute_for_loss(L) / C
        Lb = frontier_loss(fr.boot, C)  # (R, n)
        elb = frontier_compute(dense.boot, Lb) / C
        ctrl = _control_for(fr, controls)
        lo_l, hi_l = dense.loss_range
        for j, c in enumerate(C):
            lo, hi = _interval(elb[:, j], level)
            row = {"config": fr.config, "arch": fr.arch,
                   "activation_ratio": fr.activation_ratio, "granularity": fr.granularity,
                   "budget": float(c), "loss": float(L[j]), "el": float(el0[j]),
                   "el_low": lo, "el_high": hi, "claim": _claim(lo, hi),
                   "extrapolated": bool(not (lo_l <= L[j] <= hi_l)
                                        or not (dense.compute_range[0] <= c
                                                <= dense.compute_range[1])),
                   "control": None, "el_vs_control": math.nan, "el_vs_control_low": math.nan,
                   "el_vs_control_high": math.nan}
            if ctrl is not None and ctrl is not fr:
                r0 = float(ctrl.compute_for_loss(L[j]) / c)
                rb = frontier_compute(ctrl.boot, Lb[:, j]) / c
                clo, chi = _interval(rb, level)
                row.update(control=ctrl.config, el_vs_control=r0, el_vs_control_low=clo,
                           el_vs_control_high=chi)
            rows.append(row)
    return pd.DataFrame(rows, columns=None if rows else
                        ["config", "budget", "el", "el_low", "el_high", "claim"])


def _control_for(fr: Frontier, controls: list[Frontier]) -> Frontier | None:
    """The A = 1 control of an MoE config: the one control, or the one with equal G."""
    if not controls:
        return None
    if len(controls) == 1:
        return controls[0]
    same = [c for c in controls if c.granularity == fr.granularity]
    return same[0] if len(same) == 1 else None


def _per_run_el(ladder: pd.DataFrame, members: list[np.ndarray], Lgrp: np.ndarray,
                dense: Frontier, level: float) -> pd.DataFrame:
    """C_dense(L)/C of every MoE replicate group (seed mean), with interval."""
    rows = []
    lo_l, hi_l = dense.loss_range
    arch = ladder["arch"].to_numpy()
    run = ladder["run"].astype(str).to_numpy()
    cfg = ladder["config"].to_numpy()
    cols_f = {c: pd.to_numeric(ladder[c], errors="coerce").to_numpy(float)
              for c in ("compute", "loss", "budget", "activation_ratio", "granularity")}
    labels = {c: ladder[c].to_numpy() for c in LABEL_COLUMNS
              if c in ladder.columns and c != "seed" and ladder[c].notna().any()}
    for g, idx in enumerate(members):
        if arch[idx[0]] != "moe":
            continue
        C = float(cols_f["compute"][idx].mean())
        L = float(cols_f["loss"][idx].mean())
        el0 = float(dense.compute_for_loss(L) / C)
        elb = frontier_compute(dense.boot, Lgrp[:, g]) / C
        lo, hi = _interval(elb, level)
        i = idx[0]
        rows.append({"run": run[i], "runs": run[idx].tolist(), "arch": "moe", "config": cfg[i],
                     "budget": float(cols_f["budget"][i]),
                     "activation_ratio": float(cols_f["activation_ratio"][i]),
                     "granularity": float(cols_f["granularity"][i]), "compute": C, "loss": L,
                     "el": el0, "el_low": lo, "el_high": hi, "claim": _claim(lo, hi),
                     "extrapolated": bool(not lo_l <= L <= hi_l), "n_seeds": len(idx),
                     **{c: labels[c][i] for c in labels}})
    cols = ["run", "runs", "arch", "config", "budget", "activation_ratio", "granularity",
            "compute", "loss", "el", "el_low", "el_high", "claim", "extrapolated", "n_seeds",
            *labels]
    return pd.DataFrame(rows, columns=cols)


def main_grid(runs: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """The runs of an external table's main grid, and how many were left out.

    Clark et al. (arXiv 2202.01169) vary top-k and the routing frequency on a few
    configurations beside the main grid (k = 1, every other layer routed); a
    (size × router × E) table shows the main grid only. Tables without those columns are
    returned whole.
    """
    if not {"top_k", "routing_frequency"} <= set(runs.columns):
        return runs, 0
    keep = (runs["top_k"] == 1) & (runs["routing_frequency"] == 0.5)
    return runs[keep], int((~keep).sum())


def _sensitivity(points: list[_Point], ladder: pd.DataFrame, form: str, dense_config: str,
                 level: float, flags: list[str]) -> pd.DataFrame:
    """Frontier-ratio EL with C counting embedding/unembedding/router FLOPs ([EL] excludes
    them): each optimum's C is scaled by M_full/M interpolated (in ln M) at its M_opt."""
    cols = ["config", "budget", "compute_full", "el", "el_low", "el_high", "claim"]
    if not points or not all(np.isfinite(p.rung_full).all() for p in points):
        return pd.DataFrame(columns=cols)
    by: dict[str, list[tuple[float, float, np.ndarray, float]]] = {}
    for p in points:
        ratio = np.interp(math.log(p.m_opt), np.log(p.rung_m), p.rung_full / p.rung_m)
        by.setdefault(p.config, []).append((p.budget * ratio, p.loss, p.boot, p.budget, p.se))
    fits = {}
    for cfg, pts in by.items():
        if len(pts) < 2:
            continue
        pts.sort(key=lambda t: t[0])
        C = np.array([t[0] for t in pts])
        y0 = np.array([t[1] for t in pts])
        Y = np.stack([t[2] for t in pts], axis=1)
        se = np.array([t[4] for t in pts])
        se_arg = se if (se > 0).all() else None
        if form == "irreducible" and len(pts) < 3:
            continue
        fits[cfg] = (C, fit_frontier_coefs(C, y0, se_arg, form=form),
                     fit_frontier_coefs(C, Y, se_arg, form=form))
    if dense_config not in fits:
        return pd.DataFrame(columns=cols)
    _, dcoef, dboot = fits[dense_config]
    rows = []
    for cfg, (C, coef, boot) in fits.items():
        if cfg == dense_config:
            continue
        el0 = frontier_compute(dcoef, frontier_loss(coef, C)) / C
        elb = frontier_compute(dboot, frontier_loss(boot, C)) / C
        for j, c in enumerate(C):
            lo, hi = _interval(elb[:, j], level)
            rows.append({"config": cfg, "budget": float(by[cfg][j][3]), "compute_full": float(c),
                         "el": float(el0[j]), "el_low": lo, "el_high": hi,
                         "claim": _claim(lo, hi)})
    return pd.DataFrame(rows, columns=cols)


def _hparams(hp: pd.DataFrame, *, rng: np.random.Generator, n_boot: int,
             level: float) -> list[dict[str, Any]]:
    """lr_opt(C), B_opt(C) per configuration from a hyper-parameter grid ([EL] §2.2):
    at each budget the near-optimal runs (loss within 0.25% of the best) give the
    geometric-mean learning rate and batch; a power law k·C^p is fitted over budgets
    (least squares in log space), its interval from the same loss resampling."""
    if hp.empty:
        return []
    boot = _run_boot(hp, n_boot, rng)
    out = []
    for cfg, sub in hp.groupby("config", sort=True):
        idx = sub.index.to_numpy()
        buds = np.sort(sub["budget"].unique())
        entry: dict[str, Any] = {"config": cfg, "points": []}
        per_b = []
        for b in buds:
            j = idx[sub["budget"].to_numpy() == b]
            loss0 = hp["loss"].to_numpy(float)[j]
            lr = np.log(pd.to_numeric(hp["learning_rate"], errors="coerce").to_numpy(float)[j])
            bt = np.log(pd.to_numeric(hp["batch_tokens"], errors="coerce").to_numpy(float)[j])
            near0 = loss0 <= loss0.min() * (1 + NEAR_OPTIMAL)
            Lb = boot[:, j]
            nearb = Lb <= Lb.min(axis=1, keepdims=True) * (1 + NEAR_OPTIMAL)
            lrb = (nearb * lr).sum(1) / nearb.sum(1)
            btb = (nearb * bt).sum(1) / nearb.sum(1)
            entry["points"].append({"budget": float(b), "n_runs": len(j),
                                    "n_near": int(near0.sum()),
                                    "lr_opt": float(np.exp(lr[near0].mean())),
                                    "batch_opt": float(np.exp(bt[near0].mean()))})
            per_b.append((lr[near0].mean(), bt[near0].mean(), lrb, btb))
        if len(buds) >= 2:
            lc = np.log(buds)
            A = np.stack([np.ones_like(lc), lc], axis=1)
            pinv = np.linalg.pinv(A)
            for name, i0, ib in (("lr", 0, 2), ("batch", 1, 3)):
                y0 = np.array([p[i0] for p in per_b])
                yb = np.stack([p[ib] for p in per_b], axis=1)
                c0 = pinv @ y0
                cb = yb @ pinv.T
                plo, phi = _interval(cb[:, 1], level)
                klo, khi = _interval(np.exp(cb[:, 0]), level)
                entry[name] = {"k": float(np.exp(c0[0])), "p": float(c0[1]), "k_low": klo,
                               "k_high": khi, "p_low": plo, "p_high": phi,
                               "n_budgets": len(buds)}
        out.append(entry)
    return out
