"""The run-record table: one schema for every run the fitting engine consumes.

One row per training run (the columns of :data:`RUN_COLUMNS`), plus an optional long
table of evaluation-curve points (:data:`CURVE_COLUMNS`). The trainer and the sweep
store write this schema; :func:`read_runs` reads it from CSV, Parquet or a moescale
run store (SQLite, views ``run_records`` / ``run_curves``), and adapts the two external
datasets of ``../shared/data`` (Chinchilla, arXiv 2203.15556 via the Epoch replication
arXiv 2404.10102; Clark et al., arXiv 2202.01169).

Conventions (LAWS.md §1-2): ``activation_ratio`` A = E_a/E (routed only; 1 for dense),
``granularity`` G = 2·d_model/d_expert ([EL]; NaN for dense or unknown), ``compute`` C =
``flops_per_token`` × ``tokens`` in the named ``flops_convention``.
"""

from __future__ import annotations

import io
import math
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from moescale.errors import ConfigError, DataError
from moescale.paths import connect_readonly

__all__ = [
    "RUN_COLUMNS",
    "CURVE_COLUMNS",
    "NUMERIC_COLUMNS",
    "POSITIVE_COLUMNS",
    "RunTable",
    "read_runs",
    "read_table",
    "read_store",
    "read_chinchilla",
    "read_clark",
    "is_clark_frame",
    "is_chinchilla_frame",
    "validate_positive",
    "BUDGET_RTOL",
    "assign_budgets",
    "assign_configs",
    "config_key",
]

RUN_COLUMNS: tuple[str, ...] = (
    "run", "arch", "d_model", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "d_ffn",
    "n_experts", "top_k", "n_shared_experts", "d_expert", "n_dense_layers", "activation_ratio",
    "granularity", "shared_ratio", "params_total", "params_active",
    "params_total_non_embedding", "params_active_non_embedding", "flops_per_token",
    "flops_convention", "tokens", "compute", "loss", "train_loss", "learning_rate",
    "batch_tokens", "seq_len", "seed", "family", "tags", "status",
    "budget", "config", "lr_multiplier", "val_loss_se", "val_tokens", "eval_block_losses",
    "train_loss_last5", "flops_per_token_full",
)
"""Run-record columns, in order (shared with :mod:`moescale.sweep.store`).

The last eight (issue #10) may be absent from older stores and tables (read as NaN):
``budget`` the planned compute budget, assigned once at plan time (fitting groups by it);
``config`` the architecture-configuration key without size (``"dense"``,
``"moe-E16-k2-s0-G2"``; one frontier per config); ``lr_multiplier`` the factor on the
[EL] Eq. 3 learning rate; ``val_loss_se``, ``val_tokens`` and ``eval_block_losses`` (JSON
list of equal-weight evaluation-block mean losses) from the final evaluation;
``train_loss_last5`` the mean training loss over the last 5% of steps;
``flops_per_token_full`` training FLOPs/token counting embedding, unembedding and router
FLOPs too (the sensitivity convention)."""

CURVE_COLUMNS: tuple[str, ...] = ("run", "step", "tokens", "compute", "loss")
"""Curve-point columns: one row per evaluation of a run (validation loss)."""

_TEXT_COLUMNS = ("run", "arch", "flops_convention", "family", "tags", "status", "config",
                 "eval_block_losses")
NUMERIC_COLUMNS: tuple[str, ...] = tuple(c for c in RUN_COLUMNS if c not in _TEXT_COLUMNS)
"""Columns that must be numeric (NaN allowed where the value is unknown)."""

POSITIVE_COLUMNS: tuple[str, ...] = (
    "params_total", "params_active", "params_total_non_embedding",
    "params_active_non_embedding", "flops_per_token", "tokens", "compute", "loss",
    "activation_ratio", "granularity", "budget", "lr_multiplier", "val_tokens",
    "flops_per_token_full",
)
"""Columns that, where known (not NaN), must be finite and > 0."""

REQUIRED_COLUMNS: tuple[str, ...] = ("run", "arch", "compute", "loss")
"""The minimum a run table needs; every other column may be absent (filled with NaN)."""

