"""Spec files: TOML round trip, shipped examples, HF import through load_spec, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from moescale.errors import ConfigError
from moescale.spec import ModelSpec, count_params, load_spec, save_spec
from moescale.spec.io import dump_spec_toml, load_spec_with_extras
from moescale.spec.presets import PRESETS, ling_mini_beta

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_toml_round_trip_presets(tmp_path, name):
    spec = PRESETS[name]()
    save_spec(spec, tmp_path / "spec.toml")
    back = load_spec(tmp_path / "spec.toml")
    assert back == spec
    assert count_params(back) == count_params(spec)


def test_toml_round_trip_every_field_kind(tmp_path, configs_dir):
    specs = [load_spec(p) for p in sorted(configs_dir.glob("*.json"))]
    specs.append(ModelSpec(
        name="odd \"name\"", d_model=64, n_layers=4, n_heads=4, vocab_size=100, d_ffn=96,
        n_experts=8, top_k=2, d_expert=32, moe_layers=(1, 3), sliding_window=16,
        sliding_layers=(0, 3), rope_fraction=0.5, rope_theta=1e6, tie_embeddings=True,
    ))
    for spec in specs:
        path = tmp_path / f"{spec.name or 'x'}.toml"
        save_spec(spec, path)
        back = load_spec(path)
        assert back == spec, spec.name
        assert back.moe_layers == spec.moe_layers and back.sliding_layers == spec.sliding_layers


def test_dump_is_plain_toml_without_provenance(configs_dir):
    spec = load_spec(configs_dir / "gpt-oss-20b.json")
    text = dump_spec_toml(spec)
    assert text.startswith("schema_version = 1\n\n[model]\n")
    assert "extra" not in text and "attention_sinks = true" in text


@pytest.mark.parametrize("stem", ["ling-mini-beta", "tiny-dense", "tiny-moe"])
def test_shipped_examples_load(stem):
    spec, extras = load_spec_with_extras(REPO / "examples" / f"{stem}.toml")
    assert spec.name == stem.replace("ling-mini-beta", "Ling-mini-beta")
    assert extras == {}
    if stem == "ling-mini-beta":
        assert spec == ling_mini_beta()


def test_tiny_examples_are_cpu_sized():
    dense = load_spec(REPO / "examples/tiny-dense.toml")
    moe = load_spec(REPO / "examples/tiny-moe.toml")
    for spec in (dense, moe):
        assert (spec.d_model, spec.n_layers, spec.vocab_size) == (256, 4, 257)  # byte tokenizer
        assert count_params(spec).total < 10_000_000
    assert not dense.is_moe
    assert (moe.activation_ratio, moe.granularity, moe.shared_ratio) == (1 / 8, 4.0, 1 / 3)
    assert moe.n_dense_layers == 1 and moe.n_moe_layers == 3


def test_hf_json_records_provenance(configs_dir):
    path = configs_dir / "Qwen3-30B-A3B.json"
    spec = load_spec(path)
    assert spec.name == "Qwen3-30B-A3B"
    assert spec.extra["model_type"] == "qwen3_moe"
    assert spec.extra["source"] == str(path)
    assert spec.extra["architectures"] == ["Qwen3MoeForCausalLM"]


@pytest.mark.parametrize(("content", "suffix", "match"), [
    ("{not json", ".json", "is not valid JSON"),
    ("[1, 2]", ".json", "must hold a JSON object"),
    ("a = = 1", ".toml", "neither an HF config.json nor valid TOML"),
    ("schema_version = 1\n", ".toml", r"no \[model\] table"),
    ("schema_version = 2\n[model]\n", ".toml", "'schema_version' must be 1"),
    ("[model]\nd_model = 64\n", ".toml", "missing required field.*'n_layers'"),
    ("[model]\nd_model = 64\nn_layers = 2\nn_heads = 4\nvocab_size = 9\nwidth = 3\n", ".toml",
     "unknown spec field.*'width'"),
    ("[model]\nd_model = 64\nn_layers = 2\nn_heads = 4\nvocab_size = 9\nd_ffn = 8\n"
     "moe_layers = 'all'\n", ".toml", "'moe_layers' must be a list"),
])
def test_bad_files(tmp_path, content, suffix, match):
    path = tmp_path / f"bad{suffix}"
    path.write_text(content)
    with pytest.raises(ConfigError, match=match):
        load_spec(path)


def test_unreadable_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_spec(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="model folder .* has no config.json"):
        load_spec(tmp_path)  # a folder is read as a model folder
    binary = tmp_path / "weights.bin"
    binary.write_bytes(b"\x00\xff\xfe\x00")
    with pytest.raises(ConfigError, match="cannot read"):
        load_spec(binary)


def test_atomic_write_gives_default_permissions(tmp_path):
    import os
    import stat

    from moescale.spec.io import atomic_write

    atomic_write(tmp_path / "a.txt", "x")
    (tmp_path / "b.txt").write_text("x")
    mode = stat.S_IMODE(os.stat(tmp_path / "a.txt").st_mode)
    assert mode == stat.S_IMODE(os.stat(tmp_path / "b.txt").st_mode)
    assert not list(tmp_path.glob(".*.tmp"))
