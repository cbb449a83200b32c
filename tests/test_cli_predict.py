"""``moescale predict``: JSON keys, warnings on stderr, exit codes."""

from __future__ import annotations

import json

import pytest

from moescale.cli import main
from moescale.laws import HyperparameterLaw, published_el
from moescale.spec import flops_per_token, save_spec
from moescale.spec.presets import el_dense_6_1b, ling_mini_2


def run(capsys, *args):
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def run_json(capsys, *args):
    code, out, err = run(capsys, *args, "--json")
    assert code == 0, err
    return json.loads(out), err


def test_predict_el_json(capsys):
    rec, err = run_json(capsys, "predict", "el", "--activation-ratio", "0.03125",
                        "--granularity", "12", "--compute", "1e22")
    assert {"el", "law", "in_fitted_range", "inputs", "dense_equivalent", "provenance",
            "conventions", "break_even_compute"} <= set(rec)
    assert round(rec["el"], 2) == 7.22 and rec["law"] == "ling2025"
    assert rec["in_fitted_range"] is False  # EL >= 6: the paper's held-out region
    assert "EL < 6" in err and "warning" in err
    eq = rec["dense_equivalent"]
    assert eq["dense_compute"] == pytest.approx(1e22 * rec["el"])
    assert eq["dense_flops_per_token"] == pytest.approx(eq["dense_compute"] / eq["tokens"])


def test_predict_el_inside_range_has_no_warning(capsys):
    rec, err = run_json(capsys, "predict", "el", "-A", "0.125", "-G", "8", "-C", "1e20")
    assert rec["in_fitted_range"] is True and err == ""
    assert rec["el"] == pytest.approx(published_el(0.125, 8, 1e20))


def test_predict_el_out_of_range_warns_with_range(capsys):
    rec, err = run_json(capsys, "predict", "el", "-A", "0.001", "-G", "64", "-C", "1e20")
    assert rec["in_fitted_range"] is False
    assert "activation_ratio" in err and "granularity" in err and "[2, 16]" in err


def test_predict_el_from_config(capsys, tmp_path):
    spec = ling_mini_2()
    path = tmp_path / "mini.toml"
    save_spec(spec, path)
    rec, _ = run_json(capsys, "predict", "el", "--config", str(path), "--tokens", "20e12")
    m = flops_per_token(spec, seq_len=4096)
    assert rec["inputs"]["activation_ratio"] == 8 / 256
    assert rec["inputs"]["granularity"] == 2 * 2048 / 512
    assert rec["inputs"]["compute"] == pytest.approx(m * 20e12)
    assert rec["el"] == pytest.approx(published_el(8 / 256, 8, m * 20e12))
    assert rec["dense_equivalent"]["tokens"] == 20e12


def test_predict_dense_equivalent(capsys):
    rec, _ = run_json(capsys, "predict", "dense-equivalent", "-A", "0.03125", "-G", "12",
                      "-C", "1e22", "--tokens", "1e12")
    assert rec["dense_flops_per_token"] == pytest.approx(1e10 * published_el(1 / 32, 12, 1e22))


def test_predict_hparams(capsys, tmp_path):
    rec, _ = run_json(capsys, "predict", "hparams", "--compute", "1e20")
    assert rec["learning_rate"] == pytest.approx(1.013e-3, rel=5e-4)
    assert rec["batch_tokens"] == pytest.approx(1.35e6, rel=3e-3)
    path = tmp_path / "mini.toml"
    save_spec(ling_mini_2(), path)
    rec, _ = run_json(capsys, "predict", "hparams", "--config", str(path), "--tokens", "20e12")
    assert rec["learning_rate"] == pytest.approx(3.36e-4, rel=0.01)
    m = flops_per_token(ling_mini_2(), seq_len=4096)
    expected = HyperparameterLaw.published().batch_tokens(m * 2e13)
    assert rec["batch_tokens"] == pytest.approx(expected)


def test_predict_allocation(capsys):
    rec, _ = run_json(capsys, "predict", "allocation", "--compute", "1e21", "--arch", "dense")
    assert rec["flops_per_token"] == pytest.approx(0.0655 * 1e21**0.5422)
    assert rec["tokens"] == pytest.approx(15.2582 * 1e21**0.4578)
    rec, _ = run_json(capsys, "predict", "allocation", "--compute", "1e21", "--arch", "moe")
    assert rec["tokens"] == pytest.approx(5.2232 * 1e21**0.4905)


