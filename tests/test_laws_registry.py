"""Public surface of moescale.laws: registry, provenance, describe() records."""

from __future__ import annotations

import json
import re

import pytest

import moescale.laws as laws
from moescale.errors import ConfigError
from moescale.laws import LAWS, FittedRange, Interval, Provenance, get_law, law_names
from moescale.laws.predict import predict_loss
from moescale.laws.registry import LOSS_LAWS


def test_registry_names():
    for name in ("ling2025", "ling2025-hparams", "ling2025-allocation-dense",
                 "ling2025-allocation-moe", "fg", "fg-dense", "joint", "chinchilla", "epoch",
                 "epoch-huber", "eq"):
        assert name in law_names()
    with pytest.raises(ConfigError, match="'law' must be one of"):
        get_law("kaplan2020")


@pytest.mark.parametrize("name", list(LAWS))
def test_every_law_describes_itself_with_provenance(name):
    d = get_law(name).describe()
    assert d["name"] == name
    prov = d["provenance"]
    assert prov["arxiv"] and prov["status"] in {"V", "R", "I"}
    assert "kind" in d
    json.dumps(d)  # JSON-ready


def test_published_values_match_coefficient_file(shared_dir):
    ref = json.loads((shared_dir / "data" / "scaling_law_coefficients.json").read_text())
    fg = ref["krajewski2024_fine_grained_moe"]["MoE_E64_table1"]
    got = get_law("fg").coefficients.params()
    for k in ("a", "alpha", "b", "beta", "g", "gamma", "c"):
        assert got[k] == fg[k]
    joint = ref["ludziejewski2025_joint_moe"]["table3"]
    got = get_law("joint").coefficients.params()
    for k, v in joint.items():
        if k != "status":
            assert got[k] == v
    epoch = ref["besiroglu2024_epoch_replication"]["published"]
    got = get_law("epoch").coefficients.params()
    for k in ("E", "A", "B", "alpha", "beta"):
        assert got[k] == epoch[k]
    tex = ref["hoffmann2022_chinchilla"]["tex_source_unrounded_log_space"]
    assert get_law("chinchilla-tex").coefficients.params()["A"] == pytest.approx(
        2.718281828459045 ** tex["log_A"])


def test_provenance_and_ranges():
    p = Provenance(paper="X", arxiv="1", locator="Eq. 1", status="V")
    assert p.cite() == "X (arXiv 1), Eq. 1 [V]"
    with pytest.raises(ConfigError, match="status"):
        Provenance(paper="X", arxiv="1", locator="", status="Q")
    r = FittedRange(variables=(("N", Interval(low=1.0, high=2.0, source="s")),))
    assert r.check(N=1.5).inside
    bad = r.check(N=3.0, D=1.0)
    assert not bad.inside and "[1, 2]" in bad.violations[0] and bad.unknown == ("D",)


@pytest.mark.parametrize("name", [n for n in LAWS if n != "eq"])
def test_every_law_is_a_law_with_a_published_coefficient_set(name):
    law = get_law(name)
    assert isinstance(law, laws.Law) and isinstance(law.coefficients, laws.Coefficients)
    sets = type(law.coefficients).SETS
    assert law.coefficients in sets.values()
    with pytest.raises(TypeError):
        sets["mine"] = law.coefficients  # published sets are read-only
    # formula() prints every number of the set, as the set holds it
    printed = {float(x) for x in re.findall(r"-?\d+(?:\.\d+)?(?:e-?\d+)?", law.formula())}
    for key, value in law.coefficients.params().items():
        assert value in printed, (name, key, value, law.formula())


def test_unknown_published_set_names_the_choices():
    with pytest.raises(ConfigError, match="'name' must be one of 'moe_e64', 'dense'"):
        laws.FGCoefficients.published("moe_e32")
    with pytest.raises(ConfigError, match="'name' must be one of 'ling2025'"):
        laws.HyperparameterLaw.published("ling2024")


@pytest.mark.parametrize(
    "cls, good",
    [
        ("ELCoefficients", dict(a=1.23, d=-0.0761, gamma=0.0167, beta=-0.117, A_start=0.0163,
                                A_max=5.28e16)),
        ("ChinchillaCoefficients", dict(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)),
        ("PowerLaw", dict(coefficient=1.1576, exponent=-0.1529)),
    ],
)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "1.0", True])
def test_coefficients_reject_non_finite_values_naming_the_field(cls, good, bad):
    import moescale.laws as laws
    from moescale.errors import ConfigError

    klass = getattr(laws, cls)
    assert klass(**good).__class__ is klass
    field = next(iter(good))
    with pytest.raises(ConfigError, match=rf"'{field}' must be a finite number"):
        klass(**{**good, field: bad})


@pytest.mark.parametrize("name", LOSS_LAWS)
def test_loss_laws_follow_the_protocol(name):
    law = get_law(name)
    assert isinstance(law, laws.LossLaw)
    assert law.N_CONVENTION
    # explicit inputs and the predicted loss agree with predict(); an option the law does
    # not take is refused, never ignored
    inputs = law.inputs_from_args(1e9, 2e10, granularity_fg=8.0, experts=8.0)
    assert list(inputs)[:2] == ["params", "tokens"]
    rec = predict_loss(name, params=1e9, tokens=2e10, **{k: v for k, v in inputs.items()
                                                          if k not in ("params", "tokens")})
    assert rec["loss"] == law.predict(*inputs.values())


def test_non_loss_laws_are_not_loss_laws():
    for name in ("ling2025", "ling2025-hparams", "ling2025-allocation-moe"):
        assert not isinstance(get_law(name), laws.LossLaw)
