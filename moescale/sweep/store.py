"""The run store: one SQLite file (WAL mode, transactions) holding a sweep's runs.

Layout (schema version :data:`STORE_SCHEMA_VERSION`; older stores are upgraded in place
when opened for writing, see :func:`open_store`, marked by ``PRAGMA
application_id`` = :data:`APPLICATION_ID`, ``PRAGMA user_version`` and the ``meta``
table)::

    meta(key, value)                      app = 'moescale-store', schema_version, created_at
    runs(name PK, key, sweep, family, kind, budget, status, spec_json, train_json,
         plan_json, result_json, error, attempts, wall_seconds, timestamps,
         + every run-record column, + the planner's and trainer's columns below)
    curves(run_key, step, tokens, flops, loss, val_loss)     one row per logged/eval step
    VIEW run_records   exactly the run-record columns (moescale.fit.runs), one row per run
    VIEW run_curves    run, step, tokens, compute, loss   (evaluation points, val loss)

``status`` is ``planned`` → ``running`` → ``done`` | ``failed``. Runs are keyed by
name (unique) and carry the hash ``key`` of their resolved config; two names may
share a key (the same run in two families) and then share one training run. The
fitting engine reads the views with plain ``sqlite3`` (``SELECT * FROM run_records``).
Only the process driving a sweep writes; workers return results to it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import sqlite3
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from moescale.errors import ConfigError, DataError
from moescale.fit.runs import CURVE_COLUMNS, RUN_COLUMNS
from moescale.paths import check_output_file, check_store_path, connect_readonly

__all__ = [
    "RunStore",
    "RECORD_COLUMNS",
    "CURVE_COLUMNS",
    "STORE_SCHEMA_VERSION",
    "APPLICATION_ID",
    "open_store",
    "check_plan",
]

STORE_SCHEMA_VERSION = 2
"""1: first release. 2: planner columns (config, lr_multiplier, rung; budget assigned at
plan time) and the trainer's evaluation columns (val_loss_se, val_tokens,
eval_block_losses, train_loss_last5, flops_per_token_full)."""
APPLICATION_ID = 0x4D4F4553  # "MOES"
_APP = "moescale-store"
_SQLITE_MAGIC = b"SQLite format 3\x00"

RECORD_COLUMNS: tuple[str, ...] = RUN_COLUMNS
"""The run-record schema of :mod:`moescale.fit.runs` (column order included)."""

PLANNER_COLUMNS: tuple[str, ...] = ("budget", "config", "lr_multiplier", "seed", "rung")
"""Run-record columns the planner fills when it inserts a run."""
TRAINER_COLUMNS: tuple[str, ...] = ("val_loss_se", "val_tokens", "eval_block_losses",
                                    "train_loss_last5", "flops_per_token_full")
"""Columns passed through from the trainer's result when a run finishes."""
_FIXED = ("name", "key", "sweep", "family", "kind", "budget", "status", "spec_json",
          "train_json", "plan_json", "result_json", "error", "attempts", "wall_seconds",
          "created_at", "started_at", "finished_at", "updated_at")

_TYPES = {
    "config": "TEXT", "eval_block_losses": "TEXT", "budget": "REAL", "lr_multiplier": "REAL",
    "val_loss_se": "REAL", "train_loss_last5": "REAL", "flops_per_token_full": "REAL",
    "run": "TEXT", "arch": "TEXT", "flops_convention": "TEXT", "family": "TEXT", "tags": "TEXT",
    "status": "TEXT", "activation_ratio": "REAL", "granularity": "REAL", "shared_ratio": "REAL",
    "flops_per_token": "REAL", "compute": "REAL", "loss": "REAL", "train_loss": "REAL",
    "learning_rate": "REAL",
}
_STATUSES = ("planned", "running", "done", "failed")
_INT64 = 2**63


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _data_columns() -> list[str]:
    """Record columns stored in ``runs`` besides the fixed ones, in a stable order."""
    cols = [*RECORD_COLUMNS, *PLANNER_COLUMNS, *TRAINER_COLUMNS]
    return [c for c in dict.fromkeys(cols) if c != "run" and c not in _FIXED]


