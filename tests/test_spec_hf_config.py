"""HF config import: published totals, exact checkpoint counts, family traps, errors.

Definitions used below (``../shared/configs/FACTS.md``):

- *total*: every weight of the released checkpoint's main model, input embedding and
  untied output head included (``ParamCounts.total``); MTP blocks excluded.
- *non-embedding*: total minus input embedding and untied head.
- *active*: weights touched per token (top-k routed experts only), embedding and head
  included, unless a row says otherwise (gpt-oss excludes the input embedding).

Publishers round (Mixtral, OLMoE, gpt-oss, Ling, Qwen2.5) or truncate (Qwen3,
DeepSeek: 30.53B -> "30.5B", 3.35B -> "3.3B"); each row states the window its
figure allows, and every total must in addition be within 0.1% where that
precision permits it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from moescale.errors import ConfigError
from moescale.spec import count_params, flops_per_token, load_spec
from moescale.spec.hf_config import SUPPORTED_MODEL_TYPES, from_hf_config
from moescale.spec.presets import ling_1t, ling_flash_2, ling_mini_2

B = 1e9

# Exact parameter counts of the checkpoints' main models, as built by the
# ``transformers`` 5.x model classes on the meta device (sum of p.numel(), plus
# DeepSeek's e_score_correction_bias buffers); Ling-lite by its remote code's shapes.
CHECKPOINT_TOTAL = {
    "DeepSeek-V3": 671_026_419_200,
    "Mixtral-8x7B-v0.1": 46_702_792_704,
    "OLMoE-1B-7B-0924": 6_919_161_856,
    "Qwen2.5-7B": 7_615_616_512,
    "Qwen3-30B-A3B": 30_532_122_624,
    "gpt-oss-20b": 20_914_757_184,
    "Ling-lite-base": 16_801_974_272,
}

# file, published total, window [lo, hi) the publisher's figure allows, rel. tolerance
PUBLISHED_TOTAL = [
    ("Mixtral-8x7B-v0.1", 46.7 * B, (46.65 * B, 46.75 * B), 1e-3),  # rounded to 0.1B
    # Paper figure "6.9B" (2 significant figures): the exact 6.919B is 0.28% above it.
    ("OLMoE-1B-7B-0924", 6.9 * B, (6.85 * B, 6.95 * B), 3e-3),
    ("Qwen3-30B-A3B", 30.5 * B, (30.5 * B, 30.6 * B), 1.1e-3),  # truncated to 0.1B
    ("DeepSeek-V3", 671 * B, (671 * B, 672 * B), 1e-3),  # main model, MTP excluded
    ("gpt-oss-20b", 20.9 * B, (20.85 * B, 20.95 * B), 1e-3),  # model card 20.9B
    ("Qwen2.5-7B", 7.61 * B, (7.61 * B, 7.62 * B), 1e-3),  # truncated to 0.01B
    ("Ling-lite-base", 16.8 * B, (16.75 * B, 16.85 * B), 1e-3),
]


@pytest.fixture(scope="module")
def specs(configs_dir: Path) -> dict:
    return {p.stem: load_spec(p) for p in sorted(configs_dir.glob("*.json"))}


def test_every_shipped_config_is_covered(specs):
    assert set(specs) == set(CHECKPOINT_TOTAL)


@pytest.mark.parametrize("stem", sorted(CHECKPOINT_TOTAL))
def test_total_equals_checkpoint_count(specs, stem):
    assert count_params(specs[stem]).total == CHECKPOINT_TOTAL[stem]


@pytest.mark.parametrize(("stem", "published", "window", "rel"), PUBLISHED_TOTAL)
def test_total_matches_published(specs, stem, published, window, rel):
    total = count_params(specs[stem]).total
    assert window[0] <= total < window[1]
    assert abs(total - published) / published <= rel


def test_published_non_embedding_and_active(specs):
    # Qwen3-30B-A3B model card: 29.9B non-embedding, 3.3B active (incl. embedding and
    # head), both truncated to 0.1B.
    q = count_params(specs["Qwen3-30B-A3B"])
    assert 29.9 * B <= q.non_embedding < 30.0 * B
    assert 3.3 * B <= q.active < 3.4 * B
    # Qwen2.5-7B: 6.53B non-embedding (rounded to 0.01B).
    assert abs(count_params(specs["Qwen2.5-7B"]).non_embedding - 6.53 * B) <= 0.005 * B
    # Mixtral: 12.9B active incl. embedding and untied head (two of eight experts).
    assert abs(count_params(specs["Mixtral-8x7B-v0.1"]).active - 12.9 * B) <= 0.05 * B
    # OLMoE paper: 1.3B active incl. embedding and head.
    assert abs(count_params(specs["OLMoE-1B-7B-0924"]).active - 1.3 * B) <= 0.05 * B
    # Ling-lite: 2.75B active incl. embedding and head.
    assert abs(count_params(specs["Ling-lite-base"]).active - 2.75 * B) <= 0.005 * B
    # gpt-oss-20b: 3.6B active counts the unembedding but not the input embedding.
    g = count_params(specs["gpt-oss-20b"])
    assert abs(g.active_non_embedding + g.head - 3.6 * B) <= 0.05 * B
    # DeepSeek-V3: "37B activated" (floor). Its weights README's 36.7B is 0.85B lower
    # than the strict count of all weights a token touches (37.55B); not reproduced.
    d = count_params(specs["DeepSeek-V3"])
    assert 37 * B <= d.active < 38 * B
    assert d.embedding == d.head == 926_679_040  # the README's "0.9B" each


def test_deepseek_mtp_explicit(specs):
    spec = specs["DeepSeek-V3"]
    assert spec.n_mtp_layers == 1
    main = count_params(spec)
    with_mtp = count_params(spec, include_mtp=True)
    assert main.mtp == 0 and with_mtp.total == main.total + with_mtp.mtp
    # MTP module's own weights: one MoE block (attention, 256 + 1 experts, router with
    # bias, 2 norms), enorm + hnorm, eh_proj (2d -> d) and its final norm.
    d = spec.d_model
    block = (count_params(spec).attention // 61 + 2 * d
             + 257 * 3 * d * 2048 + 256 * d + 256)
    assert with_mtp.mtp == block + 2 * d + 2 * d * d + d
    # The hub's "685B" stores a copy of the shared embedding and head in the MTP
    # layer (and FP8 scales); counted that way we land within 0.1% of it.
    stored = with_mtp.total + main.embedding + main.head
    assert abs(stored - 685 * B) / (685 * B) < 1e-3
    assert 680 * B < with_mtp.total < 685 * B


def test_traps(specs):
    olmoe = specs["OLMoE-1B-7B-0924"]
    assert olmoe.qk_norm == "full"
    # full q (16*128) and k (16*128) norms in each of 16 layers
    assert (count_params(olmoe).total
            - count_params(olmoe.replace(qk_norm="none")).total) == 16 * (2048 + 2048)
    qwen3 = specs["Qwen3-30B-A3B"]
    assert (qwen3.head_dim, qwen3.qk_norm) == (128, "head")
    assert qwen3.head_dim * qwen3.n_heads != qwen3.d_model
    assert qwen3.n_dense_layer_count == 0 and qwen3.n_moe_layers == 48
    ds = specs["DeepSeek-V3"]
    assert (ds.attention, ds.q_lora_rank, ds.kv_lora_rank) == ("mla", 1536, 512)
    assert (ds.n_dense_layers, ds.d_ffn, ds.n_shared_experts) == (3, 18432, 1)
    assert ds.router_score_bias and count_params(ds).router == 58 * (7168 * 256 + 256)
    gpt = specs["gpt-oss-20b"]
    assert gpt.qkv_bias and gpt.o_bias and gpt.attention_sinks
    assert gpt.router_bias and gpt.expert_bias
    assert (gpt.sliding_window, gpt.sliding_every) == (128, 2)
    assert [gpt.is_sliding_layer(i) for i in range(4)] == [True, False, True, False]
    assert gpt.head_dim == 64
    qwen25 = specs["Qwen2.5-7B"]
    assert qwen25.qkv_bias and not qwen25.o_bias and not qwen25.is_moe
    assert qwen25.sliding_window is None  # use_sliding_window is false
    ling = specs["Ling-lite-base"]
    assert (ling.n_experts, ling.top_k, ling.n_shared_experts, ling.n_dense_layers) == (
        64, 6, 2, 0)
    assert not ling.o_bias and not ling.qkv_bias
    for stem, spec in specs.items():
        assert not spec.tie_embeddings, stem
        assert spec.extra["model_type"] and spec.extra["source"].endswith(f"{stem}.json")


# ---------------------------------------------------------------- Ling 2.0 (no config file)
def _ling2_config(layers, hidden, heads, kv, first_dense, dense_ffn, expert_ffn) -> dict:
    """A BailingMoeV2 config.json written from [LING2] Table 1 with that family's keys."""
    return {
        "model_type": "bailing_moe_v2", "architectures": ["BailingMoeV2ForCausalLM"],
        "num_hidden_layers": layers, "hidden_size": hidden, "num_attention_heads": heads,
        "num_key_value_heads": kv, "head_dim": 128, "intermediate_size": dense_ffn,
        "moe_intermediate_size": expert_ffn, "num_experts": 256, "num_experts_per_tok": 8,
        "num_shared_experts": 1, "first_k_dense_replace": first_dense, "use_qk_norm": True,
        "use_qkv_bias": False, "use_bias": False, "vocab_size": 157_184,
        "tie_word_embeddings": False, "num_nextn_predict_layers": 1,
        "moe_router_enable_expert_bias": True, "partial_rotary_factor": 0.5,
        "score_function": "sigmoid", "rope_theta": 600000,
    }


