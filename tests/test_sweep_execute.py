"""Sweep execution: idempotent, resumable after SIGKILL, failures recorded, backends."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from moescale.errors import ConfigError
from moescale.sweep.config import load_sweep_config, parse_sweep_config
from moescale.sweep.execute import run_sweep
from moescale.sweep.planner import plan_sweep
from moescale.sweep.store import open_store

DOC = {"sweep": {"name": "ex", "budgets": [1e12, 3e12]}, "dense": {"sizes": [0.5, 1, 2]},
       "family": [{"kind": "activation", "name": "act", "n_experts": [4, 8, 16]},
                  {"kind": "granularity", "name": "gran", "granularities": [2, 4],
                   "budgets": [1e12]}]}


def fake_run(payload):
    """Stand-in for training: a loss from the architecture, one marker line per call."""
    out = Path(payload["out_dir"])
    with open(out / "calls.txt", "a") as fh:
        fh.write(payload["name"] + "\n")
    if os.environ.get("MOESCALE_FAKE_FAIL") and "E16" in payload["name"]:
        raise RuntimeError("synthetic failure for E16")
    cfg = payload["config"]
    spec = payload["spec"]
    loss = 3.0 + 1e3 / cfg["compute"] ** 0.25 + 0.01 * spec.get("n_experts", 0) ** 0.5
    return {"result": {"status": "completed", "loss": loss, "train_loss": loss + 0.01,
                       "tokens": 1000, "flops": cfg["compute"], "wall_time_s": 0.5},
            "curve": [{"step": 1, "tokens": 10, "flops": 1.0, "loss": 9.0, "val_loss": 9.1},
                      {"step": 2, "tokens": 20, "flops": 2.0, "loss": loss, "val_loss": loss}]}


def _plan():
    return plan_sweep(parse_sweep_config(DOC))


def _calls(store_path: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for f in Path(str(store_path) + ".runs").glob("*/calls.txt"):
        for line in f.read_text().split():
            counts[line] = counts.get(line, 0) + 1
    return counts


def test_smallest_budgets_start_first(tmp_path):
    """The plan lists runs cheapest first and the executor starts them in that order, so
    a sweep cut short has its smallest budgets complete."""
    plan = _plan()
    assert len({r.config.compute for r in plan.runs}) > 1
    said: list[str] = []
    with open_store(tmp_path / "s.db") as st:
        run_sweep(plan, st, backend="inline", run_fn=fake_run, progress=said.append)
    compute = {r.name: r.config.compute for r in plan.runs}
    started = [compute[m.split()[1]] for m in said if m.startswith("start ")]
    assert len(started) == len({r.key for r in plan.runs}) and started == sorted(started)


def test_inline_is_idempotent(tmp_path):
    plan = _plan()
    path = tmp_path / "s.db"
    with open_store(path) as st:
        out = run_sweep(plan, st, backend="inline", run_fn=fake_run)
        assert sorted(out.completed) == sorted(r.name for r in plan.runs)
        assert not out.failed and not out.skipped
        assert st.count("done") == len(plan.runs)
        out2 = run_sweep(plan, st, backend="inline", run_fn=fake_run)
        assert out2.completed == [] and len(out2.skipped) == len(plan.runs)
    keys = {r.key for r in plan.runs}
    calls = _calls(path)
    assert sum(calls.values()) == len(keys) < len(plan.runs)  # shared key trained once
    con = sqlite3.connect(path)
    names = [r[0] for r in con.execute("SELECT run FROM run_records")]
    assert sorted(names) == sorted(r.name for r in plan.runs)
    assert con.execute("SELECT COUNT(*) FROM run_records WHERE loss IS NULL").fetchone()[0] == 0


def test_local_pool_trains_each_key_once(tmp_path):
    plan = _plan()
    path = tmp_path / "s.db"
    msgs: list[str] = []
    with open_store(path) as st:
        out = run_sweep(plan, st, backend="local", workers=2, run_fn=fake_run,
                        progress=msgs.append)
        assert len(out.completed) == len(plan.runs)
        assert st.count("done") == len(plan.runs)
    assert set(_calls(path).values()) == {1}
    assert any(m.startswith("[") and "done" in m for m in msgs)


def test_failures_are_recorded_reported_and_retried_on_request(tmp_path, monkeypatch):
    plan = _plan()
    path = tmp_path / "s.db"
    monkeypatch.setenv("MOESCALE_FAKE_FAIL", "1")
    with open_store(path) as st:
        out = run_sweep(plan, st, backend="inline", run_fn=fake_run)
        failed = sorted(out.failed)
        assert failed == sorted(r.name for r in plan.runs if "E16" in r.name)
        assert all("synthetic failure" in e for e in out.failed.values())
        rows = {r["name"]: r for r in st.runs()}
        for n in failed:
            assert rows[n]["status"] == "failed" and "synthetic failure" in rows[n]["error"]
        # not retried by default, still reported
        out2 = run_sweep(plan, st, backend="inline", run_fn=fake_run)
        assert sorted(out2.failed) == failed and out2.completed == []
        monkeypatch.delenv("MOESCALE_FAKE_FAIL")
        out3 = run_sweep(plan, st, backend="inline", run_fn=fake_run, retry_failed=True)
        assert sorted(out3.completed) == failed and not out3.failed
        assert st.count("done") == len(plan.runs)


def test_bad_backend_and_missing_ray(tmp_path, monkeypatch):
    plan = _plan()
    with open_store(tmp_path / "s.db") as st:
        with pytest.raises(ConfigError, match="'backend'"):
            run_sweep(plan, st, backend="slurm", run_fn=fake_run)
        monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
        with pytest.raises(ConfigError, match=r"pip install 'moescale\[ray\]'"):
            run_sweep(plan, st, backend="ray", run_fn=fake_run)


def test_unreachable_ray_address_fails_fast(tmp_path):
    plan = _plan()
    with open_store(tmp_path / "s.db") as st:
        with pytest.raises(ConfigError, match="cannot reach the Ray cluster"):
            run_sweep(plan, st, backend="ray", ray_address="127.0.0.1:9", run_fn=fake_run)
        assert st.count("running") == 0


DRIVER = """
import sys
sys.path.insert(0, {tests!r})
from pathlib import Path
import test_sweep_execute as t
from moescale.sweep.execute import run_sweep
from moescale.sweep.planner import plan_sweep
from moescale.sweep.config import parse_sweep_config
from moescale.sweep.store import open_store

