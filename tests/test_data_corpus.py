"""Corpora: manifests, hashes, readers (folder, JSONL, Parquet, HF save_to_disk), errors."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from moescale.data import (
    default_corpus,
    folder_corpus,
    hf_disk_corpus,
    jsonl_corpus,
    parquet_corpus,
    resolve_corpus,
    stdlib_corpus,
)
from moescale.errors import DataError

TEXTS = [
    "The quick brown fox jumps over the lazy dog.\n",
    "Pack my box with five dozen liquor jugs.\n",
    "Sphinx of black quartz, judge my vow. ünïcødé ✓\n",
    "How vexingly quick daft zebras jump!\n",
]


def make_folder(root: Path, texts=TEXTS) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i, t in enumerate(texts):
        sub = root / ("a" if i % 2 else "b")
        sub.mkdir(exist_ok=True)
        (sub / f"doc{i}.txt").write_text(t, encoding="utf-8")
    return root


def test_folder_manifest_matches_independent_count(tmp_path):
    root = make_folder(tmp_path / "c")
    (root / "ignored.md").write_text("not matched")
    c = folder_corpus(root)
    man = c.manifest()
    files = sorted(root.glob("**/*.txt"), key=lambda p: p.relative_to(root).as_posix())
    assert [f["path"] for f in man["files"]] == [p.relative_to(root).as_posix() for p in files]
    assert [f["size"] for f in man["files"]] == [p.stat().st_size for p in files]
    assert [f["sha256"] for f in man["files"]] == [
        hashlib.sha256(p.read_bytes()).hexdigest() for p in files
    ]
    assert man["total_bytes"] == sum(len(t.encode()) for t in TEXTS)
    assert man["n_docs"] == len(TEXTS) == len(list(c))
    assert man["corpus_hash"] == c.hash and len(c.hash) == 64
    assert {d.data.decode() for d in c} == set(TEXTS)
    json.dumps(man)  # JSON-ready


def test_hash_is_location_independent_and_content_sensitive(tmp_path):
    a = folder_corpus(make_folder(tmp_path / "one"))
    b = folder_corpus(make_folder(tmp_path / "two"))
    assert a.hash == b.hash  # same files elsewhere → same hash
    (tmp_path / "two" / "a" / "doc1.txt").write_text("changed")
    assert folder_corpus(tmp_path / "two").hash != a.hash
    # the reader options are part of the identity
    assert folder_corpus(tmp_path / "one", "**/doc*.txt").hash != a.hash


def test_jsonl_corpus_and_errors(tmp_path):
    p = tmp_path / "d.jsonl"
    lines = [json.dumps({"text": t, "id": i, "alt": t.upper()}) for i, t in enumerate(TEXTS)]
    p.write_text("\n".join(lines) + "\n\n")
    c = jsonl_corpus(p)
    assert [d.data.decode() for d in c] == TEXTS
    assert c.n_docs == 4 and c.manifest()["options"] == {"text_field": "text"}
    assert jsonl_corpus(p, "alt").hash != c.hash  # the field is part of the identity
    assert [d.data.decode() for d in jsonl_corpus(p, "alt")] == [t.upper() for t in TEXTS]
    with pytest.raises(DataError, match=r"d\.jsonl:1 has no text field 'body'.*'alt', 'id'"):
        jsonl_corpus(p, "body")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": broken\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2 is not valid JSON"):
        list(jsonl_corpus(bad))
    nonstr = tmp_path / "n.jsonl"
    nonstr.write_text('{"text": 3}\n')
    with pytest.raises(DataError, match="field 'text' must be a string; got int"):
        jsonl_corpus(nonstr)


def test_parquet_corpus_and_missing_column(tmp_path):
    p = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": TEXTS, "n": list(range(4))}), p, row_group_size=3)
    c = parquet_corpus(p)
    assert [d.data.decode() for d in c] == TEXTS and c.n_docs == 4
    with pytest.raises(DataError, match=r"no text column 'body' \(columns: \['text', 'n'\]\)"):
        parquet_corpus(p, "body")
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="cannot read Parquet file"):
        parquet_corpus(junk)


def _save_to_disk_like(folder: Path, texts: list[str], shards: int = 2) -> Path:
    """The layout ``datasets.Dataset.save_to_disk`` writes: Arrow IPC streams + state.json."""
    folder.mkdir(parents=True)
    names = []
    per = (len(texts) + shards - 1) // shards
    for s in range(shards):
        name = f"data-{s:05d}-of-{shards:05d}.arrow"
        part = texts[s * per : (s + 1) * per]
        table = pa.table({"text": part, "label": [0] * len(part)})
        with (
            pa.OSFile(str(folder / name), "wb") as sink,
            pa.ipc.new_stream(sink, table.schema) as writer,
        ):
            writer.write_table(table)
        names.append(name)
    state = {"_data_files": [{"filename": n} for n in names]}
    (folder / "state.json").write_text(json.dumps(state))
    (folder / "dataset_info.json").write_text("{}")
    return folder


def test_hf_disk_corpus_dataset_and_dict(tmp_path):
    ds = _save_to_disk_like(tmp_path / "ds", TEXTS)
    c = hf_disk_corpus(ds)
    assert [d.data.decode() for d in c] == TEXTS and c.n_docs == 4
    assert [f.path for f in c.files] == ["data-00000-of-00002.arrow", "data-00001-of-00002.arrow"]
    with pytest.raises(DataError, match="no text column 'content'"):
        hf_disk_corpus(ds, "content")
    dd = tmp_path / "dd"
    _save_to_disk_like(dd / "train", TEXTS[:3], shards=1)
    _save_to_disk_like(dd / "test", TEXTS[3:], shards=1)
    (dd / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "test"]}))
    assert [d.data.decode() for d in hf_disk_corpus(dd)] == TEXTS[:3]
    assert [d.data.decode() for d in hf_disk_corpus(dd, split="test")] == TEXTS[3:]
    with pytest.raises(DataError, match=r"splits \['train', 'test'\]; choose one with split"):
        hf_disk_corpus(dd, split="validation")
    assert resolve_corpus(ds).kind == "hf_disk"
    with pytest.raises(DataError, match="not a Hugging Face save_to_disk folder"):
        hf_disk_corpus(make_folder(tmp_path / "plain"))


def test_resolve_corpus_dispatch(tmp_path):
    folder = make_folder(tmp_path / "f")
    assert resolve_corpus(folder).kind == "folder"
    j = tmp_path / "j"
    j.mkdir()
    (j / "x.jsonl").write_text(json.dumps({"text": "hello"}) + "\n")
    assert resolve_corpus(j).kind == "jsonl"
    assert resolve_corpus(j / "x.jsonl").kind == "jsonl"
    assert resolve_corpus("default").name == "stdlib"


def test_missing_and_empty_corpora(tmp_path):
    with pytest.raises(DataError, match="corpus folder not found"):
        folder_corpus(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no files matching '\\*\\*/\\*.txt'"):
        folder_corpus(tmp_path / "empty")
    (tmp_path / "zeros").mkdir()
    (tmp_path / "zeros" / "a.txt").write_text("")
    with pytest.raises(DataError, match="is empty .*0 bytes, 0 documents"):
        folder_corpus(tmp_path / "zeros")
    with pytest.raises(DataError, match="JSONL corpus not found"):
        jsonl_corpus(tmp_path / "none.jsonl")


def test_unreadable_file_is_a_data_error(tmp_path):
    root = make_folder(tmp_path / "c")
    c = folder_corpus(root)
    shutil.rmtree(root / "a")  # files vanish after the manifest was taken
    with pytest.raises(DataError, match="cannot read corpus file"):
        list(c)


def test_default_corpus_is_stdlib_source():
    c = default_corpus()
    man = c.manifest()
    assert man["source"] == "python-stdlib" and man["name"] == "stdlib"
    assert man["total_bytes"] >= 8_000_000  # ~11 MB on CPython 3.11
    paths = [f["path"] for f in man["files"]]
    assert "os.py" in paths and "json/decoder.py" in paths
    assert not any(p.startswith(("test/", "idlelib/", "lib2to3/")) for p in paths)
    assert not any("site-packages" in p or "_sysconfigdata_" in p for p in paths)
    assert paths == sorted(paths)
    assert stdlib_corpus().hash == c.hash  # stable between calls


def test_site_packages_corpus_matches_an_independent_walk():
    import sysconfig

    root = Path(sysconfig.get_paths()["purelib"])
    c = resolve_corpus("site-packages")
    man = c.manifest()
    assert man["source"] == "python-site-packages" and man["name"] == "site-packages"
    expect = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.py")
                    if p.is_file() and "__pycache__" not in p.parts)
    paths = [f["path"] for f in man["files"]]
    assert paths == expect
    assert man["total_bytes"] == sum((root / p).stat().st_size for p in expect)
    assert man["total_bytes"] > 10 * default_corpus().manifest()["total_bytes"]


# Written by ``datasets`` 5.2.0: ``Dataset.from_dict({"text": [...], "n": [1, 2, 3]})
# .save_to_disk(path, num_shards=2)`` (Arrow IPC stream shards), embedded so the reader is
# checked against the real layout without depending on ``datasets``.
_REAL_SAVE_TO_DISK = {
    "data-00000-of-00002.arrow": (
        "/////1gBAAAQAAAAAAAKAA4ABgAFAAgACgAAAAABBAAQAAAAAAAKAAwAAAAEAAgACgAAAKwAAAAEAAAAAQAAAAwA"
        "AAAIAAwABAAIAAgAAACAAAAABAAAAHIAAAB7ImluZm8iOiB7ImZlYXR1cmVzIjogeyJ0ZXh0IjogeyJkdHlwZSI6"
        "ICJzdHJpbmciLCAiX3R5cGUiOiAiVmFsdWUifSwgIm4iOiB7ImR0eXBlIjogImludDY0IiwgIl90eXBlIjogIlZh"
        "bHVlIn19fX0AAAsAAABodWdnaW5nZmFjZQACAAAATAAAAAQAAADM////AAABAhAAAAAcAAAABAAAAAAAAAABAAAA"
        "bgAAAAgADAAIAAcACAAAAAAAAAFAAAAAEAAUAAgABgAHAAwAAAAQABAAAAAAAAEFEAAAABwAAAAEAAAAAAAAAAQA"
        "AAB0ZXh0AAAAAAQABAAEAAAAAAAAAP/////IAAAAFAAAAAAAAAAMABYABgAFAAgADAAMAAAAAAMEABgAAABIAAAA"
        "AAAAAAAACgAYAAwABAAIAAoAAABsAAAAEAAAAAIAAAAAAAAAAAAAAAUAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
        "AAAMAAAAAAAAABAAAAAAAAAAHgAAAAAAAAAwAAAAAAAAAAAAAAAAAAAAMAAAAAAAAAAYAAAAAAAAAAAAAAACAAAA"
        "AgAAAAAAAAAAAAAAAAAAAAIAAAAAAAAAAAAAAAAAAAAAAAAACwAAABkAAAAAAAAAaGVsbG8gd29ybGRzZWNvbmQg"
        "ZG9jIOKck3RoaXJkAAABAAAAAAAAAAIAAAAAAAAAAwAAAAAAAAD/////AAAAAA=="
    ),
    "data-00001-of-00002.arrow": (
        "/////1gBAAAQAAAAAAAKAA4ABgAFAAgACgAAAAABBAAQAAAAAAAKAAwAAAAEAAgACgAAAKwAAAAEAAAAAQAAAAwA"
        "AAAIAAwABAAIAAgAAACAAAAABAAAAHIAAAB7ImluZm8iOiB7ImZlYXR1cmVzIjogeyJ0ZXh0IjogeyJkdHlwZSI6"
        "ICJzdHJpbmciLCAiX3R5cGUiOiAiVmFsdWUifSwgIm4iOiB7ImR0eXBlIjogImludDY0IiwgIl90eXBlIjogIlZh"
        "bHVlIn19fX0AAAsAAABodWdnaW5nZmFjZQACAAAATAAAAAQAAADM////AAABAhAAAAAcAAAABAAAAAAAAAABAAAA"
        "bgAAAAgADAAIAAcACAAAAAAAAAFAAAAAEAAUAAgABgAHAAwAAAAQABAAAAAAAAEFEAAAABwAAAAEAAAAAAAAAAQA"
        "AAB0ZXh0AAAAAAQABAAEAAAAAAAAAP/////IAAAAFAAAAAAAAAAMABYABgAFAAgADAAMAAAAAAMEABgAAAAYAAAA"
        "AAAAAAAACgAYAAwABAAIAAoAAABsAAAAEAAAAAEAAAAAAAAAAAAAAAUAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
        "AAAIAAAAAAAAAAgAAAAAAAAABQAAAAAAAAAQAAAAAAAAAAAAAAAAAAAAEAAAAAAAAAAIAAAAAAAAAAAAAAACAAAA"
        "AQAAAAAAAAAAAAAAAAAAAAEAAAAAAAAAAAAAAAAAAAAAAAAABQAAAHRoaXJkAAAAAwAAAAAAAAD/////AAAAAA=="
    ),
}
_REAL_STATE = {
    "_data_files": [
        {"filename": "data-00000-of-00002.arrow"},
        {"filename": "data-00001-of-00002.arrow"},
    ],
    "_fingerprint": "ffece929a66d6c7b",
    "_split": None,
}


def test_hf_disk_reads_real_save_to_disk_output(tmp_path):
    import base64

    folder = tmp_path / "real"
    folder.mkdir()
    for name, b64 in _REAL_SAVE_TO_DISK.items():
        (folder / name).write_bytes(base64.b64decode(b64))
    (folder / "state.json").write_text(json.dumps(_REAL_STATE))
    c = hf_disk_corpus(folder)
    assert [d.data.decode() for d in c] == ["hello world", "second doc ✓", "third"]
    assert c.n_docs == 3 and len(c.files) == 2
