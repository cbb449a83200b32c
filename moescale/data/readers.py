"""Row-format corpus readers: JSON Lines, Parquet and Hugging Face ``save_to_disk`` folders.

Each reader yields one document per row (a non-blank JSON line, a table row)
taken from a text field/column; the field name is part of the corpus hash. A
missing field or column raises :class:`~moescale.errors.DataError` naming the
file (and line) and the fields that exist.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from moescale.data.corpus import (
    Corpus,
    Reader,
    _check_nonempty,
    _entries,
    _existing,
    _files_under,
    _text_bytes,
)
from moescale.errors import DataError

__all__ = ["jsonl_corpus", "parquet_corpus", "hf_disk_corpus"]


# ---------------------------------------------------------------------------- jsonl


def _jsonl_reader(text_field: str) -> Reader:
    def read(path: Path, rel: str) -> Iterator[bytes]:
        try:
            fh = open(path, "rb")  # noqa: SIM115 - closed below, generator-owned
        except OSError as exc:
            raise DataError(f"cannot read corpus file {path}: {exc.strerror or exc}") from None
        with fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                where = f"{rel}:{lineno}"
                try:
                    record = json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                    raise DataError(f"{where} is not valid JSON: {exc}") from None
                if not isinstance(record, dict) or text_field not in record:
                    keys = sorted(record) if isinstance(record, dict) else type(record).__name__
                    raise DataError(
                        f"{where} has no text field {text_field!r} (found {keys}); "
                        "choose the field with text_field"
                    )
                yield _text_bytes(record[text_field], where, text_field)

    return read


def _count_jsonl_docs(path: Path, text_field: str, rel: str) -> int:
    """Non-blank lines of ``path`` (records are parsed, and checked, only when read)."""
    n = 0
    with open(path, "rb") as fh:
        for line in fh:
            if line.strip():
                n += 1
    return n


def _row_corpus(
    root: Path,
    files: list[Path],
    *,
    name: str,
    kind: str,
    field: tuple[str, str],
    reader: Reader,
    count: Callable[[Path, str, str], int],
) -> Corpus:
    """The :class:`Corpus` of row-format ``files`` under ``root``: one document per row,
    ``count(path, column, rel)`` rows per file, text in ``field = (option name, value)``."""
    entries = _entries(root, files)
    option, column = field
    corpus = Corpus(
        name=name,
        kind=kind,
        root=root,
        files=entries,
        options={option: column},
        n_docs=sum(count(root / e.path, column, e.path) for e in entries),
        reader=reader,
    )
    return _check_nonempty(corpus)


def jsonl_corpus(
    path: str | os.PathLike,
    text_field: str = "text",
    *,
    pattern: str = "**/*.jsonl",
    name: str | None = None,
) -> Corpus:
    """A corpus with one document per non-blank line of JSON Lines file(s).

    Parameters
    ----------
    path : path-like
        A ``.jsonl`` file or a folder searched with ``pattern``.
    text_field : str
        Key of the text in each JSON object (default ``"text"``); a record
        without it raises :class:`~moescale.errors.DataError` naming file and line.
    """
    p = _existing(path, "JSONL corpus")
    root, files = _files_under(p, pattern, "JSONL folder")
    reader = _jsonl_reader(text_field)
    # Fail early (naming the file and line) if the text field is missing: check the first record.
    for f in files:
        if f.stat().st_size:
            next(iter(reader(f, f.relative_to(root).as_posix())), None)
            break
    return _row_corpus(root, files, name=name or p.stem, kind="jsonl",
                       field=("text_field", text_field), reader=reader,
                       count=_count_jsonl_docs)


# ---------------------------------------------------------------------------- arrow / parquet


def _require_column(names: list[str], column: str, rel: str) -> None:
    if column not in names:
        raise DataError(
            f"{rel} has no text column {column!r} (columns: {names}); choose it with column"
        )


def _column_texts(table_batches: Iterator[Any], column: str, rel: str) -> Iterator[bytes]:
    row = 0
    for batch in table_batches:
        names = batch.schema.names
        _require_column(names, column, rel)
        for value in batch.column(names.index(column)).to_pylist():
            if value is None:
                value = ""
            yield _text_bytes(value, f"{rel} row {row}", column)
            row += 1


def _open_parquet(path: Path, column: str, rel: str) -> Any:
    """A ``pyarrow.parquet.ParquetFile`` for ``path`` whose schema holds ``column``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"cannot read Parquet file {path}: {exc}") from None
    _require_column(pf.schema_arrow.names, column, rel)
    return pf


