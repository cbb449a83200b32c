"""Checkpoints load weights-only (no code from a planted pickle), carry checksums, are
consistency-checked, keep a previous generation, and final weights come as safetensors."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from moescale.errors import ConfigError, DataError
from moescale.spec import ModelSpec
from moescale.train import TrainConfig, train
from moescale.train import checkpoint as ck

DENSE = ModelSpec(name="tiny-dense", d_model=32, n_layers=2, n_heads=2, vocab_size=257, d_ffn=64)
REPO = Path(__file__).resolve().parents[1]


class _Evil:
    """Unpickling this runs ``os.system`` — what a hostile checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _plant_evil(path: Path, marker: Path) -> None:
    torch.save({"checkpoint_version": 2, "step": 1, "run_key": {}, "x": _Evil(marker)}, path)


@pytest.fixture(scope="module")
def cache(token_cache):
    return token_cache


def _cfg(cache: str) -> TrainConfig:
    return TrainConfig(compute=1.5e9, seq_len=32, cache_dir=cache, learning_rate=3e-3,
                       log_every=1, checkpoint_every_steps=2, n_evals=4, threads=1)


def _interrupted(cfg: TrainConfig, out: Path, monkeypatch, after: int = 3) -> None:
    """Train until the ``after``-th checkpoint is written, then crash (a kill, in-process)."""
    from moescale.train import trainer

    real = trainer.save_checkpoint
    calls = {"n": 0}

    def save_then_crash(run_dir, payload):
        real(run_dir, payload)
        calls["n"] += 1
        if calls["n"] == after:
            raise KeyboardInterrupt("simulated kill")

    monkeypatch.setattr(trainer, "save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        train(DENSE, cfg, out)
    monkeypatch.setattr(trainer, "save_checkpoint", real)
    assert (out / ck.CHECKPOINT_NAME).is_file() and (out / ck.PREVIOUS_CHECKPOINT_NAME).is_file()


def _largest_record_offset(path: Path) -> tuple[int, int]:
    """(offset, size) of the largest tensor-data record inside a torch.save zip file."""
    with zipfile.ZipFile(path) as zf:
        info = max((i for i in zf.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with open(path, "rb") as fh:
        fh.seek(info.header_offset)
        header = fh.read(30)
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_len + extra_len, info.file_size


def _flip(path: Path, n: int = 64) -> None:
    offset, size = _largest_record_offset(path)
    data = bytearray(path.read_bytes())
    start = offset + size // 2
    for i in range(start, start + min(n, size // 2)):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


# ----------------------------------------------------------------------------- unit level
def test_rng_state_is_weights_only_and_round_trips(tmp_path):
    import random

    torch.manual_seed(3)
    np.random.seed(4)
    random.seed(5)
    np.random.standard_normal()  # leaves a cached gaussian in the legacy numpy state
    state = ck.rng_state()
    torch.save(state, tmp_path / "rng.pt")
    loaded = torch.load(tmp_path / "rng.pt", weights_only=True)
    expect = (torch.rand(3), np.random.standard_normal(4), random.random())
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    ck.set_rng_state(loaded)
    got = (torch.rand(3), np.random.standard_normal(4), random.random())
    assert torch.equal(expect[0], got[0])
    assert np.array_equal(expect[1], got[1]) and expect[2] == got[2]


def _payload(step: int = 3) -> dict:
    lin = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(lin.parameters(), lr=0.1)
    lin(torch.ones(2, 4)).sum().backward()
    opt.step()
    return {"run_key": {"spec": {"d": 4}, "train": {"seed": 0}}, "step": step,
            "model": lin.state_dict(), "optimizer": opt.state_dict(), "rng": ck.rng_state(),
            "metrics_lines": step, "wall_time_s": 1.5, "step_losses": [1.0] * step,
            "last_val_loss": None, "stat_keys": [], "world_size": 1}


def test_save_keeps_previous_generation_and_damage_falls_back(tmp_path):
    ck.save_checkpoint(tmp_path, _payload(3))
    ck.save_checkpoint(tmp_path, _payload(5))
    assert ck.load_checkpoint(tmp_path, n_steps=10)["step"] == 5
    _flip(tmp_path / ck.CHECKPOINT_NAME, n=4)
    with pytest.warns(UserWarning, match="checksum mismatch in tensor .*resuming from"):
        ckpt = ck.load_checkpoint(tmp_path, n_steps=10)
    assert ckpt["step"] == 3
    # the damaged file is out of the rotation: the next save cannot push it over the good one
    assert (tmp_path / ck.DAMAGED_CHECKPOINT_NAME).is_file()
    assert not (tmp_path / ck.CHECKPOINT_NAME).exists()
    _flip(tmp_path / ck.PREVIOUS_CHECKPOINT_NAME, n=4)
    with pytest.raises(DataError, match="damaged checkpoint.*checksum mismatch"):
        ck.load_checkpoint(tmp_path, n_steps=10)


def test_non_tensor_fields_are_checksummed(tmp_path):
    """A changed number outside the tensors (here 'wall_time_s' 1.5 -> 2.5 in the pickle) is
    caught by the manifest's hash of the non-tensor fields."""
    ck.save_checkpoint(tmp_path, _payload(3))
    path = tmp_path / ck.CHECKPOINT_NAME
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        files = {n: zf.read(n) for n in names}
    pkl = next(n for n in names if n.endswith("data.pkl"))
    old = struct.pack(">d", 1.5)
    assert files[pkl].count(old) == 1
    files[pkl] = files[pkl].replace(old, struct.pack(">d", 2.5))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for n in names:
            zf.writestr(n, files[n])
    assert torch.load(path, weights_only=True)["wall_time_s"] == 2.5  # loads, but ...
    with pytest.raises(DataError, match="non-tensor fields"):
        ck.load_checkpoint(tmp_path, n_steps=10)


@pytest.mark.parametrize(
    ("change", "match", "error"),
    [
        ({"step": 10}, r"'step' .* must be an int in \[1, 10\).*got 10", DataError),
        ({"step": 0, "step_losses": [], "metrics_lines": 0}, r"got 0", DataError),
        ({"world_size": 2}, "written by 2 ranks, this run has 1", ConfigError),
        ({"step_losses": [1.0]}, "holds 1 step losses for step 3", DataError),
    ],
)
def test_consistency_checks(tmp_path, change, match, error):
    ck.save_checkpoint(tmp_path, {**_payload(3), **change})
    with pytest.raises(error, match=match):
        ck.load_checkpoint(tmp_path, n_steps=10, world_size=1)


def test_checkpoint_without_run_key_is_a_clear_error(tmp_path):
    payload = _payload(3)
    del payload["run_key"]
    ck.save_checkpoint(tmp_path, payload)
    with pytest.raises(DataError, match="has no 'run_key'"):
        ck.load_checkpoint(tmp_path, n_steps=10)


def test_planted_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    _plant_evil(tmp_path / ck.CHECKPOINT_NAME, marker)
    with pytest.raises(DataError, match="cannot be loaded safely"):
        ck.load_checkpoint(tmp_path)
    _plant_evil(tmp_path / "model.pt", marker)
    with pytest.raises(DataError, match="cannot load weights .* safely"):
        ck.load_weights(tmp_path / "model.pt")
    assert not marker.exists()


def test_old_pickled_checkpoint_format_is_refused(tmp_path):
    """Version-1 checkpoints stored numpy's RNG state as a pickled ndarray."""
    torch.save({"checkpoint_version": 1, "rng": {"numpy": np.random.get_state()}},
               tmp_path / ck.CHECKPOINT_NAME)
    with pytest.raises(DataError, match="cannot be loaded safely"):
        ck.load_checkpoint(tmp_path)


def test_no_unsafe_loading_in_the_code():
    pattern = "weights_only *= *False" + r"\|" + "pickle" + ".load"  # split: not a match itself
    found = subprocess.run(["git", "grep", "-n", pattern], cwd=REPO, capture_output=True,
                           text=True)
    assert found.stdout == ""


def test_remove_temp_files(tmp_path):
    (tmp_path / ".checkpoint.pt.abc123.tmp").write_bytes(b"x" * 100)
    (tmp_path / "keep.txt").write_text("x")
    removed = ck.remove_temp_files(tmp_path)
    assert [p.name for p in removed] == [".checkpoint.pt.abc123.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


# ----------------------------------------------------------------------------- end to end
def test_damaged_newest_checkpoint_resumes_from_previous_bit_identically(
    cache, tmp_path, monkeypatch, one_torch_thread
):
    cfg = _cfg(cache)
    ref = train(DENSE, cfg, tmp_path / "ref")
    out = tmp_path / "run"
    _interrupted(cfg, out, monkeypatch)
    _flip(out / ck.CHECKPOINT_NAME, n=4096)
    leftover = out / ".checkpoint.pt.k1ll3d.tmp"  # a write killed mid-way
    leftover.write_bytes(b"\0" * 10_000)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = train(DENSE, cfg, out)
    assert any("resuming from the previous checkpoint" in str(w.message) for w in caught)
    assert not leftover.exists()
    assert (out / "metrics.jsonl").read_text() == (tmp_path / "ref" / "metrics.jsonl").read_text()
    assert resumed["val_loss"] == ref["val_loss"] and resumed["status"] == "completed"
    # final weights: model.pt and model.safetensors, same keys and values, loaded safely
    pt = ck.load_weights(out / ck.MODEL_NAME)
    st = ck.load_weights(out / ck.SAFETENSORS_NAME)
    assert sorted(pt) == sorted(st) and all(torch.equal(pt[k], st[k]) for k in pt)
    assert not any(out.glob("checkpoint*"))


def test_step_past_the_end_is_refused(cache, tmp_path, monkeypatch, one_torch_thread):
    cfg = _cfg(cache)
    out = tmp_path / "run"
    _interrupted(cfg, out, monkeypatch)
    n_steps = json.loads((out / "moescale_run.json").read_text())["plan"]["n_steps"]
    ckpt = torch.load(out / ck.CHECKPOINT_NAME, weights_only=True)
    ckpt.pop("manifest"), ckpt.pop("checkpoint_version")
    ckpt["step"] = n_steps + 100
    ck.save_checkpoint(out, ckpt)  # a consistent manifest: only the plan check can refuse it
    with pytest.raises(DataError, match=rf"'step' .* \[1, {n_steps}\).*got {n_steps + 100}"):
        train(DENSE, cfg, out)
    assert not (out / "result.json").exists()


@pytest.mark.slow
def test_planted_pickle_in_a_run_folder_runs_nothing(cache, tmp_path, monkeypatch,
                                                    one_torch_thread):
    """Through `moescale train --out DIR` (a subprocess) and through a sweep worker's resume."""
    from moescale.sweep.runner import execute_payload

    cfg = _cfg(cache)
    out = tmp_path / "run"
    _interrupted(cfg, out, monkeypatch)
    marker = tmp_path / "pwned"
    (out / ck.PREVIOUS_CHECKPOINT_NAME).unlink()
    _plant_evil(out / ck.CHECKPOINT_NAME, marker)

    payload = {"key": "k", "spec": DENSE.to_dict(), "config": cfg.to_dict(), "out_dir": str(out)}
    res = execute_payload(payload)
    assert res["status"] == "failed" and "cannot be loaded safely" in res["error"]
    assert not marker.exists()

    spec_file = tmp_path / "spec.toml"
    spec_file.write_text(
        '[model]\nname = "tiny-dense"\nd_model = 32\nn_layers = 2\nn_heads = 2\n'
        "vocab_size = 257\nd_ffn = 64\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = ["--compute", "1.5e9", "--seq-len", "32", "--lr", "3e-3", "--log-every", "1",
            "--checkpoint-every-steps", "2", "--threads", "1"]
    cmd = [sys.executable, "-m", "moescale.cli", "train", str(spec_file), "--out", str(out),
           *args]
    # the CLI has no --n-evals/--cache flags: write the same options into the spec's table
    spec_file.write_text(spec_file.read_text() + f'\n[train]\nn_evals = 4\ncache_dir = "{cache}"\n')
    done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "cannot be loaded safely" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not marker.exists()


def test_metrics_shorter_than_the_checkpoint_is_a_one_line_error(cache, tmp_path, monkeypatch,
                                                                 one_torch_thread):
    out = tmp_path / "run"
    _interrupted(_cfg(cache), out, monkeypatch)
    first = (out / "metrics.jsonl").read_text().splitlines(keepends=True)[0]
    (out / "metrics.jsonl").write_text(first)
    with pytest.raises(DataError, match=r"holds 1 complete lines, the checkpoint expects \d+"):
        train(DENSE, _cfg(cache), out)
