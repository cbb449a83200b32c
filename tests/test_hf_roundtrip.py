"""Round trip through the installed transformers: for every family moescale reads,
build a config with transformers' own config class (class defaults plus small but
non-trivial sizes), ``save_pretrained`` it, read it back with moescale and compare
every parameter group with ``sum(p.numel())`` of the transformers model built on the
``meta`` device. Catches drift in what current transformers writes (``qwen3_moe``'s
``num_local_experts``, ``qwen2_moe``'s ``sliding_window: 0``) and in the modelling code.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from moescale.spec import count_params, load_spec
from moescale.spec.hf_config import REFUSED_MODEL_TYPES, SUPPORTED_MODEL_TYPES, from_hf_config

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from moescale.spec.hf_meta import meta_param_groups  # noqa: E402

SMALL = {"hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4,
         "num_key_value_heads": 2, "vocab_size": 128, "intermediate_size": 96,
         "pad_token_id": None}
MOE = {"num_experts_per_tok": 2, "moe_intermediate_size": 32}

# model_type -> config-class arguments on top of SMALL (transformers' names)
FAMILIES: dict[str, dict] = {
    "llama": {"attention_bias": True, "mlp_bias": True, "tie_word_embeddings": True},
    "mistral": {"head_dim": 32, "num_key_value_heads": 1, "sliding_window": 16},
    "qwen2": {"use_sliding_window": True, "sliding_window": 16, "max_window_layers": 2},
    "qwen3": {"head_dim": 32, "attention_bias": True},
    "gemma": {"head_dim": 32},
    "gemma2": {"head_dim": 32, "sliding_window": 16},
    "gemma3_text": {"head_dim": 32, "sliding_window": 16, "num_hidden_layers": 7},
    "phi3": {"partial_rotary_factor": 0.5},
    "olmo2": {},
    "olmo3": {"sliding_window": 16},
    "granite": {"attention_bias": True, "mlp_bias": True},
    "cohere": {"use_qk_norm": True},
    "cohere2": {"head_dim": 16, "sliding_window": 16},
    "glm": {"head_dim": 16},
    "glm4": {"head_dim": 16},
    "ernie4_5": {"head_dim": 16, "use_bias": True},
    "seed_oss": {"head_dim": 16, "attention_out_bias": True, "mlp_bias": True},
    "internlm3": {"head_dim": 16, "attention_bias": True, "mlp_bias": True},
    "ministral3": {"head_dim": 16, "sliding_window": 16},
    "smollm3": {"attention_bias": True, "mlp_bias": True, "num_hidden_layers": 8},
    "hunyuan_v1_dense": {"head_dim": 16, "attention_bias": True},
    "starcoder2": {"sliding_window": 16, "tie_word_embeddings": False},
    "youtu": {"num_key_value_heads": 4, "q_lora_rank": 24, "kv_lora_rank": 16,
              "qk_nope_head_dim": 8, "qk_rope_head_dim": 4, "v_head_dim": 8,
              "attention_bias": True},
    "minicpm3": {"num_key_value_heads": 4, "q_lora_rank": 24, "kv_lora_rank": 16,
                 "qk_nope_head_dim": 8, "qk_rope_head_dim": 4, "v_head_dim": 8},
    "flex_olmo": {"num_experts": 8, "num_experts_per_tok": 2, "attention_bias": True},
    "sarvam_moe": {**MOE, "n_routed_experts": 8, "n_shared_experts": 2, "head_dim": 16,
                   "attention_bias": True, "first_k_dense_replace": 1},
    "mixtral": {"num_local_experts": 4, "num_experts_per_tok": 2, "sliding_window": 16},
    "olmoe": {"num_experts": 8, "num_experts_per_tok": 2},
    "qwen2_moe": {**MOE, "num_experts": 8, "shared_expert_intermediate_size": 48,
                  "decoder_sparse_step": 2, "mlp_only_layers": [3]},
    "qwen3_moe": {**MOE, "head_dim": 32, "num_experts": 8, "mlp_only_layers": [0]},
    "deepseek_v2": {**MOE, "num_key_value_heads": 4, "n_routed_experts": 8,
                    "n_shared_experts": 2, "first_k_dense_replace": 1, "q_lora_rank": None,
                    "kv_lora_rank": 16, "qk_nope_head_dim": 8, "qk_rope_head_dim": 4,
                    "v_head_dim": 8, "attention_bias": True, "topk_method": "greedy",
                    "n_group": 1, "topk_group": 1},
    "deepseek_v3": {**MOE, "num_key_value_heads": 4, "n_routed_experts": 8,
                    "n_shared_experts": 1, "first_k_dense_replace": 1, "q_lora_rank": 24,
                    "kv_lora_rank": 16, "qk_nope_head_dim": 8, "qk_rope_head_dim": 4,
                    "v_head_dim": 8, "attention_bias": True, "n_group": 1, "topk_group": 1},
    "gpt_oss": {"head_dim": 32, "intermediate_size": 48, "num_local_experts": 4,
                "num_experts_per_tok": 2, "sliding_window": 8},
    "glm4_moe": {**MOE, "n_routed_experts": 8, "n_shared_experts": 1,
                 "first_k_dense_replace": 1, "use_qk_norm": True, "head_dim": 16,
                 "attention_bias": True, "n_group": 1, "topk_group": 1},
    "dots1": {**MOE, "n_routed_experts": 8, "n_shared_experts": 2,
              "first_k_dense_replace": 1, "attention_bias": True},
    "ernie4_5_moe": {**MOE, "moe_num_experts": 8, "moe_k": 2, "moe_num_shared_experts": 2,
                     "use_bias": True, "moe_layer_start_index": 1,
                     "moe_layer_interval": 1},
    "minimax_m2": {"head_dim": 16, "num_local_experts": 8, "num_experts_per_tok": 2},
    "granitemoe": {"num_local_experts": 8, "num_experts_per_tok": 2, "attention_bias": True},
    "granitemoeshared": {"num_local_experts": 8, "num_experts_per_tok": 2,
                         "shared_intermediate_size": 48},
    "hunyuan_v1_moe": {"num_experts": 8, "moe_topk": 2, "head_dim": 16,
                       "attention_bias": True},
    "llama4_text": {"head_dim": 16, "num_local_experts": 8, "num_experts_per_tok": 1,
                    "intermediate_size_mlp": 80, "interleave_moe_layer_step": 2,
                    "attention_chunk_size": 32, "num_hidden_layers": 8, "moe_layers": None},
    "phimoe": {"num_local_experts": 8, "num_experts_per_tok": 2, "attention_bias": True,
               "lm_head_bias": True, "sliding_window": 16},
    "qwen3_next": {**MOE, "num_experts": 8, "shared_expert_intermediate_size": 48,
                   "head_dim": 16, "linear_num_value_heads": 4, "linear_num_key_heads": 2,
                   "linear_key_head_dim": 8, "linear_value_head_dim": 12,
                   "num_hidden_layers": 8, "mlp_only_layers": [1], "attention_bias": True},
    "jamba": {"num_experts": 4, "num_experts_per_tok": 2, "attn_layer_period": 3,
              "attn_layer_offset": 1, "expert_layer_period": 2, "expert_layer_offset": 1,
              "mamba_d_state": 8, "mamba_d_conv": 3, "mamba_expand": 2, "num_hidden_layers": 6,
              "mamba_proj_bias": True},
    "minimax": {"head_dim": 16, "num_local_experts": 4, "num_experts_per_tok": 2,
                "num_hidden_layers": 5},
    "nemotron_h": {"head_dim": 16, "hybrid_override_pattern": "M-M*-EM*E", "mamba_num_heads": 8,
                   "mamba_head_dim": 16, "ssm_state_size": 8, "n_groups": 2, "conv_kernel": 3,
                   "n_routed_experts": 4, "num_experts_per_tok": 2, "mlp_bias": True,
                   "moe_intermediate_size": 32, "moe_shared_expert_intermediate_size": 48,
                   "use_bias": True},
    "bamba": {"attn_layer_indices": [1, 3], "mamba_n_heads": 8, "mamba_d_head": 16,
              "mamba_n_groups": 2, "mamba_d_state": 8, "mamba_d_conv": 3, "mlp_bias": True,
              "mamba_proj_bias": True, "attention_bias": True},
    "granitemoehybrid": {"layer_types": ["mamba", "attention", "mamba", "mamba"],
                         "mamba_n_heads": 8, "mamba_d_head": 16, "mamba_n_groups": 2,
                         "mamba_d_state": 8, "num_local_experts": 4, "num_experts_per_tok": 2,
                         "shared_intermediate_size": 48},
    "falcon_h1": {"mamba_d_ssm": 96, "mamba_n_heads": 8, "mamba_d_head": 12,
                  "mamba_n_groups": 2, "mamba_d_state": 8, "mamba_rms_norm": True,
                  "attention_bias": True, "mlp_bias": True},
    "dbrx": {"d_model": 64, "n_heads": 4, "n_layers": 3, "vocab_size": 128,
             "attn_config": {"kv_n_heads": 2, "rope_theta": 10000.0},
             "ffn_config": {"ffn_hidden_size": 48, "moe_num_experts": 4, "moe_top_k": 2}},
}
NOT_SMALL = {"dbrx"}  # configured through its own nested keys


def _saved_config(tmp_path: Path, model_type: str) -> dict:
    args = dict(FAMILIES[model_type]) if model_type in NOT_SMALL else {
        **SMALL, **FAMILIES[model_type]}
    config = transformers.AutoConfig.for_model(model_type, **args)
    config.save_pretrained(tmp_path)
    return json.loads((tmp_path / "config.json").read_text())


def test_every_native_family_is_round_tripped():
    wrappers = {"llama4", "gemma3", "kimi_k2"}  # read through text_config / architectures
    # BailingMoe is remote code only (not in transformers); test_spec_hf_config pins it.
    remote = {"bailing_moe", "bailing_moe_v2"}
    assert set(SUPPORTED_MODEL_TYPES) - wrappers - remote == set(FAMILIES)


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_roundtrip_counts_equal_meta_build(tmp_path, model_type):
    cfg = _saved_config(tmp_path, model_type)
    spec = load_spec(tmp_path)  # a model folder, as `moescale count DIR` reads it
    assert spec.extra["family"] == model_type
    ours = count_params(spec).as_dict()
    theirs = meta_param_groups(cfg)
    assert theirs["other"] == 0, theirs
    groups = ("embedding", "head", "attention", "norms", "dense_ffn", "router",
              "routed_experts", "shared_experts", "mixer")
    assert {g: ours.get(g, 0) for g in groups} == {g: theirs[g] for g in groups}
    assert ours["total"] == theirs["total"]


def test_roundtrip_layouts_are_nontrivial(tmp_path):
    """The sizes above exercise the layouts, not just the defaults."""
    spec = load_spec(_saved_path(tmp_path, "llama4_text"))
    assert spec.n_moe_layers == 4 and spec.n_dense_layer_count == 4
    assert spec.nope_layers == (3, 7) and spec.local_attention == "chunked"
    assert spec.sliding_window == 32 and spec.n_sliding_layers == 6
    g3 = load_spec(_saved_path(tmp_path / "g3", "gemma3_text"))
    assert g3.sliding_layers == (0, 1, 2, 3, 4, 6)
    ernie = load_spec(_saved_path(tmp_path / "ernie", "ernie4_5_moe"))
    assert ernie.n_dense_layers == 1 and ernie.ffn_bias and ernie.head_bias


def _saved_path(path: Path, model_type: str) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    _saved_config(path, model_type)
    return path


def test_drift_fields_of_current_transformers(tmp_path):
    q3 = _saved_config(tmp_path / "a", "qwen3_moe")
    assert "num_local_experts" in q3 or "num_experts" in q3
    assert from_hf_config(q3).n_experts == 8
    q2 = _saved_config(tmp_path / "b", "qwen2_moe")
    assert from_hf_config({**q2, "sliding_window": 0}).sliding_window is None


def _kimi_k2(configs_dir: Path) -> dict:
    """Kimi K2's config.json: DeepSeek-V3's plus Kimi K2's published differences."""
    ds = json.loads((configs_dir / "DeepSeek-V3.json").read_text())
    return {**ds, "model_type": "kimi_k2", "architectures": ["DeepseekV3ForCausalLM"],
            "n_routed_experts": 384, "num_attention_heads": 64, "num_key_value_heads": 64,
            "vocab_size": 163840, "first_k_dense_replace": 1, "n_group": 1,
            "topk_group": 1, "routed_scaling_factor": 2.827, "num_nextn_predict_layers": 0,
            "rope_scaling": None, "bos_token_id": 163584, "eos_token_id": 163585}


