"""What a report says in words and JSON: every headline number with its interval.

Rules ([EL] issue #10 item 7): an EL is called above 1 only where its interval excludes 1;
every comparison with a published law names the law's fitted compute range (asked of the
law object, never written here) and, outside it, is labelled an extrapolation — never
"agreement" or "disagreement".
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from moescale.report.analysis import Analysis

__all__ = ["headline", "summary_lines", "summary_text", "analysis_json", "law_range_note"]


def _f(x: Any, d: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    return f"{x:.{d}g}"


def _iv(lo: Any, hi: Any, d: int = 3) -> str:
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return "(no interval)"
    return f"[{_f(lo, d)}, {_f(hi, d)}]"


def _num(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def law_range_note(law: Any, name: str, c_lo: float, c_hi: float) -> str:
    """How runs at compute [c_lo, c_hi] relate to ``law``'s fitted compute range."""
    iv = law.fitted_range.interval("compute")
    if iv is None or (iv.low is None and iv.high is None):
        return (f"{name}'s fitted compute range is not recorded in moescale.laws, so a "
                f"comparison at {_f(c_lo)}–{_f(c_hi)} FLOPs is an extrapolation of unknown "
                "size, not a test of the law")
    rng = iv.describe()
    inside = iv.contains(c_lo) and iv.contains(c_hi)
    if inside:
        return f"{name} was fitted on compute {rng}; these runs ({_f(c_lo)}–{_f(c_hi)}) lie inside"
    return (f"{name} was fitted on compute {rng}; these runs ({_f(c_lo)}–{_f(c_hi)} FLOPs) "
            "lie outside it, so the comparison is an extrapolation")


def headline(an: Analysis) -> dict[str, Any]:
    """The numbers ``moescale report --json`` / the demo print (public keys)."""
    df = an.records
    el_rows = []
    if "el_measured" in df:
        for _, r in df[df["arch"] == "moe"].iterrows():
            el_rows.append({
                "run": r["run"], "family": r.get("family"), "config": r.get("config"),
                "activation_ratio": float(r["activation_ratio"]),
                "granularity": _num(r["granularity"]), "compute": float(r["compute"]),
                "loss": float(r["loss"]), "el_measured": _num(r.get("el_measured")),
                "el_low": _num(r.get("el_low")), "el_high": _num(r.get("el_high")),
                "claim": r.get("el_claim"), "el_published": _num(r.get("el_published")),
                "extrapolated": bool(r.get("el_extrapolated", True)),
            })
    f = an.dense_frontier
    return {
        "n_runs": int(len(df)),
        "n_dense": int((df["arch"] == "dense").sum()) if len(df) else 0,
        "n_moe": int((df["arch"] == "moe").sum()) if len(df) else 0,
        "status_counts": an.info.get("counts", {}),
        "dense_frontier": None if f is None else {
            "alpha": f.k, "beta": -f.p, "E": f.E,
            "alpha_ci": None if f.k_ci is None else list(f.k_ci),
            "beta_ci": None if f.p_ci is None else [-f.p_ci[1], -f.p_ci[0]], "n_budgets": f.n},
        "efficiency_leverage": el_rows,
        "crossover": [{"config": e["label"], "compute_fit": e["crossover_fit"],
                       "compute_fit_far": e["crossover_far"], "compute_law": e["crossover_law"]}
                      for e in an.moe_groups],
        "notes": list(an.notes),
    }


def analysis_json(an: Analysis) -> dict[str, Any]:
    """``DIR/analysis.json`` and ``moescale report --json``: the headline plus the
    measurement (``optima`` per config and budget: ``m_opt`` … ``bracketed``, ``n_rungs``;
    ``el`` per MoE config and budget with interval; ``frontiers``; ``flags``)."""
    out = headline(an)
    m = an.measurement
    if m is None:
        out.update(optima=[], el=[], frontiers=[], flags=list(an.notes), heldout=None,
                   sensitivity=[], seed_sd=None)
        return out
    meas = m.analysis_json()
    for key in ("optima", "el", "frontiers", "better_form", "sensitivity", "hparams", "heldout",
                "seed_sd", "flags", "level", "n_boot", "form"):
        out[key] = meas[key]
    out["summary"] = summary_lines(an)
    return out