BUDGET_RTOL = 1e-2
"""External data without a ``budget`` column: runs whose compute lies within this relative
distance of a group's smallest compute share a budget (a sweep rounds each run to whole
steps, ~0.1%; distinct budgets of a sweep and every distinct Clark dense run are ≥ 10%
apart). Used once, by :func:`assign_budgets`."""

_ARCHES = ("dense", "moe")
_DROPPED_STATUSES = ("planned", "running", "failed")
_SQLITE_MAGIC = b"SQLite format 3\x00"
_PARQUET_MAGIC = b"PAR1"

_CLARK_SIGNATURE = ("hyper_id", "step", "flops_per_step", "router_type", "num_experts", "k")
_CHINCHILLA_SIGNATURE = ("Model Size", "Training FLOP", "loss")


def validate_positive(
    frame: pd.DataFrame, columns: Iterable[str], *, where: str, id_column: str | None = "run",
    allow_nan: bool = False,
) -> None:
    """Raise :class:`DataError` naming column and row if a value is NaN, infinite or ≤ 0.

    ``allow_nan`` lets NaN through (an unknown optional value); infinities and
    non-positive values are always rejected.
    """
    for col in columns:
        if col not in frame.columns:
            continue
        values = pd.to_numeric(frame[col], errors="coerce").to_numpy(dtype=float)
        raw = frame[col].to_numpy()
        bad_text = np.isnan(values) & pd.notna(raw)
        problems = (
            (bad_text, "non-numeric"),
            (np.isnan(values) & ~bad_text & (not allow_nan), "NaN"),
            (np.isinf(values), "infinite"),
            (np.isfinite(values) & (values <= 0), "non-positive"),
        )
        for mask, what in problems:
            if np.any(mask):
                i = int(np.flatnonzero(mask)[0])
                who = (f"run {frame[id_column].iloc[i]!r}"
                       if id_column and id_column in frame.columns else f"row {i}")
                raise DataError(
                    f"{where}: column {col!r} has a {what} value at row {i} ({who}): "
                    f"{raw[i]!r}; it must be a finite number > 0 "
                    f"({int(mask.sum())} such row(s))"
                )


