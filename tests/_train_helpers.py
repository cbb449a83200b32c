"""Shared helpers of the training tests: tiny specs and subprocess launchers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

TINY_DENSE = """
[model]
name = "tiny-dense"
d_model = 32
n_layers = 2
n_heads = 2
vocab_size = 257
d_ffn = 64
"""

TINY_MOE = """
[model]
name = "tiny-moe"
d_model = 32
n_layers = 2
n_heads = 2
vocab_size = 257
n_experts = 8
top_k = 2
n_shared_experts = 1
d_expert = 16
"""


def write_spec(folder: Path, text: str, name: str = "spec.toml", train: str = "") -> Path:
    path = folder / name
    path.write_text(text + ("\n[train]\n" + train if train else ""))
    return path


def env_with(cache: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["MOESCALE_CACHE"] = str(cache)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def train_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "moescale.cli", "train", *args]


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def run(cmd: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def train_until_crash(spec, cfg, out: Path, monkeypatch, *, at_eval: int) -> None:
    """Run ``train`` in this process and crash it at its ``at_eval``-th periodic evaluation
    (checkpoints written before that point stay); assert it left a checkpoint, no result."""
    import pytest

    from moescale.train import train, trainer

    real_eval = trainer._Run._evaluate
    calls = {"n": 0}

    def crashing_eval(self):
        calls["n"] += 1
        if calls["n"] == at_eval:
            raise RuntimeError("simulated crash")
        return real_eval(self)

    monkeypatch.setattr(trainer._Run, "_evaluate", crashing_eval)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(spec, cfg, out)
    monkeypatch.setattr(trainer._Run, "_evaluate", real_eval)
    assert (out / "checkpoint.pt").exists()
    assert not (out / "result.json").exists()


def sharded_crash(monkeypatch, after: int):
    """Mark the trainer's runtime ``fsdp`` (so it writes sharded DCP checkpoints; on one rank
    the model is not wrapped) and raise ``KeyboardInterrupt`` right after its ``after``-th
    sharded save, as a kill would. Returns a function that restores the real save."""
    import dataclasses

    from moescale.train import trainer

    real_runtime, real_save = trainer.runtime_settings, trainer.save_sharded
    monkeypatch.setattr(trainer, "runtime_settings",
                        lambda *a, **k: dataclasses.replace(real_runtime(*a, **k), fsdp=True))
    calls = {"n": 0}

    def save_then_crash(*args, **kwargs):
        real_save(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == after:
            raise KeyboardInterrupt("simulated kill")

    monkeypatch.setattr(trainer, "save_sharded", save_then_crash)
    return lambda: monkeypatch.setattr(trainer, "save_sharded", real_save)