def summary_lines(an: Analysis) -> list[str]:
    """A short plain-language account of what the sweep says, every number with its
    interval."""
    from moescale.laws.el import ELLaw

    df = an.records
    if df.empty:
        return ["No finished runs yet: nothing to report."] + [f"- {n}" for n in an.notes]
    m = an.measurement
    budgets = sorted(df["budget"].unique())
    n_d = int((df["arch"] == "dense").sum())
    out = [f"{len(df)} finished runs ({n_d} dense, {len(df) - n_d} MoE) at {len(budgets)} "
           f"budget(s) from {budgets[0]:.2g} to {budgets[-1]:.2g} FLOPs (C in the runs' "
           "convention; [EL]: Ling M·D)."]
    if m is None:
        return out + [f"Note: {n}" for n in an.notes]
    lv = f"{m.level:.0%}"
    opt = m.optima[m.optima["n_rungs"] >= 3]
    if len(opt):
        out.append(f"IsoFLOP ladders: {int(opt['bracketed'].sum())} of {len(opt)} bracketed "
                   f"(≥ 2 rungs each side clear of the minimum), {int(opt['interior'].sum())} "
                   "with an interior parabola vertex; the others are flagged below.")
    if math.isfinite(m.seed_sd):
        out.append(f"Seed-to-seed sd of the final loss (pooled over replicated rungs): "
                   f"{m.seed_sd:.4f} nats.")
    d = m.frontier("dense")
    lo, hi = d.interval()
    coef = ", ".join(f"{k} = {_f(v, 4)} {_iv(lo[k], hi[k], 4)}" for k, v in d.coef_dict().items())
    out.append(f"Dense frontier ({d.form}, {len(d.compute)} IsoFLOP optima): {coef} ({lv} "
               "joint-bootstrap intervals).")
    better = m.better_form.get("dense")
    if better:
        errs = {f: m.frontier("dense", f).heldout_rel_error for f in ("power-law",
                                                                       "irreducible")}
        out.append(f"Frontier form by held-out error (largest budget predicted from the "
                   f"others): power law {errs['power-law']:+.2%}, irreducible "
                   f"{errs['irreducible']:+.2%} → {better} fits better.")
    h = m.heldout
    if h.get("rel_error") is not None:
        out.append(f"Held-out check: the dense {h['form']} frontier fitted on the {h['n_train']} "
                   f"smaller budgets predicts the optimum loss at {h['budget_predicted']:.3g} "
                   f"FLOPs with a relative error of {h['rel_error']:+.2%}.")
    for r in m.el.itertuples():
        ctrl = ""
        if r.control is not None and math.isfinite(r.el_vs_control):
            ctrl = (f"; relative to the A = 1 control {r.el_vs_control:.3g} "
                    f"{_iv(r.el_vs_control_low, r.el_vs_control_high)}")
        out.append(f"EL of {r.config} at {r.budget:.3g} FLOPs (frontier ratio): {r.el:.3g} "
                   f"{_iv(r.el_low, r.el_high)} — {r.claim}"
                   f"{' (extrapolates the dense frontier)' if r.extrapolated else ''}{ctrl}.")
    if len(m.runs):
        claims = m.runs["claim"].value_counts().to_dict()
        out.append(f"Measured EL per run, C_dense(L)/C, of {len(m.runs)} MoE run group(s) "
                   "(seed means): "
                   f"{claims.get('EL > 1', 0)} above 1 with {lv} confidence, "
                   f"{claims.get('EL < 1', 0)} below, {claims.get('consistent with 1', 0)} "
                   f"consistent with 1, {claims.get('no interval', 0)} without an interval.")
    if len(m.sensitivity):
        big = m.sensitivity.sort_values("budget").groupby("config").tail(1)
        for r in big.itertuples():
            out.append(f"Sensitivity (C counting embedding, unembedding and router FLOPs): EL of "
                       f"{r.config} at {r.budget:.3g} is {r.el:.3g} {_iv(r.el_low, r.el_high)}.")
    moe = df[df["arch"] == "moe"]
    if "el_published" in df and len(moe) and np.isfinite(moe["el_published"]).any():
        law = ELLaw.published()
        c_lo, c_hi = float(moe["compute"].min()), float(moe["compute"].max())
        out.append("[EL] Eq. 13 (" + law.formula() + ") at the runs' (A, G, C) gives EL "
                   f"{_f(np.nanmin(moe['el_published']))}–{_f(np.nanmax(moe['el_published']))}; "
                   + law_range_note(law, "Eq. 13", c_lo, c_hi) + ".")
    for e in an.moe_groups:
        if e["crossover_fit"] is not None:
            far = (" (more than 3 decades outside the sweep: the frontiers are nearly "
                   "parallel, so this number is not meaningful)") if e["crossover_far"] else ""
            law = ("Eq. 13 has none (EL = 1 at A = 1 for every C)"
                   if e["activation_ratio"] >= 1 else
                   "Eq. 13 gives none without a granularity G > 0"
                   if e["crossover_law"] is None else
                   f"Eq. 13's own crossover {_f(e['crossover_law'])} FLOPs (an extrapolation "
                   "of the law, see above)")
            out.append(f"Crossover C* for {e['label']}: fitted {_f(e['crossover_fit'])} "
                       f"FLOPs{far}; {law}.")
    if an.allocation:
        from moescale.laws.hparams import AllocationLaw

        a = an.allocation["m_opt"]
        pub = AllocationLaw.published("dense")
        out.append(f"Compute-optimal dense M_opt(C) = {a.k:.3g}·C^{a.p:.3f} (exponent "
                   f"{_iv(*(a.p_ci or (None, None)))}) beside [EL] Table 1 "
                   f"{pub.power_law('flops_per_token').formula()}; "
                   + law_range_note(pub, "Table 1", float(budgets[0]), float(budgets[-1]))
                   + ".")
    if an.hparams and an.hparams.get("lr") is not None:
        from moescale.laws.hparams import HyperparameterLaw

        lr, b = an.hparams["lr"], an.hparams["batch"]
        pub3 = HyperparameterLaw.published()
        out.append(f"Near-optimal hyper-parameters: lr_opt = {lr.k:.3g}·C^{lr.p:.3f} (exponent "
                   f"{_iv(*lr.p_ci)}), B_opt = {b.k:.3g}·C^{b.p:.3f} (exponent "
                   f"{_iv(*b.p_ci)}) beside [EL] Eq. 3 {pub3.formula()}; "
                   + law_range_note(pub3, "Eq. 3", float(budgets[0]), float(budgets[-1]))
                   + ".")
    lrm = _lr_multipliers(df)
    if lrm:
        out.append("Learning-rate multiplier on [EL] Eq. 3 used by each configuration's "
                   "ladder: " + ", ".join(f"{c} ×{v}" for c, v in lrm.items()) + ".")
    out += [f"Note: {n}" for n in an.notes]
    return out


