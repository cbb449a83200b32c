"""Issue #14, design: compute beyond COMPUTE_MAX refused at once (was a 27-minute hang
at 1e40), and the parameter limits of fg/joint constrain the search instead of filtering
its unconstrained optimum."""

from __future__ import annotations

import math
import time

import pytest

from moescale.cli import main
from moescale.errors import ConfigError
from moescale.laws import FGLaw, JointLaw
from moescale.laws.base import COMPUTE_MAX
from moescale.laws.design import design
from moescale.laws.fg import fg_shape
from moescale.spec import count_params


def test_compute_above_the_bound_is_refused_at_once(capsys):
    t0 = time.perf_counter()
    with pytest.raises(SystemExit) as exc:
        main(["design", "--compute", "1e40"])
    assert exc.value.code == 2
    assert time.perf_counter() - t0 < 10
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: 'compute' must be a number in [1e+06, 1e+30]; got 1e+40"]
    assert COMPUTE_MAX == 1e30


@pytest.mark.parametrize("law", ["ling2025", "fg", "joint"])
def test_design_at_the_bound_is_fast(law):
    t0 = time.perf_counter()
    assert design(COMPUTE_MAX, law=law, top=1)
    assert time.perf_counter() - t0 < 30  # 1e30 took 34 s before


def _fg_loss(n: int, G: int, C: float) -> float:
    law = FGLaw.published("moe_e64")
    return float(law.loss_at_shape(float(n), G, C))


def test_fg_max_total_params_constrains_the_search():
    C, cap = 1e22, 1e10
    # was "no buildable architecture satisfies the constraints"
    best = design(C, law="fg", max_total_params=cap, top=1)[0]
    assert best["total_params"] <= cap
    G = int(best["granularity_fg"])
    E = FGLaw.published("moe_e64").coefficients.E
    n_best = best["layers"]
    # brute force over every admissible block count at this G: no admissible shape
    # has a lower FG loss than the one chosen
    from moescale.spec import ModelSpec

    admissible = []
    for n in range(1, 400):
        d = 64 * n
        if (4 * d) % G:
            continue
        spec = ModelSpec(d_model=d, n_layers=n, n_heads=n, head_dim=64,
                         vocab_size=best["vocab_size"], n_experts=E * G, top_k=G,
                         d_expert=4 * d // G)
        if count_params(spec).total <= cap:
            admissible.append(n)
    assert n_best in admissible and n_best == max(admissible)  # the cap binds
    assert min(_fg_loss(n, G, C) for n in admissible) == pytest.approx(_fg_loss(n_best, G, C))
    # unconstrained, the optimum is larger than the cap allows
    free = design(C, law="fg", top=1)[0]
    assert free["total_params"] > cap
    assert fg_shape(n_best, E, G)["n_total"] > 0


def test_joint_max_total_params_constrains_the_search():
    C, cap = 1e22, 1e8
    best = design(C, law="joint", max_total_params=cap, top=1)[0]
    assert best["total_params"] <= cap
    # one more block of width 64 would break the cap: the search went to the limit
    from moescale.laws.design import _joint_spec

    E = max(1, best["experts"])  # the dense candidate (E = 1) reports 0 experts
    bigger = _joint_spec(best["d_model"] + 64, E, best["vocab_size"])
    assert count_params(bigger).total > cap
    law = JointLaw.published()
    n_free, _ = law.compute_optimal(C, E)
    assert best["active_params"] < n_free


def test_limits_below_any_model_are_one_line():
    with pytest.raises(ConfigError, match="no buildable architecture"):
        design(1e22, law="fg", max_total_params=10)
    assert math.isfinite(design(1e22, law="fg", top=1)[0]["predicted_loss"])


@pytest.mark.parametrize("law", ["ling2025", "fg", "joint"])
def test_tiny_compute_is_one_clean_line(law, capsys):
    # 5e-324 gave numpy divide-by-zero warnings and "'D' ... got 0.0" (found by the fuzz test)
    with pytest.raises(SystemExit) as exc:
        main(["design", "-C", "5e-324", "--law", law])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: 'compute' must be a number in [1e+06, 1e+30]; got 5e-324"]