def test_kimi_k2_total(configs_dir):
    cfg = _kimi_k2(configs_dir)
    spec = from_hf_config(cfg)
    assert spec.extra["family"] == "deepseek_v3"
    pc = count_params(spec)
    assert pc.total == 1_026_408_232_448
    assert meta_param_groups(cfg)["total"] == 1_026_408_232_448
    assert 32e9 <= pc.active < 33e9  # model card: "32B activated" (truncated)


# Qwen3-Next-80B-A3B's config.json (hub), architecture fields as published.
QWEN3_NEXT_80B = {
    "model_type": "qwen3_next", "architectures": ["Qwen3NextForCausalLM"],
    "hidden_size": 2048, "num_hidden_layers": 48, "num_attention_heads": 16,
    "num_key_value_heads": 2, "head_dim": 256, "linear_conv_kernel_dim": 4,
    "linear_key_head_dim": 128, "linear_num_key_heads": 16, "linear_num_value_heads": 32,
    "linear_value_head_dim": 128, "full_attention_interval": 4, "intermediate_size": 5120,
    "moe_intermediate_size": 512, "shared_expert_intermediate_size": 512, "num_experts": 512,
    "num_experts_per_tok": 10, "vocab_size": 151936, "tie_word_embeddings": False,
    "decoder_sparse_step": 1, "mlp_only_layers": [], "rope_theta": 10000000,
    "partial_rotary_factor": 0.25,
}