@pytest.mark.parametrize(("cfg", "preset"), [
    (_ling2_config(20, 2048, 16, 4, 1, 5120, 512), ling_mini_2),
    (_ling2_config(32, 4096, 32, 4, 1, 9216, 1024), ling_flash_2),
    (_ling2_config(80, 8192, 64, 8, 4, 18432, 2048), ling_1t),
])
def test_bailing_moe_v2_matches_ling2_presets(cfg, preset):
    spec = from_hf_config(cfg, name="ling2")
    ref = preset()
    assert count_params(spec) == count_params(ref)
    assert count_params(spec, include_mtp=True) == count_params(ref, include_mtp=True)
    assert (spec.qk_norm, spec.router_score_bias, spec.n_mtp_layers) == ("head", True, 1)
    assert spec.rope_fraction == 0.5


def test_ling_flash_2_exact_total():
    spec = from_hf_config(_ling2_config(32, 4096, 32, 4, 1, 9216, 1024))
    assert count_params(spec).total == 102_889_705_216


# ---------------------------------------------------------------- layouts
def test_qwen2_moe_layout_and_shared_gate():
    cfg = {
        "model_type": "qwen2_moe", "hidden_size": 64, "num_hidden_layers": 6,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100,
        "intermediate_size": 96, "moe_intermediate_size": 16, "num_experts": 8,
        "num_experts_per_tok": 2, "shared_expert_intermediate_size": 64,
        "decoder_sparse_step": 2, "mlp_only_layers": [3],
    }
    spec = from_hf_config(cfg)
    # MoE iff not in mlp_only_layers and (i + 1) % 2 == 0: layers 1 and 5
    assert [spec.is_moe_layer(i) for i in range(6)] == [False, True, False, False, False, True]
    assert spec.moe_layers == (1, 5)
    # one shared MLP of width 64 = 4 experts of width 16 ([EL]'s E_s), gated
    assert (spec.n_shared_experts, spec.d_shared, spec.shared_expert_gate) == (4, 16, True)
    assert spec.shared_ratio == 4 / 6
    d = 64
    moe = 8 * 3 * d * 16 + d * 8 + 3 * d * 64 + d
    dense = 3 * d * 96
    pc = count_params(spec)
    assert pc.dense_ffn + pc.router + pc.routed_experts + pc.shared_experts == 2 * moe + 4 * dense
    simple = from_hf_config({**cfg, "decoder_sparse_step": 1, "mlp_only_layers": []})
    assert (simple.n_dense_layers, simple.moe_every, simple.moe_layers) == (0, 1, None)


