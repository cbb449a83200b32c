"""Run-record table: schema, validation, readers (CSV, Parquet, SQLite, Chinchilla, Clark)."""

from __future__ import annotations

import sqlite3

import numpy as np
import pandas as pd
import pytest

from moescale.errors import DataError
from moescale.fit.runs import (
    CURVE_COLUMNS,
    RUN_COLUMNS,
    RunTable,
    read_chinchilla,
    read_clark,
    read_runs,
    read_store,
)


def _frame(**over):
    df = pd.DataFrame({"run": ["d1", "d2", "m1"], "arch": ["dense", "dense", "moe"],
                       "compute": [1e18, 1e19, 1e18], "loss": [3.2, 2.9, 3.0],
                       "activation_ratio": [np.nan, np.nan, 0.125]})
    for k, v in over.items():
        df[k] = v
    return df


def test_schema_matches_sweep_store():
    from moescale.sweep.store import CURVE_COLUMNS as SC
    from moescale.sweep.store import RECORD_COLUMNS

    assert RUN_COLUMNS == RECORD_COLUMNS
    assert CURVE_COLUMNS == SC


def test_from_frame_fills_schema_and_dense_A():
    t = RunTable.from_frame(_frame())
    assert list(t.runs.columns[: len(RUN_COLUMNS)]) == list(RUN_COLUMNS)
    assert t.runs["activation_ratio"].tolist() == [1.0, 1.0, 0.125]
    assert len(t.dense()) == 2 and len(t.moe()) == 1


@pytest.mark.parametrize("col,value,what", [
    ("loss", [3.2, np.nan, 3.0], "NaN"),
    ("loss", [3.2, np.inf, 3.0], "infinite"),
    ("compute", [1e18, -1.0, 1e18], "non-positive"),
    ("compute", [1e18, 0.0, 1e18], "non-positive"),
])
def test_bad_values_name_column_and_row(col, value, what):
    with pytest.raises(DataError) as exc:
        RunTable.from_frame(_frame(**{col: value}))
    msg = str(exc.value)
    assert repr(col) in msg and what in msg and "row 1" in msg and "'d2'" in msg


def test_optional_columns_nan_ok_but_not_negative():
    RunTable.from_frame(_frame(tokens=[np.nan, 1e9, 1e9]))
    with pytest.raises(DataError, match="'tokens'.*non-positive"):
        RunTable.from_frame(_frame(tokens=[1e9, -1e9, 1e9]))


def test_missing_columns_and_bad_arch_and_duplicates():
    with pytest.raises(DataError, match=r"missing required column\(s\) \['loss'\]"):
        RunTable.from_frame(_frame().drop(columns=["loss"]))
    with pytest.raises(DataError, match="'arch' must be one of"):
        RunTable.from_frame(_frame(arch=["dense", "sparse", "moe"]))
    with pytest.raises(DataError, match="unique"):
        RunTable.from_frame(_frame(run=["a", "a", "b"]))
    with pytest.raises(DataError, match="'params_total' must be numeric"):
        RunTable.from_frame(_frame(params_total=["1e6", "big", "2e6"]))


def test_status_filter_drops_unfinished():
    t = RunTable.from_frame(_frame(status=["done", "failed", "done"],
                                   loss=[3.2, np.nan, 3.0]))
    assert len(t) == 2 and t.dropped == ("d2",)


def test_csv_and_parquet_roundtrip(tmp_path):
    t = RunTable.from_frame(_frame())
    t.to_csv(tmp_path / "runs.csv")
    t.to_parquet(tmp_path / "runs.parquet")
    for name in ("runs.csv", "runs.parquet"):
        back = read_runs(tmp_path / name)
        assert back.runs["run"].tolist() == ["d1", "d2", "m1"]
        np.testing.assert_allclose(back.column("compute"), [1e18, 1e19, 1e18])


def test_sqlite_store(tmp_path):
    path = tmp_path / "store.sqlite"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE r (run TEXT, arch TEXT, compute REAL, loss REAL, status TEXT)")
    con.executemany("INSERT INTO r VALUES (?,?,?,?,?)",
                    [("a", "dense", 1e18, 3.0, "done"), ("b", "moe", 1e18, 2.9, "done"),
                     ("c", "moe", 2e18, None, "running")])
    con.execute("CREATE TABLE c (run TEXT, step REAL, tokens REAL, compute REAL, loss REAL)")
    con.executemany("INSERT INTO c VALUES (?,?,?,?,?)",
                    [("a", 10, 1e6, 5e17, 3.3), ("a", 20, 2e6, 1e18, 3.0)])
    con.execute("CREATE VIEW run_records AS SELECT * FROM r")
    con.execute("CREATE VIEW run_curves AS SELECT * FROM c")
    con.commit()
    con.close()
    for t in (read_runs(path), read_store(path)):
        assert t.runs["run"].tolist() == ["a", "b"] and t.dropped == ("c",)
        assert len(t.curves) == 2