def test_predict_loss(capsys, tmp_path):
    rec, _ = run_json(capsys, "predict", "loss", "--law", "fg", "--params", "4.3e9",
                      "--tokens", "4.37e9", "--granularity-fg", "8")
    assert rec["loss"] == pytest.approx(
        0.47 + (2.1 / 8**0.58 + 18.1) * 4.3e9**-0.115 + 30.8 * 4.37e9**-0.147)
    assert "non-embedding" in rec["N_convention"]
    rec, _ = run_json(capsys, "predict", "loss", "--law", "joint", "-N", "1e9", "-D", "2e10",
                      "-E", "8")
    assert "embeddings" in rec["N_convention"] and rec["experts"] == 8
    rec, _ = run_json(capsys, "predict", "loss", "--law", "chinchilla", "-N", "7e10",
                      "-D", "1.4e12")
    assert rec["loss"] == pytest.approx(1.69 + 406.4 * 7e10**-0.34 + 410.7 * 1.4e12**-0.28)
    path = tmp_path / "dense.toml"
    save_spec(el_dense_6_1b(), path)
    rec, _ = run_json(capsys, "predict", "loss", "--law", "epoch", "--config", str(path),
                      "-D", "1e12")
    assert rec["params"] > 6.1e9  # total params, embeddings included


def test_predict_optimum(capsys):
    rec, _ = run_json(capsys, "predict", "optimum", "--law", "fg", "--compute", "2.95e18")
    assert rec["granularity_fg"] == 8
    rec, _ = run_json(capsys, "predict", "optimum", "--law", "joint", "-C", "1e21", "-E", "8")
    assert rec["active_params"] == pytest.approx(3.8e9, rel=0.02)


@pytest.mark.parametrize(
    "args",
    [
        ["predict", "el", "-A", "2", "-G", "8", "-C", "1e20"],
        ["predict", "el", "-A", "0", "-G", "8", "-C", "1e20"],
        ["predict", "el", "-A", "0.1", "-G", "0", "-C", "1e20"],
        ["predict", "el", "-A", "0.1", "-G", "-3", "-C", "1e20"],
        ["predict", "el", "-A", "0.1", "-G", "8", "-C", "0"],
        ["predict", "el", "-A", "abc", "-G", "8", "-C", "1e20"],
        ["predict", "el", "-A", "0.1", "-G", "8"],
        ["predict", "el", "-C", "1e20", "--config", "x.toml", "--tokens", "1e9"],
        ["predict", "el", "-A", "0.1", "-G", "8", "-C", "1e20", "--law", "nope"],
        ["predict", "hparams", "--compute", "1e20", "--config", "x.toml", "--tokens", "1e9"],
        ["predict", "hparams", "--compute", "-5"],
        ["predict", "allocation", "--compute", "1e20", "--arch", "hybrid"],
        ["predict", "loss", "--law", "fg", "--params", "1e9", "--tokens", "1e10"],
        ["predict", "loss", "--law", "kaplan", "--params", "1e9", "--tokens", "1e10"],
        ["design", "--compute", "nan"],
        ["design", "--compute", "1e21", "--law", "kaplan"],
        ["design", "--compute", "1e21", "--memory-gb", "1e-3"],
    ],
)
def test_bad_input_exits_2_with_one_line(capsys, args):
    code, out, err = run(capsys, *args)
    assert code == 2
    assert out == ""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err


def test_config_dense_spec_is_rejected_for_el(capsys, tmp_path):
    path = tmp_path / "dense.toml"
    save_spec(el_dense_6_1b(), path)
    code, _, err = run(capsys, "predict", "el", "--config", str(path), "--tokens", "1e12")
    assert code == 2 and "dense" in err


def test_predict_el_from_hf_config(capsys, configs_dir):
    rec, _ = run_json(capsys, "predict", "el", "--config",
                      str(configs_dir / "Qwen3-30B-A3B.json"), "--tokens", "36e12")
    assert rec["inputs"]["activation_ratio"] == 8 / 128
    assert rec["inputs"]["granularity"] == pytest.approx(2 * 2048 / 768)
    assert rec["inputs"]["compute"] == pytest.approx(rec["inputs"]["flops_per_token"] * 36e12)


def test_predict_loss_notes_convention_mismatch(capsys, configs_dir):
    code, out, err = run(capsys, "predict", "loss", "--law", "joint", "--config",
                         str(configs_dir / "Mixtral-8x7B-v0.1.json"), "--tokens", "1e12")
    assert code == 0 and "top-1" in err and "2.7e+09" in err


def test_predict_el_below_break_even_notes_it(capsys):
    rec, err = run_json(capsys, "predict", "el", "-A", "0.125", "-G", "2", "-C", "1e14")
    assert rec["el"] < 1 and rec["break_even_compute"] == pytest.approx(7e14, rel=0.02)
    assert "break-even" in err and rec["notes"]
