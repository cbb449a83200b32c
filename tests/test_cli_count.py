"""``moescale count``: the public JSON keys and one-line errors with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from moescale.cli import main
from moescale.spec import count_params, flops_per_token, load_spec
from moescale.spec.hf_meta import transformers_available

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


# ---------------------------------------------------------------- folders, transformers path
JETMOE = {"model_type": "jetmoe", "hidden_size": 64, "num_hidden_layers": 2,
          "num_attention_heads": 4, "num_key_value_heads": 2, "kv_channels": 16,
          "vocab_size": 128, "intermediate_size": 96, "num_local_experts": 4,
          "num_experts_per_tok": 2}


def _count(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(["count", *args])
    out = capsys.readouterr()
    return exc.value.code or 0, out.out, out.err


def test_model_folder_reads_its_config_json(tmp_path, capsys, configs_dir):
    folder = tmp_path / "Qwen3-30B-A3B"
    folder.mkdir()
    (folder / "config.json").write_text((configs_dir / "Qwen3-30B-A3B.json").read_text())
    rec = run_json(capsys, str(folder))
    assert rec["total_params"] == 30_532_122_624 and rec["name"] == "Qwen3-30B-A3B"


def test_refused_family_falls_back_to_transformers(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    path = tmp_path / "config.json"
    path.write_text(json.dumps(JETMOE))
    code, out, err = _count(capsys, str(path), "--json")
    assert code == 0 and "not read natively (attention experts" in err
    rec = json.loads(out)
    cfg = transformers.AutoConfig.for_model(**JETMOE)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(cfg)
    assert rec["total_params"] == sum(p.numel() for p in model.parameters())
    assert rec["via"] == "transformers" and "active_params" in rec["approximate"]
    assert rec["params_by_group"]["other"] == 0
    # 4 experts, top-2 (attention and MLP experts alike): half the expert weights idle
    groups = rec["params_by_group"]
    assert rec["active_params"] == rec["total_params"] - groups["routed_experts"] // 2
    # the table output labels what is approximate
    code, out, _ = _count(capsys, str(path))
    assert code == 0 and "active params (approximate)" in out and "(exact)" in out


def test_via_transformers_equals_native_on_a_supported_family(capsys, configs_dir):
    pytest.importorskip("transformers")
    path = str(configs_dir / "Mixtral-8x7B-v0.1.json")
    via = run_json(capsys, path, "--via", "transformers")
    native = run_json(capsys, path)
    assert via["total_params"] == native["total_params"] == 46_702_792_704
    assert via["active_params"] == native["active_params"]


def test_verify_matches_and_reports_a_differing_group(capsys, configs_dir, monkeypatch):
    pytest.importorskip("transformers")
    path = str(configs_dir / "DeepSeek-V3.json")
    rec = run_json(capsys, path, "--verify")
    assert rec["verify"]["match"] and rec["verify"]["differ"] == []
    assert rec["verify"]["groups"]["total"]["transformers"] == 671_026_419_200
    import moescale.spec.hf_meta as hf_meta

    real = hf_meta.meta_param_groups

    def off_by_one(cfg):
        groups = real(cfg)
        return {**groups, "norms": groups["norms"] + 1, "total": groups["total"] + 1}

    monkeypatch.setattr(hf_meta, "meta_param_groups", off_by_one)
    code, out, err = _count(capsys, path, "--verify")
    assert code == 1 and "DIFFERS" in out
    assert "groups differing from transformers: norms, total" in err


@pytest.mark.parametrize(("cfg", "needle"), [
    ({"model_type": "nosuch_model", "hidden_size": 8},
     "'nosuch_model' is known neither to moescale nor to the installed transformers"
     if transformers_available() else "unsupported HF model_type 'nosuch_model'"),
    ({"model_type": "mixtral", "hidden_size": 64, "num_hidden_layers": 2,
      "num_attention_heads": [4], "vocab_size": 8}, "'num_attention_heads' (model_type "
     "'mixtral') must be an int >= 1; got [4]"),
    ({"model_type": 7}, "'model_type' must be a string; got 7"),
    ({"model_type": "deepseek_v3", "hidden_size": 64, "num_attention_heads": 4,
      "num_hidden_layers": 1e30, "vocab_size": 8},
     "'num_hidden_layers' (model_type 'deepseek_v3') must be an int in [1, 1000000]; got 1e+30"),
])
def test_bad_hf_configs_one_line_exit_2(tmp_path, capsys, cfg, needle):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    code, out, err = _count(capsys, str(path))
    lines = err.strip().splitlines()
    assert code == 2 and out == "" and len(lines) == 1 and needle in lines[0], err


def test_via_and_verify_need_an_hf_config(capsys):
    toml = str(REPO / "examples/tiny-dense.toml")
    for args in (["--via", "transformers"], ["--verify"], ["--via", "nope"]):
        code, _, err = _count(capsys, toml, *args)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
