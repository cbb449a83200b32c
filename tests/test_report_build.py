"""Reports from synthetic stores: known frontiers and EL are recovered, the HTML page is
self-contained, and small sweeps degrade to notes instead of errors."""

from __future__ import annotations

import base64
import json
import math
import re

import numpy as np
import pytest

from moescale.laws.el import published_el
from moescale.report import analyze, build_report, load_runs
from moescale.sweep.config import parse_sweep_config
from moescale.sweep.planner import plan_sweep
from moescale.sweep.store import open_store

ALPHA, BETA = 30.0, 0.09
MOE_GAIN = 0.03  # MoE loss = dense frontier × (1 − gain·log2(E/E_a)/3)


def _loss(run) -> float:
    c, m = run.compute, run.flops_per_token
    m_opt = 0.0655 * run.budget ** 0.5422
    loss = ALPHA * c ** -BETA * (1 + 0.03 * math.log(m / m_opt) ** 2)
    if run.spec.is_moe:
        loss = ALPHA * c ** -BETA * (1 - MOE_GAIN * math.log2(run.spec.n_experts
                                                               / run.spec.top_k) / 3)
    if run.family == "hp":
        loss *= 1 + 0.02 * abs(math.log(run.learning_rate / (1.1576 * run.budget ** -0.1529)))
    return loss


def _store(tmp_path, doc, noise=0.0):
    plan = plan_sweep(parse_sweep_config(doc))
    path = tmp_path / "synth.db"
    rng = np.random.default_rng(1)
    with open_store(path) as st:
        st.sync_plan(plan)
        for r in plan.runs:
            loss = _loss(r) * (1 + noise * rng.normal())
            curve = [{"step": s, "tokens": s * 10, "flops": r.compute * s / 4,
                      "loss": loss * (1 + (4 - s) / 8), "val_loss": loss * (1 + (4 - s) / 9)}
                     for s in range(1, 5)]
            st.mark_done(r.key, {"loss": loss, "train_loss": loss, "tokens": r.tokens,
                                 "flops": r.compute}, curve, 2.0)
    return path, plan


FULL = {"sweep": {"name": "synth", "budgets": [1e12, 3e12, 1e13]},
        "shape": {"head_dim": 8}, "ladder": {"d_step": 8, "aspect": 64},  # fine rungs
        "dense": {"sizes": [0.5, 1, 2]},
        "family": [{"kind": "activation", "name": "act", "n_experts": [4, 8, 16],
                    "ladder": False, "control": False},
                   {"kind": "granularity", "name": "gran", "granularities": [2, 4, 8],
                    "budgets": [3e12], "ladder": False},
                   {"kind": "hparam", "name": "hp", "arch": "dense",
                    "lr_multipliers": [0.5, 1, 2], "batch_multipliers": [1]}]}


def test_analysis_recovers_the_synthetic_frontier_and_el(tmp_path):
    path, plan = _store(tmp_path, FULL)
    an = analyze(load_runs(path), n_boot=100)
    f = an.dense_frontier
    # IsoFLOP minima sit at M_opt (parabola vertex): the frontier is α·C^-β exactly
    assert -f.p == pytest.approx(BETA, rel=0.02)
    assert f.k == pytest.approx(ALPHA, rel=0.1)
    assert f.p_ci[0] <= f.p <= f.p_ci[1]
    moe = an.records[an.records["arch"] == "moe"]
    for _, r in moe.iterrows():
        # EL = C_dense(L)/C with L = α C^-β (1 − g): EL = (1 − g)^(-1/β)
        g = MOE_GAIN * math.log2(r["n_experts"] / r["top_k"]) / 3
        assert r["el_measured"] == pytest.approx((1 - g) ** (-1 / BETA), rel=0.03)
        assert r["el_published"] == pytest.approx(
            published_el(r["activation_ratio"], r["granularity"], r["compute"]))
    assert an.el_activation and an.el_compute and an.el_granularity
    assert an.allocation is not None
    m = an.allocation["m_opt"]
    assert m.p == pytest.approx(0.5422, abs=0.08)  # ladders are centred on Table 1's M_opt
    hp = an.hparams
    assert hp is not None and hp["lr"] is not None
    for p in hp["points"]:
        assert p["lr_opt"] == pytest.approx(p["lr_published"], rel=1e-4)  # optimum at 1×


def test_report_files_and_self_contained_html(tmp_path):
    path, _ = _store(tmp_path, FULL, noise=0.002)
    rep = build_report(path, tmp_path / "rep", n_boot=25)
    html = rep.html_path.read_text()
    assert html.startswith("<!doctype html>")
    # self-contained: every image inline, nothing fetched
    assert not re.search(r"""(src|href)=['"](?!data:)""", html)
    imgs = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html)
    assert len(imgs) >= 6
    assert all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in imgs)
    for name in ("loss_vs_compute", "isoflop", "el_vs_activation", "el_vs_compute",
                 "el_vs_granularity", "residuals", "allocation", "hparams", "curves"):
        assert (tmp_path / "rep" / f"{name}.png").read_bytes()[:4] == b"\x89PNG", name
    md = rep.summary_path.read_text()
    assert "Dense frontier" in md and "Measured EL per run" in md and "Eq. 13" in md
    assert "Crossover" in html and "bootstrap" in html
    head = rep.headline()
    assert {"n_runs", "dense_frontier", "efficiency_leverage", "crossover", "notes"} <= set(head)
    json.dumps(head)  # JSON-ready
    an = json.loads(rep.json_path.read_text())
    _check_analysis_json(an)