def _parquet_reader(column: str) -> Reader:
    def read(path: Path, rel: str) -> Iterator[bytes]:
        pf = _open_parquet(path, column, rel)
        yield from _column_texts(pf.iter_batches(columns=[column], batch_size=4096), column, rel)

    return read


def _count_parquet_rows(path: Path, column: str, rel: str) -> int:
    return _open_parquet(path, column, rel).metadata.num_rows


def parquet_corpus(
    path: str | os.PathLike,
    column: str = "text",
    *,
    pattern: str = "**/*.parquet",
    name: str | None = None,
) -> Corpus:
    """A corpus with one document per row of the string ``column`` of Parquet file(s)."""
    p = _existing(path, "Parquet corpus")
    root, files = _files_under(p, pattern, "Parquet folder")
    return _row_corpus(root, files, name=name or p.stem, kind="parquet",
                       field=("column", column), reader=_parquet_reader(column),
                       count=_count_parquet_rows)


def _open_arrow(path: Path, column: str, rel: str) -> Any:
    """An Arrow IPC reader for ``path`` (stream format, as ``save_to_disk`` writes, or file
    format) whose schema holds ``column``."""
    import pyarrow as pa

    try:
        reader = pa.ipc.open_stream(pa.memory_map(str(path)))
    except (OSError, pa.ArrowException):
        try:
            reader = pa.ipc.open_file(pa.memory_map(str(path)))
        except (OSError, pa.ArrowException) as exc:
            raise DataError(f"cannot read Arrow file {path}: {exc}") from None
    _require_column(reader.schema.names, column, rel)
    return reader


def _arrow_batches(reader: Any) -> Iterator[Any]:
    """The record batches of an Arrow IPC file or stream reader (memory-mapped, no copy)."""
    if hasattr(reader, "num_record_batches"):
        return (reader.get_batch(i) for i in range(reader.num_record_batches))
    return iter(reader)


def _arrow_reader(column: str) -> Reader:
    def read(path: Path, rel: str) -> Iterator[bytes]:
        yield from _column_texts(_arrow_batches(_open_arrow(path, column, rel)), column, rel)

    return read


def _count_arrow_rows(path: Path, column: str, rel: str) -> int:
    return sum(batch.num_rows for batch in _arrow_batches(_open_arrow(path, column, rel)))


def _hf_arrow_files(folder: Path, split: str | None) -> tuple[Path, list[Path]]:
    """(dataset folder, its arrow files in order) for a ``save_to_disk`` folder."""
    dd = folder / "dataset_dict.json"
    if dd.is_file():
        try:
            splits = json.loads(dd.read_text())["splits"]
        except (OSError, ValueError, KeyError) as exc:
            raise DataError(f"cannot read {dd}: {exc}") from None
        chosen = split or ("train" if "train" in splits else None)
        if chosen not in splits:
            raise DataError(
                f"{folder} is a DatasetDict with splits {splits}; choose one with split "
                f"(got {split!r})"
            )
        folder = folder / chosen
    state = folder / "state.json"
    if state.is_file():
        try:
            names = [d["filename"] for d in json.loads(state.read_text())["_data_files"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DataError(f"cannot read {state}: {exc}") from None
        files = [folder / n for n in names]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise DataError(f"{state} lists missing Arrow files: {missing}")
    else:
        files = sorted(folder.glob("*.arrow"))
    if not files:
        raise DataError(
            f"{folder} is not a Hugging Face save_to_disk folder: "
            "no state.json and no *.arrow files"
        )
    return folder, files


def hf_disk_corpus(
    path: str | os.PathLike,
    column: str = "text",
    *,
    split: str | None = None,
    name: str | None = None,
) -> Corpus:
    """A corpus from a Hugging Face ``Dataset.save_to_disk`` folder, read with pyarrow.

    Parameters
    ----------
    path : path-like
        The folder ``save_to_disk`` wrote (``state.json`` + ``data-*.arrow``), or a
        ``DatasetDict`` folder (``dataset_dict.json``), in which case ``split``
        chooses the sub-dataset (default ``"train"``).
    column : str
        The string column holding the text (default ``"text"``).
    """
    p = _existing(path, "Hugging Face dataset folder")
    if not p.is_dir():
        raise DataError(f"Hugging Face dataset path {p} must be a folder written by save_to_disk")
    folder, files = _hf_arrow_files(p, split)
    return _row_corpus(folder, files, name=name or p.name, kind="hf_disk",
                       field=("column", column), reader=_arrow_reader(column),
                       count=_count_arrow_rows)