if __name__ == "__main__":
    plan = plan_sweep(parse_sweep_config(t.DOC))
    with open_store({store!r}) as st:
        run_sweep(plan, st, backend="local", workers=1, run_fn=t.slow_run)
"""


def slow_run(payload):
    time.sleep(0.4)
    return fake_run(payload)


def test_sigkill_mid_sweep_then_rerun_completes_each_run_once(tmp_path):
    store = tmp_path / "s.db"
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent(DRIVER).format(tests=str(Path(__file__).parent),
                                                     store=str(store)))
    proc = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 60
        done = 0
        while time.time() < deadline:
            time.sleep(0.2)
            if store.exists():
                try:
                    con = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=1)
                    done = con.execute(
                        "SELECT COUNT(*) FROM runs WHERE status = 'done'").fetchone()[0]
                    con.close()
                except sqlite3.Error:
                    continue
            if done >= 3:
                break
        assert done >= 3, proc.stderr.read().decode()[-2000:] if proc.poll() else "too slow"
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    plan = _plan()
    with open_store(store) as st:
        assert 3 <= st.count("done") < len(plan.runs)
        out = run_sweep(plan, st, backend="inline", run_fn=fake_run)
        assert len(out.skipped) >= 3
        assert st.count("done") == len(plan.runs)
        recs = st.records()
    names = [r["run"] for r in recs]
    assert sorted(names) == sorted(r.name for r in plan.runs)  # each exactly once
    assert len(set(names)) == len(names)
    # finished runs were never trained again; at most the in-flight one twice
    calls = _calls(store)
    assert sum(v > 1 for v in calls.values()) <= 1


def test_cli_run_json_and_exit_codes(tmp_path, capsys, monkeypatch):
    from moescale.cli import main

    spec = tmp_path / "s.toml"  # no adaptive extension: the fake loss is flat in M
    spec.write_text('[sweep]\nname = "x"\nbudgets = [1e12]\n[ladder]\nmax_extend = 0\n'
                    '[dense]\n')
    bad = tmp_path / "bad.db"
    bad.write_text("not sqlite")
    with pytest.raises(SystemExit) as exc:
        main(["sweep", "run", str(spec), "--store", str(bad)])
    assert exc.value.code == 2
    assert bad.read_text() == "not sqlite"
    with pytest.raises(SystemExit) as exc:
        main(["sweep", "run", str(spec), "--store", str(tmp_path / "s.db"), "--backend", "ray",
              "--ray-address", "127.0.0.1:9"])
    assert exc.value.code == 2
    assert "cannot reach the Ray cluster" in capsys.readouterr().err
    # a store written by the fake driver reads back through the CLI as all-done
    with open_store(tmp_path / "s2.db") as st:
        run_sweep(plan_sweep(load_sweep_config(spec)), st, backend="inline", run_fn=fake_run)
    with pytest.raises(SystemExit) as exc:
        main(["sweep", "run", str(spec), "--store", str(tmp_path / "s2.db"), "--json"])
    assert exc.value.code in (0, None)
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"completed", "skipped", "recovered", "failed", "wall_seconds"}
    assert len(out["skipped"]) == 5 and out["completed"] == []  # the 5-rung dense ladder
