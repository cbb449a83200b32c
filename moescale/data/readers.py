"""Row-format corpus readers: JSON Lines, Parquet and Hugging Face ``save_to_disk`` folders.

Each reader yields one document per row (a non-blank JSON line, a table row)
taken from a text field/column; the field name is part of the corpus hash. A
missing field or column raises :class:`~moescale.errors.DataError` naming the
file (and line) and the fields that exist.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
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


def _count_jsonl_records(path: Path) -> int:
    n = 0
    with open(path, "rb") as fh:
        for line in fh:
            if line.strip():
                n += 1
    return n


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
    entries = _entries(root, files)
    reader = _jsonl_reader(text_field)
    # Fail early (naming the file and line) if the text field is missing: check the first record.
    for e in entries:
        if e.size:
            next(iter(reader(root / e.path, e.path)), None)
            break
    corpus = Corpus(
        name=name or p.stem,
        kind="jsonl",
        root=root,
        files=entries,
        options={"text_field": text_field},
        n_docs=sum(_count_jsonl_records(root / e.path) for e in entries),
        reader=reader,
    )
    return _check_nonempty(corpus)


# ---------------------------------------------------------------------------- arrow / parquet


def _column_texts(table_batches: Iterator[Any], column: str, rel: str) -> Iterator[bytes]:
    row = 0
    for batch in table_batches:
        names = batch.schema.names
        if column not in names:
            raise DataError(
                f"{rel} has no text column {column!r} (columns: {names}); choose it with column"
            )
        for value in batch.column(names.index(column)).to_pylist():
            if value is None:
                value = ""
            yield _text_bytes(value, f"{rel} row {row}", column)
            row += 1


def _parquet_reader(column: str) -> Reader:
    def read(path: Path, rel: str) -> Iterator[bytes]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(path)
        except (OSError, pa.ArrowException) as exc:
            raise DataError(f"cannot read Parquet file {path}: {exc}") from None
        if column not in pf.schema_arrow.names:
            raise DataError(
                f"{rel} has no text column {column!r} (columns: {pf.schema_arrow.names}); "
                "choose it with column"
            )
        yield from _column_texts(pf.iter_batches(columns=[column], batch_size=4096), column, rel)

    return read


def parquet_corpus(
    path: str | os.PathLike,
    column: str = "text",
    *,
    pattern: str = "**/*.parquet",
    name: str | None = None,
) -> Corpus:
    """A corpus with one document per row of the string ``column`` of Parquet file(s)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = _existing(path, "Parquet corpus")
    root, files = _files_under(p, pattern, "Parquet folder")
    entries = _entries(root, files)
    n_rows = 0
    for e in entries:
        try:
            pf = pq.ParquetFile(root / e.path)
        except (OSError, pa.ArrowException) as exc:
            raise DataError(f"cannot read Parquet file {root / e.path}: {exc}") from None
        if column not in pf.schema_arrow.names:
            raise DataError(
                f"{e.path} has no text column {column!r} (columns: {pf.schema_arrow.names}); "
                "choose it with column"
            )
        n_rows += pf.metadata.num_rows
    corpus = Corpus(
        name=name or p.stem,
        kind="parquet",
        root=root,
        files=entries,
        options={"column": column},
        n_docs=n_rows,
        reader=_parquet_reader(column),
    )
    return _check_nonempty(corpus)


def _open_arrow(path: Path) -> Any:
    """An Arrow IPC reader for ``path``: stream format (``save_to_disk``) or file format."""
    import pyarrow as pa

    try:
        return pa.ipc.open_stream(pa.memory_map(str(path)))
    except (OSError, pa.ArrowException):
        pass
    try:
        return pa.ipc.open_file(pa.memory_map(str(path)))
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"cannot read Arrow file {path}: {exc}") from None


def _arrow_reader(column: str) -> Reader:
    def read(path: Path, rel: str) -> Iterator[bytes]:
        reader = _open_arrow(path)
        if column not in reader.schema.names:
            raise DataError(
                f"{rel} has no text column {column!r} (columns: {reader.schema.names}); "
                "choose it with column"
            )
        if hasattr(reader, "num_record_batches"):
            batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
        else:
            batches = iter(reader)
        yield from _column_texts(batches, column, rel)

    return read


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
    entries = _entries(folder, files)
    n_rows = 0
    for f in files:
        reader = _open_arrow(f)
        if column not in reader.schema.names:
            raise DataError(
                f"{f.name} has no text column {column!r} (columns: {reader.schema.names}); "
                "choose it with column"
            )
        if hasattr(reader, "num_record_batches"):
            n_rows += sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))
        else:
            n_rows += sum(batch.num_rows for batch in reader)  # memory-mapped, no copy
    corpus = Corpus(
        name=name or p.name,
        kind="hf_disk",
        root=folder,
        files=entries,
        options={"column": column},
        n_docs=n_rows,
        reader=_arrow_reader(column),
    )
    return _check_nonempty(corpus)