@dataclass(frozen=True)
class RunTable:
    """Runs (one row each, :data:`RUN_COLUMNS` plus any extra columns) and optional curves.

    Build with :meth:`from_frame` (validates) or a reader (:func:`read_runs`).
    Extra columns (e.g. Clark's ``router_type``) are kept. ``dropped`` lists the runs
    left out at read time (status planned/running/failed).

    Examples
    --------
    >>> import pandas as pd
    >>> t = RunTable.from_frame(pd.DataFrame({"run": ["a", "b"], "arch": ["dense", "dense"],
    ...                                       "compute": [1e18, 1e19], "loss": [3.0, 2.8]}))
    >>> len(t), t.runs["activation_ratio"].tolist()
    (2, [1.0, 1.0])
    """

    runs: pd.DataFrame
    curves: pd.DataFrame | None = None
    source: str = ""
    dropped: tuple[str, ...] = ()
    info: dict = field(default_factory=dict, compare=False)
    """Where the runs came from: ``kind`` (store/table), ``sweeps`` (store), and
    ``counts`` (runs by status, before unfinished runs were dropped)."""

    @classmethod
    def from_frame(
        cls, runs: pd.DataFrame, curves: pd.DataFrame | None = None, *, source: str = "table",
        info: dict | None = None, allow_empty: bool = False,
    ) -> RunTable:
        """Validate and normalise a run frame (and curve frame) into a :class:`RunTable`.

        ``allow_empty`` accepts a table with no finished runs (a report of a fresh store).
        """
        if not isinstance(runs, pd.DataFrame):
            raise DataError(f"{source}: runs must be a pandas DataFrame; got {type(runs).__name__}")
        missing = [c for c in REQUIRED_COLUMNS if c not in runs.columns]
        if missing:
            raise DataError(
                f"{source}: missing required column(s) {missing}; a run table needs "
                f"{list(REQUIRED_COLUMNS)} (have {list(runs.columns)[:12]})"
            )
        df = runs.copy().reset_index(drop=True)
        dropped: tuple[str, ...] = ()
        info = {"kind": "table", "sweeps": [], **(info or {})}
        info["counts"] = ({str(k): int(v) for k, v in
                           df["status"].astype("string").fillna("done").value_counts().items()}
                          if "status" in df.columns else {"done": len(df)})
        if "status" in df.columns:
            status = df["status"].astype("string").str.strip().str.lower()
            drop = status.isin(_DROPPED_STATUSES).fillna(False).to_numpy(dtype=bool)
            dropped = tuple(str(r) for r in df.loc[drop, "run"])
            df = df.loc[~drop].reset_index(drop=True)
        if len(df) == 0 and not allow_empty:
            raise DataError(f"{source}: no usable runs (empty table or all runs not done)")
        df["run"] = df["run"].astype(str)
        dup = df["run"].duplicated()
        if dup.any():
            raise DataError(f"{source}: column 'run' must be unique; "
                            f"{df['run'][dup].iloc[0]!r} appears more than once")
        df["arch"] = df["arch"].astype(str).str.strip().str.lower()
        bad_arch = ~df["arch"].isin(_ARCHES)
        if bad_arch.any():
            i = int(np.flatnonzero(bad_arch)[0])
            raise DataError(f"{source}: column 'arch' must be one of {list(_ARCHES)}; "
                            f"got {df['arch'].iloc[i]!r} at row {i} (run {df['run'].iloc[i]!r})")
        for col in RUN_COLUMNS:
            if col not in df.columns:
                df[col] = np.nan
        for col in NUMERIC_COLUMNS:
            converted = pd.to_numeric(df[col], errors="coerce")
            if (converted.isna() & df[col].notna()).any():
                i = int(np.flatnonzero((converted.isna() & df[col].notna()).to_numpy())[0])
                raise DataError(f"{source}: column {col!r} must be numeric; got "
                                f"{df[col].iloc[i]!r} at row {i} (run {df['run'].iloc[i]!r})")
            df[col] = converted.astype(float)
        dense = (df["arch"] == "dense").to_numpy()
        ar = df["activation_ratio"].to_numpy(dtype=float)
        df.loc[dense & np.isnan(ar), "activation_ratio"] = 1.0
        validate_positive(df, ("compute", "loss"), where=source)
        validate_positive(df, POSITIVE_COLUMNS, where=source, allow_nan=True)
        ar = df["activation_ratio"].to_numpy(dtype=float)
        if np.any(ar > 1):
            i = int(np.flatnonzero(ar > 1)[0])
            raise DataError(f"{source}: column 'activation_ratio' (A = E_a/E, routed experts "
                            f"only) must be in (0, 1]; got {float(ar[i])!r} at row {i} "
                            f"(run {df['run'].iloc[i]!r})")
        ordered = list(RUN_COLUMNS) + [c for c in df.columns if c not in RUN_COLUMNS]
        df = df[ordered]
        if curves is not None:
            curves = _validate_curves(curves, set(df["run"]), source)
        return cls(runs=df, curves=curves, source=source, dropped=dropped, info=info)

    def __len__(self) -> int:
        return len(self.runs)

    def column(self, name: str) -> np.ndarray:
        """One column as a float array; :class:`DataError` if absent."""
        if name not in self.runs.columns:
            raise DataError(f"{self.source}: run table has no column {name!r}")
        return pd.to_numeric(self.runs[name], errors="coerce").to_numpy(dtype=float)

    def select(self, mask: np.ndarray | pd.Series) -> RunTable:
        """The runs where ``mask`` is true (curves filtered to match)."""
        runs = self.runs.loc[np.asarray(mask, dtype=bool)].reset_index(drop=True)
        curves = None
        if self.curves is not None:
            curves = self.curves[self.curves["run"].isin(set(runs["run"]))].reset_index(drop=True)
        return RunTable(runs=runs, curves=curves, source=self.source, dropped=self.dropped,
                        info=self.info)

    def drop_highest_losses(self, k: int) -> RunTable:
        """Drop the ``k`` runs with the highest loss (the Epoch replication drops 5 of 245).

        Ties at the cut are all dropped, as the replication's ``loss < sorted[-k]`` does.
        """
        from moescale.errors import check_range

        check_range("drop_highest", k, low=0, high=len(self) - 1, integer=True, error=DataError)
        if k == 0:
            return self
        loss = self.column("loss")
        return self.select(loss < np.sort(loss)[-k])

    def dense(self) -> RunTable:
        """Dense runs only."""
        return self.select(self.runs["arch"] == "dense")

    def moe(self) -> RunTable:
        """MoE runs only."""
        return self.select(self.runs["arch"] == "moe")

    def curve_points(self) -> pd.DataFrame:
        """Curve points joined with their run's columns; the final points if no curves."""
        if self.curves is None or len(self.curves) == 0:
            pts = self.runs[["run", "tokens", "compute", "loss"]].copy()
            pts.insert(1, "step", np.nan)
        else:
            pts = self.curves[list(CURVE_COLUMNS)].copy()
        meta = self.runs.drop(columns=["tokens", "compute", "loss"])
        return pts.merge(meta, on="run", how="left")

    def to_csv(self, path: str | Path) -> None:
        """Write the runs (and ``<stem>_curves.csv``, as the run store exports) atomically."""
        from moescale.spec.io import atomic_write

        path = Path(path)
        atomic_write(path, self.runs.to_csv(index=False))
        if self.curves is not None:
            atomic_write(_curves_path(path), self.curves.to_csv(index=False))

    def to_parquet(self, path: str | Path) -> None:
        """Write the runs as Parquet atomically."""
        from moescale.spec.io import atomic_write

        buf = io.BytesIO()
        self.runs.to_parquet(buf, index=False)
        atomic_write(Path(path), buf.getvalue())


