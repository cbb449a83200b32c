"""The full-compute FLOP convention against the model's own FLOP counter, and the run
record's evaluation statistics against a re-scoring of the saved model."""

from __future__ import annotations

import math

import pytest
import torch

from moescale.model import MoEConfig, build_model, measure_forward_flops
from moescale.spec import ModelSpec, flops_per_token

BASE = dict(d_model=48, n_layers=3, n_heads=4, vocab_size=97, d_ffn=96)
MOE = dict(n_experts=8, top_k=2, d_expert=24)


@pytest.mark.parametrize(
    "spec",
    [
        ModelSpec(**BASE),
        ModelSpec(**BASE, tie_embeddings=True),
        ModelSpec(**BASE, **MOE, n_shared_experts=1, shared_expert_gate=True, n_dense_layers=1),
        ModelSpec(**BASE, **MOE, n_kv_heads=2),
    ],
    ids=["dense", "tied", "moe-shared-gate", "moe-gqa"],
)
def test_full_convention_counts_every_matmul_of_the_model(spec, one_torch_thread):
    """``full`` = head + router + Ling M: equal to torch's FLOP counter on the built model
    (every matmul of a forward pass, attention at the full sequence), times 3 for training."""
    seq = 16
    fc = measure_forward_flops(build_model(spec, MoEConfig(backend="loop")),
                               torch.zeros(2, seq, dtype=torch.long))
    full = flops_per_token(spec, convention="full", seq_len=seq)
    assert full == 3 * fc.total / fc.tokens
    assert flops_per_token(spec, convention="full", seq_len=seq, training=False) == (
        fc.total / fc.tokens)
    # the head alone is 2·d·V per token forward: the part Ling's M leaves out
    ling = flops_per_token(spec, convention="ling", seq_len=seq)
    assert full - ling >= 3 * 2 * spec.d_model * spec.vocab_size
    assert math.isfinite(full)


def test_run_record_evaluation_matches_a_rescoring_of_the_saved_model(
    tmp_path, one_torch_thread, token_cache
):
    """``loss``/``eval_block_losses`` of a finished run equal the cross-entropy of the saved
    weights on the documented sample (validation windows spread over the documents, in
    blocks of ``eval_block_tokens``), computed here from the logits."""
    import statistics

    import torch.nn.functional as F

    from moescale.data import open_dataset
    from moescale.train import TrainConfig, train
    from moescale.train.checkpoint import load_weights

    spec = ModelSpec(d_model=32, n_layers=1, n_heads=2, vocab_size=257, d_ffn=64)
    cache = token_cache
    cfg = TrainConfig(compute=5e8, seq_len=64, cache_dir=cache, learning_rate=3e-3,
                      eval_tokens=8192, eval_block_tokens=1024, threads=1)
    result = train(spec, cfg, tmp_path / "run")
    model = build_model(spec)
    model.load_state_dict(load_weights(tmp_path / "run" / "model.pt"))
    model.eval()
    ds = open_dataset(None, "byte", cache_dir=cache)
    val = torch.from_numpy(ds._arrays["val"].astype("int64"))
    doc_starts = torch.cat([torch.zeros(1, dtype=torch.long),
                            torch.nonzero(val == ds.eod_id).flatten()[:-1] + 1])
    n_win = (len(val) - 1) // 64
    windows = ds.eval_sample(64, 8192, multiple_of=16).windows
    assert len(windows) == 128 and len(set(windows.tolist())) == 128
    docs = torch.bucketize(torch.as_tensor(windows) * 64, doc_starts, right=True) - 1
    assert len(set(docs.tolist())) >= 30 and max(windows) < n_win
    losses = []
    with torch.no_grad():
        for b in range(8):
            rows = torch.stack([val[w * 64 : w * 64 + 65] for w in windows[b * 16 : b * 16 + 16]])
            logits = model(rows[:, :-1]).logits
            losses.append(float(F.cross_entropy(logits.reshape(-1, 257).float(),
                                                rows[:, 1:].reshape(-1))))
    assert result["eval_block_losses"] == pytest.approx(losses, abs=1e-5)
    assert result["loss"] == pytest.approx(statistics.fmean(losses), abs=1e-5)
    assert result["val_loss_se"] == pytest.approx(statistics.stdev(losses) / math.sqrt(8),
                                                  rel=1e-4)
    assert result["val_tokens"] == 8192
