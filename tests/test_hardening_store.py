"""Issue #14, stores and output paths: escaped SQLite URIs, symlinked and read-only
stores, the WAL checkpointed on close, ``store backup``, refused output paths, options
checked before the store is created, and truthful sweep reports."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import tempfile
from pathlib import Path

import pytest

from moescale.cli import main
from moescale.errors import ConfigError, DataError
from moescale.paths import check_output_dir, check_output_file, sqlite_uri
from moescale.sweep.config import parse_sweep_config
from moescale.sweep.execute import run_sweep
from moescale.sweep.planner import plan_sweep
from moescale.sweep.store import open_store

REPO = Path(__file__).resolve().parents[1]
DOC = {"sweep": {"name": "h", "budgets": [1e12]}, "dense": {"sizes": [0.25, 4]}}
SPEC_TOML = '[sweep]\nname = "h"\nbudgets = [1e12]\n[dense]\nsizes = [0.25, 4]\n'


def _plan():
    return plan_sweep(parse_sweep_config(DOC))


def fake_run(payload):
    """Stand-in for training that, like the trainer, leaves result.json in its folder."""
    out = Path(payload["out_dir"])
    with open(out / "calls.txt", "a") as fh:
        fh.write(payload["name"] + "\n")
    result = {"status": "completed", "loss": 3.5, "tokens": 100,
              "flops": payload["config"]["compute"]}
    (out / "result.json").write_text(json.dumps(result))
    return {"result": result, "curve": []}


def _fill(path: Path) -> None:
    with open_store(path) as st:
        run_sweep(_plan(), st, backend="inline", run_fn=fake_run)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    cap = capsys.readouterr()
    return exc.value.code or 0, cap.out, cap.err


def _one_line_error(capsys, *argv: str) -> str:
    code, _, err = _cli(capsys, *argv)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, err)
    return lines[0]


# --------------------------------------------------------------------- URIs and paths
def test_sqlite_uri_escapes_uri_syntax():
    uri = sqlite_uri("/d/runs#1?x%.db", readonly=True)
    assert uri == "file:///d/runs%231%3Fx%25.db?mode=ro"
    assert sqlite_uri("/d/a.db", immutable=True) == "file:///d/a.db?mode=ro&immutable=1"


@pytest.mark.parametrize("name", ["runs#1.db", "a?b.db", "100%.db"])
def test_store_with_uri_characters_reopens(tmp_path, name):
    path = tmp_path / name
    _fill(path)
    _fill(path)  # the second open read "not a moescale run store" before the fix
    with open_store(path, readonly=True) as st:
        assert st.count("done") == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, f"{name}.runs"])


def test_symlinked_store_keeps_runs_beside_the_real_file(tmp_path):
    real = tmp_path / "data" / "s.db"
    real.parent.mkdir()
    _fill(real)
    link = tmp_path / "link.db"
    link.symlink_to(real)
    with open_store(link) as st:
        assert st.path == real
        assert st.runs_dir == real.parent / "s.db.runs"
        out = run_sweep(_plan(), st, backend="inline", run_fn=fake_run)
    assert len(out.skipped) == 2
    assert not (tmp_path / "link.db.runs").exists()


def test_readonly_open_creates_no_side_files(tmp_path):
    path = tmp_path / "s.db"
    _fill(path)
    before = sorted(os.listdir(tmp_path))
    with open_store(path, readonly=True) as st:
        assert st.count("done") == 2
    assert sorted(os.listdir(tmp_path)) == before == ["s.db", "s.db.runs"]


@contextlib.contextmanager
def read_only(folder: Path):
    """Make ``folder`` unwritable, also for root (``chattr +i``: root ignores modes)."""
    if os.geteuid() == 0:
        if not shutil.which("chattr") or subprocess.run(
                ["chattr", "+i", str(folder)], capture_output=True).returncode:
            pytest.skip("running as root without chattr: cannot make a folder read-only")
        undo = ["chattr", "-i", str(folder)]
    else:
        folder.chmod(0o555)
        undo = None
    try:
        yield
    finally:
        if undo:
            subprocess.run(undo, check=True)
        else:
            folder.chmod(0o755)


def test_store_on_readonly_storage_is_readable(tmp_path, capsys):
    folder = tmp_path / "ro"
    folder.mkdir()
    _fill(folder / "s.db")
    with read_only(folder):
        with pytest.raises(OSError):  # really read-only
            (folder / "probe").touch()
        # read "not a moescale run store (unable to open database file)" before the fix
        with open_store(folder / "s.db", readonly=True) as st:
            assert st.count("done") == 2
        code, out, err = _cli(capsys, "store", "export", str(folder / "s.db"), "--out",
                              str(tmp_path / "x.csv"))
        assert code == 0, err
        assert len((tmp_path / "x.csv").read_text().splitlines()) == 3
        # writing next to it is one line naming the option
        line = _one_line_error(capsys, "store", "export", str(folder / "s.db"))
        assert "'--out' must be in a writable folder" in line
        spec = tmp_path / "s.toml"
        spec.write_text(SPEC_TOML)
        line = _one_line_error(capsys, "sweep", "run", str(spec), "--store",
                               str(folder / "new.db"))
        assert "'--store' must be in a writable folder" in line
        line = _one_line_error(capsys, "report", str(folder / "s.db"), "--out",
                               str(folder / "rep"))
        assert "'--out' must be in a writable folder" in line
    assert sorted(os.listdir(folder)) == ["s.db", "s.db.runs"]


# --------------------------------------------------------------------- WAL and backup
def test_close_checkpoints_the_wal_so_the_file_alone_is_the_store(tmp_path):
    path = tmp_path / "s.db"
    reader = None
    with open_store(path) as st:
        run_sweep(_plan(), st, backend="inline", run_fn=fake_run)
        reader = sqlite3.connect(path)  # a second connection: SQLite alone would not
        reader.execute("SELECT 1").fetchall()  # checkpoint while it is open
    copy = tmp_path / "copy" / "s.db"
    copy.parent.mkdir()
    shutil.copy(path, copy)  # the one file, without -wal
    reader.close()
    with open_store(copy, readonly=True) as st:
        assert st.count("done") == 2


def test_backup_copies_uncheckpointed_runs_into_one_file(tmp_path, capsys):
    path = tmp_path / "s.db"
    _fill(path)
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("PRAGMA wal_autocheckpoint = 0")
    writer.execute("UPDATE runs SET loss = 1.25")  # committed, lives only in s.db-wal
    assert (tmp_path / "s.db-wal").stat().st_size > 0
    code, out, _ = _cli(capsys, "store", "backup", str(path), str(tmp_path / "b.db"))
    writer.close()
    assert code == 0 and out.strip() == str(tmp_path / "b.db")
    assert not (tmp_path / "b.db-wal").exists()
    con = sqlite3.connect(tmp_path / "b.db")
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert con.execute("SELECT COUNT(*), MIN(loss) FROM runs").fetchone() == (2, 1.25)
    con.close()
    before = _digest(path)
    assert "must not be the run store" in _one_line_error(
        capsys, "store", "backup", str(path), str(path))
    assert _digest(path) == before


# --------------------------------------------------------------------- output paths
def test_export_refuses_the_store_a_device_and_a_folder(tmp_path, capsys):
    path = tmp_path / "own.db"
    _fill(path)
    before = _digest(path)
    assert "must not be the run store" in _one_line_error(
        capsys, "store", "export", str(path), "--format", "csv", "--out", str(path))
    assert "is a device" in _one_line_error(
        capsys, "store", "export", str(path), "--out", "/dev/null")
    (tmp_path / "dir.csv").mkdir()
    assert "is a folder" in _one_line_error(
        capsys, "store", "export", str(path), "--out", str(tmp_path / "dir.csv"))
    assert "at most 255 bytes" in _one_line_error(
        capsys, "store", "export", str(path), "--out", str(tmp_path / ("x" * 300 + ".csv")))
    assert _digest(path) == before
    assert Path("/dev/null").is_char_device()


def test_check_output_paths():
    with pytest.raises(ConfigError, match="symlink"):
        d = Path(tempfile.mkdtemp())
        (d / "l.csv").symlink_to(d / "target.csv")
        check_output_file(d / "l.csv")
    (d / "f.txt").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        check_output_dir(d / "f.txt")
    with pytest.raises(ConfigError, match="dangling symlink"):
        (d / "dl").symlink_to(d / "nowhere")
        check_output_dir(d / "dl")
    assert check_output_dir(d / "new" / "deeper") == d / "new" / "deeper"


def test_report_out_existing_file_is_one_line(tmp_path, capsys):
    path = tmp_path / "s.db"
    _fill(path)
    (tmp_path / "r.html").write_text("keep")
    assert "must be a folder" in _one_line_error(
        capsys, "report", str(path), "--out", str(tmp_path / "r.html"))
    assert (tmp_path / "r.html").read_text() == "keep"


# --------------------------------------------------------------------- sweep run options
def test_sweep_run_store_dev_null_is_one_line(tmp_path, capsys):
    spec = tmp_path / "s.toml"
    spec.write_text(SPEC_TOML)
    assert "is a device" in _one_line_error(capsys, "sweep", "run", str(spec), "--store",
                                            "/dev/null")
    assert Path("/dev/null").is_char_device()


@pytest.mark.parametrize("opts, field", [(["--workers", "0"], "workers"),
                                         (["--workers", "-2"], "workers"),
                                         (["--backend", "mpi"], "backend")])
def test_bad_workers_or_backend_refused_before_the_store_exists(tmp_path, capsys, opts, field):
    spec = tmp_path / "s.toml"
    spec.write_text(SPEC_TOML)
    line = _one_line_error(capsys, "sweep", "run", str(spec), "--store",
                           str(tmp_path / "new.db"), *opts)
    assert field in line
    assert sorted(os.listdir(tmp_path)) == ["s.toml"]


def test_second_driver_on_a_locked_store_says_it_trained_nothing(tmp_path, capsys):
    spec = tmp_path / "s.toml"
    spec.write_text(SPEC_TOML)
    path = tmp_path / "s.db"
    with open_store(path) as st, st.driver_lock():
        line = _one_line_error(capsys, "sweep", "run", str(spec), "--store", str(path),
                               "--backend", "inline")
        assert "trained nothing" in line and str(os.getpid()) in line
        assert st.count("done") == 0


def test_rebuilt_store_reports_recovered_runs_not_trained(tmp_path):
    path = tmp_path / "s.db"
    _fill(path)
    path.unlink()  # the store is lost; its runs folder survives
    with open_store(path) as st:
        out = run_sweep(_plan(), st, backend="inline", run_fn=fake_run)
        assert out.completed == [] and sorted(out.recovered) == sorted(r.name for r in
                                                                      _plan().runs)
        assert st.count("done") == 2


def test_rebuilt_store_cli_line(tmp_path, capsys, monkeypatch):
    import moescale.sweep.runner as runner

    spec = tmp_path / "s.toml"
    spec.write_text(SPEC_TOML)
    path = tmp_path / "s.db"
    _fill(path)
    path.unlink()
    monkeypatch.setattr(runner, "train_run", fake_run)
    code, out, _ = _cli(capsys, "sweep", "run", str(spec), "--store", str(path),
                        "--backend", "inline")
    assert code == 0
    assert out.startswith("0 trained, 2 recorded from finished run folders")


def test_result_name_matches_the_trainer():
    from moescale.sweep.runner import RESULT_NAME
    from moescale.train.trainer import RESULT_NAME as TRAINER_RESULT

    assert RESULT_NAME == TRAINER_RESULT


def test_open_store_refuses_a_folder_and_missing(tmp_path):
    with pytest.raises(DataError, match="is a folder"):
        open_store(tmp_path)
    with pytest.raises(DataError, match="not found"):
        open_store(tmp_path / "none.db", create=False)


def test_fit_and_report_readers_take_escaped_and_readonly_paths(tmp_path):
    from moescale.fit.runs import read_store
    from moescale.report.data import load_runs

    path = tmp_path / "runs#1?%.db"
    _fill(path)
    before = sorted(os.listdir(tmp_path))
    assert len(read_store(path)) == 2
    table = load_runs(path)  # a RunTable read by moescale.fit.runs (the one store reader)
    assert len(table) == 2 and table.info["kind"] == "store"
    assert sorted(os.listdir(tmp_path)) == before  # no -wal/-shm, no stray "runs" file


@pytest.mark.parametrize("budget, field", [("1e31", "sweep.budgets[0]"), ("1e30", "tokens")])
def test_huge_budget_is_one_line_and_creates_no_store(tmp_path, capsys, budget, field):
    spec = tmp_path / "s.toml"
    # one searched size per budget (ladder = false): a 1e30 budget then overflows tokens
    spec.write_text(f'[sweep]\nname = "x"\nbudgets = [{budget}]\n[dense]\nladder = false\n')
    line = _one_line_error(capsys, "sweep", "run", str(spec), "--store", str(tmp_path / "a.db"))
    assert field in line  # was an OverflowError traceback (SQLite INTEGER) for 1e30
    assert sorted(os.listdir(tmp_path)) == ["s.toml"]


def test_demo_checks_options_and_folder_before_writing(tmp_path, capsys):
    line = _one_line_error(capsys, "demo", "--quick", "--workers", "0", "--out",
                           str(tmp_path / "d"))
    assert "'workers' must be an int in [1, 4096]; got 0" in line
    assert not (tmp_path / "d").exists()  # was created, with demo.db, before the refusal
    (tmp_path / "file").write_text("x")
    assert "must be a folder" in _one_line_error(capsys, "demo", "--quick", "--out",
                                                 str(tmp_path / "file"))
    long = str(tmp_path / ("x" * 300))
    assert "at most 255 bytes" in _one_line_error(capsys, "demo", "--quick", "--out", long)
    assert "at most 255 bytes" in _one_line_error(capsys, "report", str(tmp_path / "file"),
                                                  "--out", long)
    spec = tmp_path / "s.toml"
    spec.write_text(SPEC_TOML)
    assert "at most 255 bytes" in _one_line_error(capsys, "sweep", "run", str(spec),
                                                  "--store", long + ".db")
    assert sorted(os.listdir(tmp_path)) == ["file", "s.toml"]


def test_demo_into_a_readonly_folder_is_one_line(tmp_path, capsys):
    folder = tmp_path / "ro"
    folder.mkdir()
    with read_only(folder):
        line = _one_line_error(capsys, "demo", "--quick", "--out", str(folder / "demo"))
        assert "'--out' must be in a writable folder" in line
    assert os.listdir(folder) == []