def test_qwen3_next_80b_published_size():
    spec = from_hf_config(QWEN3_NEXT_80B)
    pc = count_params(spec)
    assert pc.total == meta_param_groups(QWEN3_NEXT_80B)["total"] == 79_674_391_296
    assert abs(pc.total - 80e9) / 80e9 < 5e-3  # model card: "80B total parameters"
    assert 3e9 <= pc.active_non_embedding < 4e9  # "3B active" (A3B)
    assert spec.n_mixer_layers == 36 and spec.n_attention_layers == 12


@pytest.mark.parametrize("change", [
    {"norm": "layer"}, {"norm_bias": True}, {"norms_per_layer": 4}, {"ffn_bias": True},
    {"head_bias": True}, {"nope_layers": (1,)}, {"qk_norm": "l2"},
    {"sliding_window": 4, "local_attention": "chunked"}, {"attention_gate": True},
    {"gated_ffn": False}, {"ffn_layers": (0,)}, {"mixerless_layers": (1,)},
    {"mixer": "mamba", "mixer_layers": (0,), "mixer_conv": 4, "mamba_d_inner": 64,
     "mamba_d_state": 8, "mamba_dt_rank": 2},
])
def test_pytorch_model_refuses_what_it_cannot_build(change):
    from moescale.errors import ConfigError
    from moescale.model import Transformer
    from moescale.spec import ModelSpec

    spec = ModelSpec(d_model=32, n_layers=2, n_heads=4, vocab_size=64, d_ffn=48, **change)
    name = next(iter(change)) if "local_attention" not in change else "local_attention"
    name = "mixer" if "mixer" in change else name
    with pytest.raises(ConfigError, match=rf"{name}.*not supported by the PyTorch model"):
        Transformer(spec)


