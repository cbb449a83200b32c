"""Tokenizers and the token cache: round trips, split, reuse, atomicity, the default corpus."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import moescale.data.cache as cache_mod
from moescale.data import (
    BPETokenizer,
    ByteTokenizer,
    build_token_cache,
    default_corpus,
    folder_corpus,
    get_tokenizer,
    open_dataset,
    split_documents,
    token_cache_dir,
)
from moescale.errors import ConfigError, DataError

WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "naïve", "café", "✓"]


def make_corpus(root: Path, n_docs: int = 120, seed: int = 0) -> Path:
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n_docs):
        words = [rng.choice(WORDS) for _ in range(rng.randint(5, 200))]
        (root / f"doc{i:04d}.txt").write_text(" ".join(words) + "\n", encoding="utf-8")
    return root


# ------------------------------------------------------------------ tokenizers


def test_byte_tokenizer_round_trip():
    tok = ByteTokenizer()
    assert (tok.vocab_size, tok.eod_id, tok.id) == (257, 256, "byte257")
    text = "def f(x):\n    return x  # ünïcødé ✓"
    ids = tok.encode(text)
    assert ids == list(text.encode()) and tok.decode(ids + [256]) == text
    with pytest.raises(DataError, match=r"must be in \[0, 256\]"):
        tok.decode([300])


def test_bpe_train_encode_decode_round_trip(tmp_path):
    texts = [d.read_text() for d in sorted(make_corpus(tmp_path / "c").iterdir())]
    tok = BPETokenizer.train(texts, vocab_size=400)
    assert 257 < tok.vocab_size <= 400 and tok.eod_id == 0
    sample = "gamma delta naïve café alpha\n  zzz ✓ 123"
    ids = tok.encode(sample)
    assert tok.decode(ids) == sample
    assert len(tok.encode(texts[0])) < len(texts[0].encode())  # merges compress
    assert max(tok.encode(texts[0])) < tok.vocab_size
    # deterministic training → same id; save/load keeps the id and the mapping
    assert BPETokenizer.train(texts, vocab_size=400).id == tok.id
    path = tok.save(tmp_path / "tok.json")
    loaded = BPETokenizer.load(path)
    assert loaded.id == tok.id and loaded.encode(sample) == ids
    assert tok.id.startswith(f"bpe{tok.vocab_size}-")
    with pytest.raises(ConfigError, match=r"'vocab_size' must be an int in \[257, 65535\]; got 1"):
        BPETokenizer.train(texts, vocab_size=100)


def test_get_tokenizer_names(tmp_path):
    assert isinstance(get_tokenizer("byte"), ByteTokenizer)
    with pytest.raises(ConfigError, match="'tokenizer' must be 'byte', 'bpe:<vocab size>'"):
        get_tokenizer("wordpiece")
    with pytest.raises(DataError, match="tokenizer file not found"):
        get_tokenizer(str(tmp_path / "missing.json"))


# ------------------------------------------------------------------ split


def test_split_deterministic_disjoint_and_content_keyed(tmp_path):
    c = folder_corpus(make_corpus(tmp_path / "c"))
    mask = split_documents(c, 0.1, min_docs=1)  # the byte-fraction rule alone
    assert np.array_equal(mask, split_documents(c, 0.1, min_docs=1))
    docs = [d.data for d in c]
    val_bytes = sum(len(d) for d, m in zip(docs, mask, strict=True) if m)
    total = sum(len(d) for d in docs)
    assert 1 <= mask.sum() < len(docs)
    assert val_bytes >= 0.1 * total  # at least the fraction...
    largest = max(len(d) for d in docs)
    assert val_bytes < 0.1 * total + largest  # ...and at most one document more
    # renaming files (new order, new names) keeps the same documents in validation
    other = tmp_path / "renamed"
    other.mkdir()
    for i, d in enumerate(reversed(docs)):
        (other / f"x{i:04d}.txt").write_bytes(d)
    c2 = folder_corpus(other)
    mask2 = split_documents(c2, 0.1, min_docs=1)
    val1 = {d for d, m in zip(docs, mask, strict=True) if m}
    val2 = {d.data for d, m in zip(c2, mask2, strict=True) if m}
    assert val1 == val2
    with pytest.raises(ConfigError, match=r"'val_fraction' must be a number in \(0, 0.5\]; got 0"):
        split_documents(c, 0)


def _hash_rank_prefix(docs: list[bytes], n: int) -> set[bytes]:
    """The n documents of lowest salted SHA-256 (an independent statement of the rule)."""
    def key(d):
        return hashlib.sha256(cache_mod.SPLIT_SALT + d).digest()[:8]
    return set(sorted(docs, key=key)[:n])


def test_split_takes_at_least_min_docs_within_half_the_bytes(tmp_path):
    c = folder_corpus(make_corpus(tmp_path / "c"))
    docs = [d.data for d in c]
    total = sum(len(d) for d in docs)
    mask = split_documents(c, 0.01)  # default: at least 30 documents
    assert cache_mod.VAL_MIN_DOCS == 30 and mask.sum() == 30
    assert {d for d, m in zip(docs, mask, strict=True) if m} == _hash_rank_prefix(docs, 30)
    # a minimum beyond half the corpus stops at the largest hash-prefix within half the bytes
    mask = split_documents(c, 0.01, min_docs=100)
    val = [d for d, m in zip(docs, mask, strict=True) if m]
    assert set(val) == _hash_rank_prefix(docs, len(val))
    assert sum(map(len, val)) <= 0.5 * total
    assert sum(map(len, _hash_rank_prefix(docs, len(val) + 1))) > 0.5 * total
    with pytest.raises(ConfigError, match="'val_min_docs' must be an int >= 1; got 0"):
        split_documents(c, 0.1, min_docs=0)


def test_split_needs_two_documents(tmp_path):
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "a.txt").write_text("only one document")
    with pytest.raises(DataError, match="1 non-empty documents; a train/validation split needs"):
        split_documents(folder_corpus(tmp_path / "one"))


# ------------------------------------------------------------------ cache


def test_cache_counts_and_content(tmp_path):
    c = folder_corpus(make_corpus(tmp_path / "c"))
    ds = open_dataset(c, cache_dir=tmp_path / "cache", val_fraction=0.1)
    mask = split_documents(c, 0.1)
    docs = [d.data for d in c]
    expect = {
        "train": b"".join(d + b"\0" for d, m in zip(docs, mask, strict=True) if not m),
        "val": b"".join(d + b"\0" for d, m in zip(docs, mask, strict=True) if m),
    }
    for split, blob in expect.items():
        arr = np.array(ds._arrays[split])
        assert arr.dtype == np.uint16 and len(arr) == len(blob)
        eod = arr == 256
        assert eod.sum() == blob.count(b"\0")
        assert bytes(np.where(eod, 0, arr).astype(np.uint8)) == blob
    assert ds.meta["train"]["docs"] + ds.meta["val"]["docs"] == len(docs)
    assert ds.meta["manifest"]["corpus_hash"] == c.hash == ds.corpus_hash
    meta = json.loads((ds.path / "meta.json").read_text())
    assert meta["train"]["tokens"] == ds.train_tokens and meta["tokenizer"]["id"] == "byte257"
    # the token files are <entry>/train.bin and <entry>/val.bin, sized tokens x itemsize
    for split in ("train", "val"):
        f = ds.entry.split_path(split)
        assert f == ds.path / f"{split}.bin"
        assert f.stat().st_size == 2 * meta[split]["tokens"]
    with pytest.raises(ConfigError, match="'split' must be 'train' or 'val'; got 'test'"):
        ds.entry.split_path("test")


def test_cache_reuse_does_not_retokenise(tmp_path, monkeypatch):
    c = folder_corpus(make_corpus(tmp_path / "c"))
    first = open_dataset(c, cache_dir=tmp_path / "cache")
    assert first.meta["built"] is True

    def boom(self, docs):
        raise AssertionError("re-tokenised")

    monkeypatch.setattr(ByteTokenizer, "encode_many", boom)
    second = open_dataset(c, cache_dir=tmp_path / "cache")
    assert second.meta["built"] is False and second.path == first.path
    # a different split or tokenizer is a different entry
    monkeypatch.undo()
    other = open_dataset(c, cache_dir=tmp_path / "cache", val_fraction=0.2)
    assert other.path != first.path


def test_cache_env_var_and_default(tmp_path, monkeypatch):
    monkeypatch.setenv("MOESCALE_CACHE", str(tmp_path / "env"))
    assert token_cache_dir() == tmp_path / "env"
    monkeypatch.delenv("MOESCALE_CACHE")
    assert token_cache_dir() == Path.home() / ".cache" / "moescale" / "tokens"
    assert token_cache_dir(tmp_path / "x") == tmp_path / "x"


def test_interrupted_build_leaves_no_entry(tmp_path, monkeypatch):
    c = folder_corpus(make_corpus(tmp_path / "c"))
    monkeypatch.setattr(cache_mod, "_ENCODE_BATCH_BYTES", 64)
    calls = {"n": 0}
    original = ByteTokenizer.encode_many

    def flaky(self, docs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return original(self, docs)

    monkeypatch.setattr(ByteTokenizer, "encode_many", flaky)
    with pytest.raises(KeyboardInterrupt):
        build_token_cache(c, ByteTokenizer(), cache_dir=tmp_path / "cache")
    (entry,) = (tmp_path / "cache").iterdir()
    assert sorted(p.name for p in entry.iterdir()) == []  # temp files removed, nothing published
    monkeypatch.setattr(ByteTokenizer, "encode_many", original)
    assert build_token_cache(c, ByteTokenizer(), cache_dir=tmp_path / "cache").meta["built"]


def test_sigkill_mid_build_then_rebuild_ignores_leftovers(tmp_path):
    corpus_dir = make_corpus(tmp_path / "c")
    cache = tmp_path / "cache"
    script = textwrap.dedent(
        f"""
        import os, signal
        import moescale.data.cache as cm
        from moescale.data import ByteTokenizer, build_token_cache, folder_corpus
        cm._ENCODE_BATCH_BYTES = 64
        cm._FLUSH_TOKENS = 64
        calls = [0]
        orig = ByteTokenizer.encode_many
        def killer(self, docs):
            calls[0] += 1
            if calls[0] == 20:
                os.kill(os.getpid(), signal.SIGKILL)
            return orig(self, docs)
        ByteTokenizer.encode_many = killer
        corpus = folder_corpus({str(corpus_dir)!r})
        build_token_cache(corpus, ByteTokenizer(), cache_dir={str(cache)!r})
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    (entry,) = cache.iterdir()
    left = sorted(p.name for p in entry.iterdir())
    assert left and all(n.endswith(".tmp") for n in left), left  # partial temp files only
    assert not (entry / "meta.json").exists()
    ds = open_dataset(folder_corpus(corpus_dir), cache_dir=cache)
    assert ds.meta["built"] is True and ds.path == entry
    clean = open_dataset(folder_corpus(corpus_dir), cache_dir=tmp_path / "fresh")
    assert np.array_equal(np.array(ds._arrays["train"]), np.array(clean._arrays["train"]))


