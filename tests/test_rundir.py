"""Run folders: validated before anything is written; links refused; locked while held."""

from __future__ import annotations

import json
import os

import pytest

from moescale.errors import ConfigError, DataError
from moescale.train.rundir import claim_run_dir, inspect_run_dir

NAMES = ("moescale_run.json", "config.json")


def _record(folder, name="moescale_run.json", key=None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps({"run_key": key or {"spec": {}, "train": {}}}))


def test_out_path_refusals(tmp_path):
    with pytest.raises(ConfigError, match="'out' must be a path; got ''"):
        inspect_run_dir("", NAMES)
    with pytest.raises(ConfigError, match="names of at most 255 bytes; got a name of 300"):
        inspect_run_dir(tmp_path / ("x" * 300), NAMES)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="must be a folder .* is a file"):
        inspect_run_dir(tmp_path / "file", NAMES)
    (tmp_path / "dangling").symlink_to(tmp_path / "missing")
    with pytest.raises(ConfigError, match=r"is a dangling symlink \(to .*missing"):
        inspect_run_dir(tmp_path / "dangling", NAMES)
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert inspect_run_dir(tmp_path / "link", NAMES).record is None  # a link to a folder


def test_inspect_accepts_absent_empty_and_runs(tmp_path):
    assert inspect_run_dir(tmp_path / "new" / "deeper", NAMES).record is None
    assert not (tmp_path / "new").exists()  # nothing created
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / ".lock").write_text("")  # a sweep worker's lock
    (empty / ".moescale_run.json.ab12.tmp").write_text("{")  # a killed first write
    assert inspect_run_dir(empty, NAMES).record is None
    _record(tmp_path / "run", "config.json")  # schema-1 name
    _, path, record = inspect_run_dir(tmp_path / "run", NAMES)
    assert path.name == "config.json" and "run_key" in record


def test_inspect_refuses_what_is_not_a_run(tmp_path):
    folder = tmp_path / "other"
    folder.mkdir()
    (folder / "model.pt").write_bytes(b"x")
    (folder / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(ConfigError, match=r"not empty and is not a moescale run .*holds "
                                          r"metrics\.jsonl, model\.pt"):
        inspect_run_dir(folder, NAMES)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))  # an HF config
    with pytest.raises(ConfigError, match="not a moescale run"):
        inspect_run_dir(folder, NAMES)
    (folder / "moescale_run.json").write_text("{not json")
    with pytest.raises(DataError, match="cannot read run record"):
        inspect_run_dir(folder, NAMES)


def test_inspect_refuses_links_inside(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n" * 1000)
    run = tmp_path / "run"
    _record(run)
    (run / "metrics.jsonl").symlink_to(victim)
    with pytest.raises(ConfigError, match=r"symbolic link 'metrics\.jsonl' -> .*victim\.txt"):
        inspect_run_dir(run, NAMES)
    (run / "metrics.jsonl").unlink()
    (run / "tb").mkdir()
    (run / "tb" / "events.x").symlink_to(victim)
    with pytest.raises(ConfigError, match="symbolic link 'events.x'"):
        inspect_run_dir(run, NAMES)
    assert victim.read_text() == "precious\n" * 1000


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_inspect_refuses_unwritable_parent(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(ConfigError, match="must be in a writable folder; .* is read-only"):
            inspect_run_dir(ro / "run", NAMES)
    finally:
        ro.chmod(0o755)


def test_claim_creates_locks_and_cleans(tmp_path):
    run = tmp_path / "a" / "run"
    with claim_run_dir(run):
        assert run.is_dir()
        with (pytest.raises(ConfigError, match="in use by another moescale process"),
              claim_run_dir(run)):
            pass
    (run / ".checkpoint.pt.x1y2.tmp").write_bytes(b"0" * 1000)
    (run / "keep.txt").write_text("x")
    with claim_run_dir(run):
        assert sorted(p.name for p in run.iterdir()) == ["keep.txt"]


def test_metrics_log_never_writes_through_a_link(tmp_path):
    """Defence in depth behind the folder check: the log opens with O_NOFOLLOW."""
    from moescale.train.run_log import MetricsLog

    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n" * 100)
    (tmp_path / "metrics.jsonl").symlink_to(victim)
    log = MetricsLog(tmp_path / "metrics.jsonl")
    with pytest.raises(DataError, match="is a symbolic link; refusing to write through it"):
        log.truncate(0)
    with pytest.raises(DataError, match="is a symbolic link"):
        log.write({"step": 1})
    assert victim.read_text() == "precious\n" * 100