def test_multimodal_wrapper_reads_and_verifies_its_text_config(tmp_path):
    from moescale.spec.hf_meta import verify_spec

    text = transformers.AutoConfig.for_model("llama4_text", **{
        **SMALL, **FAMILIES["llama4_text"]}).to_dict()
    cfg = transformers.AutoConfig.for_model("llama4", text_config=text)
    cfg.save_pretrained(tmp_path)
    spec = load_spec(tmp_path)
    assert spec.extra["family"] == "llama4_text" and "vision encoder not counted" in (
        spec.extra["note"])
    check = verify_spec(spec, json.loads((tmp_path / "config.json").read_text()))
    assert check["match"], check


def test_hybrid_layouts_and_mixer_flops(tmp_path):
    """Mixer placement from the saved configs, and the documented per-token mixer FLOPs
    worked out by hand for these sizes (docs/conventions.md, mixer kinds)."""
    from moescale.spec import flops_per_token

    nxt = load_spec(_saved_path(tmp_path / "next", "qwen3_next"))
    assert nxt.mixer_layers == (0, 1, 2, 4, 5, 6) and nxt.n_attention_layers == 2
    assert nxt.moe_layers == (0, 2, 3, 4, 5, 6, 7) and nxt.attention_gate
    jamba = load_spec(_saved_path(tmp_path / "jamba", "jamba"))
    assert jamba.mixer_layers == (0, 2, 3, 5) and jamba.moe_layers == (1, 3, 5)
    assert jamba.nope_layers == (1, 4) and jamba.mamba_dt_rank == 4  # ceil(64 / 16)
    # One gated-DeltaNet layer, d = 64, n_k = 2, n_v = 4, d_k = 8, d_v = 12, kernel 4:
    # projections 64·(16+16+48+48) + 64·8 + 48·64 = 11,776 weights -> 23,552 FLOPs;
    # conv 2·4·(16+16+48) = 640; state 6·4·8·12 = 2,304.
    gdn = 23_552 + 640 + 2_304
    one = nxt.replace(mixer_layers=(0, 1, 2, 4, 5))  # layer 6 back to attention
    diff = flops_per_token(nxt, training=False) - flops_per_token(one, training=False)
    attn_proj = 2 * (64 * 128 + 2 * 64 * 32 + 64 * 64)  # q (with gate), k, v, o
    attn_scores = 2 * 4096 * 4 * 16 * 2
    assert diff == gdn - attn_proj - attn_scores
    # One Mamba layer, d = 64, d_inner = 128, N = 8, dt_rank 4, kernel 3:
    # in 64·256 + x 128·20 + dt 4·128 + out 128·64 = 27,648 weights -> 55,296 FLOPs;
    # conv 2·3·128 = 768; scan 6·128·8 = 6,144.
    mamba = 55_296 + 768 + 6_144
    fewer = jamba.replace(mixer_layers=(0, 2, 3))  # layer 5 back to attention
    diff = flops_per_token(jamba, training=False) - flops_per_token(fewer, training=False)
    assert diff == mamba - 2 * (2 * 64 * 64 + 2 * 64 * 32) - 2 * 4096 * 4 * 16 * 2
    # Nemotron-H "M-M*-EM*E": one Mamba-2 layer, d = 64, 8 heads of 16 (d_inner 128),
    # 2 groups, N = 8, kernel 3: in_proj 64·(256+32+8) + out 128·64 = 27,136 weights ->
    # 54,272 FLOPs; conv 2·3·(128+32) = 960; state 6·128·8 = 6,144.
    nem = load_spec(_saved_path(tmp_path / "nem", "nemotron_h"))
    assert nem.mixer_layers == (0, 2, 6) and nem.n_attention_layers == 2
    assert nem.ffn_layers == (1, 4, 5, 8) and nem.moe_layers == (5, 8) and not nem.gated_ffn
    attn = 2 * (2 * 64 * 64 + 2 * 64 * 32) + 2 * 4096 * 4 * 16 * 2
    fewer = nem.replace(mixer_layers=(0, 2))  # layer 6 becomes attention
    diff = flops_per_token(nem, training=False) - flops_per_token(fewer, training=False)
    assert diff == 54_272 + 960 + 6_144 - attn
    # its squared-ReLU MLP (up, down): 4·d·d_ffn; layer 1 made an attention-only block
    no_mlp = nem.replace(ffn_layers=(4, 5, 8), mixerless_layers=(4, 5, 8))
    diff = flops_per_token(nem, training=False) - flops_per_token(no_mlp, training=False)
    assert diff == 4 * 64 * 96 - attn
    # One lightning layer, d = 64, 4 heads of 16: qkv 64·192 + gate 64·64 + out 64·64
    # = 20,480 weights -> 40,960 FLOPs; state 4·4·16² = 4,096.
    mm = load_spec(_saved_path(tmp_path / "minimax", "minimax"))
    assert mm.mixer == "lightning" and mm.mixer_layers == (1, 3)
    fewer = mm.replace(mixer_layers=(1,))
    diff = flops_per_token(mm, training=False) - flops_per_token(fewer, training=False)
    assert diff == 40_960 + 4_096 - 2 * (2 * 64 * 64 + 2 * 64 * 32) - 2 * 4096 * 4 * 16 * 2


