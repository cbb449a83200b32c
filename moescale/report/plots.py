"""Report figures (matplotlib, Agg back-end): each function returns PNG bytes or ``None``
when the analysis has nothing to draw."""

from __future__ import annotations

import io
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from moescale.report.analysis import Analysis  # noqa: E402

__all__ = ["make_plots", "PLOT_TITLES"]

PLOT_TITLES = {
    "loss_vs_compute": "Loss vs compute with fitted frontiers L = α·C^-β",
    "isoflop": "IsoFLOP curves: loss vs FLOPs per token M at each budget",
    "el_vs_activation": "Measured EL vs activation ratio A, with [EL] Eq. 13",
    "el_vs_granularity": "Measured EL vs granularity G, with [EL] Eq. 13",
    "el_vs_compute": "Measured EL vs compute C (frontier ratio with 90% intervals; runs), "
                     "with [EL] Eq. 13",
    "residuals": "Frontier residuals (log loss)",
    "allocation": "Compute-optimal M_opt(C) from IsoFLOP minima vs [EL] Table 1",
    "hparams": "Near-optimal learning rate and batch vs [EL] Eq. 3",
    "curves": "Validation loss during training",
}


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def _finish(ax: Any, xlabel: str, ylabel: str, *, logy: bool = True,
            legend: dict | None = None) -> bytes:
    """Log compute/size axis (and log y), labels, legend and grid; the figure as PNG."""
    ax.set_xscale("log")
    if logy:
        _logy(ax)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(**(legend or {"fontsize": 7, "ncol": 2}))
    ax.grid(alpha=0.3, which="both")
    return _png(ax.figure)


def _logy(ax: Any) -> None:
    """Log y axis with plain, evenly spread tick labels (losses and EL span less than a
    decade or two, where log-axis ticks at powers of ten would leave the axis bare)."""
    from matplotlib.ticker import FormatStrFormatter, MaxNLocator, NullFormatter

    ax.set_yscale("log")
    lo, hi = ax.get_ylim()
    ticks = [t for t in MaxNLocator(6).tick_values(lo, hi) if lo <= t <= hi and t > 0]
    if len(ticks) >= 2:
        ax.set_yticks(ticks)
        ax.yaxis.set_major_formatter(FormatStrFormatter("%.3g"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _cmap(n: int) -> list:
    cm = plt.get_cmap("viridis")
    return [cm(x) for x in np.linspace(0.05, 0.85, n)]  # n = 0: no groups, no colours


def _loss_vs_compute(an: Analysis) -> bytes | None:
    df = ladder_rows(an.records)
    if df.empty:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.6))
    family = df["family"].astype("string").fillna("?")
    fams = sorted(family.unique(), key=lambda f: (f != "dense", f))
    colors = dict(zip(fams, _cmap(len(fams)), strict=True))
    for fam in fams:
        g = df[(family == fam).to_numpy(dtype=bool)]
        ax.scatter(g["compute"], g["loss"], s=22, color="k" if fam == "dense" else colors[fam],
                   marker="o" if fam == "dense" else "^", label=fam, alpha=0.8)
    cs = np.geomspace(df["compute"].min() / 1.5, df["compute"].max() * 1.5, 100)
    if an.dense_frontier is not None:
        f = an.dense_frontier
        ax.plot(cs, f(cs), "k-", lw=1.5, label=f"dense fit β={-f.p:.3f}")
    for e, col in zip(an.moe_groups, _cmap(len(an.moe_groups)), strict=True):
        if e["frontier"] is not None:
            f = e["frontier"]
            ax.plot(cs, f(cs), "--", color=col, lw=1, label=f"MoE {e['label']} β={-f.p:.3f}")
    return _finish(ax, "training compute C (FLOPs, Ling M·D)", "final validation loss")


def ladder_rows(df):
    """The IsoFLOP ladder runs of a run table: hyper-parameter and learning-rate-scan runs
    (tags ``hparam…``) are other learning rates at one size, not IsoFLOP points, and are
    left out of the plot as :func:`moescale.fit.measure` leaves them out of the fit."""
    if "tags" not in df:
        return df
    return df[~df["tags"].astype("string").fillna("").str.startswith("hparam")
              .to_numpy(dtype=bool)]


