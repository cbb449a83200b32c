"""Training data: offline corpora with manifests, tokenizers, a memory-mapped token cache,
and deterministic shardable batches.

Typical use (the trainer's)::

    from moescale.data import open_dataset
    ds = open_dataset()                      # stdlib corpus, byte tokenizer, cached
    ds.require_tokens(tokens, seq_len)       # DataError if data would repeat
    x, y = ds.batch(step, batch_size, seq_len, rank=r, world_size=w, seed=0)
    val = ds.val_batches(n_batches, batch_size, seq_len)
    ds.describe()                            # corpus hash, tokenizer, counts for result.json

See ``docs/data.md`` for the conventions.
"""

from moescale.data.cache import CacheEntry, build_token_cache, split_documents, token_cache_dir
from moescale.data.corpus import (
    Corpus,
    Document,
    FileEntry,
    default_corpus,
    folder_corpus,
    resolve_corpus,
    stdlib_corpus,
)
from moescale.data.dataset import TokenDataset, get_tokenizer, open_dataset, window_order
from moescale.data.readers import hf_disk_corpus, jsonl_corpus, parquet_corpus
from moescale.data.tokenizer import BPETokenizer, ByteTokenizer, Tokenizer

__all__ = [
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