@pytest.mark.parametrize("model_type", sorted(REFUSED_MODEL_TYPES))
def test_refused_families_count_exactly_through_transformers(tmp_path, model_type):
    """Each family moescale refuses natively still gets an exact total from the meta
    build (independently re-counted here from the saved folder)."""
    from moescale.spec.hf_meta import count_path

    # the config class's defaults (full size: the meta device allocates nothing)
    config = transformers.AutoConfig.for_model(model_type, pad_token_id=None)
    config.save_pretrained(tmp_path)
    loaded = transformers.AutoConfig.from_pretrained(tmp_path)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(loaded)
    expected = sum(p.numel() for p in model.parameters()) + sum(
        b.numel() for n, b in model.named_buffers() if n.endswith("e_score_correction_bias"))
    record, note = count_path(tmp_path)
    assert note and "not read natively" in note
    assert record["total_params"] == expected
    assert record["params_by_group"]["other"] == 0, record["params_by_group"]


@pytest.mark.parametrize("model_type", ["nemotron_h", "llama4_text", "phimoe", "falcon_h1"])
def test_imported_specs_survive_a_toml_round_trip(tmp_path, model_type):
    from moescale.spec import save_spec

    spec = load_spec(_saved_path(tmp_path / "hf", model_type))
    save_spec(spec, tmp_path / "spec.toml")
    again = load_spec(tmp_path / "spec.toml")
    assert again.replace(name=spec.name) == spec
    assert count_params(again) == count_params(spec)


