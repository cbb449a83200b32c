"""Run folders (``train --out DIR``): validated before anything is written, held while training.

A run folder must be absent, empty, or a moescale run (it holds a run record with a
``run_key``); the caller then checks that the identity matches. Symbolic links inside
a run folder are refused: a write through ``metrics.jsonl -> /elsewhere`` would truncate
the link's target. Nothing is created until every check has passed, so a refused run
leaves no empty folder behind. :func:`claim_run_dir` creates the folder, takes an
exclusive lock on it (two trainers never write one folder) and removes the temporary
files of an :func:`~moescale.spec.io.atomic_write` that a kill interrupted.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from moescale.errors import ConfigError, DataError
from moescale.paths import check_output_dir

__all__ = ["RunFolder", "inspect_run_dir", "claim_run_dir"]

IGNORED = frozenset({".lock", ".write_probe"})
"""Entries that do not make a folder a run: a sweep worker's lock, an interrupted probe."""


class RunFolder(NamedTuple):
    """A validated run folder and its run record (``None`` when absent or empty)."""

    path: Path
    record_path: Path | None
    record: dict[str, Any] | None


def _is_temp(path: Path) -> bool:
    return path.name.startswith(".") and path.name.endswith(".tmp")


def _refuse_links(folder: Path) -> None:
    for entry in folder.iterdir():
        if entry.is_symlink():
            raise ConfigError(
                f"run folder {str(folder)!r} holds a symbolic link {entry.name!r} -> "
                f"{os.readlink(entry)!r}; links inside run folders are refused (a write would "
                "change the target); replace it with a regular file or use another folder"
            )


def inspect_run_dir(out_dir: str | os.PathLike, record_names: Sequence[str]) -> RunFolder:
    """Check the run folder ``out_dir`` without writing anything.

    ``record_names`` are the file names (in order of preference) of a run record: a JSON
    object with a ``run_key``; the caller compares that identity with its own. Raises
    :class:`ConfigError` if ``out_dir`` is empty (``''``), not a folder, a dangling link,
    cannot be created or written (:func:`moescale.paths.check_output_dir`), holds a
    symbolic link (also in ``tb/``), or is not empty and holds no run record (only a
    sweep's ``.lock`` and interrupted temp files are ignored).
    """
    out = check_output_dir(out_dir, field="out")
    if not out.exists():
        return RunFolder(out, None, None)
    try:
        _refuse_links(out)
        if (out / "tb").is_dir():
            _refuse_links(out / "tb")
        entries = sorted(out.iterdir())
    except OSError as exc:
        raise ConfigError(f"output folder {str(out)!r} cannot be read: {exc.strerror}") from None
    for name in record_names:
        path = out / name
        if not path.is_file():
            continue
        try:
            record = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"cannot read run record {path}: {exc}; delete it to retrain") from None
        if isinstance(record, dict) and isinstance(record.get("run_key"), dict):
            return RunFolder(out, path, record)
    other = [e.name for e in entries if e.name not in IGNORED and not _is_temp(e)]
    if other:
        shown = ", ".join(other[:4]) + (", ..." if len(other) > 4 else "")
        raise ConfigError(
            f"'out' {str(out)!r} is not empty and is not a moescale run (no "
            f"{' or '.join(record_names)} with a run_key; holds {shown}); "
            "use an empty or new folder"
        )
    return RunFolder(out, None, None)


@contextlib.contextmanager
def claim_run_dir(out: Path) -> Iterator[Path]:
    """Create ``out``, lock it exclusively for the duration, remove leftover temp files.

    Raises :class:`ConfigError` if the folder cannot be created or written, or if another
    process holds it (``flock`` on the folder itself; a sweep's ``.lock`` is separate).
    """
    import fcntl

    from moescale.train.checkpoint import remove_temp_files

    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write_probe"
        probe.write_bytes(b"")
        probe.unlink()
        fd = os.open(out, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as exc:
        raise ConfigError(f"output folder {str(out)!r} is not writable: {exc.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(
                f"run folder {str(out)!r} is in use by another moescale process"
            ) from None
        remove_temp_files(out)
        yield out
    finally:
        os.close(fd)  # closing the descriptor releases the lock
