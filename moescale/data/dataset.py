"""Deterministic batches from the token cache, for one process or a DDP group.

Sampling
--------
The training tokens are cut into non-overlapping windows of ``seq_len + 1``
tokens starting at multiples of ``seq_len`` (window ``w`` covers tokens
``[w*seq_len, (w+1)*seq_len]``; inputs are the first ``seq_len``, targets the last
``seq_len``), so every token is a target at most once per epoch and
``tokens_per_epoch(seq_len) = n_windows * seq_len``. Epoch ``e`` visits the windows
in the order of a permutation that is a pure function of ``(seed, e)``: windows
sorted by a SplitMix64 hash of ``(seed, e, window)``, integer arithmetic only, so
the order is the same on every machine and numpy version.

Global sample ``g = step * batch_size + row`` is position ``g mod n_windows`` of
epoch ``g // n_windows``. Hence the global batch of a step is a pure function of
``(seed, step, batch_size, seq_len)``; rank ``r`` of ``world_size`` gets rows
``[r*B/w, (r+1)*B/w)``, so ranks together see exactly the single-process batch,
and resuming at a step needs no data-loader state.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from moescale.data.cache import (
    VAL_MIN_DOCS,
    CacheEntry,
    build_token_cache,
    split_documents,
    token_cache_dir,
)
from moescale.data.corpus import Corpus, resolve_corpus
from moescale.data.tokenizer import BPETokenizer, ByteTokenizer, Tokenizer, load_tokenizer_file
from moescale.errors import ConfigError, DataError

if TYPE_CHECKING:
    import torch

__all__ = ["TokenDataset", "EvalSample", "open_dataset", "get_tokenizer", "window_order"]


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on a uint64 array (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def window_order(seed: int, epoch: int, n_windows: int) -> np.ndarray:
    """The permutation of ``range(n_windows)`` visited in ``epoch`` for ``seed``.

    Windows sorted by ``splitmix64(splitmix64(splitmix64(seed) ^ epoch) ^ window)``
    (stable sort), an order that depends on integers only.
    """
    for name, value in (("seed", seed), ("epoch", epoch), ("n_windows", n_windows)):
        if not 0 <= _check_int(name, value, 0) < 2**63:
            raise ConfigError(f"{name!r} must be an int in [0, 2^63); got {value!r}")
    with np.errstate(over="ignore"):
        s = _splitmix64(np.array([seed], dtype=np.uint64))
        s = _splitmix64(s ^ np.uint64(epoch))
        keys = _splitmix64(np.arange(n_windows, dtype=np.uint64) ^ s[0])
    order = np.argsort(keys, kind="stable")
    return order.astype(np.int32 if n_windows < 2**31 else np.int64)


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ConfigError(f"{name!r} must be an int >= {low}; got {value!r}")
    return int(value)


def _check_shard(
    batch_size: Any, seq_len: Any, rank: Any, world_size: Any
) -> tuple[int, int, int, int]:
    """Checked ``(batch_size, seq_len, rank, per_rank)`` of a global batch split over
    ``world_size`` ranks (``per_rank = batch_size // world_size``, an exact division)."""
    batch_size = _check_int("batch_size", batch_size, 1)
    seq_len = _check_int("seq_len", seq_len, 1)
    world_size = _check_int("world_size", world_size, 1)
    rank = _check_int("rank", rank, 0)
    if rank >= world_size:
        raise ConfigError(f"'rank' must be an int in [0, {world_size - 1}]; got {rank}")
    if batch_size % world_size:
        raise ConfigError(
            f"'batch_size' must be a multiple of world_size {world_size}; got {batch_size}"
        )
    return batch_size, seq_len, rank, batch_size // world_size


class TokenDataset:
    """Train/validation token streams with deterministic, shardable batches.

    Build one with :func:`open_dataset`. Attributes: ``vocab_size``, ``eod_id``,
    ``tokenizer_id``, ``corpus_hash``, ``train_tokens``, ``val_tokens``, ``meta``
    (the cache metadata, with the corpus manifest), ``path`` (cache entry folder).

    Examples
    --------
    >>> ds = open_dataset()  # doctest: +SKIP
    >>> x, y = ds.batch(step=0, batch_size=8, seq_len=256, seed=0)  # doctest: +SKIP
    >>> x.shape, bool((x[:, 1:] == y[:, :-1]).all())  # doctest: +SKIP
    (torch.Size([8, 256]), True)
    """

    def __init__(self, entry: CacheEntry, tokenizer: Tokenizer | None = None) -> None:
        self.entry = entry
        self.meta = entry.meta
        self.path: Path = entry.path
        self.tokenizer = tokenizer
        self.vocab_size: int = int(entry.meta["tokenizer"]["vocab_size"])
        self.eod_id: int = int(entry.meta["tokenizer"]["eod_id"])
        self.tokenizer_id: str = entry.meta["tokenizer"]["id"]
        self.corpus_hash: str = entry.meta["corpus_hash"]
        self._arrays = {"train": entry.open("train"), "val": entry.open("val")}
        self._orders: OrderedDict[tuple[str, int, int, int], np.ndarray] = OrderedDict()

    # ------------------------------------------------------------------ sizes

    @property
    def train_tokens(self) -> int:
        """Tokens in the training stream (end-of-document tokens included)."""
        return int(self._arrays["train"].shape[0])

    @property
    def val_tokens(self) -> int:
        """Tokens in the validation stream."""
        return int(self._arrays["val"].shape[0])

    def n_windows(self, seq_len: int, split: str = "train") -> int:
        """Non-overlapping windows of ``seq_len`` targets in ``split``."""
        seq_len = _check_int("seq_len", seq_len, 1)
        return max(self._array(split).shape[0] - 1, 0) // seq_len

    def tokens_per_epoch(self, seq_len: int) -> int:
        """Target tokens one pass over the training windows yields (``n_windows * seq_len``)."""
        return self.n_windows(seq_len) * seq_len

    def epochs_for(self, tokens: int, seq_len: int) -> float:
        """Epochs (passes over the training windows) that ``tokens`` target tokens take."""
        per = self.tokens_per_epoch(seq_len)
        if per == 0:
            raise DataError(
                f"the training split has {self.train_tokens} tokens, fewer than one window "
                f"of seq_len {seq_len} + 1"
            )
        return tokens / per

    def require_tokens(self, tokens: int, seq_len: int, *, epochs: float = 1.0) -> float:
        """Raise :class:`DataError` unless ``tokens`` fit in ``epochs`` passes; return epochs used.

        The trainer calls this before training so data is never repeated silently.
        """
        if not (isinstance(epochs, (int, float)) and math.isfinite(epochs) and epochs > 0):
            raise ConfigError(f"'epochs' must be a number > 0; got {epochs!r}")
        needed = self.epochs_for(tokens, seq_len)
        if needed > epochs * (1 + 1e-12):
            available = int(self.tokens_per_epoch(seq_len) * epochs)
            suggest = math.ceil(needed * 100) / 100
            raise DataError(
                f"corpus too small for the requested tokens: {available} available "
                f"({epochs:g} epoch(s) of {self.tokens_per_epoch(seq_len)} at seq_len {seq_len}), "
                f"{int(tokens)} requested; pass --epochs {suggest:g} to repeat data, "
                "or use a larger corpus"
            )
        return needed

    def describe(self) -> dict[str, Any]:
        """Summary for run records: corpus, hash, tokenizer, token counts, cache path."""
        man = self.meta["manifest"]
        return {
            "corpus": man["name"],
            "corpus_kind": man["kind"],
            "corpus_hash": self.corpus_hash,
            "corpus_bytes": man["total_bytes"],
            "corpus_files": man["n_files"],
            "tokenizer": self.tokenizer_id,
            "vocab_size": self.vocab_size,
            "train_tokens": self.train_tokens,
            "val_tokens": self.val_tokens,
            "train_docs": self.meta["train"]["docs"],
            "val_docs": self.meta["val"]["docs"],
            "val_fraction": self.meta["split"]["val_fraction"],
            "val_min_docs": self.meta["split"].get("min_docs", 1),
            "split_rule": self.meta["split"]["rule"],
            "cache": str(self.path),
        }

    def manifest(self) -> dict[str, Any]:
        """The corpus manifest (files, sizes, sha256, totals, ``corpus_hash``)."""
        return self.meta["manifest"]

    # ------------------------------------------------------------------ batches

    def _array(self, split: str) -> np.memmap:
        if split not in self._arrays:
            raise ConfigError(f"'split' must be 'train' or 'val'; got {split!r}")
        return self._arrays[split]

    def _order(self, split: str, seed: int, epoch: int, n_windows: int) -> np.ndarray:
        key = (split, seed, epoch, n_windows)
        order = self._orders.get(key)
        if order is None:
            order = window_order(seed, epoch, n_windows)
            self._orders[key] = order
            while len(self._orders) > 3:  # a batch spans at most two epochs
                self._orders.popitem(last=False)
        return order

    def _rows(
        self, split: str, starts: np.ndarray, seq_len: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        import torch  # imported here so corpus-only users of moescale.data skip torch

        arr = self._array(split)
        idx = starts[:, None] + np.arange(seq_len + 1)[None, :]
        win = torch.from_numpy(np.asarray(arr[idx], dtype=np.int64))
        return win[:, :-1].contiguous(), win[:, 1:].contiguous()

    def batch(
        self,
        step: int,
        batch_size: int,
        seq_len: int,
        *,
        split: str = "train",
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's rows of the global batch of ``step``: ``(x, y)``, int64, ``y`` = ``x``
        shifted by one.

        Parameters
        ----------
        step : int
            Optimiser step (>= 0); the global batch is a pure function of
            ``(seed, step, batch_size, seq_len)``.
        batch_size : int
            Global sequences per step (all ranks, all micro-batches); a multiple of
            ``world_size``.
        seq_len : int
            Tokens per sequence.
        rank, world_size : int
            This process's share: rows ``[rank*B/world_size, (rank+1)*B/world_size)``.
        seed : int
            Data-order seed (>= 0).

        Returns
        -------
        x, y : torch.LongTensor of shape ``(batch_size // world_size, seq_len)``
        """
        step = _check_int("step", step, 0)
        batch_size, seq_len, rank, per_rank = _check_shard(batch_size, seq_len, rank, world_size)
        seed = _check_int("seed", seed, 0)
        n_win = self.n_windows(seq_len, split)
        if n_win == 0:
            raise DataError(
                f"the {split} split has {self._array(split).shape[0]} tokens, fewer than one "
                f"sequence of seq_len {seq_len} + 1"
            )
        g = step * batch_size + rank * per_rank + np.arange(per_rank, dtype=np.int64)
        epochs, pos = np.divmod(g, n_win)
        windows = np.empty(per_rank, dtype=np.int64)
        for e in np.unique(epochs):
            sel = epochs == e
            windows[sel] = self._order(split, seed, int(e), n_win)[pos[sel]]
        return self._rows(split, windows * seq_len, seq_len)

    def max_val_batches(self, batch_size: int, seq_len: int) -> int:
        """The most batches :meth:`val_batches` can return (validation windows // batch_size)."""
        batch_size = _check_int("batch_size", batch_size, 1)
        return self.n_windows(seq_len, "val") // batch_size

    def epoch_of(self, step: int, batch_size: int, seq_len: int) -> float:
        """Fractional epoch reached after ``step`` steps of ``batch_size`` sequences."""
        return step * batch_size / max(self.n_windows(seq_len), 1)

    def val_batches(
        self,
        n_batches: int,
        batch_size: int,
        seq_len: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        within: EvalSample | None = None,
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A fixed validation set: ``n_batches`` batches of non-overlapping windows spread
        evenly over the validation stream (same for every seed and run), or over the
        windows of ``within`` (an :meth:`eval_sample`, so a subset of it).

        Raises :class:`DataError` if the validation split (or ``within``) holds fewer than
        ``n_batches * batch_size`` windows. Rank sharding as in :meth:`batch`.
        """
        n_batches = _check_int("n_batches", n_batches, 1)
        batch_size, seq_len, rank, per_rank = _check_shard(batch_size, seq_len, rank, world_size)
        if within is not None and within.seq_len != seq_len:
            raise ConfigError(f"'within' is a sample at seq_len {within.seq_len}, not {seq_len}")
        pool = within.windows if within is not None else None
        n_win = self.n_windows(seq_len, "val") if pool is None else len(pool)
        need = n_batches * batch_size
        if need > n_win:
            raise DataError(
                f"validation split too small: {n_win} windows of seq_len {seq_len} "
                f"({self.val_tokens} tokens), {n_batches} x {batch_size} = {need} requested; "
                "ask for fewer validation batches or raise val_fraction"
            )
        windows = (np.arange(need, dtype=np.int64) * n_win) // need
        if pool is not None:
            windows = pool[windows]
        out = []
        for b in range(n_batches):
            lo = b * batch_size + rank * per_rank
            rows = windows[lo : lo + per_rank]
            out.append(self._rows("val", rows * seq_len, seq_len))
        return out

    def _val_doc_starts(self) -> np.ndarray:
        """Offset of each validation document in the validation stream."""
        if not hasattr(self, "_doc_starts"):
            eod = np.flatnonzero(np.asarray(self._array("val")) == self.eod_id)
            self._doc_starts = np.concatenate([[0], eod[:-1] + 1]).astype(np.int64)
        return self._doc_starts

    def eval_sample(self, seq_len: int, max_tokens: int | None = None,
                    multiple_of: int = 1) -> EvalSample:
        """The windows of the final evaluation, in stream order.

        ``max_tokens=None`` (or at least the split): every non-overlapping window of the
        validation stream. Otherwise ``max_tokens // seq_len`` windows (rounded down to a
        multiple of ``multiple_of``, the evaluation block) spread over the documents: each
        document (the one a window starts in) gets an equal quota, a document with fewer
        windows gives all of them and the rest is shared among the others, and a document's
        windows are taken evenly spaced. Deterministic: a function of the split only.
        """
        seq_len = _check_int("seq_len", seq_len, 1)
        multiple_of = _check_int("multiple_of", multiple_of, 1)
        n_win = self.n_windows(seq_len, "val")
        starts = self._val_doc_starts()
        doc_of = np.searchsorted(starts, np.arange(n_win, dtype=np.int64) * seq_len,
                                 side="right") - 1
        want = n_win if max_tokens is None else min(n_win, max_tokens // seq_len)
        want -= want % multiple_of
        if want < 1:
            raise DataError(
                f"validation split too small: {n_win} windows of seq_len {seq_len} "
                f"({self.val_tokens} tokens); the final evaluation needs {multiple_of} "
                f"(one block of {multiple_of * seq_len} tokens): raise val_fraction"
            )
        if want == n_win:
            windows = np.arange(n_win, dtype=np.int64)
        else:
            counts = np.bincount(doc_of, minlength=len(starts))
            first = np.concatenate([[0], np.cumsum(counts)[:-1]])
            quota = np.zeros_like(counts)
            remaining, order = want, np.argsort(counts, kind="stable")
            for i, d in enumerate(order):  # water-filling, smallest documents first
                left = len(order) - i
                quota[d] = min(counts[d], -(-remaining // left))
                remaining -= quota[d]
            windows = np.concatenate([
                first[d] + (np.arange(q, dtype=np.int64) * counts[d]) // q
                for d, q in enumerate(quota) if q > 0
            ])
            windows.sort()
        used = int(len(np.unique(doc_of[windows]))) if len(windows) else 0
        return EvalSample(windows, used, len(starts), seq_len, whole=want == n_win)

    def iter_eval_blocks(
        self, sample: EvalSample, block_windows: int, *, rank: int = 0, world_size: int = 1
    ):
        """This rank's rows of each block of ``block_windows`` consecutive sample windows:
        ``(x, y)`` per block, made lazily (a whole large split is never held in memory)."""
        block_windows = _check_int("block_windows", block_windows, 1)
        if block_windows % world_size:
            raise ConfigError(
                f"'block_windows' must be a multiple of world_size {world_size}; "
                f"got {block_windows}"
            )
        per_rank = block_windows // world_size
        for b in range(len(sample.windows) // block_windows):
            rows = sample.windows[b * block_windows + rank * per_rank:][:per_rank]
            yield self._rows("val", rows * sample.seq_len, sample.seq_len)


class EvalSample:
    """The final evaluation's windows: which, from how many documents, in which blocks."""

    def __init__(self, windows: np.ndarray, docs: int, val_docs: int, seq_len: int,
                 whole: bool) -> None:
        self.windows, self.docs, self.val_docs = windows, docs, val_docs
        self.seq_len, self.whole = seq_len, whole

    @property
    def tokens(self) -> int:
        """Target tokens evaluated (windows × seq_len)."""
        return int(len(self.windows)) * self.seq_len

    def describe(self) -> dict[str, Any]:
        return {
            "sample": "whole validation split" if self.whole else
                      "windows spread evenly over the validation documents (equal quota each; "
                      "smaller documents give all theirs)",
            "tokens": self.tokens,
            "windows": int(len(self.windows)),
            "docs": self.docs,
            "val_docs": self.val_docs,
            "seq_len": self.seq_len,
        }


def get_tokenizer(
    name: str | Tokenizer,
    corpus: Corpus | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    val_fraction: float = 0.01,
    val_min_docs: int = VAL_MIN_DOCS,
    val_mask: np.ndarray | None = None,
    max_train_bytes: int = 200_000_000,
) -> Tokenizer:
    """Resolve a tokenizer name: ``"byte"``, ``"bpe:<vocab>"`` or a tokenizer JSON path.

    ``"bpe:<vocab>"`` trains a byte-level BPE on the *training* documents of ``corpus``
    (at most ``max_train_bytes`` of them, in corpus order) once, and saves it as
    ``<cache_dir>/tokenizers/bpe<vocab>-<corpus hash 16>-val<val_fraction>[-docs<n>].json``;
    later
    calls load it. ``val_mask`` (from :func:`split_documents`) saves a pass.
    """
    if isinstance(name, Tokenizer):
        return name
    if name == "byte":
        return ByteTokenizer()
    if name.startswith(("bpe:", "bpe-")) or (name.startswith("bpe") and name[3:].isdigit()):
        digits = name[4:] if name[3:4] in (":", "-") else name[3:]
        try:
            vocab = int(digits)
        except ValueError:
            raise ConfigError(
                f"'tokenizer' must be 'byte', 'bpe:<vocab size>' or a tokenizer file; got {name!r}"
            ) from None
        if corpus is None:
            raise ConfigError("a BPE tokenizer needs the corpus it is trained on")
        folder = token_cache_dir(cache_dir) / "tokenizers"
        docs = f"-docs{val_min_docs}" if val_min_docs != 1 else ""
        path = folder / f"bpe{vocab}-{corpus.hash[:16]}-val{val_fraction:g}{docs}.json"
        if path.is_file():
            return BPETokenizer.load(path)
        if val_mask is None:
            val_mask = split_documents(corpus, val_fraction, val_min_docs)

        def train_docs():
            seen = 0
            for i, doc in enumerate(corpus.iter_documents()):
                if doc.data and not val_mask[i]:
                    yield doc.data
                    seen += len(doc.data)
                    if seen >= max_train_bytes:
                        return

        tok = BPETokenizer.train(train_docs(), vocab_size=vocab)
        try:
            tok.save(path)
        except OSError as exc:
            raise DataError(f"cannot write tokenizer {path}: {exc.strerror or exc}") from None
        return tok
    if Path(name).suffix == ".json" or Path(name).is_file():
        return load_tokenizer_file(name)
    raise ConfigError(
        f"'tokenizer' must be 'byte', 'bpe:<vocab size>' or a tokenizer file; got {name!r}"
    )


def open_dataset(
    corpus: Corpus | str | os.PathLike | None = None,
    tokenizer: Tokenizer | str = "byte",
    *,
    val_fraction: float = 0.01,
    val_min_docs: int = VAL_MIN_DOCS,
    cache_dir: str | os.PathLike | None = None,
    text_field: str = "text",
    pattern: str | None = None,
) -> TokenDataset:
    """Open (building once if needed) the token cache of ``corpus`` and return a dataset.

    Parameters
    ----------
    corpus : Corpus, str, path or None
        A :class:`~moescale.data.corpus.Corpus`, or anything
        :func:`~moescale.data.corpus.resolve_corpus` accepts (``None``/``"default"`` →
        the standard-library corpus; a folder, ``.jsonl``, ``.parquet`` or
        ``save_to_disk`` folder).
    tokenizer : Tokenizer or str
        ``"byte"`` (default), ``"bpe:<vocab>"`` or a tokenizer JSON path.
    val_fraction, val_min_docs
        Least validation share of corpus bytes and least number of validation documents
        (document-level split, :func:`~moescale.data.cache.split_documents`).
    cache_dir : path-like, optional
        Default ``$MOESCALE_CACHE`` or ``~/.cache/moescale/tokens``.
    text_field : str
        JSONL key / Parquet or Arrow column when ``corpus`` is a path.
    pattern : str, optional
        File glob when ``corpus`` is a folder of text files (default ``"**/*.txt"``).
    """
    c = resolve_corpus(corpus, text_field=text_field, pattern=pattern)
    val_mask = None
    if not isinstance(tokenizer, Tokenizer) and tokenizer != "byte":
        val_mask = split_documents(c, val_fraction, val_min_docs)
    tok = get_tokenizer(
        tokenizer, c, cache_dir=cache_dir, val_fraction=val_fraction,
        val_min_docs=val_min_docs, val_mask=val_mask,
    )
    entry = build_token_cache(
        c, tok, val_fraction=val_fraction, val_min_docs=val_min_docs, cache_dir=cache_dir,
        val_mask=val_mask,
    )
    return TokenDataset(entry, tok)
