"""``moescale demo --quick`` end to end (what CI runs), then a second invocation that
reuses the store. Wall-clock bounds live in ``benchmarks/``, not here."""

from __future__ import annotations

import json
import re
import sqlite3

import pytest


@pytest.mark.slow
def test_demo_quick_end_to_end_and_rerun(tmp_path, capsys):
    from moescale.cli import main

    out = tmp_path / "demo"
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--quick", "--out", str(out), "--json"])
    assert exc.value.code in (0, None)
    res = json.loads(capsys.readouterr().out)
    assert not res["failed"]
    assert (out / "report" / "report.html").exists()
    assert (out / "report" / "summary.md").exists()
    assert (out / "demo_quick_runs.csv").exists()
    con = sqlite3.connect(out / "demo_quick.db")
    recs = con.execute("SELECT config, budget, seed, lr_multiplier, status FROM run_records"
                       ).fetchall()
    con.close()
    n_runs = len(recs)
    assert res["n_trained"] == n_runs
    # dense, the MoE configuration and its A = 1 same-backbone control, at both budgets
    configs = {"dense", "moe-E8-k2-s1-G2", "moe-E2-k2-s1-G2"}
    assert {r[0] for r in recs} == configs and {r[1] for r in recs} == {1e10, 3e10}
    assert {r[4] for r in recs} == {"done"} and {r[3] for r in recs} == {1.0}
    ladders = res["ladders"]
    assert {(lad["config"], lad["budget"]) for lad in ladders} == \
        {(c, b) for c in configs for b in (1e10, 3e10)}
    assert all(lad["status"] in ("bracketed", "unbracketed") and len(lad["m"]) >= 3
               for lad in ladders)
    n_bracketed = sum(lad["status"] == "bracketed" for lad in ladders)
    assert f"{n_bracketed} of 6 ladders bracketed" in res["text"]
    assert "report:" in res["text"]
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--quick", "--out", str(out)])
    assert exc.value.code in (0, None)
    text = capsys.readouterr().out
    assert re.search(rf"0 trained now, {n_runs} reused", text)