def test_corrupt_entry_is_rebuilt(tmp_path):
    c = folder_corpus(make_corpus(tmp_path / "c"))
    ds = open_dataset(c, cache_dir=tmp_path / "cache")
    with open(ds.path / "train.bin", "r+b") as fh:
        fh.truncate(10)  # e.g. a disk-full copy
    again = open_dataset(c, cache_dir=tmp_path / "cache")
    assert again.meta["built"] is True and again.train_tokens == ds.train_tokens


def test_unwritable_cache_dir(tmp_path):
    c = folder_corpus(make_corpus(tmp_path / "c", n_docs=5))
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    with pytest.raises(DataError, match="cannot create the token cache folder .*MOESCALE_CACHE"):
        open_dataset(c, cache_dir=blocker)


def test_bpe_dataset_cached_with_tokenizer_id(tmp_path):
    c = folder_corpus(make_corpus(tmp_path / "c"))
    ds = open_dataset(c, "bpe:400", cache_dir=tmp_path / "cache", val_fraction=0.1)
    tok = ds.tokenizer
    assert isinstance(tok, BPETokenizer) and ds.tokenizer_id == tok.id
    assert tok.id in ds.path.name
    saved = list((tmp_path / "cache" / "tokenizers").glob("bpe400-*.json"))
    assert len(saved) == 1 and BPETokenizer.load(saved[0]).id == tok.id
    # the stream decodes back to the training documents
    mask = split_documents(c, 0.1)
    train_docs = [d.data.decode() for d, m in zip(c, mask, strict=True) if not m]
    arr = np.array(ds._arrays["train"]).astype(np.int64)
    pieces = np.split(arr, np.flatnonzero(arr == tok.eod_id) + 1)[:-1]
    assert [tok.decode(p) for p in pieces] == train_docs
    # second open reuses the saved tokenizer and the cache entry
    again = open_dataset(c, "bpe:400", cache_dir=tmp_path / "cache", val_fraction=0.1)
    assert again.meta["built"] is False and again.tokenizer_id == tok.id