def _views() -> str:
    view = ", ".join("name AS run" if c == "run" else c for c in RECORD_COLUMNS)
    return f"""
CREATE VIEW run_records AS SELECT {view} FROM runs ORDER BY budget, name;
CREATE VIEW run_curves AS
  SELECT r.name AS run, c.step AS step, c.tokens AS tokens, c.flops AS compute,
         c.val_loss AS loss
  FROM curves c JOIN runs r ON r.key = c.run_key
  WHERE c.val_loss IS NOT NULL ORDER BY r.name, c.step;
"""


def _schema() -> str:
    cols = ",\n  ".join(f"{c} {_TYPES.get(c, 'INTEGER')}" for c in _data_columns())
    return f"""
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE runs (
  name TEXT PRIMARY KEY,
  key TEXT NOT NULL,
  sweep TEXT,
  family TEXT,
  kind TEXT,
  budget REAL,
  status TEXT NOT NULL CHECK (status IN ('planned', 'running', 'done', 'failed')),
  spec_json TEXT NOT NULL,
  train_json TEXT NOT NULL,
  plan_json TEXT,
  result_json TEXT,
  error TEXT,
  attempts INTEGER NOT NULL DEFAULT 0,
  wall_seconds REAL,
  created_at TEXT,
  started_at TEXT,
  finished_at TEXT,
  updated_at TEXT,
  {cols}
);
CREATE INDEX runs_by_key ON runs (key);
CREATE TABLE curves (
  run_key TEXT NOT NULL,
  step INTEGER NOT NULL,
  tokens INTEGER,
  flops REAL,
  loss REAL,
  val_loss REAL,
  PRIMARY KEY (run_key, step)
);
""" + _views()


def _check_existing(path: Path) -> None:
    """Refuse (read-only, writing nothing) a file that is not a moescale store."""
    with open(path, "rb") as fh:
        head = fh.read(16)
    if head != _SQLITE_MAGIC:
        raise DataError(f"{path} is not a moescale run store (not an SQLite database)")
    con = connect_readonly(path)
    try:
        app_id = con.execute("PRAGMA application_id").fetchone()[0]
        version = con.execute("PRAGMA user_version").fetchone()[0]
        has_meta = con.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'").fetchone()
        meta = dict(con.execute("SELECT key, value FROM meta").fetchall()) if has_meta else {}
    except sqlite3.DatabaseError as exc:
        raise DataError(f"{path} is not a moescale run store ({exc})") from None
    finally:
        con.close()
    if app_id != APPLICATION_ID or meta.get("app") != _APP:
        raise DataError(f"{path} is an SQLite database but not a moescale run store "
                        "(no moescale marker); refusing to touch it")
    if version > STORE_SCHEMA_VERSION or int(meta.get("schema_version", 0)) > STORE_SCHEMA_VERSION:
        raise DataError(f"{path} has store schema version {version}; this moescale reads up to "
                        f"{STORE_SCHEMA_VERSION}: upgrade moescale")