def test_deepseek_layout_rule():
    cfg = {
        "model_type": "deepseek_v2", "hidden_size": 64, "num_hidden_layers": 7,
        "num_attention_heads": 4, "vocab_size": 100, "intermediate_size": 96,
        "moe_intermediate_size": 16, "n_routed_experts": 8, "num_experts_per_tok": 2,
        "n_shared_experts": 2, "first_k_dense_replace": 1, "moe_layer_freq": 2,
        "kv_lora_rank": 16, "qk_nope_head_dim": 8, "qk_rope_head_dim": 4, "v_head_dim": 8,
        "q_lora_rank": None,
    }
    spec = from_hf_config(cfg)
    assert [spec.is_moe_layer(i) for i in range(7)] == [False, False, True, False, True,
                                                         False, True]
    assert (spec.n_dense_layers, spec.moe_every) == (2, 2)
    assert not spec.router_score_bias  # V2 default topk_method is greedy
    # (transformers' port ignores moe_layer_freq; DeepSeek's own code, followed here, uses it.)
    assert from_hf_config({**cfg, "topk_method": "noaux_tc"}).router_score_bias


def test_sliding_window_defaults_and_nulls():
    mistral = {"model_type": "mistral", "hidden_size": 64, "num_hidden_layers": 2,
               "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100,
               "intermediate_size": 96}
    # Mistral-7B-v0.1: the class default 4096 on every layer; v0.3 writes null (none)
    absent = from_hf_config(mistral)
    assert (absent.sliding_window, absent.sliding_every) == (4096, 0)
    assert from_hf_config({**mistral, "sliding_window": None}).sliding_window is None
    qwen2 = {**mistral, "model_type": "qwen2", "num_hidden_layers": 6, "max_window_layers": 4,
             "sliding_window": 512}
    assert from_hf_config(qwen2).sliding_window is None  # use_sliding_window false
    on = from_hf_config({**qwen2, "use_sliding_window": True})
    assert on.sliding_layers == (4, 5) and on.sliding_window == 512
    types = from_hf_config({**qwen2, "layer_types": ["full_attention"] * 5 + [
        "sliding_attention"]})
    assert types.sliding_layers == (5,)