def _validate_curves(curves: pd.DataFrame, runs: set[str], source: str) -> pd.DataFrame:
    where = f"{source} (curves)"
    missing = [c for c in ("run", "compute", "loss") if c not in curves.columns]
    if missing:
        raise DataError(f"{where}: missing curve column(s) {missing}; need {list(CURVE_COLUMNS)}")
    c = curves.copy().reset_index(drop=True)
    for col in CURVE_COLUMNS:
        if col not in c.columns:
            c[col] = np.nan
    c["run"] = c["run"].astype(str)
    unknown = ~c["run"].isin(runs)
    c = c.loc[~unknown].reset_index(drop=True)
    for col in ("step", "tokens", "compute", "loss"):
        c[col] = pd.to_numeric(c[col], errors="coerce").astype(float)
    validate_positive(c, ("compute", "loss"), where=where)
    validate_positive(c, ("tokens",), where=where, allow_nan=True)
    return c.sort_values(["run", "compute"], kind="stable").reset_index(drop=True)


# ----------------------------------------------------------------------------- readers


def _sniff(path: Path) -> bytes:
    try:
        with path.open("rb") as fh:
            return fh.read(16)
    except FileNotFoundError:
        raise DataError(f"run file not found: {path}") from None
    except OSError as exc:
        raise DataError(f"cannot read run file {path}: {exc}") from None


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot parse CSV {path}: {exc}") from None


def is_clark_frame(frame: pd.DataFrame) -> bool:
    """True if the frame has the columns of the Clark et al. (SLDBench) run file."""
    return all(c in frame.columns for c in _CLARK_SIGNATURE)


def is_chinchilla_frame(frame: pd.DataFrame) -> bool:
    """True if the frame has the columns of the Epoch Chinchilla extraction."""
    return all(c in frame.columns for c in _CHINCHILLA_SIGNATURE)


