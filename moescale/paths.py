"""Safe paths: output files and folders checked before anything is written, and SQLite
URIs built with escaping.

Every command that writes takes its output path through :func:`check_output_file` or
:func:`check_output_dir` first, so a bad path is one :class:`~moescale.errors.ConfigError`
line (naming the option, what is allowed and the value) before any work starts, and a
store, a device or a folder is never replaced by a report or an export.

Stores are SQLite files in WAL mode. :func:`sqlite_uri` percent-escapes the path
(``#``, ``?`` and ``%`` are URI syntax), and :func:`connect_readonly` reads a store
without creating ``-wal``/``-shm`` side files when none exist (``immutable=1``), so a
store on read-only storage, or one handed over as a single file, stays readable.
"""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Iterable
from pathlib import Path

from moescale.errors import ConfigError, DataError

__all__ = [
    "NAME_MAX",
    "check_output_file",
    "check_output_dir",
    "check_store_path",
    "connect_readonly",
    "real_path",
    "sqlite_uri",
    "wal_files",
]

NAME_MAX = 255
"""Longest file name (bytes) common file systems (ext4, XFS, APFS, NTFS) accept."""

_WAL_SUFFIXES = ("-wal", "-shm", "-journal")


def real_path(path: str | os.PathLike) -> Path:
    """``os.path.realpath`` as a :class:`Path`: symlinks resolved, absolute.

    A store reached through a symlink keeps its ``.runs`` folder beside the real file.
    """
    return Path(os.path.realpath(os.fspath(path)))


def _check_empty(field: str, path: str | os.PathLike) -> None:
    """``Path('')`` is ``.``: an empty name must be refused before it becomes a Path."""
    if not os.fspath(path).strip():
        raise ConfigError(f"{field!r} must be a path; got {os.fspath(path)!r}")


def _check_name(field: str, path: Path) -> None:
    text = os.fspath(path)
    if not text.strip():
        raise ConfigError(f"{field!r} must be a file path; got {text!r}")
    for part in path.parts:
        if len(os.fsencode(part)) > NAME_MAX:
            raise ConfigError(
                f"{field!r} must have names of at most {NAME_MAX} bytes; got a name of "
                f"{len(os.fsencode(part))} bytes ({part[:40]}…)")


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _writable_parent(field: str, path: Path) -> None:
    """The nearest existing ancestor must be a writable folder (it is where we create)."""
    parent = path.absolute().parent
    while not parent.exists():
        if parent == parent.parent:
            break
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{field!r} must be inside a folder; {parent} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{field!r} must be in a writable folder; {parent} is read-only "
                          f"(got {os.fspath(path)!r})")