# Llama 4's text_config (Scout-17B-16E; Maverick-17B-128E alternates dense and MoE).
LLAMA4_SCOUT = {
    "model_type": "llama4_text", "hidden_size": 5120, "intermediate_size": 8192,
    "intermediate_size_mlp": 16384, "num_hidden_layers": 48, "num_attention_heads": 40,
    "num_key_value_heads": 8, "head_dim": 128, "num_local_experts": 16,
    "num_experts_per_tok": 1, "vocab_size": 202048, "interleave_moe_layer_step": 1,
    "tie_word_embeddings": False, "attention_chunk_size": 8192,
}


@pytest.mark.parametrize(("changes", "total_window"), [
    ({}, (107e9, 109e9)),  # card: 109B total with the vision encoder; text alone below
    ({"num_local_experts": 128, "interleave_moe_layer_step": 2}, (400e9, 401e9)),  # "400B"
])
def test_llama4_published_sizes(changes, total_window):
    cfg = {**LLAMA4_SCOUT, **changes}
    pc = count_params(from_hf_config(cfg))
    assert pc.total == meta_param_groups(cfg)["total"]
    assert total_window[0] <= pc.total < total_window[1]
    assert 17e9 <= pc.active < 17.5e9  # "17B active"


def test_sparse_nested_text_config_takes_the_text_class_defaults():
    """Older hub files (gemma-3) keep only non-default keys in text_config."""
    sparse = {"model_type": "gemma3_text", "hidden_size": 2560, "intermediate_size": 10240,
              "num_hidden_layers": 34, "sliding_window": 1024}
    spec = from_hf_config({"model_type": "gemma3", "text_config": sparse})
    assert (spec.n_heads, spec.n_kv_heads, spec.vocab_size) == (8, 4, 262208)
    assert count_params(spec).total == meta_param_groups(sparse)["total"]