def read_runs(path: str | Path, *, loss_column: str | None = None,
              allow_empty: bool = False) -> RunTable:
    """Read runs from any supported file, detected by content.

    SQLite (16-byte header ``SQLite format 3\\0``) → :func:`read_store`; Parquet
    (``PAR1``) or CSV → the Clark or Chinchilla adapter if the columns match
    (:func:`is_clark_frame`, :func:`is_chinchilla_frame`), else a run table with its
    curves from ``<stem>_curves.<ext>`` if present. ``loss_column``: Clark file only
    (one of its ``loss_*`` columns, default ``loss_validation``); given for any other
    file it is a :class:`ConfigError`, never silently ignored.
    """
    path = Path(path)
    head = _sniff(path)
    if head.startswith(_SQLITE_MAGIC) and loss_column is None:
        return read_store(path, allow_empty=allow_empty)
    if head.startswith(_SQLITE_MAGIC):
        raise ConfigError(f"'loss_column' applies to Clark run files only; {path} is a run "
                          f"store (got {loss_column!r})")
    if head.startswith(_PARQUET_MAGIC):
        try:
            frame = pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises several unrelated types
            raise DataError(f"cannot read Parquet {path}: {exc}") from None
    else:
        frame = _read_csv(path)
    if is_clark_frame(frame):
        return _clark_from_frame(frame, loss_column=loss_column or "loss_validation",
                                 source=str(path))
    if loss_column is not None:
        raise ConfigError(f"'loss_column' applies to Clark run files only; {path} is not one "
                          f"(got {loss_column!r})")
    if is_chinchilla_frame(frame):
        return _chinchilla_from_frame(frame, source=str(path))
    curves = None
    sibling = _curves_path(path)
    if sibling.is_file():
        curves = _read_csv(sibling) if path.suffix != ".parquet" else pd.read_parquet(sibling)
    return RunTable.from_frame(frame, curves, source=str(path), allow_empty=allow_empty)


def _curves_path(path: Path) -> Path:
    """``<stem>_curves.<ext>`` beside a run file (the run store's export convention)."""
    return path.with_name(f"{path.stem}_curves{path.suffix}")


def read_table(path: str | Path, curves: str | Path | None = None) -> RunTable:
    """Read a run table (CSV or Parquet, by extension) and optional curves file."""
    path = Path(path)
    _sniff(path)
    frame = pd.read_parquet(path) if path.suffix == ".parquet" else _read_csv(path)
    cframe = None
    if curves is not None:
        cpath = Path(curves)
        _sniff(cpath)
        cframe = pd.read_parquet(cpath) if cpath.suffix == ".parquet" else _read_csv(cpath)
    return RunTable.from_frame(frame, cframe, source=str(path))


def read_store(path: str | Path, *, allow_empty: bool = False) -> RunTable:
    """Read a moescale run store (SQLite): ``run_records`` and, if present, ``run_curves``.

    Uses the standard-library ``sqlite3`` only (the fitting engine never imports the
    sweep package). Runs not ``done`` are dropped (listed in ``RunTable.dropped``).
    """
    path = Path(path)
    if not _sniff(path).startswith(_SQLITE_MAGIC):
        raise DataError(f"{path} is not a SQLite run store (bad header)")
    try:
        con = connect_readonly(path)  # escaped URI; no side files, read-only storage ok
    except sqlite3.Error as exc:
        raise DataError(f"cannot open run store {path}: {exc}") from None
    try:
        try:
            runs = pd.read_sql_query("SELECT * FROM run_records", con)
        except (sqlite3.Error, pd.errors.DatabaseError) as exc:
            raise DataError(
                f"{path}: run store has no readable 'run_records' view ({exc})") from None
        try:
            curves = pd.read_sql_query("SELECT * FROM run_curves", con)
        except (sqlite3.Error, pd.errors.DatabaseError):
            curves = None
        try:
            sweeps = [r[0] for r in con.execute("SELECT DISTINCT sweep FROM runs")]
        except sqlite3.Error:
            sweeps = []
    finally:
        con.close()
    if curves is not None and len(curves) == 0:
        curves = None
    return RunTable.from_frame(runs, curves, source=str(path),
                               info={"kind": "store", "sweeps": sweeps}, allow_empty=allow_empty)


def read_chinchilla(path: str | Path) -> RunTable:
    """The Chinchilla points as extracted by the Epoch replication (arXiv 2404.10102).

    N = ``Model Size`` (stored as ``params_total`` and ``params_active``), C =
    ``Training FLOP`` (``compute``, convention ``6n``), D = C/(6N) (``tokens``), loss =
    ``loss``. All 245 points are kept; the replication drops the 5 highest losses
    before fitting, which :class:`~moescale.fit.ChinchillaFitter` callers do explicitly.
    """
    path = Path(path)
    _sniff(path)
    return _chinchilla_from_frame(_read_csv(path), source=str(path))