def _lr_multipliers(df: Any) -> dict[str, str]:
    """Per config, the lr multiplier(s) of its non-``hparam`` runs (the scan's pick)."""
    if "lr_multiplier" not in df or not df["lr_multiplier"].notna().any():
        return {}
    tags = df["tags"].astype("string").fillna("")
    ladder = df[~tags.str.startswith("hparam").to_numpy(dtype=bool)]
    out = {}
    scan = df[tags.str.contains("lr_scan").to_numpy(dtype=bool)]
    for cfg, g in ladder.groupby("config", sort=True):
        vals = sorted({float(v) for v in g["lr_multiplier"].dropna()})
        if not vals:
            continue
        out[str(cfg)] = "/".join(f"{v:g}" for v in vals)
        scanned = sorted({float(v) for v in scan.loc[scan["config"] == cfg, "lr_multiplier"]
                          .dropna()})
        if len(scanned) >= 2 and len(vals) == 1 and vals[0] in (scanned[0], scanned[-1]):
            out[str(cfg)] += (f" (at the edge of the scan ×{scanned[0]:g}–×{scanned[-1]:g}: "
                              "not bracketed)")
    return out


def summary_text(an: Analysis) -> str:
    """The summary as one printable text (what ``moescale demo`` prints)."""
    return "\n".join(summary_lines(an))
