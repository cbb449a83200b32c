"""Load run records and curves for a report: a moescale store or an exported table.

A store is read through its ``run_records`` / ``run_curves`` views with plain
``sqlite3`` (read-only), so the report never writes to it. A CSV/Parquet file is
read as a run-record table (curves from ``<stem>_curves.<ext>`` if present).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd

from moescale.errors import DataError
from moescale.paths import connect_readonly

__all__ = ["load_runs", "budget_groups"]

_SQLITE_MAGIC = b"SQLite format 3\x00"


def load_runs(source: str | Path) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(records, curves, info) from a store or a run-record file.

    ``records`` has the run-record columns (every status); ``info`` names the source
    and, for a store, its sweep names and run counts by status.
    """
    path = Path(source)
    if not path.is_file():
        raise DataError(f"run store or table not found: {path}")
    with open(path, "rb") as fh:
        head = fh.read(16)
    if head == _SQLITE_MAGIC:
        try:
            con = connect_readonly(path)  # escaped URI; no side files, read-only storage ok
        except sqlite3.Error as exc:
            raise DataError(f"cannot open {path}: {exc}") from None
        try:
            names = {r[0] for r in con.execute(
                "SELECT name FROM sqlite_master WHERE type IN ('view', 'table')")}
            if "run_records" not in names:
                raise DataError(f"{path} is an SQLite file but not a moescale run store "
                                "(no run_records view)")
            records = pd.read_sql_query("SELECT * FROM run_records", con)
            curves = (pd.read_sql_query("SELECT * FROM run_curves", con)
                      if "run_curves" in names else pd.DataFrame())
            sweeps = [r[0] for r in con.execute("SELECT DISTINCT sweep FROM runs")] \
                if "runs" in names else []
        except sqlite3.DatabaseError as exc:
            raise DataError(f"cannot read {path}: {exc}") from None
        finally:
            con.close()
        info = {"source": str(path), "kind": "store", "sweeps": sweeps}
    elif path.suffix in (".csv", ".parquet"):
        read = pd.read_csv if path.suffix == ".csv" else pd.read_parquet
        try:
            records = read(path)
        except Exception as exc:  # noqa: BLE001 - any parse failure is a data error
            raise DataError(f"cannot read {path}: {exc}") from None
        cpath = path.with_name(f"{path.stem}_curves{path.suffix}")
        curves = read(cpath) if cpath.exists() else pd.DataFrame()
        info = {"source": str(path), "kind": "table", "sweeps": []}
    else:
        raise DataError(f"{path} is neither a moescale run store nor a .csv/.parquet table")
    need = {"run", "arch", "compute", "loss", "status"}
    missing = sorted(need - set(records.columns))
    if missing:
        raise DataError(f"{path}: run table lacks column(s) {', '.join(missing)}")
    info["counts"] = records["status"].value_counts().to_dict()
    return records, curves, info


def budget_groups(compute: pd.Series, tol: float = 0.15) -> pd.Series:
    """Label runs by compute budget: computes within ``tol`` (relative) of the group's
    first value share a budget (runs are rounded to whole steps, so C varies a little).
    The label is the group's median compute."""
    order = np.argsort(compute.to_numpy())
    vals = compute.to_numpy()[order]
    labels = np.empty(len(vals))
    start = 0
    for i in range(1, len(vals) + 1):
        if i == len(vals) or vals[i] > vals[start] * (1 + tol):
            labels[start:i] = float(np.median(vals[start:i]))
            start = i
    out = np.empty(len(vals))
    out[order] = labels
    return pd.Series(out, index=compute.index)
