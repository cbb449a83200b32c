"""``moescale report``: analysis + figures → ``report.html``, ``summary.md``, PNG files.

The HTML page is self-contained: every figure is embedded as a base64 PNG and every
table is inline, so the one file can be mailed or attached to an issue.
"""

from __future__ import annotations

import base64
import html
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from moescale.laws.hparams import AllocationLaw, HyperparameterLaw
from moescale.report.analysis import Analysis, PowerFit, analyze
from moescale.report.data import load_runs
from moescale.report.summary import analysis_json, headline, summary_lines
from moescale.spec.io import atomic_write

_T1_M, _T1_D = (AllocationLaw.published("dense").power_law(q).formula()
                for q in ("flops_per_token", "tokens"))
_EQ3_LR, _EQ3_B = (HyperparameterLaw.published().power_law(q).formula()
                   for q in ("learning_rate", "batch_tokens"))

__all__ = ["Report", "build_report"]


@dataclass
class Report:
    """A written report: where it is, the analysis behind it and its figures."""

    out_dir: Path
    analysis: Analysis
    plots: dict[str, bytes] = field(default_factory=dict)

    @property
    def html_path(self) -> Path:
        return self.out_dir / "report.html"

    @property
    def summary_path(self) -> Path:
        return self.out_dir / "summary.md"

    def headline(self) -> dict[str, Any]:
        return headline(self.analysis)

    def summary_text(self) -> str:
        return "\n".join(summary_lines(self.analysis))

    def analysis_json(self) -> dict[str, Any]:
        return analysis_json(self.analysis)

    @property
    def json_path(self) -> Path:
        return self.out_dir / "analysis.json"


