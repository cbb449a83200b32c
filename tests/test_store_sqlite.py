"""The SQLite run store: marker, WAL, views with the run-record columns, refusal of
foreign files (nothing written), export round trips."""

from __future__ import annotations

import hashlib
import json
import sqlite3

import pandas as pd
import pytest

from moescale.errors import ConfigError, DataError
from moescale.sweep.config import parse_sweep_config
from moescale.sweep.planner import plan_sweep
from moescale.sweep.store import (
    APPLICATION_ID,
    CURVE_COLUMNS,
    RECORD_COLUMNS,
    STORE_SCHEMA_VERSION,
    open_store,
)

DOC = {"sweep": {"name": "st", "budgets": [1e12, 3e12]}, "dense": {"rungs": 3},
       "family": [{"kind": "activation", "name": "act", "n_experts": [4, 8]}]}

SCHEMA_COLUMNS = [
    "run", "arch", "d_model", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "d_ffn",
    "n_experts", "top_k", "n_shared_experts", "d_expert", "n_dense_layers", "activation_ratio",
    "granularity", "shared_ratio", "params_total", "params_active",
    "params_total_non_embedding", "params_active_non_embedding", "flops_per_token",
    "flops_convention", "tokens", "compute", "loss", "train_loss", "learning_rate",
    "batch_tokens", "seq_len", "seed", "family", "tags", "status",
    # issue #10: budget/config/lr multiplier (sweep), evaluation uncertainty (trainer)
    "budget", "config", "lr_multiplier", "val_loss_se", "val_tokens", "eval_block_losses",
    "train_loss_last5", "flops_per_token_full",
]


@pytest.fixture()
def plan():
    return plan_sweep(parse_sweep_config(DOC))


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_record_columns_are_the_common_schema():
    assert list(RECORD_COLUMNS) == SCHEMA_COLUMNS
    assert list(CURVE_COLUMNS) == ["run", "step", "tokens", "compute", "loss"]
    try:
        from moescale.fit import runs as fit_runs
    except ImportError:
        return
    for name in ("RUN_COLUMNS", "RECORD_COLUMNS", "COLUMNS", "RUN_RECORD_COLUMNS"):
        cols = getattr(fit_runs, name, None)
        if cols is not None:
            assert list(cols) == SCHEMA_COLUMNS
            break


def test_new_store_is_marked_wal_and_has_exact_views(tmp_path, plan):
    path = tmp_path / "s.db"
    with open_store(path) as st:
        assert st.journal_mode() == "wal"
        assert st.meta()["app"] == "moescale-store"
        assert st.meta()["schema_version"] == str(STORE_SCHEMA_VERSION)
        statuses = st.sync_plan(plan)
        assert set(statuses.values()) == {"planned"}
        assert len(statuses) == len(plan.runs)
    con = sqlite3.connect(path)  # the fitting engine's reader: stdlib sqlite3 only
    assert con.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    assert con.execute("PRAGMA user_version").fetchone()[0] == STORE_SCHEMA_VERSION
    cur = con.execute("SELECT * FROM run_records")
    assert [d[0] for d in cur.description] == SCHEMA_COLUMNS
    rows = cur.fetchall()
    assert len(rows) == len(plan.runs)
    cur = con.execute("SELECT * FROM run_curves")
    assert [d[0] for d in cur.description] == ["run", "step", "tokens", "compute", "loss"]
    con.close()


def test_records_carry_architecture_and_results(tmp_path, plan):
    with open_store(tmp_path / "s.db") as st:
        st.sync_plan(plan)
        run = next(r for r in plan.runs if r.family == "act")
        st.mark_running(run.key)
        curve = [{"step": 1, "tokens": 100, "flops": 1e9, "loss": 5.0},
                 {"step": 2, "tokens": 200, "flops": 2e9, "loss": 4.0, "val_loss": 4.2}]
        st.mark_done(run.key, {"loss": 3.5, "train_loss": 3.4, "tokens": run.tokens,
                               "flops": run.compute, "compute": run.budget,
                               "val_loss_se": 0.01, "val_tokens": 65536,
                               "eval_block_losses": [3.4, 3.6], "train_loss_last5": 3.45,
                               "flops_per_token_full": 2 * run.flops_per_token}, curve, 12.0)
        rec = {r["run"]: r for r in st.records()}[run.name]
        assert rec["status"] == "done" and rec["loss"] == 3.5 and rec["train_loss"] == 3.4
        assert (rec["val_loss_se"], rec["val_tokens"], rec["train_loss_last5"]) == \
            (0.01, 65536, 3.45)
        assert json.loads(rec["eval_block_losses"]) == [3.4, 3.6]
        assert rec["flops_per_token_full"] == 2 * run.flops_per_token
        assert rec["arch"] == "moe" and rec["family"] == "act"
        assert rec["activation_ratio"] == run.spec.activation_ratio
        assert rec["granularity"] == run.spec.granularity
        assert rec["compute"] == pytest.approx(rec["flops_per_token"] * rec["tokens"])
        assert rec["flops_convention"] == "ling"
        label = run.name.split("-")[2]  # act-<budget>-<E label>-d..L..
        assert rec["tags"] == f"activation;{label};ladder" + (";control" if label == "E2" else "")
        assert rec["config"] == f"moe-E{run.spec.n_experts}-k2-s1-G2"
        assert rec["budget"] == run.budget and rec["lr_multiplier"] == 1.0 and rec["seed"] == 0
        dense = {r["run"]: r for r in st.records()}["dense-1e12-d32L1"]
        assert dense["config"] == "dense"
        assert dense["granularity"] is None and dense["activation_ratio"] == 1.0
        assert st.curves() == [{"run": run.name, "step": 2, "tokens": 200, "compute": 2e9,
                                "loss": 4.2}]
        assert st.get(run.name)["attempts"] == 1
        assert st.measured_throughput() == pytest.approx(run.compute / 12.0)
        st.mark_failed(plan.runs[0].key, "boom")
        assert st.get(plan.runs[0].name)["error"] == "boom"