def _chinchilla_from_frame(frame: pd.DataFrame, *, source: str) -> RunTable:
    missing = [c for c in _CHINCHILLA_SIGNATURE if c not in frame.columns]
    if missing:
        raise DataError(f"{source}: not the Chinchilla extraction; missing column(s) {missing}")
    validate_positive(frame, _CHINCHILLA_SIGNATURE, where=source, id_column=None)
    N = frame["Model Size"].to_numpy(dtype=float)
    C = frame["Training FLOP"].to_numpy(dtype=float)
    runs = pd.DataFrame({
        "run": [f"chinchilla-{i:03d}" for i in range(len(frame))],
        "arch": "dense",
        "params_total": N,
        "params_active": N,
        "flops_per_token": 6.0 * N,
        "flops_convention": "6n",
        "tokens": C / (6.0 * N),
        "compute": C,
        "loss": frame["loss"].to_numpy(dtype=float),
        "family": "chinchilla2022",
        "status": "done",
    })
    return RunTable.from_frame(runs, source=source)


def read_clark(path: str | Path, loss_column: str = "loss_validation") -> RunTable:
    """Dense and routed-MoE runs of Clark et al. (arXiv 2202.01169), SLDBench copy.

    One run per ``hyper_id``; ``arch`` is ``dense`` for ``router_type == "Dense"``
    (``num_experts`` 1), else ``moe``. ``compute`` = ``flops_per_step`` × ``step`` (the
    file's own FLOP count, convention ``external``); the run's ``loss`` is ``loss_column``
    at its last step with a finite value; every (step > 0, finite loss) point goes into
    the curves. A = k/E (``activation_ratio``; 1 for dense); G is unknown in the [EL]
    convention (NaN). Kept as extra columns: ``model_size_label``, ``num_experts``,
    ``router_type``, ``routing_frequency``, ``flop_increase``, ``hyper_id``.
    """
    path = Path(path)
    _sniff(path)
    return _clark_from_frame(_read_csv(path), loss_column=loss_column, source=str(path))


def _clark_from_frame(frame: pd.DataFrame, *, loss_column: str, source: str) -> RunTable:
    need = (*_CLARK_SIGNATURE, "d_model", "num_blocks", "num_heads", "seed",
            "total_parameter_count", "dense_parameter_count", "model_size_label")
    missing = [c for c in need if c not in frame.columns]
    if missing:
        raise DataError(f"{source}: not the Clark run file; missing column(s) {missing}")
    if loss_column not in frame.columns or not loss_column.startswith("loss_"):
        losses = [c for c in frame.columns if c.startswith("loss_")]
        raise DataError(f"{source}: 'loss_column' must be one of {losses}; got {loss_column!r}")
    df = frame.copy()
    df["compute"] = pd.to_numeric(df["flops_per_step"], errors="coerce") * df["step"]
    df["loss"] = pd.to_numeric(df[loss_column], errors="coerce")
    pts = df[(df["step"] > 0) & np.isfinite(df["loss"])].sort_values(["hyper_id", "step"])
    if len(pts) == 0:
        raise DataError(f"{source}: no finite {loss_column!r} values at step > 0")
    last = pts.groupby("hyper_id", sort=True).tail(1).set_index("hyper_id").sort_index()
    E = last["num_experts"].to_numpy(dtype=float)
    k = last["k"].to_numpy(dtype=float)
    router = last["router_type"].astype(str).to_numpy()
    dense = router == "Dense"
    label = last["model_size_label"].astype(str).to_numpy()
    runs = pd.DataFrame({
        "run": last.index.astype(str),
        "arch": np.where(dense, "dense", "moe"),
        "d_model": last["d_model"].to_numpy(dtype=float),
        "n_layers": last["num_blocks"].to_numpy(dtype=float),
        "n_heads": last["num_heads"].to_numpy(dtype=float),
        "n_experts": np.where(dense, 0.0, E),
        "top_k": np.where(dense, np.nan, k),
        "activation_ratio": np.where(dense, 1.0, k / E),
        "granularity": np.nan,
        "params_total": last["total_parameter_count"].to_numpy(dtype=float),
        "params_active": last["dense_parameter_count"].to_numpy(dtype=float),
        "flops_convention": "external",
        "compute": last["compute"].to_numpy(dtype=float),
        "loss": last["loss"].to_numpy(dtype=float),
        "seed": last["seed"].to_numpy(dtype=float),
        "family": "clark2022",
        "tags": [f"model_size={m};router={r};num_experts={int(e)}"
                 for m, r, e in zip(label, router, E, strict=True)],
        "status": "done",
        "model_size_label": label,
        "num_experts": E,
        "router_type": router,
        "routing_frequency": last["routing_frequency"].to_numpy(dtype=float)
        if "routing_frequency" in last.columns else np.nan,
        "flop_increase": last["flop_increase"].to_numpy(dtype=float)
        if "flop_increase" in last.columns else np.nan,
        "last_step": last["step"].to_numpy(dtype=float),
        "hyper_id": last.index.to_numpy(),
    })
    curves = pd.DataFrame({
        "run": pts["hyper_id"].astype(str).to_numpy(),
        "step": pts["step"].to_numpy(dtype=float),
        "tokens": np.nan,
        "compute": pts["compute"].to_numpy(dtype=float),
        "loss": pts["loss"].to_numpy(dtype=float),
    })
    return RunTable.from_frame(runs, curves, source=source)