def _f(x: float | None, d: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    return f"{x + 0.0:.{d}g}".replace("-0", "0") if x == 0 else f"{x:.{d}g}"


def _ci(ci: tuple[float, float] | None, d: int = 3) -> str:
    return f"[{_f(ci[0], d)}, {_f(ci[1], d)}]" if ci else "(no interval)"


# ---------------------------------------------------------------------------- HTML
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1000px;
margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em}h2{font-size:1.25em;border-bottom:1px solid #ddd;padding-bottom:.2em;
margin-top:1.8em}table{border-collapse:collapse;font-size:.85em;margin:.6em 0}
td,th{border:1px solid #ddd;padding:.25em .5em;text-align:right}th{background:#f4f4f4}
td:first-child,th:first-child{text-align:left}img{max-width:100%;border:1px solid #eee}
.note{color:#555;font-size:.9em}.summary li{margin:.2em 0}code{background:#f4f4f4;padding:0 .2em}
"""


def _table(rows: list[dict[str, Any]], cols: list[tuple[str, str]]) -> str:
    if not rows:
        return "<p class='note'>none</p>"
    head = "".join(f"<th>{html.escape(t)}</th>" for _, t in cols)
    body = []
    for r in rows:
        cells = []
        for k, _ in cols:
            v = r.get(k)
            if isinstance(v, float):
                v = _f(v, 4)
            elif isinstance(v, bool):
                v = "yes" if v else ""
            cells.append(f"<td>{html.escape('' if v is None else str(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _fit_row(name: str, f: PowerFit | None, published: str) -> dict[str, Any]:
    if f is None:
        return {"name": name, "k": None, "p": None, "published": published}
    return {"name": name, "k": f.k, "k_ci": _ci(f.k_ci), "p": f.p, "p_ci": _ci(f.p_ci),
            "n": f.n, "rmse": f.rmse_log, "published": published}


def _img(plots: dict[str, bytes], name: str) -> str:
    if name not in plots:
        return ""
    from moescale.report.plots import PLOT_TITLES  # matplotlib: the [report] extra

    b64 = base64.b64encode(plots[name]).decode()
    return (f"<h3>{html.escape(PLOT_TITLES[name])}</h3>"
            f"<img alt='{name}' src='data:image/png;base64,{b64}'/>")


def _html(an: Analysis, plots: dict[str, bytes]) -> str:
    h = headline(an)
    summary = "".join(f"<li>{html.escape(s)}</li>" for s in summary_lines(an))
    fits = [_fit_row("dense frontier L = k·C^p", an.dense_frontier, "p = −β (fit per sweep)")]
    for e in an.moe_groups:
        fits.append(_fit_row(f"MoE frontier {e['label']}", e["frontier"], ""))
    if an.allocation:
        fits.append(_fit_row("dense M_opt(C)", an.allocation["m_opt"],
                             _T1_M))
        fits.append(_fit_row("dense D_opt(C) = C/M_opt", an.allocation["d_opt"],
                             _T1_D))
    if an.hparams:
        fits.append(_fit_row("lr_opt(C)", an.hparams.get("lr"),
                             _EQ3_LR))
        fits.append(_fit_row("B_opt(C) tokens", an.hparams.get("batch"),
                             _EQ3_B))
    fit_cols = [("name", "quantity"), ("k", "k"), ("k_ci", "k 90% CI"), ("p", "exponent p"),
                ("p_ci", "p 90% CI"), ("n", "points"), ("rmse", "rmse (ln)"),
                ("published", "published")]
    el_cols = [("run", "run"), ("family", "family"), ("activation_ratio", "A"),
               ("granularity", "G"), ("compute", "C"), ("loss", "loss"),
               ("el_measured", "EL measured"), ("el_low", "90% low"), ("el_high", "90% high"),
               ("claim", "claim"), ("el_published", "EL Eq. 13 (extrapolated)"),
               ("extrapolated", "extrapolated")]
    m = an.measurement
    opt_rows = [] if m is None else m.optima.to_dict("records")
    opt_cols = [("config", "configuration"), ("budget", "C"), ("n_rungs", "rungs"),
                ("n_runs", "runs"), ("m_opt", "M_opt"), ("m_opt_low", "90% low"),
                ("m_opt_high", "90% high"), ("loss_opt", "loss_opt"), ("bracketed", "bracketed"),
                ("interior", "interior vertex"), ("reason", "use"), ("flags", "flags")]
    fel_rows = [] if m is None else m.el.to_dict("records")
    fel_cols = [("config", "configuration"), ("budget", "C"), ("el", "EL"),
                ("el_low", "90% low"), ("el_high", "90% high"), ("claim", "claim"),
                ("extrapolated", "extrapolated"), ("el_vs_control", "vs A = 1 control"),
                ("el_vs_control_low", "90% low"), ("el_vs_control_high", "90% high")]
    sens_rows = [] if m is None else m.sensitivity.to_dict("records")
    cross_cols = [("config", "configuration"), ("compute_fit", "C* fitted"),
                  ("compute_fit_far", "> 3 decades outside sweep"),
                  ("compute_law", "C* Eq. 13")]
    sep_a = [{"budget": e["budget"], "granularity": e["granularity"], "a_A": e["a_A"],
              "a_A_published": e["a_A_published"], "n": len(e["points"])}
             for e in an.el_activation]
    sep_g = [{"budget": e["budget"], "activation_ratio": e["activation_ratio"],
              "n": len(e["points"]), **(e["fit"] or {})} for e in an.el_granularity]
    sep_c = [{k: e[k] for k in ("label", "a_C", "c_C")} | {"n": len(e["points"])}
             for e in an.el_compute]
    df = an.records
    run_cols = [("run", "run"), ("family", "family"), ("arch", "arch"),
                ("params_total", "params"), ("params_active", "active"),
                ("flops_per_token", "M"), ("tokens", "tokens"), ("compute", "C"),
                ("learning_rate", "lr"), ("batch_tokens", "batch"), ("loss", "val loss"),
                ("train_loss", "train loss")]
    runs = df.sort_values(["budget", "arch", "run"]).to_dict("records") if not df.empty else []
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        "<title>moescale sweep report</title>", f"<style>{_CSS}</style></head><body>",
        "<h1>moescale sweep report</h1>",
        f"<p class='note'>source: <code>{html.escape(str(an.info.get('source', '')))}</code>; "
        f"generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Conventions: "
        "C = M·D with Ling M ([EL] arXiv 2507.17702 App. C), A = E_a/E, G = 2·d/d_expert, "
        "loss = final validation cross-entropy (nats/token).</p>",
        f"<h2>Summary</h2><ul class='summary'>{summary}</ul>",
        "<h2>IsoFLOP optima</h2>", _img(plots, "isoflop"), _table(opt_rows, opt_cols),
        "<h2>Frontiers</h2>", _img(plots, "loss_vs_compute"),
        "<h2>Efficiency Leverage</h2>",
        "<p class='note'>Frontier ratio EL(C) = C_dense(L_moe(C))/C ([EL] Eq. 1), 90% "
        "joint-bootstrap intervals (evaluation blocks, seeds, frontier lack of fit); "
        "EL &gt; 1 is claimed only where the interval excludes 1.</p>",
        _table(fel_rows, fel_cols),
        "<p class='note'>Sensitivity: C counting embedding, unembedding and router FLOPs:</p>",
        _table(sens_rows, [("config", "configuration"), ("budget", "C (Ling)"),
                           ("compute_full", "C (full)"), ("el", "EL"), ("el_low", "90% low"),
                           ("el_high", "90% high"), ("claim", "claim")]),
        "<p class='note'>Per run: C_dense(L_run)/C_run.</p>", _img(plots, "el_vs_compute"),
        _img(plots, "el_vs_activation"), _img(plots, "el_vs_granularity"),
        _table(h["efficiency_leverage"], el_cols),
        "<h3>Separable EL fits</h3>",
        "<p class='note'>EL = Â^a_A (A_start, A_max of Eq. 13):</p>",
        _table(sep_a, [("budget", "C"), ("granularity", "G"), ("a_A", "a_A fitted"),
                       ("a_A_published", "a_A Eq. 13"), ("n", "points")]),
        "<p class='note'>ln EL = a_G + b_G·ln G·(ln G + c_G):</p>",
        _table(sep_g, [("budget", "C"), ("activation_ratio", "A"), ("a_G", "a_G"),
                       ("b_G", "b_G"), ("c_G", "c_G"), ("g_opt", "G*"), ("n", "points")]),
        "<p class='note'>ln EL = a_C·ln C + c_C:</p>",
        _table(sep_c, [("label", "configuration"), ("a_C", "a_C"), ("c_C", "c_C"),
                       ("n", "points")]),
        "<h3>Crossover compute C* (EL = 1)</h3>", _table(h["crossover"], cross_cols),
        "<h2>Fitted coefficients (90% joint-bootstrap intervals)</h2>", _table(fits, fit_cols),
        _img(plots, "residuals"),
    ]
    if an.allocation:
        parts += ["<h2>Compute-optimal allocation</h2>", _img(plots, "allocation"),
                  _table(an.allocation["points"], [("budget", "C"), ("m_opt", "M_opt"),
                                                   ("d_opt", "D_opt"), ("loss", "loss")])]
    if an.hparams:
        parts += ["<h2>Hyper-parameter laws</h2>", _img(plots, "hparams"),
                  _table(an.hparams["points"],
                         [("budget", "C"), ("n_runs", "runs"), ("n_near", "near-optimal"),
                          ("lr_opt", "lr_opt"), ("lr_published", "lr Eq. 3"),
                          ("batch_opt", "B_opt"), ("batch_published", "B Eq. 3")])]
    parts += ["<h2>Training curves</h2>", _img(plots, "curves"),
              "<h2>Runs</h2>", _table(runs, run_cols), "</body></html>"]
    return "\n".join(p for p in parts if p)


def _markdown(an: Analysis, plots: dict[str, bytes]) -> str:
    lines = ["# moescale sweep report", ""]
    lines += [f"- {s}" for s in summary_lines(an)]
    lines += ["", "## Efficiency Leverage per MoE run", "",
              "| run | A | G | C | loss | EL measured | 90% interval | claim |",
              "|---|---|---|---|---|---|---|---|"]
    for e in headline(an)["efficiency_leverage"]:
        lines.append(f"| {e['run']} | {e['activation_ratio']:.3g} | {_f(e['granularity'])} | "
                     f"{e['compute']:.3g} | {e['loss']:.4f} | {_f(e['el_measured'])} | "
                     f"[{_f(e['el_low'])}, {_f(e['el_high'])}] | {e['claim'] or '—'} |")
    lines += ["", "## Figures", ""]
    from moescale.report.plots import PLOT_TITLES  # matplotlib: the [report] extra

    lines += [f"- [{PLOT_TITLES[k]}]({k}.png)" for k in plots]
    return "\n".join(lines) + "\n"


def build_report(source: str | Path, out_dir: str | Path, *, seed: int = 0,
                 n_boot: int | None = None) -> Report:
    """Analyse a store (or exported run table) and write the report files.

    Writes ``out_dir/report.html`` (self-contained), ``out_dir/summary.md`` and one PNG
    per figure; every file atomically. Small sweeps get notes, not errors.

    Examples
    --------
    >>> rep = build_report("sweep.db", "report/")  # doctest: +SKIP
    >>> rep.html_path  # doctest: +SKIP
    PosixPath('report/report.html')
    """
    import json

    from moescale.report.plots import make_plots  # matplotlib: the [report] extra

    table = load_runs(source)
    kw = {} if n_boot is None else {"n_boot": n_boot}
    an = analyze(table, seed=seed, **kw)
    plots = make_plots(an)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, png in plots.items():
        atomic_write(out / f"{name}.png", png)
    rep = Report(out_dir=out, analysis=an, plots=plots)
    atomic_write(rep.summary_path, _markdown(an, plots))
    atomic_write(rep.html_path, _html(an, plots))
    atomic_write(rep.json_path, json.dumps(_jsonable(analysis_json(an)), indent=2) + "\n")
    return rep


def _jsonable(obj: Any) -> Any:
    """NaN/inf → None, numpy scalars → Python, tuples → lists (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, PowerFit):
        return _jsonable(obj.as_dict())
    return obj
