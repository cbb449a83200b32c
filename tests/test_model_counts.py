"""The built model has exactly the spec's parameters (group by group) and forward FLOPs."""

from __future__ import annotations

import pytest
import torch

from moescale.errors import ConfigError
from moescale.model import MoEConfig, build_model, measure_forward_flops
from moescale.model.flops import _grouped_mm_flops
from moescale.spec import ModelSpec, count_params, flops_per_token, load_spec
from moescale.spec.presets import ling_mini_2, ling_mini_beta

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BASE = dict(d_model=64, n_layers=3, n_heads=4, vocab_size=97, d_ffn=96)
MOE = dict(n_experts=8, top_k=2, d_expert=32)

SPECS = {
    "dense": ModelSpec(**BASE),
    "dense_tied_gqa_bias": ModelSpec(**BASE, n_kv_heads=2, tie_embeddings=True, qkv_bias=True,
                                     o_bias=True, qk_norm="full"),
    "moe": ModelSpec(**BASE, **MOE),
    "moe_shared": ModelSpec(**BASE, **MOE, n_shared_experts=2, d_shared=24,
                            shared_expert_gate=True),
    "moe_dense_first": ModelSpec(**BASE, **MOE, n_shared_experts=1, n_dense_layers=1,
                                 qk_norm="head", rope_fraction=0.5, n_kv_heads=1),
    "moe_every_2_biases": ModelSpec(**BASE, **MOE, moe_every=2, router_bias=True,
                                    router_score_bias=True, head_dim=8),
}
GROUPS = ("embedding", "head", "attention", "norms", "dense_ffn", "router",
          "routed_experts", "shared_experts")


@pytest.mark.parametrize("name", list(SPECS))
def test_param_counts_equal_spec_group_by_group(name):
    spec = SPECS[name]
    model = build_model(spec)
    expected = count_params(spec)
    got = model.param_counts()
    for group in GROUPS:
        assert got[group] == getattr(expected, group), group
    n_buffers = sum(b.numel() for n, b in model.named_buffers() if n.endswith("score_bias"))
    assert sum(p.numel() for p in model.parameters()) + n_buffers == expected.total
    assert got["total"] == expected.total


@pytest.mark.parametrize("spec_fn", [ling_mini_beta, ling_mini_2])
def test_param_counts_of_large_presets_on_meta(spec_fn):
    spec = spec_fn()
    model = build_model(spec, device="meta")
    expected = count_params(spec)
    got = model.param_counts()
    assert {g: got[g] for g in GROUPS} == {g: getattr(expected, g) for g in GROUPS}
    assert got["total"] == expected.total


def test_param_counts_of_hf_olmoe_config(configs_dir):
    spec = load_spec(configs_dir / "OLMoE-1B-7B-0924.json")
    model = build_model(spec, device="meta")
    assert model.param_counts()["total"] == count_params(spec).total


@pytest.mark.parametrize("name", list(SPECS))
@pytest.mark.parametrize("backend", ["loop", "grouped"])
def test_forward_flops_equal_ling_forward_m(name, backend):
    spec = SPECS[name]
    seq = 24
    model = build_model(spec, MoEConfig(backend=backend))
    fc = measure_forward_flops(model, torch.zeros(2, seq, dtype=torch.long))
    expected = flops_per_token(spec, convention="ling", seq_len=seq, training=False)
    assert fc.per_token == expected  # exact: same matmuls, attention at full s
    assert fc.head == 2 * spec.d_model * spec.vocab_size * fc.tokens
    gating = spec.n_experts + (1 if spec.shared_expert_gate else 0)
    assert fc.router == 2 * spec.d_model * gating * spec.n_moe_layers * fc.tokens


def test_grouped_mm_flop_formula():
    assert _grouped_mm_flops((100, 16), (4, 16, 8)) == 2 * 100 * 16 * 8
    assert _grouped_mm_flops((4, 10, 16), (4, 16, 8)) == 2 * 4 * 10 * 16 * 8


@pytest.mark.parametrize(
    ("change", "what"),
    [({"attention_sinks": True}, "attention_sinks"), ({"expert_bias": True}, "expert_bias")],
)
def test_unsupported_spec_options_raise(change, what):
    with pytest.raises(ConfigError, match=what):
        build_model(SPECS["moe"].replace(**change), device="meta")


def test_mla_raises(configs_dir):
    spec = load_spec(configs_dir / "DeepSeek-V3.json")
    with pytest.raises(ConfigError, match="mla"):
        build_model(spec, device="meta")
