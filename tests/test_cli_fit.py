"""CLI: ``moescale fit ...`` and ``moescale leverage`` (JSON keys, exit codes)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from moescale.cli import main
from moescale.laws import forms


def _run(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def _json(argv, capsys):
    code, out, _ = _run(argv, capsys)
    assert code in (0, None)
    return json.loads(out)


def test_fit_chinchilla_json_keys(data_dir, capsys):
    path = str(data_dir / "chinchilla_svg_extracted_data.csv")
    res = _json(["fit", "chinchilla", path, "--json"], capsys)
    assert {"E", "A", "B", "alpha", "beta", "n_points", "method"} <= set(res)
    assert res["n_points"] == 240 and res["method"] == "huber" and "ci" not in res
    assert res["A"] == pytest.approx(477.8, rel=0.02)
    code, _, err = _run(["fit", "chinchilla", path, "--json"], capsys)
    assert "dropping the 5 highest-loss points" in err
    res = _json(["fit", "chinchilla", path, "--bootstrap", "3", "--seed", "1", "--max-starts",
                 "16", "--drop-highest", "0", "--json"], capsys)
    assert res["n_points"] == 245 and set(res["ci"]) == {"E", "A", "B", "alpha", "beta"}
    assert all(len(v) == 2 for v in res["ci"].values())


def test_leverage_clark_json(data_dir, capsys):
    path = str(data_dir / "clark2022_routed_moe_runs_sldbench.csv")
    res = _json(["leverage", path, "--bootstrap", "200", "--json"], capsys)
    assert set(res) == {"runs", "frontiers", "flags"}
    runs = res["runs"]
    need = {"run", "arch", "activation_ratio", "granularity", "compute", "loss", "el", "el_low",
            "el_high", "extrapolated", "n_seeds"}
    assert all(need <= set(r) for r in runs)
    raw = pd.read_csv(path)
    moe_ids = raw[raw.router_type != "Dense"].hyper_id.unique()
    assert {h for r in runs for h in r["runs"]} == {str(h) for h in moe_ids}
    assert sum(r["n_seeds"] for r in runs) == len(moe_ids) == 210
    assert all(r["granularity"] is None and isinstance(r["extrapolated"], bool) for r in runs)
    assert all(r["el_low"] <= r["el"] <= r["el_high"] for r in runs)
    r1 = next(r for r in runs if r["run"] == "1")
    assert r1["activation_ratio"] == pytest.approx(1 / 64)
    dense = [f for f in res["frontiers"] if f["config"] == "dense"]
    assert {f["form"] for f in dense} == {"power-law", "irreducible"}
    for f in res["frontiers"]:
        assert {"arch", "form", "coef", "coef_low", "coef_high"} <= set(f)
    assert any("share one token count" in f for f in res["flags"])
    irr = _json(["leverage", path, "--form", "irreducible", "--bootstrap", "100", "--json"],
                capsys)
    assert irr["runs"][0]["el"] != runs[0]["el"]
    code, out, err = _run(["leverage", path, "--bootstrap", "100"], capsys)
    assert code in (0, None) and "S-Base" in out and "1.3B" in out and " 512" in out
    assert "fixed-D" in err and "outside the dense frontier's loss range" in err


def test_fit_el_and_power_law(data_dir, capsys):
    path = str(data_dir / "clark2022_routed_moe_runs_sldbench.csv")
    res = _json(["fit", "el", path, "--heldout-compute", "3e20", "--json"], capsys)
    assert {"a", "d", "gamma", "beta", "A_start", "A_max", "heldout"} <= set(res)
    assert res["heldout"]["n_test"] == 27
    res = _json(["fit", "power-law", path, "--arch", "dense", "--json"], capsys)
    assert {"alpha", "beta"} <= set(res) and res["n_points"] == 13


def test_fit_fg_and_joint_on_run_table(tmp_path, capsys):
    rng = np.random.default_rng(0)
    n = 40
    N, D = 10 ** rng.uniform(7, 9, n), 10 ** rng.uniform(9, 11, n)
    G = rng.choice([1.0, 2.0, 4.0, 8.0], n)
    E = rng.choice([2, 4, 8, 16, 32], n)
    pd.DataFrame({
        "run": [f"r{i}" for i in range(n)], "arch": "moe", "compute": 6 * N * D, "tokens": D,
        "params_total_non_embedding": N, "params_active": N, "granularity": G, "n_experts": E,
        "loss": forms.fg_loss(N, D, 2 * G, 18.1, 0.115, 30.8, 0.147, 2.1, 0.58, 0.47),
    }).to_csv(tmp_path / "runs.csv", index=False)
    res = _json(["fit", "fg", str(tmp_path / "runs.csv"), "--json"], capsys)
    assert {"a", "alpha", "b", "beta", "g", "gamma", "c"} <= set(res)
    res = _json(["fit", "joint", str(tmp_path / "runs.csv"), "--json"], capsys)
    assert {"a", "alpha", "delta", "gamma", "E_start", "E_max", "c"} <= set(res)


def test_bad_input_exit_2_one_line(tmp_path, capsys):
    code, out, err = _run(["leverage", str(tmp_path / "missing.csv")], capsys)
    assert code == 2 and err.strip().count("\n") == 0 and "not found" in err
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"run": ["a", "b"], "arch": ["dense", "moe"], "compute": [1e18, 1e18],
                  "loss": [3.0, float("nan")]}).to_csv(bad, index=False)
    code, _, err = _run(["leverage", str(bad)], capsys)
    assert code == 2 and "'loss'" in err and "NaN" in err
    pd.DataFrame({"run": ["a"], "loss": [3.0]}).to_csv(bad, index=False)
    code, _, err = _run(["fit", "power-law", str(bad)], capsys)
    assert code == 2 and "missing required column" in err
    code, _, err = _run(["fit", "chinchilla", str(bad), "--method", "ols"], capsys)
    assert code == 2
    good = tmp_path / "good.csv"
    pd.DataFrame({"run": ["a", "b"], "arch": ["dense", "dense"], "compute": [1e18, 1e18],
                  "loss": [3.0, 2.9]}).to_csv(good, index=False)
    code, _, err = _run(["fit", "power-law", str(good)], capsys)
    assert code == 2 and "distinct" in err


def test_leverage_names_what_is_missing_exit_2(tmp_path, capsys):
    from _fit_synth import BUDGETS, synth_runs

    path = tmp_path / "one.csv"
    synth_runs(np.random.default_rng(0), budgets=BUDGETS[:1]).to_csv(path)
    code, out, err = _run(["leverage", str(path), "--bootstrap", "100"], capsys)
    assert code == 2 and out == "" and err.strip().count("\n") == 0
    assert "dense frontier needs ≥ 2 usable budgets" in err and "budget 1e+15" in err
    path = tmp_path / "two.csv"
    synth_runs(np.random.default_rng(0), budgets=BUDGETS[:2]).to_csv(path)
    code, _, err = _run(["leverage", str(path), "--form", "irreducible", "--bootstrap",
                         "100"], capsys)
    assert code == 2 and "needs ≥ 3 usable budgets" in err
    code, _, err = _run(["leverage", str(path), "--level", "1.5"], capsys)
    assert code == 2 and "'level'" in err
