"""Sweep specs and the planner: families share M, keys are stable, bad input is named."""

from __future__ import annotations

import json
import math

import pytest

from moescale.errors import ConfigError
from moescale.laws.hparams import AllocationLaw
from moescale.spec.accounting import count_params, flops_per_token
from moescale.sweep.config import load_sweep_config, parse_sweep_config
from moescale.sweep.planner import plan_sweep, run_key


def dense_m_opt(c: float) -> float:
    return float(AllocationLaw.published("dense").flops_per_token(c))


FULL = {
    "sweep": {"name": "t", "budgets": [1e12, 3e12, 1e13], "seq_len": 128},
    "dense": {"sizes": [0.5, 1, 2]},
    "family": [
        {"kind": "activation", "name": "act", "n_experts": [4, 8, 16], "top_k": 2},
        {"kind": "granularity", "name": "gran", "granularities": [2, 4, 8]},
        {"kind": "shared", "name": "sh", "n_active": 4, "n_shared": [0, 1, 2],
         "n_experts": [16], "granularity": 4},
        {"kind": "hparam", "name": "hp", "budgets": [1e12], "lr_multipliers": [0.5, 1, 2],
         "batch_multipliers": [0.5, 2]},
    ],
}


def _plan(doc=FULL):
    return plan_sweep(parse_sweep_config(json.loads(json.dumps(doc))))


def test_families_share_m_per_rung_and_have_the_intended_ratios():
    plan = _plan()
    groups: dict[tuple, list] = {}
    for r in plan.runs:
        # M recomputed independently from the spec (Ling convention at the sweep's s)
        assert r.flops_per_token == flops_per_token(r.spec, seq_len=128)
        groups.setdefault((r.family, r.budget, r.rung), []).append(r)
    for (fam, _, _), runs in groups.items():
        ms = [r.flops_per_token for r in runs]
        if fam != "dense":
            assert max(ms) / min(ms) - 1 < 1e-9, fam
    rung = min(r.rung for r in plan.runs if r.family == "act" and r.budget == 1e12)
    act = [r for r in plan.runs if r.family == "act" and r.budget == 1e12 and r.rung == rung]
    # E = 4, 8, 16 and the A = 1 same-backbone control (E = E_a = 2), added automatically
    assert sorted(r.spec.activation_ratio for r in act) == [2 / 16, 2 / 8, 2 / 4, 1.0]
    assert len({count_params(r.spec).active_non_embedding for r in act}) == 4  # routers differ
    control = next(r for r in act if r.spec.activation_ratio == 1.0)
    assert control.spec.is_moe and control.arch_config == "moe-E2-k2-s1-G2"
    assert "control" in control.tags
    gran = [r for r in plan.runs if r.family == "gran" and r.budget == 3e12]
    for r in gran:
        g = r.spec.granularity
        assert r.spec.n_experts == 4 * g and r.spec.top_k == g
        assert r.spec.n_shared_experts == g / 2
        assert r.spec.d_expert == 2 * r.spec.d_model / g
    sh = [r for r in plan.runs if r.family == "sh" and r.budget == 1e12 and r.rung == rung]
    assert sorted(r.spec.shared_ratio for r in sh) == [0, 0.25, 0.5]


def test_ladders_are_smooth_shape_families_centred_on_the_allocation_law():
    doc = {"sweep": {"name": "x", "budgets": [1e17, 1e18], "seq_len": 2048,
                     "tokenizer": "bpe", "vocab_size": 8192},
           "shape": {"head_dim": 64, "aspect": 64}, "ladder": {"d_step": 128},
           "dense": {}, "family": [{"kind": "activation", "name": "act", "n_experts": [8],
                                    "m_target": "moe"}]}
    plan = _plan(doc)
    for c in (1e17, 1e18):
        for config, law in (("dense", "dense"), ("moe-E8-k2-s1-G2", "moe")):
            runs = sorted((r for r in plan.runs if r.budget == c and r.arch_config == config),
                          key=lambda r: r.flops_per_token)
            assert len(runs) == 5  # the default: at least 5 rungs
            d = [r.spec.d_model for r in runs]
            assert all(b - a == 128 for a, b in zip(d, d[1:], strict=False))  # regular steps
            for r in runs:
                assert r.spec.d_model / r.spec.n_layers == 64  # one aspect ratio
                if config == "dense":
                    assert r.spec.d_ffn == round(8 / 3 * r.spec.d_model)  # one FFN ratio
                else:
                    assert r.spec.d_expert == r.spec.d_model  # G = 2
            # the middle rung is the one nearest (in ln M) the allocation law's M_opt
            m_opt = float(AllocationLaw.published(law).flops_per_token(c))
            logs = [abs(math.log(r.flops_per_token / m_opt)) for r in runs]
            assert logs.index(min(logs)) == 2
            assert runs[0].flops_per_token < m_opt < runs[-1].flops_per_token


