"""The Transformer: shapes, loss, causality, RoPE, tying, a training step, the bench CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

import moescale.model as model_pkg
from moescale.allocator import retain_freed_memory
from moescale.cli import main
from moescale.errors import ConfigError
from moescale.model import MoEConfig, Transformer, build_model
from moescale.model.transformer import apply_rope, rope_tables
from moescale.spec import ModelSpec

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SPEC = ModelSpec(d_model=32, n_layers=3, n_heads=4, n_kv_heads=2, vocab_size=50, d_ffn=64,
                 n_experts=6, top_k=2, n_shared_experts=1, d_expert=16, n_dense_layers=1,
                 qk_norm="head", rope_fraction=0.5)


def _tokens(b=2, t=12, seed=0):
    return torch.randint(0, SPEC.vocab_size, (b, t), generator=torch.Generator().manual_seed(seed))


def test_forward_outputs_and_loss():
    model = build_model(SPEC)
    tokens, targets = _tokens(), _tokens(seed=1)
    out = model(tokens, targets)
    assert out.logits.shape == (2, 12, SPEC.vocab_size)
    expected = F.cross_entropy(out.logits.view(-1, SPEC.vocab_size), targets.view(-1))
    torch.testing.assert_close(out.loss, expected)
    assert out.aux_loss.ndim == 0 and float(out.aux_loss.detach()) > 0
    assert sorted(out.routing_stats) == [1, 2]
    assert out.routing_stats[1]["load"].sum() == 2 * 12 * SPEC.top_k
    assert model(tokens).loss is None
    dense = build_model(ModelSpec(d_model=32, n_layers=2, n_heads=4, vocab_size=50, d_ffn=64))
    out = dense(tokens)
    assert float(out.aux_loss) == 0 and out.routing_stats == {}
    # At init (std 0.006) the model predicts nearly uniformly: loss ≈ ln V.
    loss = float(dense(tokens, targets).loss.detach())
    assert loss == pytest.approx(math.log(50.0), rel=0.02)


@pytest.mark.parametrize("spec", [SPEC, SPEC.replace(sliding_window=4, sliding_every=2)])
def test_causal_future_tokens_do_not_change_past_logits(spec):
    model = build_model(spec, MoEConfig(backend="loop"), init_std=0.1)
    a = _tokens()
    b = a.clone()
    b[:, 8:] = (b[:, 8:] + 1) % spec.vocab_size
    la, lb = model(a).logits, model(b).logits
    torch.testing.assert_close(la[:, :8], lb[:, :8], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(la[:, 8:], lb[:, 8:])


def test_sliding_window_limits_context():
    spec = ModelSpec(d_model=32, n_layers=1, n_heads=4, vocab_size=50, d_ffn=64,
                     sliding_window=3, sliding_every=1)
    model = build_model(spec, init_std=0.1)
    a = _tokens(t=10)
    b = a.clone()
    b[:, 0] = (b[:, 0] + 1) % spec.vocab_size
    la, lb = model(a).logits, model(b).logits
    assert not torch.allclose(la[:, 2], lb[:, 2])  # position 2 still sees position 0
    torch.testing.assert_close(la[:, 3:], lb[:, 3:])  # one layer, window 3: 3.. do not


def test_rope_rotates_only_the_rotary_part_and_preserves_norm():
    cos, sin = rope_tables(5, 4, 10000.0, torch.device("cpu"))
    x = torch.randn(1, 2, 5, 8)
    y = apply_rope(x, cos, sin)
    torch.testing.assert_close(y[..., 4:], x[..., 4:])
    torch.testing.assert_close(y[..., :4].norm(dim=-1), x[..., :4].norm(dim=-1))
    torch.testing.assert_close(y[:, :, 0], x[:, :, 0])  # position 0: no rotation
    # Relative: <R_m q, R_n k> depends on m - n only.
    q, k = torch.randn(4), torch.randn(4)
    rq = apply_rope(q.expand(1, 1, 5, 4), cos, sin)[0, 0]
    rk = apply_rope(k.expand(1, 1, 5, 4), cos, sin)[0, 0]
    torch.testing.assert_close(rq[3] @ rk[1], rq[4] @ rk[2])


def test_tied_embeddings_share_one_tensor():
    model = build_model(SPEC.replace(tie_embeddings=True))
    assert model.head.weight is model.embed.weight


def test_init_std_and_norms():
    model = build_model(SPEC, init_std=0.02)
    w = model.blocks[0].attn.q_proj.weight
    assert abs(float(w.detach().std()) - 0.02) < 0.003
    assert torch.equal(model.norm.weight, torch.ones(SPEC.d_model))
    with pytest.raises(ConfigError, match="init_std"):
        Transformer(SPEC, init_std=0.0)
    with pytest.raises(ConfigError, match="tokens"):
        model(torch.zeros(5, dtype=torch.long))


def test_training_steps_reduce_loss_and_update_router_biases():
    torch.manual_seed(0)
    moe = MoEConfig(router="sigmoid_topk", aux_free_bias_rate=1e-2, routed_scaling=2.0)
    model = build_model(SPEC, moe, init_std=0.02)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    tokens = _tokens(4, 16)
    losses = []
    for _ in range(15):
        out = model(tokens[:, :-1], tokens[:, 1:])
        (out.loss + out.aux_loss).backward()
        opt.step()
        opt.zero_grad()
        model.update_router_biases()
        losses.append(float(out.loss.detach()))
    assert losses[-1] < losses[0] - 0.5
    bias = model.blocks[1].ffn.router.score_bias
    assert float(bias.abs().sum()) > 0  # moved by the aux-free rule, not by the optimiser
    assert all(p is not bias for p in model.parameters())


def test_bf16_model_forward():
    model = build_model(SPEC, dtype=torch.bfloat16)
    out = model(_tokens(), _tokens(seed=1))
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.loss)


def test_public_api():
    assert set(model_pkg.__all__) >= {
        "Transformer", "MoEConfig", "ModelOutput", "build_model", "measure_forward_flops",
        "MoELayer", "Router", "bench_moe_layer"}


def test_bench_cli_json_keys(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "moe-layer", "--experts", "4", "--top-k", "2", "--d-model", "32",
              "--d-expert", "16", "--tokens", "64", "--shared", "1", "--device", "cpu",
              "--dtype", "bfloat16", "--threads", "1", "--repeats", "1", "--json"])
    assert exc.value.code == 0
    record = json.loads(capsys.readouterr().out)
    assert {"moe_ms", "dense_ms", "loop_ms", "ratio"} <= set(record)
    assert record["ratio"] == pytest.approx(record["moe_ms"] / record["dense_ms"])
    assert record["dense_width"] == 3 * 16
    assert record["dtype"] == "bfloat16" and record["threads"] == 1
    assert record["allocator"] == ("retain" if retain_freed_memory() else "system")


def test_bench_times_transformers_olmoe_block_against_its_own_dense(capsys):
    pytest.importorskip("transformers")
    with pytest.raises(SystemExit) as exc:
        main(["bench", "moe-layer", "--experts", "4", "--top-k", "2", "--d-model", "32",
              "--d-expert", "16", "--tokens", "64", "--shared", "1", "--threads", "1",
              "--repeats", "1", "--no-loop", "--hf", "eager,grouped_mm", "--json"])
    assert exc.value.code == 0
    record = json.loads(capsys.readouterr().out)
    assert set(record["hf"]) == {"eager", "grouped_mm"}
    assert record["hf_dense_width"] == 2 * 16  # OLMoE has no shared expert
    for r in record["hf"].values():
        assert r["ratio"] == pytest.approx(r["ms"] / record["hf_dense_ms"])
    with pytest.raises(SystemExit) as exc:
        main(["bench", "moe-layer", "--experts", "4", "--top-k", "2", "--hf", "fast"])
    assert exc.value.code == 2
    assert "'hf' implementations must be among eager" in capsys.readouterr().err


def test_bench_across_fresh_processes_reports_medians(capsys):
    """``--processes 3``: three spawned interpreters; each timing is the median over them,
    and each process's own figures are listed (their ratios are their own moe/dense)."""
    with pytest.raises(SystemExit) as exc:
        main(["bench", "moe-layer", "--experts", "4", "--top-k", "2", "--d-model", "32",
              "--d-expert", "16", "--tokens", "64", "--threads", "1", "--repeats", "1",
              "--no-loop", "--processes", "3", "--json"])
    assert exc.value.code == 0
    record = json.loads(capsys.readouterr().out)
    runs = record["per_process"]
    assert record["processes"] == 3 and len(runs) == 3
    for r in runs:
        assert r["ratio"] == pytest.approx(r["moe_ms"] / r["dense_ms"]) and r["loop_ms"] is None
    for key in ("moe_ms", "dense_ms", "ratio"):
        assert record[key] == pytest.approx(sorted(r[key] for r in runs)[1])
    assert record["loop_ms"] is None and record["threads"] == 1
    with pytest.raises(SystemExit) as exc:
        main(["bench", "moe-layer", "--processes", "0"])
    assert exc.value.code == 2
    assert "'processes'" in capsys.readouterr().err


def test_bench_cli_bad_input_exits_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "moe-layer", "--experts", "4", "--top-k", "5", "--json"])
    assert exc.value.code == 2
    assert "top_k" in capsys.readouterr().err


def test_model_under_bf16_autocast():
    model = build_model(SPEC)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(_tokens(), _tokens(seed=1))
    (out.loss + out.aux_loss).backward()
    assert torch.isfinite(out.loss)
    assert model.blocks[1].ffn.experts.w_gate_up.grad.dtype == torch.float32