def _finite(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


class RunStore:
    """A moescale run store (see module docstring). Use :func:`open_store`.

    Examples
    --------
    >>> import tempfile, os
    >>> with open_store(os.path.join(tempfile.mkdtemp(), "s.db")) as store:
    ...     store.count()
    0
    """

    def __init__(self, path: Path, con: sqlite3.Connection, *, readonly: bool = False) -> None:
        self.path = path
        self._con = con
        self.readonly = readonly

    # ------------------------------------------------------------------ basics
    @property
    def runs_dir(self) -> Path:
        """Folder of the runs' working directories: ``STORE.runs/<key>/``."""
        return self.path.with_name(self.path.name + ".runs")

    def run_dir(self, key: str) -> Path:
        return self.runs_dir / key

    def checkpoint(self) -> None:
        """Move every committed transaction from ``STORE-wal`` into the database file and
        truncate the WAL, so the file alone is the whole store (a busy reader only
        delays this: SQLite checkpoints again when the last connection closes)."""
        if not self.readonly:
            with contextlib.suppress(sqlite3.Error):
                self._con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    @contextmanager
    def driver_lock(self) -> Iterator[None]:
        """Hold the store's driver lock (``flock`` on ``STORE.runs/.driver.lock``).

        One ``sweep run`` drives a store at a time: a second one is refused at once with
        a :class:`ConfigError` saying it trained nothing (it would otherwise wait on each
        run folder's lock and then report the first driver's runs as its own).
        """
        import fcntl

        self.runs_dir.mkdir(parents=True, exist_ok=True)
        with open(self.runs_dir / ".driver.lock", "a+") as fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.seek(0)
                holder = fh.read().strip() or "another process"
                raise ConfigError(
                    f"run store {self.path} is being run by another 'sweep run' ({holder}); "
                    "this one trained nothing: wait for it to finish") from None
            try:
                fh.seek(0)
                fh.truncate()
                fh.write(f"pid {os.getpid()} on {socket.gethostname()}")
                fh.flush()
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def close(self) -> None:
        """Checkpoint the WAL (a clean exit leaves one self-contained file) and close."""
        try:
            self.checkpoint()
        finally:
            self._con.close()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` … ``COMMIT`` (rolled back on any exception)."""
        self._con.execute("BEGIN IMMEDIATE")
        try:
            yield self._con
        except BaseException:
            self._con.execute("ROLLBACK")
            raise
        self._con.execute("COMMIT")

    def journal_mode(self) -> str:
        return self._con.execute("PRAGMA journal_mode").fetchone()[0]

    def meta(self) -> dict[str, str]:
        return dict(self._con.execute("SELECT key, value FROM meta").fetchall())

    def count(self, status: str | None = None) -> int:
        if status is None:
            return self._con.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
        return self._con.execute("SELECT COUNT(*) FROM runs WHERE status = ?",
                                 (status,)).fetchone()[0]

    # ------------------------------------------------------------------ reading
    def runs(self, status: str | Iterable[str] | None = None) -> list[dict[str, Any]]:
        """Rows of the ``runs`` table as dicts (JSON columns decoded)."""
        sql = "SELECT * FROM runs"
        args: tuple = ()
        if status is not None:
            sts = (status,) if isinstance(status, str) else tuple(status)
            sql += f" WHERE status IN ({','.join('?' * len(sts))})"
            args = sts
        cur = self._con.execute(sql + " ORDER BY budget, name", args)
        names = [d[0] for d in cur.description]
        out = []
        for row in cur.fetchall():
            rec = dict(zip(names, row, strict=True))
            for col in ("spec_json", "train_json", "plan_json", "result_json"):
                if rec.get(col):
                    rec[col[:-5]] = json.loads(rec[col])
            out.append(rec)
        return out

    def get(self, name: str) -> dict[str, Any] | None:
        rows = [r for r in self.runs() if r["name"] == name]
        return rows[0] if rows else None

    def records(self) -> list[dict[str, Any]]:
        """``SELECT * FROM run_records`` as dicts (the run-record schema)."""
        cur = self._con.execute("SELECT * FROM run_records")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    def curves(self) -> list[dict[str, Any]]:
        """``SELECT * FROM run_curves`` as dicts."""
        cur = self._con.execute("SELECT * FROM run_curves")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    def results(self) -> dict[str, dict[str, Any]]:
        """Run key → ``{"status", "loss", "loss_se", "blocks"}`` of every stored run (what
        the planner re-plans from: :func:`moescale.sweep.planner.plan_sweep`); ``blocks``
        is the final evaluation's per-block mean losses (``None`` if unknown)."""
        out: dict[str, dict[str, Any]] = {}
        for key, status, loss, se, blocks in self._con.execute(
                "SELECT key, status, loss, val_loss_se, eval_block_losses FROM runs "
                "ORDER BY name"):
            out.setdefault(key, {"status": status, "loss": loss, "loss_se": se,
                                 "blocks": json.loads(blocks) if blocks else None})
        return out

    def measured_throughput(self) -> float | None:
        """Median Ling FLOPs/s of finished runs (compute / wall seconds), if any."""
        rows = self._con.execute(
            "SELECT compute / wall_seconds FROM runs WHERE status = 'done' AND wall_seconds > 0 "
            "AND compute > 0").fetchall()
        vals = sorted(r[0] for r in rows)
        if not vals:
            return None
        return float(vals[len(vals) // 2])

    # ------------------------------------------------------------------ writing
    def sync_plan(self, plan: Any) -> dict[str, str]:
        """Insert the plan's runs not yet in the store (one transaction).

        Returns name → status for every planned run. A name already stored with a
        different key (the spec changed under the same run name) is a ConfigError and
        nothing is written.
        """
        existing = {r[0]: (r[1], r[2]) for r in
                    self._con.execute("SELECT name, key, status FROM runs").fetchall()}
        for r in plan.runs:
            if r.name in existing and existing[r.name][0] != r.key:
                raise ConfigError(
                    f"store {self.path} already holds run {r.name!r} with a different config "
                    f"(key {existing[r.name][0]}, now {r.key}): the spec changed, or this "
                    "moescale resolves it differently; use a new store or rename the family"
                )
        now = _now()
        rows = check_plan(plan)
        with self.transaction() as con:
            for r in plan.runs:
                if r.name in existing:
                    continue
                row = rows[r.name]
                cols = ["name", "key", "sweep", "family", "kind", "budget", "status",
                        "spec_json", "train_json", "plan_json", "created_at", "updated_at",
                        *row]
                vals = [r.name, r.key, plan.sweep.name, r.family, r.kind, r.budget, "planned",
                        json.dumps(r.spec.to_dict(), sort_keys=True, default=str),
                        json.dumps(r.config.to_dict(), sort_keys=True, default=str),
                        json.dumps(_finite_dict(r.row()), sort_keys=True, default=str), now, now,
                        *row.values()]
                con.execute(f"INSERT INTO runs ({','.join(cols)}) VALUES "
                            f"({','.join('?' * len(cols))})", vals)
        return {n: s for n, (_, s) in self._statuses().items() if n in {r.name for r in plan.runs}}

    def set_meta(self, key: str, value: Any) -> None:
        """Store ``value`` (JSON unless a string) under ``key`` in the ``meta`` table."""
        text = value if isinstance(value, str) else json.dumps(_finite_dict(value),
                                                              sort_keys=True, default=str)
        with self.transaction() as con:
            con.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, text))

    def _statuses(self) -> dict[str, tuple[str, str]]:
        return {r[0]: (r[1], r[2]) for r in
                self._con.execute("SELECT name, key, status FROM runs").fetchall()}

    def mark_running(self, key: str) -> None:
        now = _now()
        with self.transaction() as con:
            con.execute("UPDATE runs SET status = 'running', attempts = attempts + 1, "
                        "started_at = ?, updated_at = ?, error = NULL WHERE key = ?",
                        (now, now, key))

    def mark_failed(self, key: str, error: str, wall_seconds: float | None = None) -> None:
        now = _now()
        with self.transaction() as con:
            con.execute("UPDATE runs SET status = 'failed', error = ?, wall_seconds = ?, "
                        "finished_at = ?, updated_at = ? WHERE key = ?",
                        (error, wall_seconds, now, now, key))

    def mark_done(self, key: str, result: dict[str, Any], curve: list[dict[str, Any]] | None,
                  wall_seconds: float | None = None) -> None:
        """Record a finished run: its result record, metrics and curve (one transaction)."""
        now = _now()
        # compute = M·tokens actually trained (the trainer's "flops"; its "compute" is the
        # requested budget C).
        src = {"loss": "loss", "train_loss": "train_loss", "tokens": "tokens",
               "compute": "flops", "learning_rate": "learning_rate",
               "batch_tokens": "batch_tokens", "flops_per_token": "flops_per_token"}
        src.update({c: c for c in TRAINER_COLUMNS})
        upd = {k: _finite(result[v]) for k, v in src.items() if result.get(v) is not None}
        if isinstance(upd.get("eval_block_losses"), (list, tuple)):
            upd["eval_block_losses"] = json.dumps(_finite_dict(upd["eval_block_losses"]))
        sets = ", ".join(f"{k} = ?" for k in upd)
        with self.transaction() as con:
            con.execute(
                "UPDATE runs SET status = 'done', error = NULL, result_json = ?, "
                f"wall_seconds = ?, finished_at = ?, updated_at = ?{', ' if sets else ''}{sets} "
                "WHERE key = ?",
                (json.dumps(_finite_dict(result), sort_keys=True, default=str), wall_seconds,
                 now, now, *upd.values(), key))
            con.execute("DELETE FROM curves WHERE run_key = ?", (key,))
            con.executemany(
                "INSERT OR REPLACE INTO curves (run_key, step, tokens, flops, loss, val_loss) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [(key, int(p["step"]), p.get("tokens"), _finite(p.get("flops")),
                  _finite(p.get("loss")), _finite(p.get("val_loss"))) for p in curve or []])

    # ------------------------------------------------------------------ export
    def export(self, out: str | os.PathLike, fmt: str = "csv") -> list[Path]:
        """Write ``run_records`` (and ``run_curves`` beside it) as CSV or Parquet.

        ``out`` is the run-record file; curves go to ``<stem>_curves.<ext>``.
        Returns the paths written (each written atomically).
        """
        import pandas as pd

        from moescale.spec.io import atomic_write

        if fmt not in ("csv", "parquet"):
            raise ConfigError(f"'format' must be 'csv' or 'parquet'; got {fmt!r}")
        out = check_output_file(out, field="--out", forbid=[self.path])
        curves_out = check_output_file(out.with_name(f"{out.stem}_curves{out.suffix}"),
                                       field="--out (curves file)", forbid=[self.path])
        if curves_out.absolute() == out.absolute():
            raise ConfigError(f"'--out' must name a file whose curves file differs; got {out}")
        runs = pd.DataFrame(self.records(), columns=list(RECORD_COLUMNS))
        curves = pd.DataFrame(self.curves(), columns=list(CURVE_COLUMNS))
        paths = [out, curves_out]
        for df, p in zip((runs, curves), paths, strict=True):
            if fmt == "csv":
                atomic_write(p, df.to_csv(index=False))
            else:
                import io

                buf = io.BytesIO()
                df.to_parquet(buf, index=False)
                atomic_write(p, buf.getvalue())
        return paths


    def backup(self, out: str | os.PathLike) -> Path:
        """Copy the store, WAL included, into one self-contained SQLite file ``out``.

        Uses SQLite's online backup API (consistent even while a sweep writes), writes a
        temporary file beside ``out`` and renames it, and switches the copy to rollback
        journal mode so it carries no ``-wal`` file. ``out`` must not be the store.
        """
        out = check_output_file(out, field="OUT", forbid=[self.path])
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
        os.close(fd)
        try:
            dest = sqlite3.connect(tmp, isolation_level=None)
            try:
                self._con.backup(dest)
                dest.execute("PRAGMA journal_mode = DELETE").fetchall()
            finally:
                dest.close()
            os.replace(tmp, out)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return out


def check_plan(plan: Any) -> dict[str, dict[str, Any]]:
    """The store rows of ``plan``'s runs (name → columns), refusing any integer column
    a 64-bit SQLite INTEGER cannot hold (tokens of a budget far beyond any real run)."""
    rows = {r.name: _record_from_plan(r) for r in plan.runs}
    for name, row in rows.items():
        for col, v in row.items():
            if isinstance(v, int) and not -_INT64 <= v < _INT64:
                raise ConfigError(f"run {name!r}: {col!r} must be below 2^63 (the store's "
                                  f"64-bit integer columns); got {v:.3g}: lower the budget")
    return rows


def _finite_dict(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _finite_dict(v) for k, v in d.items()}
    if isinstance(d, (list, tuple)):
        return [_finite_dict(v) for v in d]
    return _finite(d)


def _record_from_plan(r: Any) -> dict[str, Any]:
    """Run-record columns known before training (architecture, planned tokens/compute)."""
    row = r.row()
    s = r.spec
    return {
        "arch": row["arch"], "d_model": s.d_model, "n_layers": s.n_layers,
        "n_heads": s.n_heads, "n_kv_heads": s.n_kv_heads, "vocab_size": s.vocab_size,
        "d_ffn": s.d_ffn, "n_experts": s.n_experts, "top_k": s.top_k,
        "n_shared_experts": s.n_shared_experts, "d_expert": s.d_expert,
        "n_dense_layers": s.n_dense_layers, "activation_ratio": s.activation_ratio,
        "granularity": s.granularity, "shared_ratio": s.shared_ratio,
        "params_total": row["params_total"], "params_active": row["params_active"],
        "params_total_non_embedding": row["params_total_non_embedding"],
        "params_active_non_embedding": row["params_active_non_embedding"],
        "flops_per_token": r.flops_per_token, "flops_convention": "ling",
        "tokens": r.tokens, "compute": r.compute, "loss": None, "train_loss": None,
        "learning_rate": r.learning_rate, "batch_tokens": r.batch_tokens,
        "seq_len": r.config.seq_len, "seed": r.config.seed, "tags": ";".join(r.tags),
        "config": r.arch_config, "lr_multiplier": r.lr_multiplier, "rung": r.rung,
    }


def _upgrade(store: RunStore) -> None:
    """Bring an older (or older-column) store to this schema, in one transaction: add
    missing columns, fill the planner's columns of existing runs from their stored spec
    and config, rebuild the views, bump the version. Idempotent."""
    con = store._con
    have = {r[1] for r in con.execute("PRAGMA table_info(runs)")}
    missing = [c for c in _data_columns() if c not in have]
    view_cols = [r[1] for r in con.execute("PRAGMA table_info(run_records)")]
    version = con.execute("PRAGMA user_version").fetchone()[0]
    if not missing and view_cols == list(RECORD_COLUMNS) and version == STORE_SCHEMA_VERSION:
        return
    from moescale.spec.model_spec import ModelSpec
    from moescale.sweep.families import config_key
    from moescale.train.config import el_lr_opt

    with store.transaction() as c:
        for col in missing:
            c.execute(f"ALTER TABLE runs ADD COLUMN {col} {_TYPES.get(col, 'INTEGER')}")
        for name, budget, spec_json, train_json in c.execute(
                "SELECT name, budget, spec_json, train_json FROM runs WHERE config IS NULL "
                "OR lr_multiplier IS NULL").fetchall():
            spec, train = json.loads(spec_json), json.loads(train_json)
            lr = train.get("learning_rate")
            c.execute("UPDATE runs SET config = ?, lr_multiplier = ? WHERE name = ?",
                      (config_key(ModelSpec.from_dict(spec)),
                       1.0 if lr is None or not budget else lr / el_lr_opt(budget), name))
        c.execute("DROP VIEW IF EXISTS run_records")
        c.execute("DROP VIEW IF EXISTS run_curves")
        for stmt in _views().split(";"):
            if stmt.strip():
                c.execute(stmt)
        c.execute(f"PRAGMA user_version = {STORE_SCHEMA_VERSION}")
        c.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)",
                  (str(STORE_SCHEMA_VERSION),))


def open_store(path: str | os.PathLike, *, create: bool = True,
               readonly: bool = False) -> RunStore:
    """Open (or create) a run store.

    The path is resolved (symlinks followed) first, so the ``.runs`` folder always lies
    beside the real file. An existing file that is not a moescale store (any other
    SQLite database, or not SQLite at all), a folder or a device raises
    :class:`DataError` before anything is written. ``readonly`` opens without writing
    anything beside the file (see :func:`moescale.paths.connect_readonly`), which also
    reads stores on read-only storage.
    """
    path = check_store_path(path, create=create and not readonly)
    # A 0-byte file is what a crash during creation leaves: nothing to protect in it.
    exists = path.exists() and path.stat().st_size > 0
    if exists:
        _check_existing(path)
    elif readonly:
        raise DataError(f"{path} is an empty file, not a moescale run store")
    elif not create:
        raise DataError(f"run store not found: {path}")
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
    if readonly:
        return RunStore(path, connect_readonly(path), readonly=True)
    try:
        con = sqlite3.connect(path, isolation_level=None, timeout=60.0)
    except sqlite3.Error as exc:
        raise DataError(f"cannot open run store {path}: {exc}") from None
    try:
        con.execute("PRAGMA busy_timeout = 60000")
        con.execute("PRAGMA journal_mode = WAL")
        con.execute("PRAGMA synchronous = NORMAL")
    except sqlite3.OperationalError as exc:
        con.close()
        raise DataError(f"cannot write to run store {path} ({exc}); to read it only, use a "
                        "read-only command (store export, report)") from None
    except BaseException:
        con.close()
        raise
    store = RunStore(path, con)
    if not exists:
        # Schema, marker and meta in one transaction: a crash leaves no half-made store.
        with store.transaction() as c:
            for stmt in _schema().split(";"):
                if stmt.strip():
                    c.execute(stmt)
            c.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            c.execute(f"PRAGMA user_version = {STORE_SCHEMA_VERSION}")
            c.executemany("INSERT INTO meta (key, value) VALUES (?, ?)",
                          [("app", _APP), ("schema_version", str(STORE_SCHEMA_VERSION)),
                           ("created_at", _now())])
    else:
        try:
            _upgrade(store)
        except BaseException:
            store.close()
            raise
    return store