def test_compute_tokens_and_lr_follow_the_budget_and_eq3():
    plan = _plan()
    for r in plan.runs:
        assert r.compute == pytest.approx(r.flops_per_token * r.tokens)
        assert abs(r.compute - r.budget) <= r.batch_tokens * r.flops_per_token / 2 + 1
        if r.family != "hp":
            assert r.lr_multiplier == 1.0
            assert r.learning_rate == pytest.approx(1.1576 * r.budget ** -0.1529)
    hp = [r for r in plan.runs if r.family == "hp"]
    assert len(hp) == 6
    assert sorted({round(r.learning_rate / (1.1576 * 1e12 ** -0.1529), 6) for r in hp}) == \
        [0.5, 1.0, 2.0]


def test_keys_are_stable_and_change_with_the_config():
    a, b = _plan(), _plan()
    assert [r.key for r in a.runs] == [r.key for r in b.runs]
    r = a.runs[0]
    assert run_key(r.spec, r.config) == r.key
    assert run_key(r.spec, r.config.replace(seed=1)) != r.key
    assert run_key(r.spec.replace(name="other"), r.config) == r.key  # names don't count
    # identical runs in two families share a key (trained once) and are noted
    assert any("same run as" in n for n in a.notes)


@pytest.mark.parametrize("doc, match", [
    ({"sweep": {"name": "x", "budgets": [1e12], "bogus": 1}, "dense": {}}, "'bogus'"),
    ({"sweep": {"name": "x", "budgets": [1e12]}, "dense": {"size": [1]}}, "'size'"),
    ({"sweep": {"name": "x", "budgets": [1e12]},
      "family": [{"kind": "activation", "topk": 2}]}, "'topk'"),
    ({"sweep": {"name": "x", "budgets": [1e12]}, "dense": {}, "train": {"lr": 1}}, "'lr'"),
    ({"sweep": {"name": "x", "budgets": [1e12]}, "dense": {}, "extra": {}}, "'extra'"),
    ({"sweep": {"name": "x", "budgets": [1e12]},
      "family": [{"kind": "nope"}]}, "'kind'"),
    ({"sweep": {"name": "x", "budgets": [1e12, 1e12]}, "dense": {}}, "duplicate"),
    ({"sweep": {"name": "x", "budgets": [-1.0]}, "dense": {}}, r"sweep.budgets\[0\]"),
    ({"sweep": {"name": "x", "budgets": [1e12]}, "dense": {},
      "family": [{"kind": "activation", "name": "a"}, {"kind": "granularity", "name": "a"}]},
     "duplicate family name"),
    ({"sweep": {"name": "x", "budgets": [1e12], "vocab_size": 300}, "dense": {}},
     "vocab_size"),
    ({"sweep": {"name": "x", "budgets": [1e12]}}, "plans no runs"),
    ({"sweep": {"name": "x", "budgets": [1e12], "seeds": 0}, "dense": {}}, "sweep.seeds"),
    ({"sweep": {"name": "x", "budgets": [1e12]}, "dense": {"rungs": 2}}, "dense.rungs"),
    ({"sweep": {"name": "x", "budgets": [1e12]}, "dense": {"kind": "activation"}}, "'kind'"),
    ({"sweep": {"name": "x", "budgets": [1e12]},
      "family": [{"kind": "activation", "top_k": 4, "n_experts": [2, 8]}]},
     r"activation.n_experts.*\[4, inf\].*2"),
    ({"sweep": {"name": "x", "budgets": [1e12]},
      "family": [{"kind": "activation", "control": "yes"}]}, "control.*true or false"),
    ({"sweep": {"name": "x", "budgets": [1e12]},
      "family": [{"kind": "granularity", "n_experts": [4]}]}, "'n_experts'.*granularity|"
                                                               "unknown key"),
    ({"sweep": {"name": "x", "budgets": [1e12]},
      "family": [{"kind": "shared", "m_target": "big"}]}, "m_target.*moe, dense"),
    ({"sweep": {"name": "x", "budgets": [1e12]}, "dense": {}, "ladder": {"d_step": 24}},
     "ladder.d_step"),
    ({"sweep": {"name": "x", "budgets": [1e12]}, "dense": {}, "lr_scan": {"budget": -1}},
     "lr_scan.budget"),
    ({"sweep": {"name": "x", "budgets": [1e12]}, "dense": {}, "lr_scan": {"max_extend": 9}},
     "lr_scan.max_extend"),
    ({"sweep": {"name": "x", "budgets": [1e12]}, "dense": {},
      "lr_scan": {"max_extend": 1.5}}, "lr_scan.max_extend"),
    ({"sweep": {"name": "x", "budgets": [1e12]}, "dense": {}, "lr_scan": {},
      "train": {"learning_rate": 1e-3}}, "learning_rate"),
    ({"sweep": {"name": "x", "budgets": [1e12]}, "dense": {}, "train": {"compute": 1}},
     "compute"),
])
def test_bad_configs_name_the_field(doc, match):
    with pytest.raises(ConfigError, match=match):
        parse_sweep_config(doc)


