"""``moescale train`` / ``moescale bench train``: bad input exits 2 with one line; JSON keys."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _train_helpers import TINY_DENSE, write_spec

from moescale.cli import main


def _exit(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return exc.value.code, capsys.readouterr()


@pytest.fixture()
def spec(tmp_path):
    return str(write_spec(tmp_path, TINY_DENSE))


@pytest.fixture()
def cache(token_cache, monkeypatch):
    monkeypatch.setenv("MOESCALE_CACHE", token_cache)


def _one_line_error(captured, *needles):
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), captured.err
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize("compute", ["0", "-1e9", "nan", "lots"])
def test_non_positive_or_bad_compute(compute, spec, tmp_path, capsys):
    code, cap = _exit(["train", spec, "--compute", compute, "--out", str(tmp_path / "o")], capsys)
    assert code == 2
    _one_line_error(cap, "compute")


def test_missing_corpus(spec, tmp_path, capsys, cache):
    code, cap = _exit(["train", spec, "--compute", "1e9", "--out", str(tmp_path / "o"),
                       "--corpus", str(tmp_path / "nowhere")], capsys)
    assert code == 2
    _one_line_error(cap, "nowhere")


def test_empty_corpus(spec, tmp_path, capsys, cache):
    (tmp_path / "empty").mkdir()
    code, cap = _exit(["train", spec, "--compute", "1e9", "--out", str(tmp_path / "o"),
                       "--corpus", str(tmp_path / "empty")], capsys)
    assert code == 2
    _one_line_error(cap)


def test_corpus_too_small_suggests_epochs(spec, tmp_path, capsys, cache):
    folder = tmp_path / "small"
    folder.mkdir()
    for i in range(40):  # ~40 documents so the validation split is not empty
        (folder / f"d{i}.txt").write_text(f"document {i}: " + "the quick brown fox. " * 40)
    code, cap = _exit(["train", spec, "--compute", "1e12", "--seq-len", "32", "--out",
                       str(tmp_path / "o"), "--corpus", str(folder)], capsys)
    assert code == 2
    _one_line_error(cap, "too small", "--epochs")


def test_unknown_option(spec, tmp_path, capsys):
    code, _ = _exit(["train", spec, "--compute", "1e9", "--out", str(tmp_path / "o"),
                     "--frobnicate", "3"], capsys)
    assert code == 2


def test_unwritable_out_dir(spec, tmp_path, capsys, cache):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code, cap = _exit(["train", spec, "--compute", "1e9", "--out", str(blocker / "run")],
                      capsys)
    assert code == 2
    _one_line_error(cap, "must be inside a folder", "is a file")


def test_missing_spec(tmp_path, capsys):
    code, cap = _exit(["train", str(tmp_path / "nope.toml"), "--compute", "1e9", "--out",
                       str(tmp_path / "o")], capsys)
    assert code == 2
    _one_line_error(cap, "nope.toml")


def test_vocab_too_small_for_tokenizer(tmp_path, capsys, cache):
    spec = write_spec(tmp_path, TINY_DENSE.replace("vocab_size = 257", "vocab_size = 200"))
    code, cap = _exit(["train", str(spec), "--compute", "1e9", "--out", str(tmp_path / "o")],
                      capsys)
    assert code == 2
    _one_line_error(cap, "vocab_size")


def test_train_json_and_bench_keys(spec, tmp_path, capsys, cache):
    with pytest.raises(SystemExit) as exc:
        main(["train", spec, "--compute", "1e9", "--seq-len", "32", "--lr", "3e-3",
              "--out", str(tmp_path / "o"), "--json"])
    assert exc.value.code in (0, None)
    record = json.loads(capsys.readouterr().out)
    for key in ("val_loss", "train_loss", "tokens", "flops", "flops_per_token", "params_total",
                "params_active", "spec", "hyperparameters", "corpus_hash", "wall_time_s",
                "tokens_per_s", "mfu", "status"):
        assert key in record, key
    # the same folder again: the finished record, as a table with the final evaluation
    with pytest.raises(SystemExit) as exc:
        main(["train", spec, "--compute", "1e9", "--seq-len", "32", "--lr", "3e-3",
              "--out", str(tmp_path / "o")])
    out = capsys.readouterr().out
    assert f"{record['loss']:.4f} ± {record['val_loss_se']:.4f}" in out
    assert f"{record['val_tokens']} ({record['evaluation']['docs']})" in out
    torch.set_flush_denormal(False)
    with pytest.raises(SystemExit) as exc:
        main(["bench", "train", spec, "--steps", "2", "--rounds", "1", "--seq-len", "32",
              "--micro-batch", "4", "--no-compile", "--json"])
    assert exc.value.code in (0, None)
    assert np.float64(5e-324) * np.float64(1.0) > 0  # the benchmark's flushing was undone
    bench = json.loads(capsys.readouterr().out)
    for key in ("tokens_per_s", "model_flops_per_s", "peak_flops_per_s", "mfu", "mfu_cpu_time"):
        assert bench[key] > 0, key
    assert bench["model_flops_per_s"] == pytest.approx(
        bench["tokens_per_s"] * bench["flops_per_token"])
