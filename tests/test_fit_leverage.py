"""Efficiency Leverage from runs: synthetic exact cases and the Clark et al. runs."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from moescale.errors import ConfigError, DataError
from moescale.fit import RunTable, heldout_score, read_clark
from moescale.fit.fitters import ELJointFitter
from moescale.fit.leverage import (
    budget_minima,
    dense_frontier,
    el_fit_report,
    el_published,
    el_table,
    fit_el_separable,
    frontier_crossover_compute,
    frontier_crossovers,
    measure_el,
)
from moescale.laws import forms

ALPHA, BETA = 50.0, 0.08


def _synthetic(with_curves=True):
    """Dense on L = α·C^-β; MoE run i reaches the loss of dense at k_i × its compute: EL = k_i."""
    Cd = np.logspace(18, 21, 7)
    Cm = np.array([3e18, 1e19, 1e20, 2e20])
    k = np.array([1.5, 2.0, 3.0, 4.0])
    runs = pd.DataFrame({
        "run": [f"d{i}" for i in range(7)] + [f"m{i}" for i in range(4)],
        "arch": ["dense"] * 7 + ["moe"] * 4,
        "compute": np.concatenate([Cd, Cm]),
        "loss": np.concatenate([ALPHA * Cd ** -BETA, ALPHA * (k * Cm) ** -BETA]),
        "activation_ratio": [1.0] * 7 + [1 / 8, 1 / 16, 1 / 32, 1 / 32],
        "granularity": [np.nan] * 7 + [4.0, 8.0, 12.0, np.nan],
    })
    curves = None
    if with_curves:
        rows = []
        for i, c in enumerate(Cd):
            for frac in (0.25, 0.5, 1.0):
                rows.append((f"d{i}", frac, np.nan, c * frac, ALPHA * (c * frac) ** -BETA * 1.01
                             if frac < 1 else ALPHA * c ** -BETA))
        curves = pd.DataFrame(rows, columns=["run", "step", "tokens", "compute", "loss"])
    return RunTable.from_frame(runs, curves), k


@pytest.mark.parametrize("kind", ["power-law", "envelope"])
def test_synthetic_el_is_exact(kind):
    runs, k = _synthetic()
    m = measure_el(runs, kind)
    np.testing.assert_allclose(m["el"], k, rtol=1e-6 if kind == "envelope" else 1e-3)
    assert not m["extrapolated"].any()
    fr = dense_frontier(runs, kind)
    C = np.array([2e18, 5e19])
    back, _ = fr.compute_for_loss(fr.loss(C))
    np.testing.assert_allclose(back, C, rtol=1e-6)


def test_extrapolation_flag_and_published_column():
    runs, k = _synthetic()
    m = measure_el(runs)
    expected = el_published([1 / 8, 1 / 16, 1 / 32], [4.0, 8.0, 12.0], [3e18, 1e19, 1e20])
    np.testing.assert_allclose(m["el_published"].to_numpy()[:3], expected)
    np.testing.assert_allclose(
        expected, forms.el_joint(np.array([1 / 8, 1 / 16, 1 / 32]), np.array([4.0, 8.0, 12.0]),
                                 np.array([3e18, 1e19, 1e20]), a=1.23, d=-0.0761, gamma=0.0167,
                                 beta=-0.117, A_start=0.0163, A_max=5.28e16))
    assert math.isnan(m["el_published"].iloc[3])  # G unknown
    frame = runs.runs.copy()
    frame.loc[frame.run == "m3", "loss"] = 0.5 * frame["loss"].min()
    m2 = measure_el(RunTable.from_frame(frame))
    assert m2.set_index("run").loc["m3", "extrapolated"]


def test_crossover_compute_is_where_el_is_one():
    ad, bd, am, bm = 60.0, 0.08, 40.0, 0.07
    c = frontier_crossover_compute(ad, bd, am, bm)
    assert float(forms.el_from_frontiers(c, ad, bd, am, bm)) == pytest.approx(1.0, rel=1e-9)
    assert frontier_crossover_compute(ad, bd, am, bd) == math.inf


def test_errors():
    runs, _ = _synthetic(with_curves=False)
    with pytest.raises(ConfigError, match="'dense_frontier' must be one of"):
        measure_el(runs, "spline")
    with pytest.raises(DataError, match="no dense runs"):
        measure_el(runs.moe())
    with pytest.raises(DataError, match="no MoE runs"):
        measure_el(runs.dense())


@pytest.fixture(scope="module")
def clark(data_dir):
    return read_clark(data_dir / "clark2022_routed_moe_runs_sldbench.csv")


@pytest.fixture(scope="module")
def clark_el(clark):
    return measure_el(clark, "power-law")


def test_clark_el_every_moe_run(clark, clark_el):
    assert len(clark_el) == 210 and set(clark_el["run"]) == set(clark.moe().runs["run"])
    assert clark_el["el"].gt(0).all() and clark_el["el_published"].isna().all()
    fr = clark_el.attrs["frontier"]
    assert fr["n_points"] == 13 and 0.05 < fr["beta"] < 0.15
    # EL recomputed by hand from the frontier's closed-form inverse
    row = clark_el.iloc[0]
    c_dense = (row["loss"] / fr["alpha"]) ** (-1 / fr["beta"])
    assert row["el"] == pytest.approx(c_dense / row["compute"], rel=1e-12)


def test_clark_el_facts(clark_el):
    """Facts of these data (power-law dense frontier, last step, main grid k=1, freq 1/2)."""
    main = clark_el[(clark_el.top_k == 1) & (clark_el.routing_frequency == 0.5)]
    pivot = el_table(main)
    assert pivot.shape == (18, 9)
    # more experts → more leverage, for every (model size, router)
    for _, row in pivot.iterrows():
        vals = row.dropna().to_numpy()
        assert np.all(np.diff(vals) > 0)
    # every run with ≥ 16 experts beats dense; at 1.3B two experts do not
    assert main.loc[main.num_experts >= 16, "el"].gt(1).all()
    assert (pivot.loc["1.3B"][2.0] < 1).all()
    # leverage shrinks with scale: 1.3B below 15M for every (router, E)
    assert (pivot.xs("1.3B") < pivot.xs("15M")).all().all()


def test_clark_envelope_and_per_point(clark):
    env = measure_el(clark, "envelope")
    assert len(env) == 210 and env["el"].gt(0).all()
    pts = measure_el(clark, "power-law", per_point=True)
    assert len(pts) == len(clark.moe().curve_points()) and "step" in pts.columns


def test_clark_frontier_crossovers(clark):
    table = frontier_crossovers(clark.select((clark.runs.top_k.fillna(1) == 1)
                                             & (clark.runs.routing_frequency == 0.5)))
    assert len(table) == 27  # 3 routers × 9 expert counts
    # EL from the per-configuration frontiers falls with compute here (β_moe < β_dense)
    assert not table["el_grows_with_compute"].any()
    assert (table["el_at_max_compute"] < table["el_at_min_compute"]).all()


def test_clark_joint_el_law_and_heldout(clark_el):
    f = ELJointFitter(use_granularity=False).fit(clark_el)
    assert f.coef_["gamma"] == 0 and f.coef_["beta"] == 0
    assert f.coef_["d"] > 0  # exponent of ln Â grows with C: EL falls with compute here
    assert np.sqrt(np.mean(f.residuals_ ** 2)) < 0.3
    h = heldout_score(ELJointFitter(use_granularity=False), clark_el, 3e20)
    assert h["n_test"] == 27  # the 1.3B runs
    assert 0.1 < h["rmse_log"] < 0.5  # pinned: the law extrapolates to 1.3B with ~30% error
    rep = el_fit_report(clark_el, heldout_compute=3e20)
    assert rep["use_granularity"] is False and rep["heldout"]["n_test"] == 27


def test_separable_activation_per_size(clark_el):
    main = clark_el[(clark_el.top_k == 1) & (clark_el.routing_frequency == 0.5)
                    & (clark_el.router_type == "S-Base")]
    table = fit_el_separable(main, "A", by="model_size_label")
    assert len(table) == 6 and (table["a_A"] < 0).all()  # EL = Â^a_A rises as A falls


def _with_ladder(runs: RunTable) -> RunTable:
    """Add off-optimal IsoFLOP ladder members: at each dense budget, a smaller and a larger
    model 5-15% worse, with compute 0.1-0.2% off the budget (steps rounded)."""
    dense = runs.dense().runs
    extra = []
    for i, r in enumerate(dense.itertuples()):
        for j, (dc, worse) in enumerate(((1.001, 1.05), (0.998, 1.15))):
            extra.append({"run": f"d{i}-off{j}", "arch": "dense", "compute": r.compute * dc,
                          "loss": r.loss * worse, "flops_per_token": 1e6 * (j + 2)})
    frame = pd.concat([runs.runs.assign(flops_per_token=1e6), pd.DataFrame(extra)],
                      ignore_index=True)
    return RunTable.from_frame(frame)


def test_off_optimal_ladder_members_do_not_move_the_frontier():
    runs, k = _synthetic(with_curves=False)
    ladder = _with_ladder(runs)
    assert len(ladder.dense()) == 3 * len(runs.dense())
    base = dense_frontier(runs)
    fr = dense_frontier(ladder)  # default: budget minima
    assert fr.points == "budget-minima" and fr.n_points == base.n_points == 7
    assert fr.coef["alpha"] == pytest.approx(base.coef["alpha"], rel=1e-9)
    assert fr.coef["beta"] == pytest.approx(base.coef["beta"], rel=1e-9)
    np.testing.assert_allclose(measure_el(ladder)["el"], k, rtol=1e-3)
    # every dense run: the worse sizes pull the frontier up, so EL comes out too high
    every = dense_frontier(ladder, frontier_points="all")
    assert every.n_points == 21
    assert (measure_el(ladder, frontier_points="all")["el"].to_numpy() > 1.05 * k).all()
    with pytest.raises(ConfigError, match="'frontier_points' must be one of"):
        dense_frontier(ladder, frontier_points="best")


def test_budget_minima_grouping():
    frame = pd.DataFrame({
        "compute": [1e18, 1.004e18, 1.02e18, 3e18, 3e18, 3e18],
        "loss": [3.0, 2.9, 2.95, 2.7, 2.69, 2.71],
        "flops_per_token": [1.0, 2.0, 3.0, 5.0, 5.0, 6.0],  # 2 seeds of one model at 3e18
    })
    kept = budget_minima(frame)
    # 1.02e18 is > 1% above 1e18: its own budget; the seed replicates of the best are kept
    assert kept.index.tolist() == [1, 2, 3, 4]
    assert kept["budget_n_runs"].tolist() == [2, 1, 3, 3]
    # an explicit budget column wins over the compute tolerance
    kept = budget_minima(frame.assign(budget=[1e18] * 3 + [3e18] * 3))
    assert kept.index.tolist() == [1, 3, 4]
    with pytest.raises(ConfigError, match="budget_rtol"):
        budget_minima(frame, budget_rtol=-1.0)
