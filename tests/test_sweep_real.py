"""Sweeps with the real trainer: tiny runs, inline, on the process pool after SIGKILL,
and on a local Ray instance."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from moescale.sweep.config import load_sweep_config
from moescale.sweep.execute import run_sweep
from moescale.sweep.planner import plan_sweep
from moescale.sweep.store import open_store

TINY = """
[sweep]
name = "tiny"
budgets = [{budgets}]
seq_len = 32
tokenizer = "byte"
vocab_size = 257

[shape]
d_model = [16, 24]
n_layers = [1, 2]
head_dim = 8
aspect = 16

[ladder]
d_step = 8

[train]
batch_tokens = 512
n_evals = 2
eval_batches = 2
checkpoint_every_steps = 25

[dense]
sizes = [{sizes}]
"""


def _spec(tmp_path: Path, budgets="3e9", sizes="1.0") -> Path:
    p = tmp_path / "tiny.toml"
    p.write_text(TINY.format(budgets=budgets, sizes=sizes))
    return p


def test_one_real_run_inline_then_skipped(tmp_path):
    plan = plan_sweep(load_sweep_config(_spec(tmp_path)))
    assert len(plan.runs) == 1
    with open_store(tmp_path / "s.db") as st:
        out = run_sweep(plan, st, backend="inline")
        assert out.completed == [plan.runs[0].name], out.failed
        rec = st.records()[0]
        run = plan.runs[0]
        assert rec["status"] == "done" and 0 < rec["loss"] < 2 * 5.55  # < 2·ln(257)
        assert rec["tokens"] == run.tokens and rec["compute"] == pytest.approx(run.compute)
        assert (st.run_dir(run.key) / "result.json").exists()
        curves = st.curves()
        # the curve is the periodic evaluation; the record's loss is the final evaluation
        result = json.loads((st.run_dir(run.key) / "result.json").read_text())
        assert result["loss"] == pytest.approx(rec["loss"])
        for key in ("val_loss_se", "val_tokens", "train_loss_last5", "flops_per_token_full"):
            assert rec[key] == pytest.approx(result[key]), key
        assert json.loads(rec["eval_block_losses"]) == result["eval_block_losses"]
        assert curves and curves[-1]["loss"] == pytest.approx(result["val_loss_periodic"])
        again = run_sweep(plan, st, backend="inline")
        assert again.skipped == [run.name] and again.completed == []


@pytest.mark.slow
def test_sigkill_real_sweep_then_rerun(tmp_path):
    spec = _spec(tmp_path, budgets="3e9, 6e9", sizes="1.0, 2.0")
    store = tmp_path / "s.db"
    plan = plan_sweep(load_sweep_config(spec))
    assert len(plan.runs) == 4
    cmd = [sys.executable, "-c", "from moescale.cli import main; main()", "sweep", "run",
           str(spec), "--store",
           str(store), "--workers", "1"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    done = 0
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            time.sleep(0.3)
            if not store.exists():
                continue
            try:
                con = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=1)
                done = con.execute("SELECT COUNT(*) FROM runs WHERE status='done'").fetchone()[0]
                con.close()
            except sqlite3.Error:
                continue
            if done >= 2:
                break
        assert done >= 2, proc.stderr.read().decode()[-3000:] if proc.poll() is not None \
            else "no run finished in time"
        time.sleep(0.5)  # let the next run start (and checkpoint) before the kill
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    rerun = subprocess.run(cmd + ["--json"], cwd=tmp_path, capture_output=True, text=True,
                           timeout=240)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    with open_store(store) as st:
        recs = st.records()
        assert sorted(r["run"] for r in recs) == sorted(r.name for r in plan.runs)
        assert all(r["status"] == "done" and r["loss"] > 0 for r in recs)
        attempts = {r["name"]: r["attempts"] for r in st.runs()}
    # finished runs were not started again; at most the killed one twice
    assert sum(a > 1 for a in attempts.values()) <= 1
    assert sum(attempts.values()) <= len(plan.runs) + 1


@pytest.mark.slow
def test_ray_local_backend_one_tiny_run(tmp_path):
    pytest.importorskip("ray")
    plan = plan_sweep(load_sweep_config(_spec(tmp_path)))
    with open_store(tmp_path / "s.db") as st:
        out = run_sweep(plan, st, backend="ray", workers=1)
        assert out.completed == [plan.runs[0].name], out.failed
        assert st.count("done") == 1
        assert st.records()[0]["loss"] > 0
