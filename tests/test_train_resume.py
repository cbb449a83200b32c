"""SIGKILL at any point and resume: metrics.jsonl identical to an uninterrupted run (CPU)."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest
from _train_helpers import REPO, TINY_MOE, env_with, read_metrics, run, train_cmd, write_spec

ARGS = ["--compute", "1.2e10", "--seq-len", "32", "--batch-tokens", "128", "--lr", "3e-3",
        "--log-every", "1", "--checkpoint-every-steps", "7", "--threads", "1", "--json"]


def _kill_after_checkpoint(cmd, env, out, min_lines):
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    metrics = out / "metrics.jsonl"
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            ready = (out / "checkpoint.pt").exists() and metrics.exists()
            if ready and len(metrics.read_bytes().splitlines()) >= min_lines:
                break
            time.sleep(0.005)
        assert proc.poll() is None, f"run ended before it could be killed: {proc.stderr.read()}"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "result.json").exists()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigkill_resume_is_bit_identical(tmp_path):
    env = env_with(tmp_path / "cache")
    spec = write_spec(tmp_path, TINY_MOE)
    ref = tmp_path / "ref"
    done = run(train_cmd(str(spec), "--out", str(ref), *ARGS), env, timeout=200)
    assert done.returncode == 0, done.stderr
    n_steps = json.loads(done.stdout)["steps"]
    assert n_steps > 40

    out = tmp_path / "killed"
    cmd = train_cmd(str(spec), "--out", str(out), *ARGS)
    # killed once between checkpoints (metrics beyond the checkpoint are re-done) ...
    _kill_after_checkpoint(cmd, env, out, min_lines=10)
    # ... and killed again after resuming
    _kill_after_checkpoint(cmd, env, out, min_lines=24)
    resumed = run(cmd, env, timeout=200)
    assert resumed.returncode == 0, resumed.stderr

    a, b = (ref / "metrics.jsonl").read_text(), (out / "metrics.jsonl").read_text()
    assert len(read_metrics(out / "metrics.jsonl")) == len(read_metrics(ref / "metrics.jsonl"))
    for i, (x, y) in enumerate(zip(a.splitlines(), b.splitlines(), strict=True)):
        assert x == y, f"line {i + 1} differs:\n{x}\n{y}"
    ra = json.loads((ref / "result.json").read_text())
    rb = json.loads((out / "result.json").read_text())
    for key in ("val_loss", "train_loss", "tokens", "flops", "steps"):
        assert ra[key] == rb[key], key