# ----------------------------------------------------------------------------- grouping


def assign_budgets(runs: pd.DataFrame, *,
                   budget_rtol: float = BUDGET_RTOL) -> tuple[pd.DataFrame, bool]:
    """The runs with a ``budget`` for every row, and whether it had to be derived.

    A sweep assigns each run's budget once, at plan time (the ``budget`` column); that is
    used as is. Only a table without budgets (external data) gets them here, once: sorted
    by compute, a run more than ``budget_rtol`` above its group's first compute starts a
    new budget, labelled by the group's median compute.
    """
    from moescale.errors import ConfigError, check_range

    check_range("budget_rtol", budget_rtol, low=0.0, high=1.0, error=ConfigError)
    df = runs.reset_index(drop=True).copy()
    have = (pd.to_numeric(df["budget"], errors="coerce").to_numpy(dtype=float)
            if "budget" in df.columns else np.full(len(df), np.nan))
    if len(df) and np.isfinite(have).all():
        df["budget"] = have
        return df, False
    C = pd.to_numeric(df["compute"], errors="coerce").to_numpy(dtype=float)
    order = np.argsort(C, kind="stable")
    labels = np.empty(len(df))
    start = 0
    for i in range(1, len(order) + 1):
        if i == len(order) or C[order[i]] > C[order[start]] * (1.0 + budget_rtol):
            labels[order[start:i]] = float(np.median(C[order[start:i]]))
            start = i
    df["budget"] = np.where(np.isfinite(have), have, labels)
    return df, True


def config_key(row: pd.Series | dict) -> str:
    """Architecture-configuration key without size: ``"dense"`` or ``"moe-E16-k2-s0-G2"``.

    Built from what the row knows (experts E, top-k k, shared experts s, granularity G,
    then any ``router_type``/``routing_frequency`` of external data); ``"moe-A0.125"``
    when only the activation ratio is known.
    """
    def num(name: str) -> float:
        try:
            v = float(row.get(name, math.nan))
        except (TypeError, ValueError):
            return math.nan
        return v

    if str(row.get("arch")) == "dense":
        return "dense"
    parts = ["moe"]
    for name, tag in (("n_experts", "E"), ("top_k", "k"), ("n_shared_experts", "s")):
        v = num(name)
        if math.isfinite(v):
            parts.append(f"{tag}{v:g}")
    g = num("granularity")
    if math.isfinite(g):
        parts.append(f"G{g:.3g}")
    router = row.get("router_type")
    if isinstance(router, str) and router:
        parts.append(router)
    rf = num("routing_frequency")
    if math.isfinite(rf):
        parts.append(f"rf{rf:g}")
    if len(parts) == 1:
        parts.append(f"A{num('activation_ratio'):.4g}")
    return "-".join(parts)


def assign_configs(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs with a ``config`` for every row (:func:`config_key` where missing)."""
    df = runs.copy()
    have = df["config"] if "config" in df.columns else pd.Series([None] * len(df))
    missing = have.isna().to_numpy() | (have.astype(str).str.strip() == "").to_numpy()
    if missing.any():
        derived = [config_key(r) for r in df.loc[missing].to_dict(orient="records")]
        df["config"] = have.astype(object)
        df.loc[missing, "config"] = derived
    df["config"] = df["config"].astype(str)
    return df
