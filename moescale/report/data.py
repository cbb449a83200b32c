"""Load runs for a report: :func:`moescale.fit.runs.read_runs`, the one reader of a store."""

from __future__ import annotations

from pathlib import Path

from moescale.errors import DataError
from moescale.fit.runs import RunTable, read_runs

__all__ = ["load_runs"]


def load_runs(source: str | Path) -> RunTable:
    """The finished runs of a store (SQLite) or exported run table (CSV/Parquet).

    ``RunTable.info`` carries the source kind, the store's sweep names and the run counts
    by status (unfinished runs are dropped, as the fitting engine drops them).
    """
    path = Path(source)
    if not path.is_file():
        raise DataError(f"run store or table not found: {path}")
    if path.suffix not in (".csv", ".parquet", ".db", ".sqlite", ".sqlite3"):
        with open(path, "rb") as fh:
            if fh.read(16) != b"SQLite format 3\x00":
                raise DataError(f"{path} is neither a moescale run store nor a .csv/.parquet "
                                "table")
    return read_runs(path, allow_empty=True)
