"""``moescale demo --quick`` end to end (what CI runs), then a second invocation that
reuses the store."""

from __future__ import annotations

import json
import re

import pytest


@pytest.mark.slow
def test_demo_quick_end_to_end_and_rerun(tmp_path, capsys):
    from moescale.cli import main

    out = tmp_path / "demo"
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--quick", "--out", str(out), "--json"])
    assert exc.value.code in (0, None)
    res = json.loads(capsys.readouterr().out)
    assert not res["failed"] and res["n_trained"] >= 9
    html = (out / "report" / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 4
    assert (out / "report" / "summary.md").exists()
    assert (out / "demo_quick_runs.csv").exists()
    head = res["headline"]
    els = head["efficiency_leverage"]
    assert len(els) == 4 and all(e["el_measured"] and e["el_measured"] > 0 for e in els)
    # the published law at this compute sits below its break-even compute: EL < 1 for every run
    assert all(e["el_published"] < 1 for e in els)
    assert head["dense_frontier"]["beta"] > 0
    assert "Measured EL" in res["text"] and "report:" in res["text"]
    # wall-clock bounds of the two runs: benchmarks/bench_demo.py
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--quick", "--out", str(out)])
    assert exc.value.code in (0, None)
    text = capsys.readouterr().out
    assert re.search(r"0 trained now, 10 reused", text)