def test_not_a_store_and_missing_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_runs(tmp_path / "nope.csv")
    bad = tmp_path / "x.sqlite"
    bad.write_bytes(b"SQLite format 3\x00" + b"\x00" * 200)
    with pytest.raises(DataError):
        read_runs(bad)


def test_chinchilla_adapter(data_dir):
    t = read_chinchilla(data_dir / "chinchilla_svg_extracted_data.csv")
    raw = pd.read_csv(data_dir / "chinchilla_svg_extracted_data.csv")
    assert len(t) == 245 == len(raw)
    np.testing.assert_allclose(t.column("tokens"),
                               raw["Training FLOP"] / (6 * raw["Model Size"]))
    np.testing.assert_allclose(t.column("params_active"), raw["Model Size"])
    assert len(t.drop_highest_losses(5)) == 240
    assert read_runs(data_dir / "chinchilla_svg_extracted_data.csv").runs.equals(t.runs)


def test_clark_adapter(data_dir):
    path = data_dir / "clark2022_routed_moe_runs_sldbench.csv"
    t = read_clark(path)
    raw = pd.read_csv(path)
    assert len(t) == raw["hyper_id"].nunique() == 223
    assert len(t.dense()) == 13 and len(t.moe()) == 210
    r = t.runs.set_index("run")
    # hyper 128: loss_validation is NaN at step 248000, finite at its last step 249000
    assert r.loc["128", "last_step"] == 249000 and r.loc["128", "loss"] == pytest.approx(3.162017)
    row = raw[(raw.hyper_id == 1)].sort_values("step").iloc[-1]
    assert r.loc["1", "compute"] == pytest.approx(row.flops_per_step * row.step)
    assert r.loc["1", "activation_ratio"] == pytest.approx(row.k / row.num_experts)
    assert r["granularity"].isna().all()
    assert set(r.loc[r.arch == "dense", "activation_ratio"]) == {1.0}
    finite = raw[(raw.step > 0) & raw.loss_validation.notna()]
    assert len(t.curves) == len(finite)
    assert read_clark(path, loss_column="loss_c4").runs["loss"].iloc[0] != r["loss"].iloc[0]
    with pytest.raises(DataError, match="'loss_column' must be one of"):
        read_clark(path, loss_column="loss_nope")


def test_reads_a_real_run_store_and_its_export(tmp_path):
    from moescale.sweep.config import parse_sweep_config
    from moescale.sweep.planner import plan_sweep
    from moescale.sweep.store import open_store

    doc = {"sweep": {"name": "st", "budgets": [1e12, 3e12]}, "dense": {"sizes": [0.5, 1, 2]},
           "family": [{"kind": "activation", "name": "act", "n_experts": [4, 8]}]}
    plan = plan_sweep(parse_sweep_config(doc))
    path = tmp_path / "s.db"
    done = [next(r for r in plan.runs if r.family != "act"),
            next(r for r in plan.runs if r.family == "act")]
    with open_store(path) as st:
        st.sync_plan(plan)
        for i, run in enumerate(done):
            curve = [{"step": 1, "tokens": 100, "flops": 1e9, "loss": 5.0, "val_loss": 5.1},
                     {"step": 2, "tokens": 200, "flops": 2e9, "loss": 4.0, "val_loss": 4.2}]
            st.mark_done(run.key, {"loss": 3.5 - 0.1 * i, "tokens": run.tokens,
                                   "flops": run.compute}, curve)
        st.export(tmp_path / "runs.csv")
    t = read_runs(path)
    assert sorted(t.runs["run"]) == sorted(r.name for r in done)
    assert len(t.dropped) == len(plan.runs) - 2 and len(t.curves) == 4
    assert set(t.runs["arch"]) == {"dense", "moe"}
    back = read_runs(tmp_path / "runs.csv")
    assert sorted(back.runs["run"]) == sorted(t.runs["run"]) and len(back.curves) == 4
