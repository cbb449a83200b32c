"""Text corpora: the default offline corpus and bring-your-own readers, each with a manifest.

A :class:`Corpus` is an ordered list of source files plus a reader that turns each
file into documents (UTF-8 bytes). Its manifest (relative paths, sizes, per-file
SHA-256, total bytes, record count) and the corpus hash derived from it identify
the data exactly: the same files give the same hash on every machine, and the
token cache (:mod:`moescale.data.cache`) is keyed by it.

Readers
-------
``default_corpus()``
    The Python standard library source of the running interpreter (real code,
    present on every machine, ~11 MB for CPython 3.11).
``site_packages_corpus()`` (``"site-packages"``)
    The Python source of the installed packages: far larger, for GPU-scale sweeps.
``folder_corpus(path, pattern)``
    One document per file matching ``pattern`` (bytes as stored).
``jsonl_corpus(path, text_field)``
    One document per non-blank JSON line.
``parquet_corpus(path, column)`` / ``hf_disk_corpus(path, column)``
    One document per row of a string column (Parquet files; Arrow files of a
    Hugging Face ``save_to_disk`` folder, read with pyarrow).

The row-format readers (JSONL, Parquet, Arrow: one document per row) live in
:mod:`moescale.data.readers`.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import sysconfig
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from moescale.errors import DataError

__all__ = [
    "CORPUS_FORMAT_VERSION",
    "Document",
    "FileEntry",
    "Corpus",
    "default_corpus",
    "stdlib_corpus",
    "site_packages_corpus",
    "folder_corpus",
    "resolve_corpus",
]

#: Bumped when the meaning of a manifest (readers, document boundaries) changes.
CORPUS_FORMAT_VERSION = 1

#: Directories left out of the standard-library corpus: test suites (large, full of
#: generated and deliberately malformed data), the IDLE GUI, 2to3 fixtures and demos,
#: vendored wheels, and installed third-party packages.
STDLIB_EXCLUDED_DIRS = frozenset(
    {
        "test",
        "tests",
        "idle_test",
        "idlelib",
        "lib2to3",
        "turtledemo",
        "ensurepip",
        "site-packages",
        "dist-packages",
        "__pycache__",
    }
)

_STDLIB_TEST_DIRS = frozenset({"test", "tests", "idle_test"})
_CHUNK = 1 << 20


@dataclass(frozen=True, kw_only=True)
class Document:
    """One document: ``source`` names it (``relpath#index``), ``data`` is its UTF-8 bytes."""

    source: str
    data: bytes


@dataclass(frozen=True, kw_only=True)
class FileEntry:
    """One source file of a corpus: path relative to the corpus root, size, SHA-256."""

    path: str
    size: int
    sha256: str


Reader = Callable[[Path, str], Iterator[bytes]]


@dataclass(frozen=True, kw_only=True)
class Corpus:
    """An ordered set of files plus the reader that splits them into documents.

    Attributes
    ----------
    name : str
        Short name used in cache folder names (``"stdlib"``, a folder name...).
    kind : str
        Reader kind: ``"folder"``, ``"jsonl"``, ``"parquet"`` or ``"hf_disk"``.
    root : Path
        Folder the file paths are relative to (not part of the hash).
    files : tuple of FileEntry
        The files in reading order (sorted relative paths).
    options : dict
        Reader options that change the documents (text field, column); hashed.
    n_docs : int
        Records in the files (files, JSON lines or rows); documents with empty
        text are counted here but yield no tokens.
    """

    name: str
    kind: str
    root: Path
    files: tuple[FileEntry, ...]
    options: dict[str, Any]
    n_docs: int
    reader: Reader = field(repr=False, compare=False)
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def total_bytes(self) -> int:
        """Sum of the file sizes in bytes."""
        return sum(f.size for f in self.files)

    @cached_property
    def hash(self) -> str:
        """SHA-256 (hex) of the reader kind, options and every (path, size, sha256)."""
        ident = {
            "format_version": CORPUS_FORMAT_VERSION,
            "kind": self.kind,
            "options": self.options,
            "files": [[f.path, f.size, f.sha256] for f in self.files],
        }
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()

    def manifest(self) -> dict[str, Any]:
        """JSON-ready manifest: name, kind, options, root, files, totals and ``corpus_hash``."""
        return {
            "format_version": CORPUS_FORMAT_VERSION,
            "name": self.name,
            "kind": self.kind,
            "options": dict(self.options),
            "root": str(self.root),
            "n_files": len(self.files),
            "n_docs": self.n_docs,
            "total_bytes": self.total_bytes,
            "corpus_hash": self.hash,
            **self.extra,
            "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in self.files],
        }

    def __len__(self) -> int:
        return self.n_docs

    def __iter__(self) -> Iterator[Document]:
        return self.iter_documents()

    def iter_documents(self) -> Iterator[Document]:
        """Yield every document in order (file order, then position in the file)."""
        for entry in self.files:
            path = self.root / entry.path
            for i, data in enumerate(self.reader(path, entry.path)):
                yield Document(source=f"{entry.path}#{i}", data=data)


# ---------------------------------------------------------------------------- helpers


def _hash_file(path: Path) -> tuple[int, str]:
    """(size, sha256) of a file, streaming; DataError if it cannot be read."""
    h = hashlib.sha256()
    size = 0
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                h.update(chunk)
                size += len(chunk)
    except OSError as exc:
        raise DataError(f"cannot read corpus file {path}: {exc.strerror or exc}") from None
    return size, h.hexdigest()


def _entries(root: Path, paths: list[Path]) -> tuple[FileEntry, ...]:
    out = []
    for p in paths:
        size, digest = _hash_file(p)
        out.append(FileEntry(path=p.relative_to(root).as_posix(), size=size, sha256=digest))
    return tuple(out)


def _existing(path: str | os.PathLike, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{what} not found: {p}")
    return p


def _files_under(path: Path, pattern: str, what: str) -> tuple[Path, list[Path]]:
    """(root, sorted matching files) for a file or a folder searched with ``pattern``."""
    if path.is_file():
        return path.parent, [path]
    files = sorted(
        (p for p in path.glob(pattern) if p.is_file()),
        key=lambda p: p.relative_to(path).as_posix(),
    )
    if not files:
        raise DataError(f"{what} {path} holds no files matching {pattern!r}: the corpus is empty")
    return path, files


def _check_nonempty(corpus: Corpus) -> Corpus:
    if corpus.total_bytes == 0 or corpus.n_docs == 0:
        raise DataError(
            f"corpus {corpus.name!r} at {corpus.root} is empty "
            f"({len(corpus.files)} files, {corpus.total_bytes} bytes, {corpus.n_docs} documents)"
        )
    return corpus


def _text_bytes(value: Any, where: str, field_name: str) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8", errors="surrogatepass")
    raise DataError(f"{where}: field {field_name!r} must be a string; got {type(value).__name__}")


# ---------------------------------------------------------------------------- folder


def _read_whole_file(path: Path, rel: str) -> Iterator[bytes]:
    try:
        yield path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read corpus file {path}: {exc.strerror or exc}") from None


def folder_corpus(
    path: str | os.PathLike, pattern: str = "**/*.txt", *, name: str | None = None
) -> Corpus:
    """A corpus with one document per file under ``path`` matching ``pattern``.

    Parameters
    ----------
    path : path-like
        A folder (searched with ``pattern``, a :meth:`pathlib.Path.glob` pattern) or one file.
    pattern : str
        Glob relative to ``path``; default ``"**/*.txt"``.
    name : str, optional
        Name for cache folders; default the folder name.

    Examples
    --------
    >>> corpus = folder_corpus("my_texts", "**/*.md")  # doctest: +SKIP
    """
    p = _existing(path, "corpus folder")
    root, files = _files_under(p, pattern, "corpus folder")
    entries = _entries(root, files)
    corpus = Corpus(
        name=name or p.stem,
        kind="folder",
        root=root,
        files=entries,
        options={"pattern": pattern} if p.is_dir() else {},
        n_docs=sum(1 for e in entries if e.size > 0),
        reader=_read_whole_file,
    )
    return _check_nonempty(corpus)


def _stdlib_skip_dir(name: str, include_tests: bool) -> bool:
    if include_tests and name in _STDLIB_TEST_DIRS:
        return False
    # config-3.x-<platform> holds build-specific files; skipping keeps the hash per version.
    return name in STDLIB_EXCLUDED_DIRS or name.startswith("config-")


def stdlib_corpus(*, include_tests: bool = False) -> Corpus:
    """The ``*.py`` source of the running interpreter's standard library.

    Includes every ``*.py`` file under ``sysconfig.get_paths()["stdlib"]`` except
    those inside :data:`STDLIB_EXCLUDED_DIRS` (test suites, IDLE, lib2to3, demos,
    vendored wheels, site-packages) and the build-specific ``_sysconfigdata_*.py``
    and ``config-*/`` files. One document per file. About 11 MB for CPython 3.11
    (a few percent English prose: docstrings and ``pydoc_data/topics.py``). The
    hash depends on the interpreter version, which the manifest records.

    Parameters
    ----------
    include_tests : bool
        Also include the ``test``/``tests`` folders (~3x larger; real code, but with
        deliberately malformed and generated test data).
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        raise DataError(f"the standard library folder {root} does not exist")
    files = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not _stdlib_skip_dir(d, include_tests)]  # prune
        files.extend(
            Path(folder) / n
            for n in names
            if n.endswith(".py") and not n.startswith("_sysconfigdata_")
        )
    files = sorted((p for p in files if p.is_file()), key=lambda p: p.relative_to(root).as_posix())
    if not files:
        raise DataError(f"no *.py files under the standard library folder {root}")
    entries = _entries(root, files)
    excluded = sorted(STDLIB_EXCLUDED_DIRS - (_STDLIB_TEST_DIRS if include_tests else set()))
    corpus = Corpus(
        name="stdlib-full" if include_tests else "stdlib",
        kind="folder",
        root=root,
        files=entries,
        options={
            "pattern": "**/*.py",
            "exclude_dirs": [*excluded, "config-*"],
            "exclude_files": ["_sysconfigdata_*"],
        },
        n_docs=sum(1 for e in entries if e.size > 0),
        reader=_read_whole_file,
        extra={
            "source": "python-stdlib",
            "python_version": ".".join(map(str, sys.version_info[:3])),
            "python_implementation": sys.implementation.name,
        },
    )
    return _check_nonempty(corpus)


def site_packages_corpus() -> Corpus:
    """The ``*.py`` source of every package installed beside the running interpreter
    (``sysconfig.get_paths()["purelib"]``), one document per file.

    Real code, offline, and much larger than the standard library when a framework stack
    is installed (~270 MB with moescale's test extras: torch, transformers, scipy, ...):
    enough tokens for IsoFLOP ladders at 1e15-1e16 FLOPs, where :func:`stdlib_corpus`
    (~10M tokens) runs out. The hash records exactly which files were read, so two
    machines with different packages get different token caches, never a mixed one.
    """
    root = Path(sysconfig.get_paths()["purelib"])
    if not root.is_dir():
        raise DataError(f"the site-packages folder {root} does not exist")
    files = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        files.extend(Path(folder) / n for n in names if n.endswith(".py"))
    files = sorted((p for p in files if p.is_file()), key=lambda p: p.relative_to(root).as_posix())
    if not files:
        raise DataError(f"no *.py files under the site-packages folder {root}")
    entries = _entries(root, files)
    corpus = Corpus(
        name="site-packages", kind="folder", root=root, files=entries,
        options={"pattern": "**/*.py", "exclude_dirs": ["__pycache__"]},
        n_docs=sum(1 for e in entries if e.size > 0), reader=_read_whole_file,
        extra={"source": "python-site-packages",
               "python_version": ".".join(map(str, sys.version_info[:3]))},
    )
    return _check_nonempty(corpus)


def default_corpus() -> Corpus:
    """The default training corpus: :func:`stdlib_corpus` (available offline everywhere)."""
    return stdlib_corpus()


# ---------------------------------------------------------------------------- dispatch


def resolve_corpus(
    spec: str | os.PathLike | Corpus | None = None,
    *,
    text_field: str = "text",
    pattern: str | None = None,
    split: str | None = None,
) -> Corpus:
    """Turn a user's ``--data`` value into a :class:`Corpus`.

    ``None`` or ``"default"`` → :func:`default_corpus`; ``"stdlib"`` → :func:`stdlib_corpus`
    (``"stdlib-full"``: with its test suites); ``"site-packages"`` →
    :func:`site_packages_corpus`;
    a ``.jsonl`` file → :func:`jsonl_corpus`; a ``.parquet`` file → :func:`parquet_corpus`;
    a folder with ``state.json``/``dataset_dict.json`` → :func:`hf_disk_corpus`; a folder of
    ``*.jsonl`` or ``*.parquet`` files → the matching reader; any other folder or file →
    :func:`folder_corpus` (``pattern`` default ``"**/*.txt"``). ``text_field`` is the JSONL
    key or the Parquet/Arrow column.
    """
    from moescale.data.readers import hf_disk_corpus, jsonl_corpus, parquet_corpus

    if isinstance(spec, Corpus):
        return spec
    if spec is None or str(spec) == "default":
        return default_corpus()
    if str(spec) == "stdlib":
        return stdlib_corpus()
    if str(spec) == "stdlib-full":
        return stdlib_corpus(include_tests=True)
    if str(spec) == "site-packages":
        return site_packages_corpus()
    p = _existing(spec, "corpus")
    if p.is_file():
        if p.suffix == ".jsonl":
            return jsonl_corpus(p, text_field)
        if p.suffix == ".parquet":
            return parquet_corpus(p, text_field)
        return folder_corpus(p, pattern or "**/*.txt")
    if (p / "state.json").is_file() or (p / "dataset_dict.json").is_file():
        return hf_disk_corpus(p, text_field, split=split)
    if pattern is None:
        if any(p.glob("**/*.jsonl")):
            return jsonl_corpus(p, text_field)
        if any(p.glob("**/*.parquet")):
            return parquet_corpus(p, text_field)
    return folder_corpus(p, pattern or "**/*.txt")