def test_same_name_with_another_config_is_refused_unchanged(tmp_path, plan):
    path = tmp_path / "s.db"
    with open_store(path) as st:
        st.sync_plan(plan)
    doc = {**DOC, "sweep": {**DOC["sweep"], "seed": 1}}
    other = plan_sweep(parse_sweep_config(doc))
    with open_store(path) as st:
        before = st.records()
        with pytest.raises(ConfigError, match="different config"):
            st.sync_plan(other)
        assert st.records() == before


def test_foreign_files_are_refused_and_untouched(tmp_path):
    text = tmp_path / "notes.db"
    text.write_text("hello, not a database\n" * 10)
    other = tmp_path / "other.sqlite"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE t (x)")
    con.execute("INSERT INTO t VALUES (1)")
    con.commit()
    con.close()
    for path, match in ((text, "not an SQLite"), (other, "not a moescale run store")):
        digest = _digest(path)
        with pytest.raises(DataError, match=match):
            open_store(path)
        assert _digest(path) == digest
        assert not path.with_name(path.name + "-wal").exists()
    with pytest.raises(DataError, match="not found"):
        open_store(tmp_path / "missing.db", create=False)


def test_cli_refuses_a_foreign_store_with_exit_2(tmp_path, capsys):
    from moescale.cli import main

    bad = tmp_path / "x.db"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(SystemExit) as exc:
        main(["store", "export", str(bad)])
    assert exc.value.code == 2
    assert "not a moescale run store" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_export_round_trip(tmp_path, plan, fmt):
    with open_store(tmp_path / "s.db") as st:
        st.sync_plan(plan)
        for i, r in enumerate(plan.runs[:4]):
            st.mark_done(r.key, {"loss": 3.0 + i / 10, "tokens": r.tokens, "flops": r.compute},
                         [{"step": 5, "tokens": 10, "flops": 1e6, "val_loss": 4.0 + i}], 1.0)
        paths = st.export(tmp_path / f"runs.{fmt}", fmt)
        expected = pd.DataFrame(st.records())
    read = pd.read_csv if fmt == "csv" else pd.read_parquet
    got = read(paths[0])
    assert list(got.columns) == SCHEMA_COLUMNS
    assert len(got) == len(plan.runs)
    pd.testing.assert_frame_equal(
        got[["run", "loss", "compute", "params_total", "status"]].reset_index(drop=True),
        expected[["run", "loss", "compute", "params_total", "status"]].astype(
            {"loss": float}).reset_index(drop=True), check_dtype=False)
    curves = read(paths[1])
    assert list(curves.columns) == ["run", "step", "tokens", "compute", "loss"]
    assert len(curves) == 4


def test_cli_export(tmp_path, plan, capsys):
    from moescale.cli import main

    with open_store(tmp_path / "s.db") as st:
        st.sync_plan(plan)
    with pytest.raises(SystemExit) as exc:
        main(["store", "export", str(tmp_path / "s.db"), "--format", "parquet"])
    assert exc.value.code in (0, None)
    assert (tmp_path / "s_runs.parquet").exists()
    assert (tmp_path / "s_runs_curves.parquet").exists()
    with pytest.raises(SystemExit) as exc:
        main(["store", "export", str(tmp_path / "s.db"), "--format", "xlsx"])
    assert exc.value.code == 2


def _downgrade_to_v1(path) -> None:
    """Rewrite a store as schema version 1 wrote it: no planner/trainer columns."""
    v1 = SCHEMA_COLUMNS[:SCHEMA_COLUMNS.index("budget")]
    con = sqlite3.connect(path)
    con.execute("DROP VIEW run_records")
    for col in ("config", "lr_multiplier", "rung", "val_loss_se", "val_tokens",
                "eval_block_losses", "train_loss_last5", "flops_per_token_full"):
        con.execute(f"ALTER TABLE runs DROP COLUMN {col}")
    view = ", ".join("name AS run" if c == "run" else c for c in v1)
    con.execute(f"CREATE VIEW run_records AS SELECT {view} FROM runs ORDER BY budget, name")
    con.execute("PRAGMA user_version = 1")
    con.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    con.commit()
    con.close()


def test_a_version_1_store_is_upgraded_in_place(tmp_path, plan):
    path = tmp_path / "s.db"
    with open_store(path) as st:
        st.sync_plan(plan)
        run = plan.runs[0]
        st.mark_done(run.key, {"loss": 3.0, "tokens": run.tokens, "flops": run.compute}, [])
    _downgrade_to_v1(path)
    con = sqlite3.connect(path)
    assert "config" not in [d[0] for d in con.execute("SELECT * FROM run_records").description]
    con.close()
    with open_store(path) as st:
        assert st.meta()["schema_version"] == str(STORE_SCHEMA_VERSION) == "2"
        recs = {r["run"]: r for r in st.records()}
        assert list(next(iter(recs.values()))) == SCHEMA_COLUMNS
        for r in plan.runs:  # planner columns recovered from each run's stored spec/config
            assert recs[r.name]["config"] == r.arch_config
            assert recs[r.name]["lr_multiplier"] == pytest.approx(1.0)
        assert recs[run.name]["loss"] == 3.0 and recs[run.name]["status"] == "done"
        st.sync_plan(plan)  # the upgraded store accepts the same plan (keys unchanged)
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA user_version").fetchone()[0] == STORE_SCHEMA_VERSION
    con.close()