def test_default_corpus_cache_builds_fast(tmp_path):
    c = default_corpus()
    t0 = time.perf_counter()
    ds = open_dataset(c, cache_dir=tmp_path / "cache")
    seconds = time.perf_counter() - t0
    nonempty = sum(1 for f in c.files if f.size)
    # byte tokens + one end-of-document per non-empty file, an independent count
    assert ds.train_tokens + ds.val_tokens == c.total_bytes + nonempty
    assert ds.train_tokens + ds.val_tokens >= 8_000_000
    # validation: 30 whole files (the document minimum outweighs 1% of the bytes here)
    assert ds.meta["val"]["docs"] == 30
    assert 0.01 <= ds.val_tokens / (ds.train_tokens + ds.val_tokens) < 0.5
    assert seconds < 20, seconds
    assert os.path.getsize(ds.path / "train.bin") == 2 * ds.train_tokens


def test_stale_temp_files_are_removed_fresh_ones_kept(tmp_path):
    c = folder_corpus(make_corpus(tmp_path / "c", n_docs=10))
    ds = open_dataset(c, cache_dir=tmp_path / "cache")
    (ds.path / "meta.json").unlink()  # force a rebuild of this entry
    old = ds.path / ".train.bin.dead.tmp"
    fresh = ds.path / ".train.bin.live.tmp"
    old.write_bytes(b"\0" * 10)
    fresh.write_bytes(b"\0" * 10)
    day_ago = time.time() - 2 * 24 * 3600
    os.utime(old, (day_ago, day_ago))
    again = open_dataset(c, cache_dir=tmp_path / "cache")
    assert again.meta["built"] is True
    assert not old.exists() and fresh.exists()
