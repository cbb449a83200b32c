"""End-to-end training runs of tiny dense and MoE specs on the default corpus."""

from __future__ import annotations

import dataclasses
import json
import math
import statistics

import numpy as np
import pytest
import torch
from _train_helpers import train_until_crash

from moescale.errors import ConfigError
from moescale.spec import ModelSpec, flops_per_token
from moescale.train import TrainConfig, run_hash, train

DENSE = ModelSpec(name="tiny-dense", d_model=32, n_layers=2, n_heads=2, vocab_size=257, d_ffn=64)
MOE = ModelSpec(name="tiny-moe", d_model=32, n_layers=2, n_heads=2, vocab_size=257,
                n_experts=8, top_k=2, n_shared_experts=1, d_expert=16)


@pytest.fixture(scope="module")
def cache(token_cache):
    return token_cache


@pytest.mark.parametrize("spec", [DENSE, MOE], ids=["dense", "moe"])
def test_tiny_run_reaches_requested_compute(spec, cache, tmp_path):
    compute = 3e9
    cfg = TrainConfig(compute=compute, seq_len=32, cache_dir=cache, log_every=5,
                      learning_rate=3e-3)
    torch.set_flush_denormal(False)
    result = train(spec, cfg, tmp_path / "run")
    m = flops_per_token(spec, convention="ling", seq_len=32)
    assert result["status"] == "completed", result["error"]
    # the run flushes denormals for speed, then gives the caller (and numpy) subnormals back
    assert np.float64(5e-324) * np.float64(1.0) > 0
    assert result["flops_per_token"] == m
    assert abs(result["flops"] - compute) <= result["batch_tokens"] * m  # within one batch
    assert result["flops"] == result["tokens"] * m
    assert result["arch"] == ("moe" if spec.is_moe else "dense")
    assert result["params_active"] <= result["params_total"]
    assert math.isfinite(result["val_loss"]) and result["val_loss"] < math.log(257)
    assert result["corpus_hash"] and result["mfu"] > 0 and result["tokens_per_s"] > 0
    on_disk = json.loads((tmp_path / "run" / "result.json").read_text())
    assert on_disk["val_loss"] == result["val_loss"]
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["step"] == result["steps"] and lines[-1]["tokens"] == result["tokens"]
    assert lines[-1]["val_loss"] == result["val_loss_periodic"]
    # final evaluation: 65,536 tokens over >= 30 validation documents, in 32 equal blocks
    blocks = result["eval_block_losses"]
    ev = result["evaluation"]
    assert result["val_tokens"] == 65536 == len(blocks) * ev["block_tokens"] and len(blocks) == 32
    assert ev["docs"] >= 30 and result["data"]["val_docs"] >= 30
    assert result["loss"] == pytest.approx(sum(blocks) / len(blocks), rel=1e-12)
    assert result["val_loss_se"] == pytest.approx(
        statistics.stdev(blocks) / math.sqrt(len(blocks)), rel=1e-9)
    assert 0 < result["val_loss_se"] < 0.2
    assert result["train_loss_last5"] == result["train_loss"]
    assert result["flops_per_token_full"] == flops_per_token(spec, convention="full", seq_len=32)
    assert sum("val_loss" in x for x in lines) >= 5  # regular compute intervals + the end
    assert lines[-1]["train_loss"] < lines[0]["train_loss"]
    for key in ("step", "tokens", "flops", "lr", "train_loss"):
        assert key in lines[0]
    if spec.is_moe:
        assert "max_load_ratio" in lines[0] and lines[0]["aux_loss"] > 0
    assert not (tmp_path / "run" / "config.json").exists()  # HF tools would misread it
    config = json.loads((tmp_path / "run" / "moescale_run.json").read_text())
    assert config["schema_version"] == 2 and config["plan"]["n_steps"] == result["steps"]
    assert any(p.name.startswith("events") for p in (tmp_path / "run" / "tb").iterdir())
    assert (tmp_path / "run" / "model.pt").is_file()
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
    # idempotent: a finished folder returns its record without training again
    before = (tmp_path / "run" / "metrics.jsonl").stat().st_mtime_ns
    again = train(spec, cfg, tmp_path / "run")
    assert again == on_disk
    assert (tmp_path / "run" / "metrics.jsonl").stat().st_mtime_ns == before
    # the same folder with another config is refused
    with pytest.raises(ConfigError, match="different config"):
        train(spec, cfg.replace(seed=1), tmp_path / "run")


def test_divergence_is_recorded(cache, tmp_path):
    cfg = TrainConfig(compute=1e9, seq_len=32, cache_dir=cache, learning_rate=1e4,
                      warmup_fraction=0.0)
    result = train(DENSE, cfg, tmp_path / "nan")
    assert result["status"] == "diverged"
    assert "step" in result["error"]
    assert result["val_loss"] is None and result["steps"] < 20
    record = json.loads((tmp_path / "nan" / "result.json").read_text())
    assert record["status"] == "diverged" and record["error"] == result["error"]


def test_interrupted_run_resumes_across_a_new_default_field_and_refuses_other_configs(
    cache, tmp_path, monkeypatch
):
    """An interrupted run resumes bit-identically, even after a later moescale adds a
    TrainConfig field at its default (one run identity, defaults dropped) and from a
    schema-1 folder whose record is named config.json; another config is refused."""
    cfg = TrainConfig(compute=8e8, seq_len=32, cache_dir=cache, learning_rate=3e-3,
                      log_every=1, checkpoint_every_steps=3, n_evals=4, eval_tokens=8192)
    ref = train(DENSE, cfg, tmp_path / "ref")
    train_until_crash(DENSE, cfg, tmp_path / "run", monkeypatch, at_eval=3)
    (tmp_path / "run" / "moescale_run.json").rename(tmp_path / "run" / "config.json")
    newer = dataclasses.make_dataclass(
        "TrainConfig", [("label_smoothing", float, dataclasses.field(default=0.0))],
        bases=(TrainConfig,), frozen=True, kw_only=True)
    cfg2 = newer(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(TrainConfig)})
    assert run_hash(DENSE, cfg2) == run_hash(DENSE, cfg)  # the sweep store's key too
    with pytest.raises(ConfigError, match=r"train\.label_smoothing: \(default\) -> 0\.1"):
        train(DENSE, cfg2.replace(label_smoothing=0.1), tmp_path / "run")
    with pytest.raises(ConfigError, match=r"different config \(train\.learning_rate"):
        train(DENSE, cfg.replace(learning_rate=1e-3), tmp_path / "run")
    resumed = train(DENSE, cfg2, tmp_path / "run")
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == (
        tmp_path / "ref" / "metrics.jsonl").read_text()
    assert resumed["val_loss"] == ref["val_loss"] and resumed["train_loss"] == ref["train_loss"]
    assert resumed["eval_block_losses"] == ref["eval_block_losses"]
    assert (tmp_path / "run" / "moescale_run.json").is_file()
    assert not (tmp_path / "run" / "config.json").exists()