def _same(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return real_path(a) == real_path(b)


def check_output_file(
    path: str | os.PathLike,
    *,
    field: str = "--out",
    forbid: Iterable[str | os.PathLike] = (),
) -> Path:
    """Validate a file the caller is about to (atomically) write; return it as a Path.

    Allowed: an absent path in a writable folder, or an existing regular file. Refused
    with a one-line :class:`ConfigError`: an empty name, a name over :data:`NAME_MAX`
    bytes, a folder, a device, a pipe, a symlink (the atomic rename would replace the
    link, not its target), a read-only folder, and any path in ``forbid`` (a store, and
    its ``-wal``/``-shm`` side files, are never output files).

    >>> import tempfile
    >>> check_output_file(Path(tempfile.mkdtemp()) / "runs.csv").name
    'runs.csv'
    """
    _check_empty(field, path)
    path = Path(path)
    _check_name(field, path)
    if path.is_symlink():
        raise ConfigError(f"{field!r} must be a regular file or absent; {os.fspath(path)!r} "
                          f"is a symlink (to {os.readlink(path)!r}): give the real path")
    if path.exists():
        mode = path.stat().st_mode
        if not stat.S_ISREG(mode):
            raise ConfigError(f"{field!r} must be a regular file or absent; "
                              f"{os.fspath(path)!r} is {_kind(mode)}")
        for other in forbid:
            for side in (Path(other), *(Path(f"{other}{s}") for s in _WAL_SUFFIXES)):
                if side.exists() and _same(path, side):
                    raise ConfigError(
                        f"{field!r} must not be the run store or its side files; got "
                        f"{os.fspath(path)!r} (the store is {os.fspath(other)!r})")
        if not os.access(path, os.W_OK):
            raise ConfigError(f"{field!r} must be writable; {os.fspath(path)!r} is read-only")
    _writable_parent(field, path)
    return path


def check_output_dir(path: str | os.PathLike, *, field: str = "--out") -> Path:
    """Validate an output folder: absent (created later) or an existing writable folder.

    A file, a device, a symlink to a non-folder, an over-long name or a read-only parent
    is a one-line :class:`ConfigError`.
    """
    _check_empty(field, path)
    path = Path(path)
    _check_name(field, path)
    if path.exists():
        mode = path.stat().st_mode
        if not stat.S_ISDIR(mode):
            what = "a file" if stat.S_ISREG(mode) else _kind(mode)
            raise ConfigError(f"{field!r} must be a folder (absent or existing); "
                              f"{os.fspath(path)!r} is {what}")
        if not os.access(path, os.W_OK | os.X_OK):
            raise ConfigError(f"{field!r} must be a writable folder; {os.fspath(path)!r} "
                              "is read-only")
        return path
    if path.is_symlink():
        raise ConfigError(f"{field!r} must be a folder or absent; {os.fspath(path)!r} is a "
                          f"dangling symlink (to {os.readlink(path)!r})")
    _writable_parent(field, path)
    return path


def check_store_path(path: str | os.PathLike, *, field: str = "--store",
                     create: bool = True) -> Path:
    """A store path, symlinks resolved: an existing regular file, or (``create``) an
    absent name in a writable folder. A folder, a device (``/dev/null``) or an over-long
    name is a one-line error."""
    given = Path(path)
    _check_name(field, given)
    real = real_path(given)
    if real.exists():
        mode = real.stat().st_mode
        if not stat.S_ISREG(mode):
            raise DataError(f"{field!r} must be a moescale run store file; "
                            f"{os.fspath(given)!r} is {_kind(mode)}")
        return real
    if not create:
        raise DataError(f"run store not found: {os.fspath(given)}")
    _writable_parent(field, real)
    return real


def sqlite_uri(path: str | os.PathLike, *, readonly: bool = False,
               immutable: bool = False) -> str:
    """A ``file:`` URI for ``path`` with the path percent-escaped.

    ``readonly`` adds ``mode=ro``; ``immutable`` adds ``immutable=1`` (SQLite then takes
    no locks and never creates ``-wal``/``-shm`` files; only for a file nobody writes).

    >>> sqlite_uri("/data/runs#1?.db", readonly=True)
    'file:///data/runs%231%3F.db?mode=ro'
    """
    uri = Path(os.path.abspath(os.fspath(path))).as_uri()
    query = [q for q, on in (("mode=ro", readonly or immutable), ("immutable=1", immutable))
             if on]
    return uri + ("?" + "&".join(query) if query else "")


def wal_files(path: str | os.PathLike) -> list[Path]:
    """The store's ``-wal``/``-shm`` side files that exist (committed data may live in
    ``-wal`` until a checkpoint)."""
    return [p for p in (Path(f"{os.fspath(path)}{s}") for s in ("-wal", "-shm")) if p.exists()]


def connect_readonly(path: str | os.PathLike) -> sqlite3.Connection:
    """Open an SQLite store for reading without ever writing beside it.

    No ``-wal`` file: the database file is the whole truth and no writer has it open,
    so it is opened ``immutable=1`` (works on read-only storage, creates no side files).
    A ``-wal`` file present: a writer may be live or data is not yet checkpointed, so it
    is opened ``mode=ro`` (which reads the WAL). On read-only storage without a ``-shm``
    file that fails, and the error says how to get a self-contained copy.
    """
    wal = Path(f"{os.fspath(path)}-wal")
    immutable = not wal.exists() or (wal.stat().st_size == 0
                                     and not os.access(wal.parent, os.W_OK))
    try:
        con = sqlite3.connect(sqlite_uri(path, readonly=True, immutable=immutable), uri=True)
        con.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as exc:
        if not immutable and not os.access(wal.parent, os.W_OK):
            raise DataError(
                f"{os.fspath(path)}: committed runs are still in {wal.name} and the folder is "
                "read-only, so SQLite cannot read them; copy the store with its -wal file to "
                "writable storage (or run 'moescale store backup' where it was written)"
            ) from None
        raise DataError(f"cannot open {os.fspath(path)} read-only: {exc}") from None
    return con
