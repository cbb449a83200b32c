"""``moescale count``: the public JSON keys and one-line errors with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from moescale.cli import main
from moescale.spec import count_params, flops_per_token, load_spec

REPO = Path(__file__).resolve().parents[1]

KEYS = {
    "total_params", "active_params", "total_params_non_embedding",
    "active_params_non_embedding", "activation_ratio", "activation_ratio_formal",
    "granularity", "shared_ratio", "flops_per_token", "flops_per_token_6n",
}


def run_json(capsys, *args: str) -> dict:
    with pytest.raises(SystemExit) as exc:
        main(["count", *args, "--json"])
    assert exc.value.code in (0, None)
    return json.loads(capsys.readouterr().out)


def test_json_keys_and_values_moe(capsys):
    rec = run_json(capsys, str(REPO / "examples/ling-mini-beta.toml"))
    assert set(rec) >= KEYS
    assert rec["total_params_non_embedding"] == 17_514_448_896
    assert rec["active_params_non_embedding"] == 838_944_768
    assert rec["total_params"] == 17_514_448_896 + 2 * 157_184 * 2048
    assert rec["activation_ratio"] == 1 / 32
    assert rec["activation_ratio_formal"] == 13 / 385
    assert rec["granularity"] == pytest.approx(2 * 2048 / 384)
    assert rec["shared_ratio"] == 1 / 13
    assert rec["flops_per_token"] == 6_956_777_472  # Ling M, training, s = 4096 (default)
    assert rec["flops_per_token_6n"] == 6 * 838_944_768


def test_json_dense_and_seq_len(capsys):
    path = REPO / "examples/tiny-dense.toml"
    rec = run_json(capsys, str(path), "--seq-len", "256")
    assert rec["granularity"] is None
    assert (rec["activation_ratio"], rec["activation_ratio_formal"]) == (1.0, 1.0)
    assert rec["shared_ratio"] == 0.0
    assert rec["total_params"] == rec["active_params"]
    # d 256, 4 layers, 4 heads / 2 KV, d_ffn 704, s 256: 3·4·(2·256²·3 + 4·256·256 + 6·256·704)
    assert rec["flops_per_token"] == 3 * 4 * (2 * 256**2 * 3 + 4 * 256 * 256 + 6 * 256 * 704)
    assert rec["flops_per_token"] == flops_per_token(load_spec(path), seq_len=256)


def test_json_hf_config(capsys, configs_dir):
    rec = run_json(capsys, str(configs_dir / "DeepSeek-V3.json"))
    assert rec["total_params"] == 671_026_419_200
    mtp = run_json(capsys, str(configs_dir / "DeepSeek-V3.json"), "--include-mtp")
    spec = load_spec(configs_dir / "DeepSeek-V3.json")
    assert mtp["total_params"] == count_params(spec, include_mtp=True).total
    assert mtp["total_params"] > rec["total_params"]


def test_human_output(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["count", str(REPO / "examples/tiny-moe.toml")])
    assert exc.value.code in (0, None)
    out = capsys.readouterr().out
    assert "activation ratio" in out and "6,486,784" in out  # 6,486,272 at V 256, + 2·256


BAD_SPECS = {
    "top_k.toml": ("[model]\nd_model=64\nn_layers=2\nn_heads=4\nvocab_size=9\nn_experts=4\n"
                   "top_k=5\nd_expert=8\n", "'top_k'"),
    "size.toml": ("[model]\nd_model=0\nn_layers=2\nn_heads=4\nvocab_size=9\nd_ffn=8\n",
                  "'d_model'"),
    "heads.toml": ("[model]\nd_model=64\nn_layers=2\nn_heads=5\nvocab_size=9\nd_ffn=8\n",
                   "'n_heads' must divide 'd_model'"),
    "kv.toml": ("[model]\nd_model=64\nn_layers=2\nn_heads=4\nn_kv_heads=3\nvocab_size=9\n"
                "d_ffn=8\n", "'n_kv_heads' must divide 'n_heads'"),
    "garbage.txt": ("this is = = not toml", "neither an HF config.json nor valid TOML"),
    "broken.json": ('{"model_type": ', "not valid JSON"),
    "unknown.json": ('{"model_type": "nosuch"}', "'nosuch'"),
    "missing.json": ('{"model_type": "qwen3_moe", "hidden_size": 64}', "'num_attention_heads'"),
}


@pytest.mark.parametrize("name", sorted(BAD_SPECS))
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, name):
    content, needle = BAD_SPECS[name]
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(SystemExit) as exc:
        main(["count", str(path), "--json"])
    assert exc.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0]


def test_missing_file_and_bad_seq_len(tmp_path, capsys):
    binary = tmp_path / "weights.safetensors"
    binary.write_bytes(b"\x00\xff\xfe\x00")
    cases = (
        ["count", str(tmp_path / "nope.json")],  # missing
        ["count", str(binary)],  # not text
        ["count", str(tmp_path)],  # a folder
        ["count", str(REPO / "examples/tiny-dense.toml"), "--seq-len", "0"],
    )
    for args in cases:
        with pytest.raises(SystemExit) as exc:
            main(args)
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ")


def test_subprocess_never_prints_a_traceback(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"model_type": "mixtral", "hidden_size": 64}')
    proc = subprocess.run(
        [sys.executable, "-c", "from moescale.cli import main; main()", "count", str(bad)],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip() == (
        "error: HF config (model_type 'mixtral') is missing required field "
        "'num_attention_heads'"
    )
