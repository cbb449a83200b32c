"""IsoFLOP optimum: parabola vertex in ln M, interval, bracketing, degenerate ladders."""

from __future__ import annotations

import math

import numpy as np
import pytest

from moescale.errors import ConfigError, DataError
from moescale.fit.isoflop import extension_side, fit_isoflop, paired_se, rungs


def _ladder(m_opt=1e6, l_opt=3.0, curv=0.08, n=7, half_width=1.2):
    x = np.linspace(-half_width, half_width, n) + math.log(m_opt)
    return np.exp(x), l_opt + curv * (x - math.log(m_opt)) ** 2


def test_exact_parabola_recovers_vertex():
    m, loss = _ladder()
    opt = fit_isoflop(m, loss, 0.002, n_boot=500)
    assert opt.interior and opt.usable and opt.bracketed
    assert opt.m_opt == pytest.approx(1e6, rel=1e-9)
    assert opt.loss_opt == pytest.approx(3.0, abs=1e-12)
    assert opt.curvature == pytest.approx(0.08, rel=1e-9)
    assert opt.m_opt_low < 1e6 < opt.m_opt_high
    assert opt.loss_opt_low < 3.0 < opt.loss_opt_high
    assert opt.n_rungs == 7 and opt.flags == ()


def test_monotone_three_point_ladder_never_interior():
    # loss falls monotonically with M (the minimum lies above the ladder)
    for loss in ([3.30, 3.20, 3.15], [3.3, 3.2, 3.19], [3.0, 3.1, 3.3], [3.2, 3.2001, 3.2002]):
        opt = fit_isoflop([1e5, 2e5, 4e5], loss, 0.01, n_boot=200)
        assert not opt.interior and not opt.usable
        best = int(np.argmin(loss))
        assert opt.m_opt == pytest.approx([1e5, 2e5, 4e5][best])
        assert opt.loss_opt == pytest.approx(min(loss))
        assert "minimum-at-ladder-end" in opt.flags
        assert not opt.bracketed


def test_concave_ladder_flagged():
    opt = fit_isoflop([1e5, 2e5, 4e5, 8e5], [3.0, 3.2, 3.2, 3.0], 0.01, n_boot=100)
    assert "non-positive-curvature" in opt.flags and not opt.usable


def test_too_few_rungs():
    opt = fit_isoflop([1e5, 2e5], [3.1, 3.0], 0.01)
    assert "too-few-rungs" in opt.flags and not opt.usable
    assert opt.m_opt == 2e5 and math.isnan(opt.m_opt_low)


def test_bracketing_rule_uses_paired_se():
    m, loss = _ladder(n=5, half_width=1.0)  # rungs at ±0.5, ±1.0: excess 0.02, 0.08
    assert extension_side(m, loss, 0.001) is None
    # a SE of 0.02 makes the ±0.5 rungs (excess 0.02 < √2·0.02) not clear of the minimum
    assert extension_side(m, loss, 0.02) == "both"
    # drop the two low rungs: the lower side is open
    assert extension_side(m[2:], loss[2:], 0.001) == "lower"
    assert extension_side(m[:3], loss[:3], 0.001) == "higher"
    assert fit_isoflop(m[2:], loss[2:], 0.001, n_boot=50).flags[0] == "not-bracketed-lower"


def test_replicates_mean_and_scatter():
    m = [1e5, 1e5, 1e5, 2e5, 4e5]
    loss = [3.0, 3.1, 3.2, 2.9, 3.05]
    r = rungs(m, loss, [0.001] * 5)
    assert r["n"].tolist() == [3, 1, 1]
    assert r["loss"][0] == pytest.approx(3.1)
    assert r["sd"][0] == pytest.approx(0.1)
    assert r["se"][0] == pytest.approx(0.1 / math.sqrt(3))
    assert r["se"][1] == pytest.approx(0.001)
    opt = fit_isoflop(m, loss, 0.001, n_boot=50)
    assert opt.n_runs == 5 and opt.n_rungs == 3 and opt.seed_sd == pytest.approx(0.1)


def test_interval_covers_at_nominal_rate():
    """Parametric-bootstrap 90% intervals of M_opt cover the true optimum ≈ 90% of the time."""
    rng = np.random.default_rng(1)
    m, loss = _ladder(n=7, half_width=1.5, curv=0.05)
    se = 0.004
    n_draw, hits_m, hits_l = 300, 0, 0
    for i in range(n_draw):
        y = loss + rng.normal(0, se, len(loss))
        opt = fit_isoflop(m, y, se, n_boot=400, seed=i)
        hits_m += opt.m_opt_low <= 1e6 <= opt.m_opt_high
        hits_l += opt.loss_opt_low <= 3.0 <= opt.loss_opt_high
    # binomial sd at p=0.9, n=300 is 0.017: allow 3 sd
    assert abs(hits_m / n_draw - 0.9) < 0.052
    assert abs(hits_l / n_draw - 0.9) < 0.052


