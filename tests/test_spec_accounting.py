"""Parameter and FLOP accounting pinned to hand-derived values and published tables.

Ling M is [EL]'s (arXiv 2507.17702, Appendix C, corrected; LAWS.md §2) training,
non-embedding FLOPs per token: per layer ``2·d²·(2 + 2·n_kv/n_h) + 4·s·d`` for
attention plus ``6·d·d_ffn`` (dense) or ``6·d·(E_a + E_s)·d_expert`` (MoE), summed
over layers and multiplied by 3. The arithmetic below is written out independently
of :mod:`moescale.spec.accounting`.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest

from moescale.errors import ConfigError
from moescale.spec import ModelSpec, count_params, flops_per_token, load_spec
from moescale.spec.accounting import FLOPS_CONVENTIONS, attention_flops_per_token, summary
from moescale.spec.presets import (
    PRESETS,
    el_dense_6_1b,
    ling_1t,
    ling_flash_2,
    ling_mini_2,
    ling_mini_beta,
)

B = 1e9
REPO = Path(__file__).resolve().parents[1]


def ling_m(layers: list[tuple[str, int]], *, d: int, n_h: int, n_kv: int, s: int) -> int:
    """LAWS.md §2 by hand. ``layers``: ("dense", d_ffn) or ("moe", (E_a + E_s)·d_expert)."""
    total = Fraction(0)
    for _kind, ffn_width in layers:
        attention = 2 * d * d * (2 + 2 * Fraction(n_kv, n_h)) + 4 * s * d
        total += attention + 6 * d * ffn_width
    assert total.denominator == 1
    return 3 * int(total)


# ---------------------------------------------------------------- [EL] Table 3
@pytest.mark.parametrize(
    "spec", [ling_mini_beta(), load_spec(REPO / "examples/ling-mini-beta.toml")]
)
def test_ling_mini_beta_counts(spec):
    pc = count_params(spec)
    # 20 layers: attention 2·2048²·(1 + 1/4) + 2 norms each; layer 0 dense (5120);
    # 19 MoE layers: 384 experts of 3·2048·384, 1 shared, router 2048·384; final norm.
    d = 2048
    attn = 2 * d * d + 2 * d * 512
    dense = 3 * d * 5120
    expert = 3 * d * 384
    moe_total = 384 * expert + expert + d * 384
    moe_active = 12 * expert + expert + d * 384
    norms = 41 * d
    assert pc.non_embedding == 20 * attn + dense + 19 * moe_total + norms == 17_514_448_896
    assert pc.active_non_embedding == 20 * attn + dense + 19 * moe_active + norms == 838_944_768
    assert round(pc.non_embedding / B, 1) == 17.5  # Table 3: 17.5B
    assert abs(pc.active_non_embedding - 0.85 * B) < 0.015 * B  # Table 3: 0.85B (≈0.84B)
    assert pc.embedding == pc.head == 157_184 * d


def test_el_dense_6_1b_counts():
    pc = count_params(el_dense_6_1b())
    d = 4096
    per_layer = 2 * d * d + 2 * d * 1024 + 3 * d * 14336 + 2 * d
    assert pc.non_embedding == pc.active_non_embedding == 28 * per_layer + d
    assert round(pc.non_embedding / B, 2) == 6.11  # Table 3: 6.11B


def test_ling_m_table3_models():
    s = 4096
    beta = ling_m([("dense", 5120)] + [("moe", 13 * 384)] * 19, d=2048, n_h=16, n_kv=4, s=s)
    assert beta == 6_956_777_472
    assert flops_per_token(ling_mini_beta(), seq_len=s) == beta
    dense = ling_m([("dense", 14336)] * 28, d=4096, n_h=32, n_kv=8, s=s)
    assert flops_per_token(el_dense_6_1b(), seq_len=s) == dense
    # [EL] trained Table 3 at 8K: only the 4·s·d term moves
    assert (flops_per_token(el_dense_6_1b(), seq_len=8192) - dense) == 3 * 28 * 4 * 4096 * 4096


def test_ling_m_small_gqa_model():
    spec = ModelSpec(d_model=256, n_layers=4, n_heads=8, n_kv_heads=2, vocab_size=256,
                     d_ffn=704, n_experts=16, top_k=2, n_shared_experts=1, d_expert=128,
                     n_dense_layers=1)
    # per layer: attention 2·256²·(2 + 2·2/8) = 327,680; scores 4·512·256 = 524,288
    attn = 327_680 + 524_288
    hand = 3 * (4 * attn + 6 * 256 * 704 + 3 * 6 * 256 * 3 * 128)
    assert hand == ling_m([("dense", 704)] + [("moe", 3 * 128)] * 3, d=256, n_h=8, n_kv=2,
                          s=512)
    assert flops_per_token(spec, seq_len=512) == hand
    proj, scores = attention_flops_per_token(spec, 512)
    assert (proj, scores) == (327_680, 524_288)


def test_ling2_presets_match_table():
    mini, flash, one_t = (count_params(f()) for f in (ling_mini_2, ling_flash_2, ling_1t))
    assert round(mini.total / B, 2) == 16.26
    assert round(mini.active / B, 2) == 1.43
    assert round(mini.active_non_embedding / 1e6) == 789
    assert flash.total == 102_889_705_216
    # Ling reports 6.1B active / 4.8B active non-embedding (truncated to 0.1B)
    assert 6.1 * B <= flash.active < 6.2 * B
    assert 4.8 * B <= flash.active_non_embedding < 4.9 * B
    assert abs(one_t.total - 1e12) / 1e12 < 1e-3
    assert round(one_t.active / B) == 51


# ---------------------------------------------------------------- conventions
def test_six_n_and_fg_of_ling_mini():
    mini = ling_mini_2()
    six_n = flops_per_token(mini, convention="6n")
    # Ling-mini-2.0 reports 789M active non-embedding parameters
    assert round(six_n / 6e6) == 789
    # [FG] (arXiv 2402.07871) c_r = 14 FLOPs per router weight: d = 2048, E = 256, and
    # 19 MoE layers (20 layers, the first dense) in the published config
    assert flops_per_token(mini, convention="fg") - six_n == 14 * 2048 * 256 * 19


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_forward_is_a_third_of_training(name):
    spec = PRESETS[name]()
    for conv in FLOPS_CONVENTIONS:
        train = flops_per_token(spec, convention=conv, seq_len=2048)
        fwd = flops_per_token(spec, convention=conv, seq_len=2048, training=False)
        assert fwd == pytest.approx(train / 3, rel=1e-15)


def test_fg_formula_of_laws_md():
    # FG shapes: G_fg = 8, E_fg = 4 -> 32 experts; LAWS.md: F = (6 + 14·E_fg·G_fg/(12·d))·N_act
    # when N_act = 12·d²·n_blocks; our router term is the same 14·d·E per MoE block.
    d, blocks = 512, 6
    spec = ModelSpec(d_model=d, n_layers=blocks, n_heads=8, vocab_size=1000, n_experts=32,
                     top_k=8, d_expert=4 * d // 8)
    n_act = 12 * d * d * blocks
    assert (6 + 14 * 4 * 8 / (12 * d)) * n_act - 6 * n_act == 14 * d * 32 * blocks
    assert (flops_per_token(spec, convention="fg") - flops_per_token(spec, convention="6n")
            == 14 * d * 32 * blocks)


def test_unknown_convention_and_bad_seq_len():
    with pytest.raises(ConfigError, match="'convention'.*ling, 6n, fg.*'chinchilla'"):
        flops_per_token(ling_mini_beta(), convention="chinchilla")
    with pytest.raises(ConfigError, match="'seq_len'.*got 0"):
        flops_per_token(ling_mini_beta(), seq_len=0)


def test_sliding_window_attention_term():
    # gpt-oss-like: sliding window 128 on even layers, full context on odd ones
    spec = ModelSpec(d_model=256, n_layers=4, n_heads=4, n_kv_heads=2, head_dim=64,
                     vocab_size=256, n_experts=8, top_k=2, d_expert=128,
                     sliding_window=128, sliding_every=2)
    s, d = 4096, 256
    per_layer_proj = 2 * (2 * d * 256 + 2 * d * 128)
    scores = [4 * 128 * 256, 4 * s * 256, 4 * 128 * 256, 4 * s * 256]
    ffn = 6 * d * 2 * 128
    assert flops_per_token(spec, seq_len=s) == 3 * sum(per_layer_proj + sc + ffn for sc in scores)
    # below the window nothing changes
    full = spec.replace(sliding_window=None, sliding_every=0)
    assert flops_per_token(spec, seq_len=128) == flops_per_token(full, seq_len=128)
    explicit = spec.replace(sliding_every=0, sliding_layers=(0, 2))
    assert flops_per_token(explicit, seq_len=s) == flops_per_token(spec, seq_len=s)


def test_mla_attention_term():
    # DeepSeek-V3 MLA: q 7168->1536->128·192, kv 7168->(512+64), 512->128·(128+128), o 128·128->7168
    from moescale.spec.hf_config import from_hf_config

    spec = from_hf_config({
        "model_type": "deepseek_v3", "hidden_size": 7168, "num_hidden_layers": 4,
        "num_attention_heads": 128, "vocab_size": 1000, "intermediate_size": 18432,
        "moe_intermediate_size": 2048, "n_routed_experts": 256, "num_experts_per_tok": 8,
        "n_shared_experts": 1, "first_k_dense_replace": 3, "q_lora_rank": 1536,
        "kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128,
    })
    weights = (7168 * 1536 + 1536 * 128 * 192 + 7168 * 576 + 512 * 128 * 256
               + 128 * 128 * 7168)
    s = 4096
    proj, scores = attention_flops_per_token(spec, s)
    assert proj == 2 * weights
    assert scores == 2 * s * 128 * 192 + 2 * s * 128 * 128
    # parameters: the same weights plus the two latent norms (1536 + 512)
    assert count_params(spec).attention == 4 * (weights + 1536 + 512)
    ffn = 3 * 6 * 7168 * 18432 + 6 * 7168 * 9 * 2048
    assert flops_per_token(spec, seq_len=s) == 3 * (4 * (proj + scores) + ffn)


# ---------------------------------------------------------------- ratios
def test_ratios_for_known_configs():
    beta = ling_mini_beta()
    assert beta.activation_ratio == 12 / 384 == 1 / 32
    assert beta.activation_ratio_formal == 13 / 385
    assert beta.granularity == pytest.approx(2 * 2048 / 384)  # 10.67
    assert beta.granularity_fg == pytest.approx(4 * 2048 / 384)
    assert beta.shared_ratio == 1 / 13
    flash = ling_flash_2()
    assert (flash.activation_ratio, flash.granularity, flash.granularity_fg) == (1 / 32, 8.0, 16.0)
    assert flash.shared_ratio == 1 / 9
    dense = el_dense_6_1b()
    assert (dense.activation_ratio, dense.activation_ratio_formal) == (1.0, 1.0)
    assert dense.granularity is None and dense.granularity_fg is None
    assert dense.shared_ratio == 0.0


def test_ratios_from_hf_configs(configs_dir):
    ds = load_spec(configs_dir / "DeepSeek-V3.json")
    assert (ds.activation_ratio, ds.activation_ratio_formal) == (8 / 256, 9 / 257)
    assert (ds.granularity, ds.granularity_fg, ds.shared_ratio) == (7.0, 14.0, 1 / 9)
    mix = load_spec(configs_dir / "Mixtral-8x7B-v0.1.json")
    assert (mix.activation_ratio, mix.shared_ratio) == (0.25, 0.0)
    assert mix.granularity == 2 * 4096 / 14336  # coarse experts: G < 1
    ling = load_spec(configs_dir / "Ling-lite-base.json")
    assert (ling.activation_ratio, ling.activation_ratio_formal) == (6 / 64, 8 / 66)
    assert (ling.granularity, ling.shared_ratio) == (2 * 2048 / 1408, 2 / 8)


# ---------------------------------------------------------------- groups and layout
def test_groups_of_a_small_gqa_model():
    spec = ModelSpec(d_model=64, n_layers=3, n_heads=4, n_kv_heads=2, vocab_size=100,
                     d_ffn=96, n_experts=8, top_k=2, n_shared_experts=1, d_expert=32,
                     d_shared=48, n_dense_layers=1, qkv_bias=True, qk_norm="head",
                     router_score_bias=True, tie_embeddings=True)
    pc = count_params(spec)
    assert pc.embedding == 6400 and pc.head == 0
    assert pc.attention == 3 * (64 * 64 + 2 * 64 * 32 + 64 * 64 + (64 + 2 * 32) + 2 * 16)
    assert pc.norms == 7 * 64
    assert pc.dense_ffn == 3 * 64 * 96
    assert pc.router == 2 * (64 * 8 + 8)
    assert pc.routed_experts == 2 * 8 * 3 * 64 * 32
    assert pc.routed_experts_active == 2 * 2 * 3 * 64 * 32
    assert pc.shared_experts == 2 * 3 * 64 * 48
    # the groups above, added by hand: 6400 + 37344 + 448 + 18432 + 1040 + 98304 + 18432
    assert pc.total == 180_400
    # 6 of the 8 routed experts of each of the 2 MoE layers are inactive: 2·6·3·64·32
    assert pc.active == 180_400 - 73_728
    assert summary(spec)["parameter_ratio"] == 106_672 / 180_400


def test_explicit_moe_layers():
    base = dict(d_model=64, n_layers=4, n_heads=4, vocab_size=100, d_ffn=96, n_experts=8,
                top_k=2, d_expert=32)
    spec = ModelSpec(**base, moe_layers=[3, 1])
    assert spec.moe_layers == (1, 3)
    assert [spec.is_moe_layer(i) for i in range(4)] == [False, True, False, True]
    rule = ModelSpec(**base, n_dense_layers=1, moe_every=2)
    assert [rule.is_moe_layer(i) for i in range(4)] == [False, False, True, False]
    with pytest.raises(ConfigError, match="either 'moe_layers' or 'n_dense_layers'"):
        ModelSpec(**base, moe_layers=[1], n_dense_layers=1)
    with pytest.raises(ConfigError, match="'moe_layers entry'.*\\[0, 3\\].*got 4"):
        ModelSpec(**base, moe_layers=[4])
    with pytest.raises(ConfigError, match="repeat"):
        ModelSpec(**base, moe_layers=[1, 1])
    with pytest.raises(ConfigError, match="no MoE layer"):
        ModelSpec(**base, moe_layers=[])
    with pytest.raises(ConfigError, match="'sliding_layers' needs 'sliding_window'"):
        ModelSpec(**base, sliding_layers=[0])


@pytest.mark.parametrize(("change", "match"), [
    ({"top_k": 9}, r"'top_k' must be an int in \[1, 8\]; got 9"),
    ({"d_expert": 0}, r"'d_expert' must be an int in \[1, inf\]; got 0"),
    ({"d_model": -1}, r"'d_model'.*got -1"),
    ({"n_heads": 3}, r"'n_heads' must divide 'd_model' \(64\).*got n_heads=3"),
    ({"n_kv_heads": 3}, r"'n_kv_heads' must divide 'n_heads' \(4\); got 3"),
    ({"n_kv_heads": 8}, r"'n_kv_heads' must be an int in \[1, 4\]; got 8"),
    ({"qk_norm": "layer"}, r"'qk_norm' must be one of"),
    ({"tie_embeddings": "yes"}, r"'tie_embeddings' must be true or false"),
    ({"n_dense_layers": 4}, r"no MoE layer"),
    ({"n_experts": 0}, r"'top_k' must be 0 for a dense spec"),
])
def test_invalid_specs(change, match):
    base = dict(d_model=64, n_layers=4, n_heads=4, vocab_size=100, d_ffn=96, n_experts=8,
                top_k=2, d_expert=32)
    with pytest.raises(ConfigError, match=match):
        ModelSpec(**{**base, **change})
