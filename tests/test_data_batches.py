"""Deterministic batches: (seed, step) purity, rank sharding, epochs, validation set, errors."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from moescale.data import TokenDataset, folder_corpus, open_dataset, window_order
from moescale.errors import ConfigError, DataError


def _make_dataset(root: Path, n_docs: int = 80, seed: int = 1) -> TokenDataset:
    rng = random.Random(seed)
    src = root / "corpus"
    src.mkdir(parents=True)
    for i in range(n_docs):
        n = rng.randint(50, 400)
        (src / f"{i:03d}.txt").write_bytes(bytes(rng.randrange(32, 127) for _ in range(n)))
    return open_dataset(folder_corpus(src), cache_dir=root / "cache", val_fraction=0.1)


@pytest.fixture(scope="module")
def ds(tmp_path_factory) -> TokenDataset:
    return _make_dataset(tmp_path_factory.mktemp("batches"))


_MASK = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    """Reference SplitMix64 finaliser in plain Python integers (Steele et al. 2014)."""
    z = (x + 0x9E3779B97F4A7C15) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


@pytest.mark.parametrize(("seed", "epoch", "n"), [(0, 0, 10), (7, 3, 1000), (2**40, 1, 257)])
def test_window_order_matches_a_pure_python_reference(seed, epoch, n):
    s = _splitmix64(_splitmix64(seed) ^ epoch)
    expect = sorted(range(n), key=lambda w: (_splitmix64(w ^ s), w))
    order = window_order(seed, epoch, n)
    assert order.tolist() == expect
    assert window_order(seed, epoch + 1, n).tolist() != expect  # new epoch, new order
    assert window_order(seed + 1, epoch, n).tolist() != expect  # new seed, new order


def test_batch_shapes_and_shift(ds):
    x, y = ds.batch(3, 8, 32, seed=0)
    assert x.shape == y.shape == (8, 32) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    stream = torch.from_numpy(np.array(ds._arrays["train"]).astype(np.int64))
    for row_x, row_y in zip(x, y, strict=True):  # each row is a window starting at k*seq_len
        starts = [
            s for s in range(0, len(stream) - 32, 32) if torch.equal(stream[s : s + 32], row_x)
        ]
        assert starts and torch.equal(stream[starts[0] + 1 : starts[0] + 33], row_y)


def test_batch_is_pure_function_of_seed_and_step(tmp_path, ds):
    again = TokenDataset(ds.entry)  # a fresh object (no cached permutations)
    for step in (0, 1, 57):
        a = ds.batch(step, 6, 16, seed=5)
        b = again.batch(step, 6, 16, seed=5)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # out of order access gives the same batches (resume needs no loader state)
    late_first = again.batch(57, 6, 16, seed=5)
    assert torch.equal(late_first[0], ds.batch(57, 6, 16, seed=5)[0])
    assert not torch.equal(ds.batch(0, 6, 16, seed=5)[0], ds.batch(0, 6, 16, seed=6)[0])
    assert not torch.equal(ds.batch(0, 6, 16, seed=5)[0], ds.batch(1, 6, 16, seed=5)[0])


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_rank_shards_concatenate_to_the_global_batch(ds, world_size):
    for step in (0, 9, 200):  # 200 crosses epochs
        gx, gy = ds.batch(step, 12, 24, seed=3)
        parts = [
            ds.batch(step, 12, 24, seed=3, rank=r, world_size=world_size) for r in range(world_size)
        ]
        assert torch.equal(torch.cat([p[0] for p in parts]), gx)
        assert torch.equal(torch.cat([p[1] for p in parts]), gy)


def test_each_window_once_per_epoch(ds):
    seq_len, bs = 20, 5
    n_win = ds.n_windows(seq_len)
    assert n_win == (ds.train_tokens - 1) // seq_len
    assert ds.tokens_per_epoch(seq_len) == n_win * seq_len
    stream = np.array(ds._arrays["train"]).astype(np.int64)
    window_of = {tuple(stream[w * seq_len : (w + 1) * seq_len].tolist()): w for w in range(n_win)}
    assert len(window_of) == n_win  # random bytes: window contents identify windows
    steps = n_win // bs + 2  # run into the second epoch
    seen = [
        window_of[tuple(r.tolist())]
        for s in range(steps)
        for r in ds.batch(s, bs, seq_len, seed=11)[0]
    ]
    first, second = seen[:n_win], seen[n_win:]
    assert sorted(first) == list(range(n_win))  # every window exactly once in epoch 0
    assert len(set(second)) == len(second)  # and no repeat inside epoch 1
    assert first == window_order(11, 0, n_win).tolist()
    assert second == window_order(11, 1, n_win).tolist()[: len(second)]


def test_epoch_accounting_and_refusal(ds):
    per = ds.tokens_per_epoch(64)
    assert ds.epochs_for(per, 64) == pytest.approx(1.0)
    assert ds.epochs_for(per // 2, 64) == pytest.approx(0.5, rel=1e-3)
    assert ds.require_tokens(per, 64) == pytest.approx(1.0)
    with pytest.raises(DataError) as err:
        ds.require_tokens(3 * per, 64)
    msg = str(err.value)
    assert (
        msg.startswith(f"corpus too small for the requested tokens: {per} available")
        and f"{3 * per} requested; pass --epochs 3" in msg
    )
    assert ds.require_tokens(3 * per, 64, epochs=3) == pytest.approx(3.0)
    with pytest.raises(ConfigError, match="'epochs' must be a number > 0; got 0"):
        ds.require_tokens(per, 64, epochs=0)
    assert ds.epoch_of(10, 4, 64) == pytest.approx(40 / ds.n_windows(64))


def test_val_batches_fixed_and_disjoint_from_train(ds):
    a = ds.val_batches(3, 4, 16)
    b = TokenDataset(ds.entry).val_batches(3, 4, 16)
    assert len(a) == 3 and all(torch.equal(p[0], q[0]) for p, q in zip(a, b, strict=True))
    rows = torch.cat([x for x, _ in a])
    assert len({tuple(r.tolist()) for r in rows}) == 12  # distinct windows
    halves = [ds.val_batches(3, 4, 16, rank=r, world_size=2) for r in range(2)]
    for i in range(3):
        assert torch.equal(torch.cat([halves[0][i][0], halves[1][i][0]]), a[i][0])
    val = np.array(ds._arrays["val"]).tobytes()
    train = np.array(ds._arrays["train"]).tobytes()
    row = rows[0].numpy().astype(np.uint16).tobytes()
    assert row in val and row not in train
    with pytest.raises(DataError, match="validation split too small: .* requested"):
        ds.val_batches(10_000, 8, 16)


def test_bad_batch_arguments(ds):
    with pytest.raises(ConfigError, match="'batch_size' must be a multiple of world_size 4; got 6"):
        ds.batch(0, 6, 8, world_size=4, rank=0)
    with pytest.raises(ConfigError, match=r"'rank' must be an int in \[0, 1\]; got 2"):
        ds.batch(0, 4, 8, world_size=2, rank=2)
    with pytest.raises(ConfigError, match="'step' must be an int >= 0; got -1"):
        ds.batch(-1, 4, 8)
    with pytest.raises(ConfigError, match="'split' must be 'train' or 'val'; got 'test'"):
        ds.batch(0, 4, 8, split="test")
    with pytest.raises(DataError, match="fewer than one sequence of seq_len"):
        ds.batch(0, 1, 10**7)


def test_public_api_is_pinned():
    import moescale.data as data

    assert sorted(data.__all__) == sorted(
        [
            "BPETokenizer",
            "ByteTokenizer",
            "CacheEntry",
            "Corpus",
            "Document",
            "FileEntry",
            "TokenDataset",
            "Tokenizer",
            "build_token_cache",
            "default_corpus",
            "folder_corpus",
            "get_tokenizer",
            "hf_disk_corpus",
            "jsonl_corpus",
            "open_dataset",
            "parquet_corpus",
            "resolve_corpus",
            "split_documents",
            "stdlib_corpus",
            "token_cache_dir",
            "window_order",
        ]
    )
    assert all(hasattr(data, name) for name in data.__all__)


def test_describe_keys_and_manifest(ds):
    info = ds.describe()
    assert set(info) == {
        "corpus",
        "corpus_kind",
        "corpus_hash",
        "corpus_bytes",
        "corpus_files",
        "tokenizer",
        "vocab_size",
        "train_tokens",
        "val_tokens",
        "train_docs",
        "val_docs",
        "val_fraction",
        "val_min_docs",
        "split_rule",
        "cache",
    }
    assert info["corpus_hash"] == ds.manifest()["corpus_hash"]
    assert info["train_docs"] + info["val_docs"] == ds.manifest()["n_docs"] == 80
    assert info["corpus_bytes"] + 80 == info["train_tokens"] + info["val_tokens"]


def test_max_val_batches_is_the_limit(ds):
    n = ds.max_val_batches(4, 16)
    assert n == ds.n_windows(16, "val") // 4 >= 1
    assert len(ds.val_batches(n, 4, 16)) == n
    with pytest.raises(DataError, match="validation split too small"):
        ds.val_batches(n + 1, 4, 16)


def _doc_of_windows(ds: TokenDataset, seq_len: int) -> np.ndarray:
    """Document (count of end-of-document tokens before it) each val window starts in."""
    val = np.array(ds._arrays["val"])
    n_eod_before = np.concatenate([[0], np.cumsum(val == ds.eod_id)])
    return n_eod_before[np.arange(ds.n_windows(seq_len, "val")) * seq_len]


def test_eval_sample_whole_split_and_document_balanced_sample(ds):
    seq = 16
    n_win = ds.n_windows(seq, "val")
    whole = ds.eval_sample(seq)
    assert whole.whole and np.array_equal(whole.windows, np.arange(n_win))
    assert whole.docs == whole.val_docs == ds.meta["val"]["docs"] >= 8

    sample = ds.eval_sample(seq, max_tokens=16 * 50 + 7, multiple_of=4)
    assert not sample.whole and len(sample.windows) == 48 and sample.tokens == 48 * 16
    assert np.all(np.diff(sample.windows) > 0) and sample.windows[-1] < n_win
    doc_of = _doc_of_windows(ds, seq)
    available = np.bincount(doc_of, minlength=whole.val_docs)
    taken = np.bincount(doc_of[sample.windows], minlength=whole.val_docs)
    short = taken < available  # documents that gave only part of their windows
    assert short.any() and taken[short].max() - taken[short].min() <= 1  # equal quotas
    assert np.all(taken[~short] <= taken[short].min() + 1)  # exhausted ones are the small ones
    assert sample.docs == int((taken > 0).sum())
    assert ds.eval_sample(seq, max_tokens=16 * 50 + 7, multiple_of=4).windows.tolist() == (
        sample.windows.tolist())  # deterministic
    with pytest.raises(DataError, match="validation split too small"):
        ds.eval_sample(seq, max_tokens=16, multiple_of=4)


def test_eval_blocks_follow_the_sample_and_shard_over_ranks(ds):
    seq = 16
    sample = ds.eval_sample(seq, max_tokens=16 * 24, multiple_of=8)
    blocks = list(ds.iter_eval_blocks(sample, 8))
    assert len(blocks) == 3 and all(x.shape == (8, seq) for x, _ in blocks)
    val = torch.from_numpy(np.array(ds._arrays["val"], dtype=np.int64))
    for b, (x, y) in enumerate(blocks):
        for r, w in enumerate(sample.windows[b * 8 : (b + 1) * 8]):
            assert torch.equal(x[r], val[w * seq : w * seq + seq])
            assert torch.equal(y[r], val[w * seq + 1 : w * seq + seq + 1])
    shards = [list(ds.iter_eval_blocks(sample, 8, rank=r, world_size=2)) for r in range(2)]
    for b in range(3):
        assert torch.equal(torch.cat([shards[0][b][0], shards[1][b][0]]), blocks[b][0])
    with pytest.raises(ConfigError, match="multiple of world_size 3"):
        next(ds.iter_eval_blocks(sample, 8, world_size=3))


def test_val_batches_within_a_sample_are_a_spread_subset_of_it(ds):
    sample = ds.eval_sample(16, max_tokens=16 * 40, multiple_of=4)
    batches = ds.val_batches(2, 8, 16, within=sample)
    val = torch.from_numpy(np.array(ds._arrays["val"], dtype=np.int64))
    starts = {int(w) * 16 for w in sample.windows}
    rows = torch.cat([x for x, _ in batches])
    picked = [s for s in sorted(starts) if any(torch.equal(r, val[s : s + 16]) for r in rows)]
    assert len(picked) == 16  # every row is one of the sample's windows
    with pytest.raises(DataError, match="40 windows"):
        ds.val_batches(6, 8, 16, within=sample)
