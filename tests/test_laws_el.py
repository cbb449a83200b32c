"""[EL] laws (arXiv 2507.17702): Eq. 13, separable forms, Eq. 3, Table 1, dense equivalent."""

from __future__ import annotations

import math

import numpy as np
import pytest

from moescale.errors import ConfigError
from moescale.laws import (
    AllocationLaw,
    ELCoefficients,
    ELLaw,
    HyperparameterLaw,
    dense_equivalent,
    el_break_even_compute,
    forms,
    published_el,
)
from moescale.spec import flops_per_token
from moescale.spec.presets import ling_1t, ling_flash_2, ling_mini_2

LAW = ELLaw.published("ling2025")


def _sig(x: float, n: int = 3) -> float:
    return float(f"{x:.{n}g}")


def test_el_published_check_values():
    assert _sig(LAW.predict(1 / 32, 12, 1e22)) == 7.22
    assert _sig(LAW.predict(1 / 32, 8, 1e22)) == 7.13
    assert _sig(published_el(1 / 32, 12, 1e22)) == 7.22
    assert round(LAW.optimal_granularity(), 2) == 11.34


def test_el_dense_limit_is_about_one():
    for G in (2, 8, 12, 16):
        for C in (1e18, 1e20, 1e22):
            assert LAW.predict(1.0, G, C) == pytest.approx(0.99, abs=0.011)


def test_el_matches_independent_formula():
    # Eq. 13 written out by hand with the LAWS.md constants.
    a, d, g, b, s, m = 1.23, -7.61e-2, 1.67e-2, -1.17e-1, 1.63e-2, 5.28e16
    for A, G, C in [(1 / 8, 2, 1e19), (1 / 64, 6, 3e20), (0.5, 16, 1e23)]:
        a_hat = 1 / (1 / (A + 1 / (1 / s - 1 / m)) + 1 / m)
        expo = a + d * math.log10(C) + g * math.log2(G) ** 2 + b * math.log2(G)
        assert LAW.predict(A, G, C) == pytest.approx(a_hat**expo, rel=1e-12)


def test_el_optimum_granularity_maximises_el():
    grid = np.linspace(2, 32, 3001)
    best = grid[np.argmax(LAW.predict(1 / 32, grid, 1e21))]
    assert best == pytest.approx(LAW.optimal_granularity(), abs=0.02)


def test_el_monotone_in_activation_and_compute():
    A = np.array([1 / 256, 1 / 64, 1 / 16, 1 / 4])
    assert np.all(np.diff(LAW.predict(A, 8, 1e21)) < 0)  # EL rises as A falls
    C = np.logspace(16, 24, 9)
    assert np.all(np.diff(LAW.predict(1 / 32, 8, C)) > 0)  # and grows with C


def test_break_even_compute():
    assert el_break_even_compute(1 / 8, 2) == pytest.approx(7e14, rel=0.02)
    assert el_break_even_compute(1 / 32, 12) == pytest.approx(3e13, rel=0.02)
    for A, G in [(1 / 8, 2), (1 / 32, 12)]:
        assert LAW.predict(A, G, el_break_even_compute(A, G)) == pytest.approx(1.0, abs=1e-12)
        assert LAW.predict(A, G, el_break_even_compute(A, G) / 10) < 1.0
    with pytest.raises(ConfigError, match="activation_ratio"):
        el_break_even_compute(1.0, 2)


def test_separable_forms_reproduce_joint_law():
    A, G, C = 1 / 16, 6.0, 3e20
    ref = LAW.predict(A, G, C)
    assert forms.el_vs_activation(A, **LAW.separable_activation(G, C)) == pytest.approx(ref)
    assert forms.el_vs_granularity(G, **LAW.separable_granularity(A, C)) == pytest.approx(ref)
    assert forms.el_vs_compute(C, **LAW.separable_compute(A, G)) == pytest.approx(ref)
    # The separable G form is minimal in log EL's exponent at the same G*: c_G = −2·ln G*.
    c_G = LAW.separable_granularity(A, C)["c_G"]
    assert math.exp(-c_G / 2) == pytest.approx(LAW.optimal_granularity())


def test_fitted_coefficients_plug_in():
    pub = ELCoefficients.published()
    fitted = ELCoefficients(a=pub.a, d=pub.d * 2, gamma=pub.gamma, beta=pub.beta,
                            A_start=pub.A_start, A_max=pub.A_max)
    law = ELLaw(coefficients=fitted, name="mine")
    assert law.provenance.status == "F"
    assert law.predict(1 / 32, 12, 1e22) != LAW.predict(1 / 32, 12, 1e22)
    assert law.fitted_range.check(activation_ratio=0.5).unknown == ("activation_ratio",)
    with pytest.raises(ConfigError, match="A_start"):
        ELCoefficients(a=1, d=0, gamma=0, beta=0, A_start=2.0, A_max=1.0)