def test_infeasible_budget_is_an_error():
    doc = {"sweep": {"name": "x", "budgets": [1e6]}, "dense": {}}
    with pytest.raises(ConfigError, match="infeasible"):
        plan_sweep(parse_sweep_config(doc))


def test_duplicate_run_names_are_an_error():
    doc = {"sweep": {"name": "x", "budgets": [1e12]},
           "family": [{"kind": "activation", "name": "a", "n_experts": [4, 8]}]}
    sw = parse_sweep_config(doc)
    import dataclasses

    fam = sw.families[0]
    sw2 = dataclasses.replace(sw, families=(fam, dataclasses.replace(fam, top_k=1)))
    with pytest.raises(ConfigError, match="duplicate run name"):
        plan_sweep(sw2)


def test_unreachable_equal_resource_rate_is_explained():
    doc = {"sweep": {"name": "x", "budgets": [1e12]},
           "family": [{"kind": "equal_resource", "name": "eq", "activation_rates": [0.05]}]}
    with pytest.raises(ConfigError, match="unreachable"):
        plan_sweep(parse_sweep_config(doc))


def test_equal_resource_members_match_dense_total_params():
    doc = {"sweep": {"name": "x", "budgets": [1e13]},
           "family": [{"kind": "equal_resource", "name": "eq", "activation_rates": [0.5, 0.7],
                       "m_scale": 4.0}]}
    plan = plan_sweep(parse_sweep_config(doc))
    from moescale.sweep.shapes import dense_shape

    sw = plan.sweep
    dense = dense_shape(dense_m_opt(1e13) * 4, seq_len=sw.seq_len, vocab_size=sw.vocab_size,
                        grid=sw.shape)
    n = count_params(dense).non_embedding
    for r, rate in zip(sorted(plan.runs, key=lambda r: r.name), (0.5, 0.7), strict=True):
        pc = count_params(r.spec)
        assert abs(pc.non_embedding / n - 1) <= 0.05
        assert abs(pc.active_non_embedding / pc.non_embedding - rate) <= 0.05
        assert r.compute == pytest.approx(1e13, rel=0.05)


def test_example_specs_parse_and_match_the_packaged_ones(tmp_path):
    from pathlib import Path

    from moescale.sweep.demo import demo_config_path

    repo = Path(__file__).resolve().parents[1]
    for quick, thorough in ((False, False), (True, False), (False, True)):
        packaged = demo_config_path(quick, thorough)
        example = repo / "examples" / "sweeps" / packaged.name
        assert example.read_text() == packaged.read_text()
        plan = plan_sweep(load_sweep_config(example))
        assert plan.runs
    for path in sorted((repo / "examples" / "sweeps").glob("*.toml")):
        plan_sweep(load_sweep_config(path))