# Default configs of these classes leave a required size unset (None) or inconsistent.
NO_DEFAULT_MODEL = {"deepseek_v2", "dots1", "glm4_moe"}


@pytest.mark.parametrize("model_type", sorted(
    set(FAMILIES) - NO_DEFAULT_MODEL))
def test_absent_keys_take_the_config_class_defaults(model_type):
    """Hub files omit keys equal to the class default: dropping any one key from the class's
    full default config must read the same spec (or fail naming a required key)."""
    from moescale.errors import ConfigError

    full = json.loads(transformers.AutoConfig.for_model(model_type, pad_token_id=None)
                      .to_json_string(use_diff=False))
    ref = from_hf_config(full).replace(name="", extra={})
    for key in sorted(set(full) - {"model_type"}):
        cut = {k: v for k, v in full.items() if k != key}
        try:
            spec = from_hf_config(cut)
        except ConfigError as exc:
            assert "missing required field" in str(exc), (key, str(exc))
            continue
        assert spec.replace(name="", extra={}) == ref, key


# Keys that do not change the model's weights (or select kernels only).
_INERT = {
    "return_dict", "output_hidden_states", "output_attentions", "use_cache",
    "is_encoder_decoder", "output_router_logits", "norm_topk_prob", "use_mamba_kernels",
    "use_mambapy", "use_associative_scan", "rope_interleave", "use_bidirectional_attention",
    "moe_shared_expert_overlap", "residual_in_fp32", "rescale_prenorm_residual",
    "attn_temperature_tuning", "max_position_embeddings", "pad_token_id", "bos_token_id",
    "eos_token_id", "eod_token_id", "sep_token_id", "num_logits_to_keep", "pretraining_tp",
    "block_size", "chunk_size", "mamba_chunk_size", "max_seq_len",
}
_SIZES = {"hidden_size", "vocab_size", "num_hidden_layers", "num_attention_heads",
          "num_key_value_heads", "n_layers", "d_model", "n_heads"}


@pytest.mark.slow
@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_every_flag_and_count_is_read_or_refused(tmp_path, model_type):
    """Flip every boolean and perturb every structural int of the saved config: wherever
    transformers can build the result, moescale's total equals the meta build's, or
    moescale refuses the value with a ConfigError (never a silent wrong number)."""
    from moescale.errors import ConfigError

    base = _saved_config(tmp_path, model_type)
    variants = []
    for key, value in sorted(base.items()):
        if key in _INERT:
            continue
        if isinstance(value, bool):
            variants.append((key, not value))
        elif isinstance(value, int) and key not in _SIZES:
            variants += [(key, value + 1), (key, max(2 * value, 2))]
    for key, value in variants:
        cfg = {**base, key: value}
        try:
            theirs = meta_param_groups(cfg)["total"]
        except ConfigError:
            continue  # transformers cannot build it either
        try:
            ours = count_params(from_hf_config(cfg)).total
        except ConfigError:
            continue
        assert ours == theirs, (key, value)