def _check_analysis_json(an):
    """The public keys of DIR/analysis.json / report --json (issue #10)."""
    assert {"optima", "el", "flags", "frontiers", "heldout"} <= set(an)
    for o in an["optima"]:
        assert {"config", "arch", "budget", "m_opt", "m_opt_low", "m_opt_high", "loss_opt",
                "bracketed", "n_rungs"} <= set(o)
        assert isinstance(o["bracketed"], bool)
    for e in an["el"]:
        assert {"config", "budget", "el", "el_low", "el_high", "claim"} <= set(e)
    assert isinstance(an["flags"], list)


def test_small_sweeps_degrade_to_notes(tmp_path):
    doc = {"sweep": {"name": "one", "budgets": [1e12]}, "dense": {"sizes": [1]},
           "family": [{"kind": "activation", "name": "act", "n_experts": [8],
                       "ladder": False, "control": False}]}
    path, _ = _store(tmp_path, doc)
    rep = build_report(path, tmp_path / "rep", n_boot=25)
    notes = " ".join(rep.analysis.notes)
    assert "Not enough dense runs to fit the dense frontier" in notes
    assert "EL vs A" in notes
    assert rep.html_path.exists() and rep.summary_path.exists()


def test_empty_store_and_bad_sources(tmp_path):
    from moescale.errors import DataError

    with open_store(tmp_path / "e.db"):
        pass
    rep = build_report(tmp_path / "e.db", tmp_path / "rep", n_boot=0)
    assert "No finished runs" in rep.summary_text()
    bad = tmp_path / "x.txt"
    bad.write_text("hello")
    with pytest.raises(DataError):
        build_report(bad, tmp_path / "rep2")
    with pytest.raises(DataError, match="not found"):
        build_report(tmp_path / "missing.db", tmp_path / "rep3")


def test_report_reads_an_exported_csv_and_the_cli(tmp_path, capsys):
    from moescale.cli import main

    path, _ = _store(tmp_path, FULL)
    with open_store(path) as st:
        csv, _ = st.export(tmp_path / "runs.csv")
    rep = build_report(csv, tmp_path / "rep_csv", n_boot=0)
    assert rep.analysis.dense_frontier is not None
    with pytest.raises(SystemExit) as exc:
        main(["report", str(path), "--out", str(tmp_path / "rep_cli"), "--json",
              "--bootstrap", "0"])
    assert exc.value.code in (0, None)
    out = json.loads(capsys.readouterr().out)
    assert out["n_runs"] == len(rep.analysis.records)
    _check_analysis_json(out)
    assert (tmp_path / "rep_cli" / "report.html").exists()
    assert json.loads((tmp_path / "rep_cli" / "analysis.json").read_text())["n_runs"] == \
        out["n_runs"]


def test_report_el_equals_moescale_leverage(tmp_path, capsys):
    """One measurement: the report prints moescale.fit.measure_leverage's per-run EL and
    frontier, exactly what `moescale leverage` prints for the same store and seed."""
    from moescale.cli import main

    path, _ = _store(tmp_path, FULL, noise=0.003)
    an = analyze(load_runs(path), n_boot=200)
    report_el = an.records[an.records["arch"] == "moe"].set_index("run")
    with pytest.raises(SystemExit) as exc:
        main(["leverage", str(path), "--json", "--bootstrap", "200"])
    assert exc.value.code in (0, None)
    out = json.loads(capsys.readouterr().out)
    cli = {name: r for r in out["runs"] for name in r["runs"]}
    assert set(cli) == set(report_el.index) and len(cli) >= 10
    for run, row in report_el.iterrows():
        assert row["el_measured"] == pytest.approx(cli[run]["el"], rel=1e-12), run
        assert row["el_low"] == pytest.approx(cli[run]["el_low"], rel=1e-12), run
        assert row["el_high"] == pytest.approx(cli[run]["el_high"], rel=1e-12), run
    dense = next(f for f in out["frontiers"]
                 if f["config"] == "dense" and f["form"] == "power-law")
    assert an.dense_frontier.k == pytest.approx(dense["coef"]["alpha"], rel=1e-12)
    assert -an.dense_frontier.p == pytest.approx(dense["coef"]["beta"], rel=1e-12)
    assert dense["n_points"] == 3 == len(an.dense_points)


