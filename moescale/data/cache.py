"""The token cache: a corpus tokenised once into memory-mapped train/validation arrays.

Layout of one cache entry, ``<cache_dir>/<corpus name>-<tokenizer id>-<key>/``::

    train.bin   tokens of the training documents, each followed by end-of-document
    val.bin     the same for the validation documents
    meta.json   manifest, tokenizer, split, token and document counts (written last)

``key`` hashes (corpus hash, tokenizer id, split rule, cache format). Every file is
written to a unique temporary name, fsynced and renamed into place, and
``meta.json`` last, so an entry either exists whole or not at all: a tokenisation
killed half-way leaves only ``*.tmp`` files, which are ignored (and a later build
simply writes its own). Arrays are ``uint16`` when the vocabulary fits, else
``uint32``.

Split rule
----------
Each document is identified by the SHA-256 of its bytes (salted with
:data:`SPLIT_SALT`), so the split depends only on document contents, never on
file order, machine or interpreter; duplicates always land on the same side.
Documents are ranked by that hash and taken into validation, lowest first, until
they hold at least ``val_fraction`` of the corpus bytes **and** at least
``min_docs`` documents (default :data:`VAL_MIN_DOCS` = 30, so that no single file
dominates the validation loss), except that the document minimum never takes the
validation split past half the corpus bytes. At least one document goes to
validation and at least one is left for training.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from moescale.data.corpus import Corpus
from moescale.data.tokenizer import Tokenizer
from moescale.errors import ConfigError, DataError

__all__ = [
    "CACHE_FORMAT_VERSION",
    "SPLIT_SALT",
    "VAL_MIN_DOCS",
    "CacheEntry",
    "token_cache_dir",
    "split_documents",
    "build_token_cache",
]

CACHE_FORMAT_VERSION = 1
SPLIT_SALT = b"moescale-split-v1\0"
VAL_MIN_DOCS = 30
"""Default least number of validation documents (issue #10: >= 30 documents)."""
_FLUSH_TOKENS = 1 << 22  # write every ~4M tokens
_ENCODE_BATCH_BYTES = 1 << 22


def token_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The token cache folder: ``cache_dir``, else ``$MOESCALE_CACHE``, else
    ``~/.cache/moescale/tokens``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("MOESCALE_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "moescale" / "tokens"


def _dtype_for(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 65536 else np.uint32)


def _doc_key(data: bytes) -> int:
    """The document's split rank: first 8 bytes of salted SHA-256, big-endian."""
    return int.from_bytes(hashlib.sha256(SPLIT_SALT + data).digest()[:8], "big")


def split_documents(
    corpus: Corpus, val_fraction: float = 0.01, min_docs: int = VAL_MIN_DOCS
) -> np.ndarray:
    """Boolean mask over ``corpus.iter_documents()`` order: True = validation.

    Documents with no bytes are neither (they yield no tokens) and are marked False.

    Parameters
    ----------
    corpus : Corpus
    val_fraction : float
        Least fraction of the corpus bytes to hold out, in (0, 0.5].
    min_docs : int
        Least number of validation documents (distinct contents), as far as half the
        corpus bytes allows (module docstring).
    """
    if (
        isinstance(val_fraction, bool)
        or not isinstance(val_fraction, (int, float))
        or not (0 < val_fraction <= 0.5)
    ):
        raise ConfigError(f"'val_fraction' must be a number in (0, 0.5]; got {val_fraction!r}")
    if isinstance(min_docs, bool) or not isinstance(min_docs, int) or min_docs < 1:
        raise ConfigError(f"'val_min_docs' must be an int >= 1; got {min_docs!r}")
    keys, sizes = array("Q"), array("q")  # compact even for millions of documents
    for doc in corpus.iter_documents():
        keys.append(_doc_key(doc.data))
        sizes.append(len(doc.data))
    keys_a = np.frombuffer(keys, dtype=np.uint64) if keys else np.zeros(0, np.uint64)
    sizes_a = np.frombuffer(sizes, dtype=np.int64) if sizes else np.zeros(0, np.int64)
    nonempty = sizes_a > 0
    if nonempty.sum() < 2:
        raise DataError(
            f"corpus {corpus.name!r} has {int(nonempty.sum())} non-empty documents; "
            "a train/validation split needs at least 2"
        )
    # Rank the distinct keys of non-empty documents; identical documents share a key.
    uniq, inverse = np.unique(keys_a[nonempty], return_inverse=True)
    bytes_per_key = np.bincount(inverse, weights=sizes_a[nonempty]).astype(np.int64)
    target = val_fraction * float(sizes_a.sum())
    cum = np.cumsum(bytes_per_key)
    n_keys = int(np.searchsorted(cum, target, side="left")) + 1  # first prefix reaching target
    half = int(np.searchsorted(cum, 0.5 * float(sizes_a.sum()), side="right"))  # within half
    n_keys = max(n_keys, min(min_docs, half))
    n_keys = min(max(n_keys, 1), len(uniq) - 1)
    if n_keys < 1:
        raise DataError(
            f"corpus {corpus.name!r} has only identical documents; it cannot be split into "
            "train and validation"
        )
    val_keys = uniq[:n_keys]
    return nonempty & np.isin(keys_a, val_keys)


_SPLITS = ("train", "val")


def _split_file(folder: Path, split: str) -> Path:
    """Where an entry folder keeps a split's tokens (``train.bin``, ``val.bin``)."""
    return folder / f"{split}.bin"


@dataclass(frozen=True, kw_only=True)
class CacheEntry:
    """A built cache entry: its folder, the metadata and the two memory-mapped arrays."""

    path: Path
    meta: dict[str, Any]

    def split_path(self, split: str) -> Path:
        """The token file of the ``"train"`` or ``"val"`` split."""
        if split not in _SPLITS:
            raise ConfigError(f"'split' must be 'train' or 'val'; got {split!r}")
        return _split_file(self.path, split)

    def open(self, split: str) -> np.memmap:
        """Read-only memmap of the ``"train"`` or ``"val"`` tokens."""
        path = self.split_path(split)
        n = self.meta[split]["tokens"]
        return np.memmap(path, dtype=self.meta["dtype"], mode="r", shape=(n,))


def _split_ident(val_fraction: float, min_docs: int) -> dict[str, Any]:
    split = {"salt": SPLIT_SALT.decode("latin-1"), "val_fraction": float(val_fraction)}
    if min_docs != 1:  # split rule of cache entries built before the document minimum
        split["min_docs"] = int(min_docs)
    return split


def _entry_key(corpus_hash: str, tokenizer_id: str, val_fraction: float, min_docs: int) -> str:
    ident = json.dumps(
        {
            "cache_format": CACHE_FORMAT_VERSION,
            "corpus_hash": corpus_hash,
            "tokenizer": tokenizer_id,
            "split": _split_ident(val_fraction, min_docs),
        },
        sort_keys=True,
    )
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


def _valid_entry(path: Path) -> CacheEntry | None:
    meta_path = path / "meta.json"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return None
    if meta.get("cache_format") != CACHE_FORMAT_VERSION:
        return None
    itemsize = np.dtype(meta["dtype"]).itemsize
    for split in _SPLITS:
        f = _split_file(path, split)
        if not f.is_file() or f.stat().st_size != meta[split]["tokens"] * itemsize:
            return None
    return CacheEntry(path=path, meta=meta)


_STALE_TEMP_SECONDS = 24 * 3600


def _remove_stale_temps(folder: Path) -> None:
    """Delete temp files a killed build left behind over a day ago (never a live build's)."""
    cutoff = time.time() - _STALE_TEMP_SECONDS
    for tmp in folder.glob(".*.tmp"):
        try:
            if tmp.stat().st_mtime < cutoff:
                tmp.unlink()
        except OSError:
            pass  # another process removed it, or it is not ours to remove


class _TmpWriter:
    """Buffered writes of token arrays into a unique temp file, published by os.replace."""

    def __init__(self, folder: Path, name: str, dtype: np.dtype) -> None:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
        self.tmp = Path(tmp)
        self.fh = os.fdopen(fd, "wb")
        self.dtype = dtype
        self.buf: list[np.ndarray] = []
        self.buffered = 0
        self.tokens = 0
        self.docs = 0
        self.sha = hashlib.sha256()

    def add(self, ids: np.ndarray, eod: int) -> None:
        self.buf.append(ids)
        self.buf.append(np.array([eod]))
        self.buffered += len(ids) + 1
        self.docs += 1
        if self.buffered >= _FLUSH_TOKENS:
            self.flush()

    def flush(self) -> None:
        if self.buf:
            data = np.concatenate(self.buf).astype(self.dtype, copy=False).tobytes()
            self.fh.write(data)
            self.sha.update(data)
            self.tokens += self.buffered
            self.buf, self.buffered = [], 0

    def publish(self, final: Path) -> None:
        self.flush()
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()
        os.replace(self.tmp, final)

    def discard(self) -> None:
        if not self.fh.closed:
            self.fh.close()
        self.tmp.unlink(missing_ok=True)


def build_token_cache(
    corpus: Corpus,
    tokenizer: Tokenizer,
    *,
    val_fraction: float = 0.01,
    val_min_docs: int = VAL_MIN_DOCS,
    cache_dir: str | os.PathLike | None = None,
    val_mask: np.ndarray | None = None,
) -> CacheEntry:
    """Tokenise ``corpus`` into the cache (or reuse the entry already there).

    Parameters
    ----------
    corpus, tokenizer
        What to tokenise and how; their hash and ``id`` key the entry.
    val_fraction, val_min_docs
        Validation share of corpus bytes and least number of validation documents
        (see module docstring).
    cache_dir : path-like, optional
        Cache folder; default :func:`token_cache_dir`.
    val_mask : ndarray of bool, optional
        Precomputed :func:`split_documents` result (saves one pass).

    Returns
    -------
    CacheEntry
        ``meta["built"]`` is True when this call tokenised, False when it reused.
    """
    root = token_cache_dir(cache_dir)
    corpus_hash = corpus.hash
    key = _entry_key(corpus_hash, tokenizer.id, val_fraction, val_min_docs)
    path = root / f"{corpus.name}-{tokenizer.id}-{key}"
    entry = _valid_entry(path)
    if entry is not None:
        entry.meta["built"] = False
        return entry
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(
            f"cannot create the token cache folder {path}: {exc.strerror or exc} "
            "(set MOESCALE_CACHE to a writable folder)"
        ) from None
    _remove_stale_temps(path)
    t0 = time.perf_counter()
    if val_mask is None:
        val_mask = split_documents(corpus, val_fraction, val_min_docs)
    writers = _tokenise(corpus, tokenizer, val_mask, path)
    meta = {
        "cache_format": CACHE_FORMAT_VERSION,
        "key": key,
        "corpus_hash": corpus_hash,
        "tokenizer": {
            "id": tokenizer.id,
            "kind": type(tokenizer).__name__,
            "vocab_size": tokenizer.vocab_size,
            "eod_id": tokenizer.eod_id,
        },
        "split": {
            "rule": "sha256(salt+document) rank, lowest to validation until val_fraction of "
                    "bytes and min_docs documents (the latter within half the bytes)",
            **_split_ident(val_fraction, val_min_docs),
            "min_docs": int(val_min_docs),
        },
        "dtype": writers["train"].dtype.name,
        **{s: {"tokens": w.tokens, "docs": w.docs, "sha256": w.sha.hexdigest()}
           for s, w in writers.items()},
        "tokenize_seconds": round(time.perf_counter() - t0, 3),
        "created_unix": int(time.time()),
        "manifest": corpus.manifest(),
    }
    from moescale.spec.io import atomic_write

    try:
        atomic_write(path / "meta.json", json.dumps(meta, indent=1))
    except OSError as exc:
        raise DataError(f"cannot write {path / 'meta.json'}: {exc.strerror or exc}") from None
    entry = CacheEntry(path=path, meta=meta)
    entry.meta["built"] = True
    return entry


def _tokenise(
    corpus: Corpus, tokenizer: Tokenizer, val_mask: np.ndarray, path: Path
) -> dict[str, _TmpWriter]:
    """Encode every document into ``path/{train,val}.bin`` (published atomically); returns
    the writers (token/document counts and SHA-256 of each split)."""
    dtype = _dtype_for(tokenizer.vocab_size)
    writers = {s: _TmpWriter(path, _split_file(path, s).name, dtype) for s in _SPLITS}
    changed = DataError(f"corpus {corpus.name!r} changed while it was being tokenised")
    try:
        pending: list[tuple[bytes, str]] = []
        pending_bytes = 0
        n_seen = 0
        for i, doc in enumerate(corpus.iter_documents()):
            n_seen += 1
            if not doc.data:
                continue
            if i >= len(val_mask):
                raise changed
            pending.append((doc.data, "val" if val_mask[i] else "train"))
            pending_bytes += len(doc.data)
            if pending_bytes >= _ENCODE_BATCH_BYTES:
                _encode_into(tokenizer, pending, writers)
                pending, pending_bytes = [], 0
        _encode_into(tokenizer, pending, writers)
        if n_seen != len(val_mask):
            raise changed
        for s, w in writers.items():
            w.publish(_split_file(path, s))
    except OSError as exc:
        for w in writers.values():
            w.discard()
        raise DataError(
            f"cannot write the token cache in {path}: {exc.strerror or exc} "
            "(set MOESCALE_CACHE to a writable folder with free space)"
        ) from None
    except BaseException:
        for w in writers.values():
            w.discard()
        raise
    return writers


def _encode_into(
    tokenizer: Tokenizer, pending: list[tuple[bytes, str]], writers: dict[str, _TmpWriter]
) -> None:
    encoded = tokenizer.encode_many([d for d, _ in pending])
    for ids, (_, split) in zip(encoded, pending, strict=True):
        writers[split].add(ids, tokenizer.eod_id)