def test_cli_plan_json_keys(tmp_path, capsys):
    from moescale.cli import main

    spec = tmp_path / "s.toml"
    spec.write_text('[sweep]\nname = "x"\nbudgets = [1e12, 3e12]\n[dense]\n'
                    '[[family]]\nkind = "activation"\nname = "act"\n')
    with pytest.raises(SystemExit) as exc:
        main(["sweep", "plan", str(spec), "--json"])
    assert exc.value.code in (0, None)
    out = json.loads(capsys.readouterr().out)
    assert {"sweep", "n_runs", "budgets", "total_compute", "est_seconds", "throughput",
            "runs", "notes", "flops_convention"} <= set(out)
    assert out["n_runs"] == (1 + 4) * 5 * 2  # dense + E4/E8/E16/control, 5 rungs, 2 budgets
    row = out["runs"][0]
    assert {"name", "key", "family", "params_total", "params_active", "flops_per_token",
            "tokens", "compute", "est_seconds", "learning_rate", "batch_tokens"} <= set(row)
    # human table
    with pytest.raises(SystemExit):
        main(["sweep", "plan", str(spec)])
    text = capsys.readouterr().out
    assert "estimated time" in text and "dense-1e12-d32L1" in text and "est. time" in text


def test_cli_bad_spec_exits_2(tmp_path, capsys):
    from moescale.cli import main

    spec = tmp_path / "s.toml"
    spec.write_text('[sweep]\nname = "x"\nbudgets = [1e12]\nwat = 1\n[dense]\n')
    with pytest.raises(SystemExit) as exc:
        main(["sweep", "plan", str(spec)])
    assert exc.value.code == 2
    assert "'wat'" in capsys.readouterr().err


def test_public_surface():
    import typer.main

    import moescale.report as report
    import moescale.sweep as sweep
    from moescale.cli import app

    for mod in (sweep, report):
        for name in mod.__all__:
            assert hasattr(mod, name), name
    cli = typer.main.get_command(app)
    options = {}
    for path in (("sweep", "plan"), ("sweep", "run"), ("store", "export"), ("report",),
                 ("demo",)):
        cmd = cli
        for part in path:
            cmd = cmd.commands[part]
        options[" ".join(path)] = {o for p in cmd.params for o in getattr(p, "opts", [])}
    assert {"--json", "--store"} <= options["sweep plan"]
    assert {"--store", "--backend", "--workers", "--ray-address", "--retry-failed",
            "--json"} <= options["sweep run"]
    assert {"--format", "--out"} <= options["store export"]
    assert {"--out", "--json", "--bootstrap"} <= options["report"]
    assert {"--quick", "--thorough", "--out", "--workers", "--json"} <= options["demo"]


def test_demo_configs_run_the_protocol():
    """The demo configs hold what the summary reports: dense and MoE ladders, the A = 1
    control, >= 3 budgets for the held-out check, replicates, the learning-rate scan."""
    from moescale.sweep.demo import demo_config_path

    full = load_sweep_config(demo_config_path())
    plan = plan_sweep(full)
    assert len(full.budgets) >= 3 and full.lr_scan is not None
    assert {r.kind for r in plan.runs} == {"lr_scan"}  # ladders wait for the scan first
    assert {lad.config for lad in plan.ladders} == {"dense", "moe-E2-k2-s1-G2",
                                                    "moe-E8-k2-s1-G2"}
    assert max(f.n_seeds(full) for f in full.families) >= 2
    thorough = load_sweep_config(demo_config_path(thorough=True))
    assert thorough.seeds >= 2 and len(thorough.budgets) >= len(full.budgets)
    assert all(f.n_seeds(thorough) >= 2 for f in thorough.families)
    with pytest.raises(ConfigError, match="exclude each other"):
        demo_config_path(quick=True, thorough=True)


def test_keys_ignore_fields_left_at_their_default():
    """A config field added later at its default must not change existing run keys."""
    r = _plan().runs[0]
    assert run_key(r.spec, r.config.replace(weight_decay=0.1)) == r.key  # the default
    assert run_key(r.spec, r.config.replace(weight_decay=0.2)) != r.key
    assert run_key(r.spec.replace(rope_theta=10000.0), r.config) == r.key
    assert run_key(r.spec.replace(rope_theta=5e5), r.config) != r.key