def _isoflop(an: Analysis) -> bytes | None:
    df = an.records
    m_known = np.isfinite(df["flops_per_token"].astype(float)) if not df.empty else []
    if df.empty or not np.all(m_known):  # sizes in another unit (external data): no M axis
        return None
    df = ladder_rows(df)
    budgets = sorted(df["budget"].unique())
    fig, ax = plt.subplots(figsize=(7, 4.6))
    for b, col in zip(budgets, _cmap(len(budgets)), strict=True):
        g = df[df["budget"] == b]
        d = g[g["arch"] == "dense"]
        rung = d.groupby("flops_per_token", sort=True)["loss"].mean()  # seeds averaged
        m = g[g["arch"] == "moe"]
        ax.plot(rung.index, rung.to_numpy(), "o-", color=col, label=f"dense C={b:.2g}")
        if len(rung) < len(d):
            ax.scatter(d["flops_per_token"], d["loss"], marker=".", color=col, s=14)
        ax.scatter(m["flops_per_token"], m["loss"], marker="^", color=col, s=28,
                   label=f"MoE C={b:.2g}" if len(m) else None)
    if an.dense_points is not None and "m_opt" in an.dense_points:
        ax.scatter(an.dense_points["m_opt"], an.dense_points["loss"], marker="*", s=120,
                   color="red", zorder=5, label="IsoFLOP minimum")
    return _finish(ax, "FLOPs per token M (Ling, training, non-embedding)",
                   "final validation loss", logy=False)


def _el_vs(an: Analysis, key: str, entries: list[dict], xlabel: str, xs_law) -> bytes | None:
    from moescale.laws.el import published_el

    if not entries:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.4))
    for e, col in zip(entries, _cmap(len(entries)), strict=True):
        pts = e["points"]
        x = np.array([p[key] for p in pts], dtype=float)
        y = np.array([p["el_measured"] for p in pts], dtype=float)
        lab = f"C={e['budget']:.2g}" if "budget" in e else e.get("label", "")
        ax.scatter(x, y, color=col, s=30, label=f"measured {lab}")
        grid = xs_law(x)
        law = published_el(*_law_args(key, grid, e))
        ax.plot(grid, law, "--", color=col, lw=1, label=f"Eq. 13 {lab}")
    ax.axhline(1.0, color="grey", lw=0.8)
    return _finish(ax, xlabel, "Efficiency Leverage EL")


def _law_args(key: str, grid: np.ndarray, e: dict) -> tuple:
    if key == "activation_ratio":
        return grid, e["granularity"], e["budget"]
    if key == "granularity":
        return e["activation_ratio"], grid, e["budget"]
    return e["activation_ratio"], e["granularity"], grid


def _residuals(an: Analysis) -> bytes | None:
    if an.dense_frontier is None:
        return None
    df = an.records
    fig, ax = plt.subplots(figsize=(7, 3.6))
    f = an.dense_frontier
    pts = an.dense_points
    ax.scatter(pts["compute"], np.log(pts["loss"]) - np.log(f(pts["compute"])), color="k",
               label="dense IsoFLOP minima")
    for e, col in zip(an.moe_groups, _cmap(len(an.moe_groups)), strict=True):
        if e["frontier"] is None:
            continue
        g = df[df["run"].isin(e["runs"])]
        ax.scatter(g["compute"], np.log(g["loss"]) - np.log(e["frontier"](g["compute"])),
                   color=col, marker="^", label=f"MoE {e['label']}")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("compute C (FLOPs)")
    ax.set_ylabel("ln L − ln L_fit")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _png(fig)