def test_summary_text_intervals_control_and_law_range():
    """Every EL in the summary carries its interval; the control ratio and the picked
    learning-rate multipliers are stated; Eq. 13 is never said to agree or disagree."""
    from _fit_synth import synth_runs

    from moescale.fit.runs import RunTable
    from moescale.report import summary_text

    t = synth_runs(np.random.default_rng(0), control=True)
    df = t.runs.assign(lr_multiplier=np.where(t.runs["arch"] == "dense", 1.0, 0.5))
    text = summary_text(analyze(RunTable.from_frame(df), n_boot=200))
    el_lines = [ln for ln in text.splitlines() if ln.startswith("EL of ")]
    assert len(el_lines) == 10
    assert all(re.search(r"\d \[\d[\d.]*, \d[\d.]*\] — ", ln) for ln in el_lines)
    assert "relative to the A = 1 control 1.6" in text
    assert "Held-out check" in text and "dense ×1, moe-A0.125 ×0.5" in text
    assert "extrapolation" in text and "agree" not in text


def test_report_on_a_table_without_model_sizes(tmp_path):
    """External runs without flops_per_token: no IsoFLOP figure, no traceback (fuzz case)."""
    import pandas as pd

    rows = [{"run": f"d{i}", "arch": "dense", "compute": c, "loss": 30 * c ** -0.06}
            for i, c in enumerate((1e18, 3e18, 1e19, 3e19))]
    rows += [{"run": f"m{i}", "arch": "moe", "compute": c, "loss": 29 * c ** -0.06,
              "activation_ratio": 0.125} for i, c in enumerate((1e18, 1e19))]
    pd.DataFrame(rows).to_csv(tmp_path / "ext.csv", index=False)
    rep = build_report(tmp_path / "ext.csv", tmp_path / "rep", n_boot=50)
    assert "isoflop" not in rep.plots and rep.html_path.exists()
    runs = rep.analysis.measurement.runs
    assert len(runs) == 2 and (runs["el"] > 1).all()


def test_summary_names_a_learning_rate_pick_at_the_edge_of_its_scan():
    import pandas as pd

    from moescale.report.summary import _lr_multipliers

    rows = [{"config": c, "tags": "hparam;lr_scan", "lr_multiplier": m}
            for c in ("dense", "moe") for m in (0.25, 0.5, 1, 2)]
    rows += [{"config": "dense", "tags": "dense;ladder", "lr_multiplier": 0.5},
             {"config": "moe", "tags": "activation;ladder", "lr_multiplier": 0.25}]
    got = _lr_multipliers(pd.DataFrame(rows))
    assert got["dense"] == "0.5"
    assert got["moe"] == "0.25 (at the edge of the scan ×0.25–×2: not bracketed)"


def test_isoflop_plot_leaves_out_learning_rate_scan_runs():
    import pandas as pd

    from moescale.report.plots import ladder_rows

    df = pd.DataFrame({"run": ["a", "b", "c", "d"],
                       "tags": ["dense;ladder", "hparam;lr_scan;dense", None, "hparam"]})
    assert ladder_rows(df)["run"].tolist() == ["a", "c"]
    assert ladder_rows(df.drop(columns="tags")).equals(df.drop(columns="tags"))


def test_separable_fits_use_the_frontier_ratio_el_where_a_configuration_has_one():
    """EL vs A/G/C takes one value per configuration and budget (the frontier ratio) for
    laddered configurations, never an arbitrary rung's per-run EL; configurations without
    a frontier keep their runs' EL."""
    import types

    import pandas as pd

    from moescale.report.analysis import _el_points

    moe = pd.DataFrame({"run": ["a1", "a2", "b1"], "config": ["A", "A", "B"],
                        "shared_ratio": [0.3, 0.3, 0.0], "el_measured": [0.7, 2.5, 1.4],
                        "activation_ratio": [0.25] * 2 + [0.5], "granularity": [2.0] * 3,
                        "budget": [1e10] * 3, "el_published": [0.9] * 3})
    el = pd.DataFrame({"config": ["A"], "activation_ratio": [0.25], "granularity": [2.0],
                       "budget": [1e10], "el": [1.6]})
    an = types.SimpleNamespace(measurement=types.SimpleNamespace(el=el))
    pts = _el_points(an, moe).set_index("run")
    assert pts.loc["A", "el_measured"] == 1.6 and pts.loc["A", "shared_ratio"] == 0.3
    assert pts.loc["b1", "el_measured"] == 1.4
    assert "a1" not in pts.index and "a2" not in pts.index and "el" not in pts


def test_summary_says_eq13_has_no_crossover_for_the_a1_control():
    from _fit_synth import synth_runs

    from moescale.fit.runs import RunTable
    from moescale.report import summary_text

    t = synth_runs(np.random.default_rng(0), control=True)
    text = summary_text(analyze(RunTable.from_frame(t.runs), n_boot=50))
    lines = [ln for ln in text.splitlines() if ln.startswith("Crossover C* for A=1 ")]
    assert lines and all("Eq. 13 has none (EL = 1 at A = 1" in ln for ln in lines)
    assert "crossover — FLOPs" not in text
