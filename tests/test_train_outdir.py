"""`moescale train` refuses bad run folders, budgets, thread counts and oversized runs before
any work, with one line and exit 2, and leaves nothing behind."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from _train_helpers import REPO, TINY_DENSE, env_with, run, train_cmd, write_spec

from moescale.errors import ConfigError
from moescale.spec import ModelSpec
from moescale.train import TrainConfig, train
from moescale.train import resources as rs
from moescale.train.rundir import claim_run_dir

ARGS = ["--compute", "2e9", "--seq-len", "32", "--threads", "1"]


def _refused(done, *needles: str) -> None:
    assert done.returncode == 2, (done.returncode, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture(scope="module")
def env(token_cache):
    return env_with(Path(token_cache))


@pytest.mark.slow
def test_bad_out_folders_are_refused_and_left_alone(tmp_path, env):
    spec = str(write_spec(tmp_path, TINY_DENSE))
    cwd_before = sorted(p.name for p in REPO.iterdir())
    _refused(run(train_cmd(spec, "--out", "", *ARGS), env), "'out' must be a path; got ''")
    assert sorted(p.name for p in REPO.iterdir()) == cwd_before

    other = tmp_path / "not-a-run"
    other.mkdir()
    (other / "model.pt").write_bytes(b"precious")
    (other / "metrics.jsonl").write_text("{}\n")
    _refused(run(train_cmd(spec, "--out", str(other), *ARGS), env), "is not a moescale run")
    assert (other / "model.pt").read_bytes() == b"precious"
    assert (other / "metrics.jsonl").read_text() == "{}\n"

    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    _refused(run(train_cmd(spec, "--out", str(tmp_path / "dangling"), *ARGS), env),
             "dangling symlink", "nowhere")
    assert not (tmp_path / "nowhere").exists()


def test_failed_checks_leave_no_folder(tmp_path, env):
    spec = str(write_spec(tmp_path, TINY_DENSE))
    out = tmp_path / "new" / "run"
    cmd = train_cmd(spec, "--out", str(out), "--compute", "1e-5", "--seq-len", "32")
    _refused(run(cmd, env), "'compute' must be at least one optimizer step", "got 1e-05")
    assert not (tmp_path / "new").exists()
    cmd = train_cmd(spec, "--out", str(out), "--compute", "2e9", "--threads", "100000")
    _refused(run(cmd, env), "'threads' must be an int in [1, ", "got 100000")
    assert not (tmp_path / "new").exists()


def test_symlink_inside_a_run_folder_never_touches_its_target(tmp_path, token_cache):
    spec = ModelSpec(name="tiny", d_model=32, n_layers=2, n_heads=2, vocab_size=257, d_ffn=64)
    cfg = TrainConfig(compute=1e9, seq_len=32, cache_dir=token_cache, threads=1)
    out = tmp_path / "run"
    train(spec, cfg, out)
    (out / "result.json").unlink()  # as if interrupted
    victim = tmp_path / "victim.txt"
    victim.write_text("line\n" * 100_000)
    (out / "metrics.jsonl").unlink()
    (out / "metrics.jsonl").symlink_to(victim)
    with pytest.raises(ConfigError, match=r"symbolic link 'metrics\.jsonl'"):
        train(spec, cfg, out)
    assert victim.read_text() == "line\n" * 100_000


def test_memory_check_refuses_and_the_override_forces(tmp_path, monkeypatch, token_cache):
    spec = ModelSpec(name="tiny", d_model=32, n_layers=2, n_heads=2, vocab_size=257, d_ffn=64)
    cfg = TrainConfig(compute=1e9, seq_len=32, cache_dir=token_cache, threads=1)
    monkeypatch.setattr(rs, "available_memory", lambda device="cpu": 1000)
    with pytest.raises(ConfigError, match=r"needs about .* GiB of memory, 9\.31e-07 GiB RAM"):
        train(spec, cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    assert train(spec, cfg, tmp_path / "run", ignore_memory_check=True)["status"] == "completed"


def test_concurrent_trainer_on_one_folder_is_refused(tmp_path, token_cache):
    spec = ModelSpec(name="tiny", d_model=32, n_layers=2, n_heads=2, vocab_size=257, d_ffn=64)
    cfg = TrainConfig(compute=1e9, seq_len=32, cache_dir=token_cache, threads=1)
    with claim_run_dir(tmp_path / "run"), pytest.raises(ConfigError, match="in use by another"):
        train(spec, cfg, tmp_path / "run")


def _rss_probe(cmd: list[str]) -> list[str]:
    """Run ``cmd`` from a fresh interpreter that prints the child's peak RSS (KiB) last."""
    code = ("import resource, subprocess, sys; "
            f"r = subprocess.run({cmd!r}, capture_output=True, text=True); "
            "sys.stderr.write(r.stderr); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)")
    return [sys.executable, "-c", code]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("compute", "needles"),
    [("1e8", ["'compute' must be at least one optimizer step"]),
     ("1e18", ["needs about", "GiB RAM available", "params 28.", "--ignore-memory-check"])],
    ids=["below-one-step", "memory"],
)
def test_7b_model_is_refused_fast_without_allocating(configs_dir, tmp_path, env, compute,
                                                     needles):
    cfg = configs_dir / "Qwen2.5-7B.json"
    out = tmp_path / "qwen"
    t0 = time.monotonic()
    done = run(_rss_probe(train_cmd(str(cfg), "--compute", compute, "--out", str(out),
                                    "--device", "cpu")), env, timeout=120)
    elapsed = time.monotonic() - t0
    _refused(done, *needles)
    peak_mib = int(done.stdout.strip().splitlines()[-1]) / 1024
    assert peak_mib < 1500, peak_mib  # a 7.6e9-parameter fp32 model alone is 28 GiB
    assert elapsed < 60
    assert not out.exists()