def _allocation(an: Analysis) -> bytes | None:
    from moescale.laws.hparams import AllocationLaw

    if not an.allocation:
        return None
    pts = an.allocation["points"]
    x = np.array([p["budget"] for p in pts])
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.scatter(x, [p["m_opt"] for p in pts], color="k", label="IsoFLOP minima (dense)")
    cs = np.geomspace(x.min() / 2, x.max() * 2, 50)
    f = an.allocation["m_opt"]
    ax.plot(cs, f(cs), "k-", label=f"fit M_opt = {f.k:.3g}·C^{f.p:.3f}")
    pub = AllocationLaw.published("dense")
    ax.plot(cs, pub.flops_per_token(cs), "r--",
            label=f"[EL] Table 1: {pub.power_law('flops_per_token').formula()}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("compute C (FLOPs)")
    ax.set_ylabel("M_opt (FLOPs/token)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    return _png(fig)


def _hparams(an: Analysis) -> bytes | None:
    from moescale.laws.hparams import HyperparameterLaw

    if not an.hparams or not an.hparams["points"]:
        return None
    pts = an.hparams["points"]
    x = np.array([p["budget"] for p in pts])
    cs = np.geomspace(x.min() / 2, x.max() * 2, 50)
    pub = HyperparameterLaw.published()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    for ax, key, name, law in ((axes[0], "lr_opt", "lr", pub.learning_rate),
                               (axes[1], "batch_opt", "batch", pub.batch_tokens)):
        ax.scatter(x, [p[key] for p in pts], color="k", label="near-optimal runs")
        fit = an.hparams.get(name)
        if fit is not None:
            ax.plot(cs, fit(cs), "k-", label=f"fit {fit.k:.3g}·C^{fit.p:.3f}")
        ax.plot(cs, law(cs), "r--", label="[EL] Eq. 3")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("compute C (FLOPs)")
        ax.set_ylabel("peak learning rate" if name == "lr" else "batch (tokens)")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3, which="both")
    return _png(fig)


def _curves(an: Analysis) -> bytes | None:
    cv = an.curves
    if cv is None or cv.empty:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.2))
    arch = dict(zip(an.records["run"], an.records["arch"], strict=True))
    for run, g in cv.groupby("run"):
        if run not in arch:
            continue
        ax.plot(g["compute"], g["loss"], "-", lw=0.8, alpha=0.7,
                color="k" if arch[run] == "dense" else "tab:orange")
    ax.plot([], [], "k-", label="dense")
    ax.plot([], [], "-", color="tab:orange", label="MoE")
    return _finish(ax, "compute so far (FLOPs)", "validation loss", legend=dict(fontsize=8))


def make_plots(an: Analysis) -> dict[str, bytes]:
    """Every figure the analysis supports, as ``{name: png_bytes}`` (see PLOT_TITLES)."""
    out: dict[str, bytes | None] = {
        "loss_vs_compute": _loss_vs_compute(an),
        "isoflop": _isoflop(an),
        "el_vs_activation": _el_vs(an, "activation_ratio", an.el_activation,
                                   "activation ratio A = E_a/E",
                                   lambda x: np.geomspace(min(x.min(), 0.03), 1.0, 60)),
        "el_vs_granularity": _el_vs(an, "granularity", an.el_granularity,
                                    "granularity G = 2·d_model/d_expert",
                                    lambda x: np.geomspace(1.0, max(x.max(), 16) * 1.2, 60)),
        "el_vs_compute": _el_vs_compute(an),
        "residuals": _residuals(an),
        "allocation": _allocation(an),
        "hparams": _hparams(an),
        "curves": _curves(an),
    }
    return {k: v for k, v in out.items() if v is not None}


def _el_vs_compute(an: Analysis) -> bytes | None:
    from moescale.laws.el import published_el

    df = an.records
    if "el_measured" not in df or not np.isfinite(df["el_measured"].astype(float)).any():
        return None
    moe = df[df["arch"] == "moe"]
    fig, ax = plt.subplots(figsize=(7, 4.4))
    groups = an.moe_groups
    cs = np.geomspace(moe["compute"].min() / 3, max(moe["compute"].max() * 30, 1e15), 80)
    for e, col in zip(groups, _cmap(len(groups)), strict=True):
        g = moe[moe["run"].isin(e["runs"])]
        ax.scatter(g["compute"], g["el_measured"], color=col, s=14, alpha=0.6,
                   label=f"{e['label']} (runs)")
        fel = [r for r in e.get("el", []) if np.isfinite(r["el_low"])]
        if fel:  # frontier-ratio EL with its 90% interval
            x = np.array([r["budget"] for r in fel])
            y = np.array([r["el"] for r in fel])
            err = np.array([[r["el"] - r["el_low"] for r in fel],
                            [r["el_high"] - r["el"] for r in fel]])
            ax.errorbar(x, y, yerr=err, fmt="s-", color=col, ms=5, lw=1, capsize=3,
                        label=f"{e['label']} frontier ratio, 90%")
        A, G = e["activation_ratio"], e["granularity"]
        if np.isfinite(G) and G > 0 and 0 < A <= 1:  # Eq. 13 needs both
            ax.plot(cs, published_el(A, G, cs), "--", color=col, lw=0.9)
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.plot([], [], "k--", lw=0.9, label="[EL] Eq. 13 (same A, G; extrapolated)")
    return _finish(ax, "compute C (FLOPs)", "Efficiency Leverage EL")