# ---------------------------------------------------------------- errors
def test_unknown_model_type_names_it_and_the_supported_list():
    with pytest.raises(ConfigError, match="'nosuch'.*mixtral.*qwen3_moe"):
        from_hf_config({"model_type": "nosuch", "hidden_size": 8})
    with pytest.raises(ConfigError, match="no 'model_type'"):
        from_hf_config({"hidden_size": 8})
    assert "bailing_moe_v2" in SUPPORTED_MODEL_TYPES and len(SUPPORTED_MODEL_TYPES) == 55


@pytest.mark.parametrize("model_type", ["jetmoe", "longcat_flash"])
def test_refused_families_name_the_reason(model_type):
    with pytest.raises(ConfigError, match=rf"'{model_type}' is not supported: .*ModelSpec"):
        from_hf_config({"model_type": model_type, "hidden_size": 8})


def test_remote_code_alias_resolves_through_architectures(configs_dir):
    cfg = json.loads((configs_dir / "DeepSeek-V3.json").read_text())
    alias = from_hf_config({**cfg, "model_type": "kimi_k2"})
    assert alias.extra["family"] == "deepseek_v3" and alias.extra["model_type"] == "kimi_k2"
    assert count_params(alias) == count_params(from_hf_config(cfg))
    with pytest.raises(ConfigError, match="unsupported HF model_type 'kimi_k2'"):
        from_hf_config({**cfg, "model_type": "kimi_k2", "architectures": ["NoSuchModel"]})


def test_huge_layer_count_is_refused_fast(configs_dir):
    import time

    for stem in ("DeepSeek-V3", "Qwen3-30B-A3B", "gpt-oss-20b"):
        cfg = json.loads((configs_dir / f"{stem}.json").read_text())
        t0 = time.perf_counter()
        with pytest.raises(ConfigError, match=r"'num_hidden_layers'.*\[1, 1000000\].*1e\+30"):
            from_hf_config({**cfg, "num_hidden_layers": 1e30})
        assert time.perf_counter() - t0 < 0.5
    cfg = json.loads((configs_dir / "DeepSeek-V3.json").read_text())
    big = from_hf_config({**cfg, "num_hidden_layers": 1_000_000})
    t0 = time.perf_counter()
    count_params(big)
    flops_per_token(big)
    assert time.perf_counter() - t0 < 0.1  # closed form: no loop over layers


@pytest.mark.parametrize("stem", sorted(CHECKPOINT_TOTAL))
def test_missing_field_names_field_and_model_type(configs_dir, stem):
    cfg = json.loads((configs_dir / f"{stem}.json").read_text())
    for key in ("hidden_size", "num_hidden_layers", "vocab_size"):
        broken = {k: v for k, v in cfg.items() if k != key}
        with pytest.raises(ConfigError, match=rf"{cfg['model_type']}.*'{key}'"):
            from_hf_config(broken)


@pytest.mark.parametrize(("key", "value", "match"), [
    ("num_experts_per_tok", 9, r"'num_experts_per_tok'.*\[1, 8\].*got 9"),
    ("hidden_size", 0, r"'hidden_size'.*>= 1.*got 0"),
    ("hidden_size", "4096", r"'hidden_size'.*got '4096'"),
    ("tie_word_embeddings", "no", r"'tie_word_embeddings'.*true or false"),
    ("num_key_value_heads", 3, r"'n_kv_heads' must divide 'n_heads'"),
    ("num_attention_heads", 48, r"'n_heads' must divide 'd_model'.*mixtral"),
    ("sliding_window", -1, r"'sliding_window'"),
    ("hidden_size", 1e300, r"'d_model' must be at most 1e\+09; got 1e\+300.*mixtral"),
    ("num_local_experts", 1e30, r"'n_experts' must be at most 1e\+09"),
])
def test_bad_values(configs_dir, key, value, match):
    cfg = json.loads((configs_dir / "Mixtral-8x7B-v0.1.json").read_text())
    with pytest.raises(ConfigError, match=match):
        from_hf_config({**cfg, key: value})


def test_unsupported_options_are_errors_not_silent():
    llama = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2,
             "num_attention_heads": 4, "vocab_size": 100, "intermediate_size": 96}
    assert count_params(from_hf_config(llama)).total > 0
    with pytest.raises(ConfigError, match="'use_sliding_window'.*llama"):
        from_hf_config({**llama, "use_sliding_window": True})
    with pytest.raises(ConfigError, match="'layer_types'"):
        from_hf_config({**llama, "model_type": "qwen2",
                        "layer_types": ["linear_attention", "full_attention"]})