def test_no_se_uses_residual_scatter_and_three_rungs_without_se_have_no_interval():
    m, loss = _ladder(n=6)
    noisy = loss + np.array([0.003, -0.002, 0.001, -0.003, 0.002, 0.0])
    opt = fit_isoflop(m, noisy, n_boot=200)
    assert any(f.startswith("no-loss-se") for f in opt.flags)
    assert opt.m_opt_low < opt.m_opt < opt.m_opt_high
    opt3 = fit_isoflop(m[1:4], loss[1:4] + [0.01, 0, 0.01])
    assert any(f.startswith("no-interval") for f in opt3.flags) and math.isnan(opt3.m_opt_low)


def test_lack_of_fit_widens_interval():
    m, loss = _ladder(n=7)
    bumpy = loss + np.array([0, 0.02, -0.02, 0.02, -0.02, 0.02, 0])
    tight = fit_isoflop(m, loss + 1e-4 * np.arange(7), 0.001, n_boot=300)
    wide = fit_isoflop(m, bumpy, 0.001, n_boot=300)
    assert any(f.startswith("lack-of-fit") for f in wide.flags)
    assert (wide.m_opt_high / wide.m_opt_low) > (tight.m_opt_high / tight.m_opt_low)


@pytest.mark.parametrize("bad", [[3.0, float("nan"), 3.1], [3.0, -1.0, 3.1],
                                 [3.0, float("inf"), 3.1]])
def test_bad_losses_rejected(bad):
    with pytest.raises(DataError, match="'loss' must be finite"):
        fit_isoflop([1e5, 2e5, 4e5], bad)


def test_bad_arguments():
    with pytest.raises(ConfigError, match="'level'"):
        fit_isoflop([1e5, 2e5, 4e5], [3, 2.9, 3], level=1.5)
    with pytest.raises(DataError, match="no runs"):
        fit_isoflop([], [])
    with pytest.raises(DataError, match="equal length"):
        fit_isoflop([1, 2], [3.0])


def test_row_order_invariance():
    m, loss = _ladder(n=6)
    y = loss + np.array([0.002, -0.001, 0.0, 0.001, -0.002, 0.001])
    a = fit_isoflop(m, y, 0.002, n_boot=100)
    p = np.random.default_rng(0).permutation(6)
    b = fit_isoflop(m[p], y[p], 0.002, n_boot=100)
    assert a.m_opt == pytest.approx(b.m_opt) and a.loss_opt == pytest.approx(b.loss_opt)


def test_old_tables_without_issue10_columns_read_as_nan():
    import pandas as pd

    from moescale.fit.runs import RUN_COLUMNS, RunTable

    t = RunTable.from_frame(pd.DataFrame({"run": ["a"], "arch": ["dense"], "compute": [1e18],
                                          "loss": [3.0]}))
    for col in ("budget", "lr_multiplier", "val_loss_se", "val_tokens", "train_loss_last5",
                "flops_per_token_full", "config", "eval_block_losses"):
        assert col in RUN_COLUMNS and t.runs[col].isna().all()


def test_fit_isoflop_brackets_with_paired_se_from_shared_blocks():
    """Shared evaluation blocks: each run's own SE (≈ 0.3) hides a 0.02 excess, the paired
    SE of the difference (block noise cancels) resolves it; the fit, given the paired SEs,
    calls the ladder bracketed exactly as the planner's extension_side does."""
    m, loss = _ladder(n=5, half_width=1.0)  # excesses 0.08, 0.02, 0, 0.02, 0.08
    rng = np.random.default_rng(0)
    common = rng.normal(0.0, 1.0, 16)
    own = [rng.normal(0.0, 0.002, 16) for _ in m]
    blocks = [(y + common - common.mean() + o - o.mean()).tolist()
              for y, o in zip(loss, own, strict=True)]
    own_se = [float(np.std(b, ddof=1) / 4) for b in blocks]
    pse = paired_se(m, loss, blocks)
    j = int(np.argmin(loss))
    for i in range(len(m)):  # independent count: sd of the block-wise difference / √16
        d = np.asarray(blocks[i]) - np.asarray(blocks[j])
        assert pse[i] == pytest.approx(np.std(d, ddof=1) / 4, abs=1e-12)
    assert max(pse) < 0.003 < 0.2 < min(own_se)
    assert "not-bracketed-both" in fit_isoflop(m, loss, own_se, n_boot=20).flags
    paired = fit_isoflop(m, loss, own_se, n_boot=20, bracket_se=pse)
    assert paired.bracketed and extension_side(m, loss, pse) is None
    with pytest.raises(DataError, match="'bracket_se' needs one value per run"):
        fit_isoflop(m, loss, own_se, n_boot=20, bracket_se=pse[:3])
