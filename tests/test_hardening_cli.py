"""Issue #14, one error path: every user-caused failure is one ``error:`` line on stderr
naming the field, the allowed values and the value, exit code 2; options a command does
not use are refused, never ignored."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import typer

from moescale.cli import main
from moescale.cli.common import run_app
from moescale.errors import ConfigError, DataError
from moescale.fit import read_runs

REPO = Path(__file__).resolve().parents[1]


def _error(capsys, *argv: str) -> str:
    """Run the CLI; assert exit 2 with exactly one ``error:`` line; return it."""
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    cap = capsys.readouterr()
    lines = cap.err.strip().splitlines()
    assert exc.value.code == 2 and len(lines) == 1 and lines[0].startswith("error: "), cap.err
    return lines[0]


@pytest.fixture()
def clark(data_dir) -> str:
    return str(data_dir / "clark2022_routed_moe_runs_sldbench.csv")


@pytest.fixture()
def run_table(tmp_path) -> Path:
    path = tmp_path / "runs.csv"
    rows = [{"run": f"d{i}", "arch": "dense", "compute": c, "loss": 4.0 * c ** -0.05}
            for i, c in enumerate((1e18, 3e18, 1e19, 3e19))]
    rows += [{"run": f"m{i}", "arch": "moe", "compute": c, "loss": 3.7 * c ** -0.05,
              "activation_ratio": 0.125, "granularity": 2.0}
             for i, c in enumerate((1e18, 1e19))]
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


# --------------------------------------------------------------------- fit / leverage
def test_fit_el_by_unknown_column(clark, capsys):  # was a KeyError traceback
    line = _error(capsys, "fit", "el", clark, "--form", "A", "--by", "nocolumn")
    assert "'by' must be a column" in line and "'nocolumn'" in line


def test_fit_el_options_of_the_other_form_are_refused(clark, capsys):
    assert "'by' applies to the separable forms" in _error(
        capsys, "fit", "el", clark, "--by", "num_experts")
    assert "'heldout_compute' applies to form 'joint' only" in _error(
        capsys, "fit", "el", clark, "--form", "A", "--heldout-compute", "1e20")
    assert "'use_granularity' applies to form 'joint' only" in _error(
        capsys, "fit", "el", clark, "--form", "C", "--granularity", "on")


def test_leverage_loss_column_must_be_a_loss(clark, capsys):  # printed EL 0.00 everywhere
    line = _error(capsys, "leverage", clark, "--loss-column", "step")
    assert "'loss_column' must be one of" in line and "'step'" in line


def test_loss_column_is_refused_for_other_files(run_table, capsys):  # was ignored
    line = _error(capsys, "leverage", str(run_table), "--loss-column", "loss_c4")
    assert "'loss_column' applies to Clark run files only" in line
    with pytest.raises(ConfigError, match="Clark run files only"):
        read_runs(run_table, loss_column="loss_validation")
    assert len(read_runs(run_table)) == 6


def test_run_table_activation_ratio_above_one_is_refused(run_table, capsys):
    df = pd.read_csv(run_table)
    df.loc[df["run"] == "m1", "activation_ratio"] = 5
    df.to_csv(run_table, index=False)
    with pytest.raises(DataError, match=r"'activation_ratio'.*\(0, 1\]; got 5.0.*'m1'"):
        read_runs(run_table)
    assert "'activation_ratio'" in _error(capsys, "leverage", str(run_table))


# --------------------------------------------------------------------- predict
def test_experts_must_be_an_integer(capsys):
    for cmd in (["predict", "loss", "--law", "joint", "-N", "1e9", "-D", "2e10"],
                ["predict", "optimum", "--law", "joint", "-C", "1e22"]):
        line = _error(capsys, *cmd, "-E", "2.5")
        assert line == "error: 'experts' must be an int in [1, inf]; got 2.5"


def test_options_a_law_does_not_take_are_refused(capsys):
    line = _error(capsys, "predict", "loss", "--law", "chinchilla", "-N", "1e9", "-D", "2e10",
                  "-E", "8")
    assert "'experts' does not apply to law 'chinchilla'" in line
    line = _error(capsys, "predict", "optimum", "--law", "chinchilla", "-C", "1e22", "-E", "8")
    assert "'experts' does not apply to law 'chinchilla'" in line
    line = _error(capsys, "predict", "loss", "--law", "chinchilla", "-N", "1e9", "-D", "2e10",
                  "--granularity-fg", "2")
    assert "'granularity_fg' does not apply" in line
    line = _error(capsys, "predict", "optimum", "--law", "fg", "-C", "1e22", "-E", "8")
    assert "'experts' does not apply to law 'fg'" in line


@pytest.mark.parametrize("G", ["1e300", "1.1754943508222875e-38"])
def test_predict_el_extreme_granularity_names_the_field(G):
    # was a numpy RuntimeWarning and then "'compute' ... got 0.0"
    proc = subprocess.run(
        [sys.executable, "-W", "default", "-m", "moescale", "predict", "el", "-A", "0.1",
         "-G", G, "-C", "1e20"], capture_output=True, text=True, timeout=120,
        cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: 'granularity' must be a number in [1e-06, 1e+06]; " \
                                  f"got {float(G):g}"


# --------------------------------------------------------------------- specs / train
def test_dense_spec_without_d_ffn_says_it_is_missing(tmp_path, capsys):
    text = (REPO / "examples" / "tiny-dense.toml").read_text()
    spec = tmp_path / "nodffn.toml"
    spec.write_text("\n".join(ln for ln in text.splitlines() if not ln.startswith("d_ffn")))
    line = _error(capsys, "count", str(spec))
    assert "'d_ffn'" in line and "is required for a dense spec" in line
    assert "got 0" not in line


def test_fsdp_on_cpu_message_matches_the_exit(tmp_path, capsys):
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA machine runs FSDP")
    line = _error(capsys, "train", str(REPO / "examples" / "tiny-dense.toml"),
                  "--compute", "1e9", "--fsdp", "--out", str(tmp_path / "r"))
    assert "'fsdp' needs CUDA devices; got device 'cpu'" in line
    assert "the default DDP is used" not in line


# --------------------------------------------------------------------- the error path
def test_usage_errors_are_one_line(capsys):
    line = _error(capsys, "count", "--bogus")
    assert line == "error: No such option: --bogus (see 'moescale count --help')"
    line = _error(capsys, "sweep", "run", "x.toml", "--workers", "many", "--store", "s.db")
    assert "'--workers'" in line and "'many'" in line


def test_os_errors_about_user_paths_are_one_line(capsys):
    app = typer.Typer()

    @app.command()
    def write(path: str) -> None:
        raise PermissionError(13, "Permission denied", path)

    @app.command()
    def bug() -> None:
        raise OSError(5, "Input/output error")  # not caused by the user: a traceback

    with pytest.raises(SystemExit) as exc:
        run_app(app, ["write", "/x/y"])
    assert exc.value.code == 2
    assert capsys.readouterr().err == "error: Permission denied: /x/y\n"
    with pytest.raises(OSError, match="Input/output"):
        run_app(app, ["bug"])


def test_success_exits_zero(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["predict", "hparams", "-C", "1e20", "--json"])
    assert exc.value.code == 0
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("budgets, sizes, field", [
    ("[2.225073858507203e-309]", "[1.0]", "'sweep.budgets[0]' must be a number in [1e+06"),
    ("[8181270849295.0]", "[2.7361684954443844e+302]", "'dense.sizes[0]' must be a number in"),
])
def test_sweep_spec_extremes_are_one_line(tmp_path, capsys, budgets, sizes, field):
    # ZeroDivisionError / math domain error tracebacks before (found by the fuzz test)
    spec = tmp_path / "s.toml"
    spec.write_text(f'[sweep]\nname = "s"\nbudgets = {budgets}\n[dense]\nsizes = {sizes}\n')
    assert field in _error(capsys, "sweep", "plan", str(spec))


def test_flat_dense_frontier_is_one_line_not_inf(tmp_path, capsys):
    # numpy overflow warning and EL = inf before (found by the fuzz test)
    path = tmp_path / "flat.csv"
    path.write_text("run,arch,compute,loss\nr0,dense,1e+18,2.0\nr1,moe,1e+18,2.0\n"
                    "r2,dense,3e+18,2.0\nr3,moe,1e+18,3.0\n")
    line = _error(capsys, "fit", "el", str(path), "--form", "C")
    assert "dense frontier (power-law) cannot reach loss 3" in line