@pytest.mark.parametrize(
    ("A", "G", "C", "field"),
    [(0.0, 8, 1e20, "activation_ratio"), (1.5, 8, 1e20, "activation_ratio"),
     (0.1, 0, 1e20, "granularity"), (0.1, 8, -1.0, "compute"), (0.1, 8, float("nan"), "compute")],
)
def test_el_rejects_bad_input(A, G, C, field):
    with pytest.raises(ConfigError, match=field):
        LAW.predict(A, G, C)


def test_el_fitted_range():
    rep = LAW.check_range(1 / 8, 8, 1e20)
    assert rep.inside and rep.unknown == ()
    # The [EL] ablations span about 1e18-6e20 FLOPs: a CPU-scale budget is an extrapolation.
    low = LAW.check_range(1 / 8, 8, 1e12)
    assert not low.inside
    assert any("compute" in v and "1e+18" in v for v in low.violations)
    out = LAW.check_range(1 / 1024, 32, 1e20)
    assert not out.inside
    assert any("activation_ratio" in v and "0.007812" in v for v in out.violations)
    assert any("granularity" in v and "[2, 16]" in v for v in out.violations)
    # EL >= 6 is the paper's held-out validation region.
    assert not LAW.in_range(1 / 32, 12, 1e22)


def test_eq3_check_values():
    hp = HyperparameterLaw.published()
    assert hp.learning_rate(1e20) == pytest.approx(1.013e-3, rel=5e-4)
    assert hp.batch_tokens(1e20) == pytest.approx(1.35e6, rel=3e-3)


@pytest.mark.parametrize(
    ("preset", "lr"), [(ling_mini_2, 3.36e-4), (ling_flash_2, 2.61e-4), (ling_1t, 1.86e-4)]
)
def test_eq3_reproduces_ling2_peak_lr(preset, lr):
    m = flops_per_token(preset(), convention="ling", seq_len=4096)
    # [LING2] peak LRs (3 digits), Ling M at s = 4096 and D = 20T
    assert HyperparameterLaw.published().learning_rate(m * 20e12) == pytest.approx(lr, rel=5e-3)


@pytest.mark.parametrize(("arch", "C", "m_opt", "d_opt", "product"), [
    # check values worked out by hand from [EL] Table 1 (4 significant digits)
    ("dense", 1e18, 3.766e8, 2.654e9, 0.99941),
    ("dense", 1e24, 6.746e11, 1.482e12, 0.99941),
    ("moe", 1e20, 2.966e9, 3.372e10, 1.00024),
    ("moe", 1e24, 3.237e11, 3.090e12, 1.00024),
])
def test_table1_allocation(arch, C, m_opt, d_opt, product):
    law = AllocationLaw.published(arch)
    assert law.flops_per_token(C) == pytest.approx(m_opt, rel=5e-4)
    assert law.tokens(C) == pytest.approx(d_opt, rel=5e-4)
    # M·D = C only to the rounding of the published constants (exponents sum to 1)
    assert law.flops_per_token(C) * law.tokens(C) / C == pytest.approx(product, abs=1e-5)


def test_table1_rejects_an_unknown_row():
    with pytest.raises(ConfigError, match="arch"):
        AllocationLaw.published("hybrid")


def test_dense_equivalent():
    r = dense_equivalent(1 / 32, 12, 1e22, tokens=1e12)
    el = LAW.predict(1 / 32, 12, 1e22)
    assert r["el"] == el
    assert r["dense_compute"] == pytest.approx(1e22 * el)
    assert r["dense_flops_per_token"] == pytest.approx(1e22 * el / 1e12)
    assert r["moe_flops_per_token"] == pytest.approx(1e10)
    assert r["dense_params_6n"] == pytest.approx(r["dense_flops_per_token"] / 6)
    dense = AllocationLaw.published("dense")
    assert r["dense_optimal_flops_per_token"] == pytest.approx(dense.flops_per_token(1e22 * el))
    assert r["dense_optimal_tokens"] == pytest.approx(dense.tokens(1e22 * el))
    default = dense_equivalent(1 / 32, 12, 1e22)
    # MoE Table 1 tokens at 1e22 (README check value)
    assert default["tokens"] == pytest.approx(3.228e11, rel=2e-4)
