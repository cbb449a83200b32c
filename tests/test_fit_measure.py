"""EL measured the [EL] way: IsoFLOP optima → frontiers → EL, one joint bootstrap (#10)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from _fit_synth import BUDGETS, frontier_loss, synth_runs

from moescale.errors import ConfigError, DataError
from moescale.fit.frontier import fit_frontier_coefs, heldout_error
from moescale.fit.measure import measure_leverage
from moescale.fit.runs import RunTable


def test_noise_free_sweep_recovers_law_and_el_exactly():
    m = measure_leverage(synth_runs(np.random.default_rng(0), noise=False), n_boot=100)
    dense = m.frontier("dense")
    assert dense.coef_dict()["alpha"] == pytest.approx(30.0, rel=1e-4)
    assert dense.coef_dict()["beta"] == pytest.approx(0.06, rel=1e-4)
    np.testing.assert_allclose(m.el["el"], 2.0, rtol=1e-4)
    assert m.optima["interior"].all() and m.optima["bracketed"].all()
    np.testing.assert_allclose(m.optima["m_opt"], 0.1 * np.tile(BUDGETS, 2) ** 0.5, rtol=1e-6)
    # full-FLOPs convention: dense C × 1.2, MoE C × 1.5 → EL × 0.8
    np.testing.assert_allclose(m.sensitivity["el"], 1.6, rtol=1e-4)
    # per-run EL: the rung at the optimum reads ≈ 2, off-optimum rungs less
    assert m.runs["el"].max() == pytest.approx(2.0, rel=0.01)
    assert (m.runs["el"] <= 2.0 * 1.0001).all()
    assert m.heldout["rel_error"] == pytest.approx(0.0, abs=1e-4)


def _coverage(n_draws: int, n_boot: int) -> tuple[float, float, int]:
    rng = np.random.default_rng(12)
    hits, est = [], []
    for d in range(n_draws):
        m = measure_leverage(synth_runs(rng), n_boot=n_boot, seed=d)
        hits.append(((m.el["el_low"] <= 2.0) & (m.el["el_high"] >= 2.0)).to_numpy())
        est.append(m.el["el"].to_numpy())
    hits, est = np.concatenate(hits), np.concatenate(est)
    return float(hits.mean()), float(est.mean()), len(hits)


def test_interval_coverage_and_unbiased_point_estimate_fast():
    cover, mean, n = _coverage(12, 200)
    # 60 intervals (correlated within a draw): a loose binomial band around 0.9
    assert 0.75 <= cover <= 1.0, cover
    assert mean == pytest.approx(2.0, rel=0.03)


@pytest.mark.slow
def test_interval_coverage_and_unbiased_point_estimate():
    cover, mean, n = _coverage(80, 300)
    sd = np.sqrt(0.9 * 0.1 / (n / 5))  # effective sample: one independent draw per sweep
    assert abs(cover - 0.9) < 3 * sd, cover
    assert mean == pytest.approx(2.0, rel=0.01)


def test_control_and_leverage_json_keys():
    m = measure_leverage(synth_runs(np.random.default_rng(1), control=True, noise=False),
                         n_boot=100)
    rel = m.el[m.el["config"] == "moe-A0.125"]
    np.testing.assert_allclose(rel["el_vs_control"], 2.0 / 1.25, rtol=1e-4)
    assert (rel["control"] == "moe-A1").all()
    out = json.loads(json.dumps(m.leverage_json()))
    assert set(out) == {"runs", "frontiers", "flags"}
    need = {"run", "arch", "activation_ratio", "granularity", "compute", "loss", "el", "el_low",
            "el_high", "extrapolated", "n_seeds"}
    assert out["runs"] and all(need <= set(r) for r in out["runs"])
    assert all(isinstance(r["extrapolated"], bool) for r in out["runs"])
    for f in out["frontiers"]:
        assert {"arch", "config", "form", "coef", "coef_low", "coef_high"} <= set(f)
        assert f["form"] in ("power-law", "irreducible")
        assert set(f["coef"]) == set(f["coef_low"]) == set(f["coef_high"])
    an = json.loads(json.dumps(m.analysis_json()))
    for o in an["optima"]:
        assert {"budget", "m_opt", "m_opt_low", "m_opt_high", "loss_opt", "bracketed",
                "n_rungs", "config", "arch"} <= set(o)
    assert {"config", "budget", "el", "el_low", "el_high", "claim"} <= set(an["el"][0])


def test_point_estimates_do_not_depend_on_the_bootstrap():
    t = synth_runs(np.random.default_rng(9))
    a = measure_leverage(t, n_boot=50, seed=1)
    b = measure_leverage(t, n_boot=150, seed=2)
    np.testing.assert_array_equal(a.el["el"], b.el["el"])
    np.testing.assert_array_equal(a.runs["el"], b.runs["el"])
    np.testing.assert_array_equal(a.frontier("dense").coef, b.frontier("dense").coef)


def test_replicates_pool_seeds_and_report_scatter():
    m = measure_leverage(synth_runs(np.random.default_rng(2), seeds=3, seed_sd=0.01),
                         n_boot=200)
    assert (m.runs["n_seeds"] == 3).all()
    assert 0.005 < m.seed_sd < 0.03  # seed sd 0.01 plus evaluation noise 0.05/√32


def test_inconsistent_replicates_rejected():
    t = synth_runs(np.random.default_rng(3), seeds=2)
    df = t.runs.copy()
    df.loc[0, "learning_rate"] = 1e-3
    df.loc[1, "learning_rate"] = 2e-3
    with pytest.raises(DataError, match="replicates with inconsistent configs.*learning_rate"):
        measure_leverage(RunTable.from_frame(df), n_boot=100)


def test_single_budget_and_monotone_ladders_name_what_is_missing():
    t = synth_runs(np.random.default_rng(4), budgets=BUDGETS[:1])
    with pytest.raises(DataError, match="dense frontier needs ≥ 2 usable budgets"):
        measure_leverage(t, n_boot=100)
    # ladders entirely on one side of the optimum: every budget degenerate, each named
    df = synth_runs(np.random.default_rng(4), noise=False).runs
    df = df[df["flops_per_token"] > 0.1 * df["budget"] ** 0.5 * 1.2].reset_index(drop=True)
    with pytest.raises(DataError, match="budget 1e\\+15: left out: .*minimum-at-ladder-end"):
        measure_leverage(RunTable.from_frame(df), n_boot=100, degenerate="exclude")
    # by default the best rung stands in, flagged as an upper bound: EL is biased, and said so
    m = measure_leverage(RunTable.from_frame(df), n_boot=100)
    assert sum("IsoFLOP fit degenerate" in f and "upper bound" in f for f in m.flags) == 10
    assert not m.optima["interior"].any() and m.optima["used"].all()


def test_degenerate_budget_left_out_with_flag():
    df = synth_runs(np.random.default_rng(5), noise=False).runs
    b0 = BUDGETS[0]
    keep = ~((df["budget"] == b0) & (df["flops_per_token"] < 0.1 * b0 ** 0.5 * 1.05))
    m = measure_leverage(RunTable.from_frame(df[keep]), n_boot=100, degenerate="exclude")
    assert any("at budget 1e+15: IsoFLOP fit degenerate" in f for f in m.flags)
    assert len(m.frontier("dense").compute) == len(BUDGETS) - 1
    row = m.optima[(m.optima["config"] == "dense") & (m.optima["budget"] == b0)].iloc[0]
    assert not row["used"] and not row["interior"]


def test_diverged_runs_left_out_and_bad_blocks_rejected():
    df = synth_runs(np.random.default_rng(6)).runs
    df["vocab_size"] = 256.0
    df.loc[3, "loss"] = 7.0  # above ln 256 = 5.55
    m = measure_leverage(RunTable.from_frame(df), n_boot=100)
    assert any("1 diverged run(s)" in f for f in m.flags)
    df.loc[3, "loss"] = 3.0
    df.loc[4, "eval_block_losses"] = "[1.0, oops]"
    with pytest.raises(DataError, match="'eval_block_losses' must be a JSON list"):
        measure_leverage(RunTable.from_frame(df), n_boot=100)
    with pytest.raises(ConfigError, match="'form'"):
        measure_leverage(RunTable.from_frame(df), form="cubic")


def test_irreducible_frontier_and_heldout_choice():
    C = np.geomspace(1e17, 1e21, 7)
    L = 1.7 + 400 * C ** -0.15
    coef = fit_frontier_coefs(C, L, form="irreducible")
    np.testing.assert_allclose(coef, [1.7, 400, 0.15], rtol=1e-4)
    assert abs(heldout_error(C, L, form="irreducible")) < 1e-4
    assert abs(heldout_error(C, L, form="power-law")) > 0.01
    # the pure power law is the irreducible form's E = 0 case
    P = 30 * C ** -0.06
    np.testing.assert_allclose(fit_frontier_coefs(C, P, form="irreducible"), [0, 30, 0.06],
                               rtol=1e-4, atol=1e-4)
    assert frontier_loss(C[0]) > 0  # the synthetic helper stays importable
    with pytest.raises(DataError, match="at least 3 points"):
        fit_frontier_coefs(C[:2], L[:2], form="irreducible")


@pytest.fixture(scope="module")
def clark_m(data_dir):
    from moescale.fit.runs import read_runs

    return measure_leverage(read_runs(data_dir / "clark2022_routed_moe_runs_sldbench.csv"),
                            n_boot=200)


def test_clark_external_data_flags(clark_m):
    flags = " ".join(clark_m.flags)
    assert "share one token count" in flags and "fixed-D" in flags
    assert "budgets derived once" in flags
    runs = clark_m.runs
    # 210 MoE runs; 4 pairs repeat a config and its seed (25M S-Base): averaged, flagged
    assert runs["n_seeds"].sum() == 210 and len(runs) == 206
    assert "8 run(s) repeat another run's config and seed" in flags
    big = runs[runs["compute"] > 3e20]  # the 1.3B runs: all beyond the dense losses
    assert len(big) == 27 and big["extrapolated"].all()
    assert runs["extrapolated"].sum() == 48
    assert (runs.loc[runs["extrapolated"], "loss"] < clark_m.frontier("dense").loss_range[0]).all()
    assert "48 run(s) have a loss outside the dense frontier's loss range" in flags
    dense = clark_m.frontier("dense")
    assert len(dense.compute) == 11  # 13 dense runs: the 130M seeds are one rung
    assert (clark_m.runs["el_low"] <= clark_m.runs["el"]).all()
    assert (clark_m.runs["el"] <= clark_m.runs["el_high"]).all()


def test_frame_without_dense_runs():
    df = synth_runs(np.random.default_rng(7)).runs
    with pytest.raises(DataError, match="no dense runs"):
        measure_leverage(RunTable.from_frame(df[df["arch"] == "moe"]), n_boot=100)


def test_external_budgets_derived_once():
    df = synth_runs(np.random.default_rng(8)).runs.drop(columns=["budget"])
    df["compute"] = df["compute"] * (1 + 0.001 * np.random.default_rng(0).random(len(df)))
    m = measure_leverage(RunTable.from_frame(pd.DataFrame(df)), n_boot=100)
    assert any("budgets derived once" in f for f in m.flags)
    assert len(m.frontier("dense").compute) == len(BUDGETS)
