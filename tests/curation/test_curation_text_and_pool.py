"""Pool readers, text rules and fastText language ID on real Wikipedia paragraphs."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.stage import REASON, kept_rows, reason_counts
from curation.text.dedup import key_buckets, mark_duplicates
from curation.text.pool import PoolConfig, PoolFormatError, list_pool_files, read_pool_file
from curation.text.textfilter import LanguageIdentifier, TextConfig, TextFilter, normalize_texts


def test_language_id_on_real_wikipedia_paragraphs(sample):
    lid = LanguageIdentifier()
    for lang in ("en", "es", "fr"):
        paragraphs = [v["extract"] for v in list(json.load(open(sample[f"wiki_summaries_{lang}"])).values())[:100]]
        codes, probs = lid.predict(paragraphs)
        assert np.mean(np.array(codes) == lang) > 0.95, lang
    table = pa.table({"uid": ["en", "es", "fr"], "url": ["u1", "u2", "u3"], "text": [
        "The cat sat on the mat next to a red bicycle.",
        "El gato se sentó en la alfombra junto a una bicicleta roja.",
        "Le chat était assis sur le tapis à côté d'un vélo rouge."]})
    out = TextFilter(TextConfig())(table)
    assert out.column(REASON).to_pylist() == ["", "not_english", "not_english"]


def test_text_rules_and_normalisation():
    assert normalize_texts(pa.array(["  a\t\tb \n c ", "caf\u00c3\u00a9 &amp; more", None])).to_pylist() == [
        "a b c", "café & more", None]
    table = pa.table({"uid": list("abcde"), "url": list("abcde"),
                      "text": ["  ", "x", "ok text here", "y" * 1_000_000, "a photo of a dog"]})
    out = TextFilter(TextConfig(language=None, min_chars=2, max_chars=1000))(table)
    assert out.column(REASON).to_pylist() == ["empty_text", "text_too_short", "", "text_too_long", ""]
    assert sum(reason_counts(out).values()) == table.num_rows


def _write(path, data: bytes) -> str:
    with open(path, "wb") as f:
        f.write(data)
    return str(path)


def test_readers_and_column_layouts(tmp_path):
    img2dataset = pq.write_table(pa.table({"url": ["http://a/1"], "caption": ["a dog"], "width": [3]}),
                                 tmp_path / "i2d.parquet")
    del img2dataset
    _write(tmp_path / "laion.tsv.gz", gzip.compress(b"URL\tTEXT\nhttp://b/1\ta cat\nhttp://b/2\tbad \xff\n"))
    _write(tmp_path / "datacomp.jsonl", b'{"uid": "abc", "url": "http://c/1", "text": "a bird"}\n'
                                        b'{"uid": "abd", "url": null, "text": "no url"}\n')
    _write(tmp_path / "plain.csv", b"url,text\nhttp://d/1,\"quoted, with comma\"\nhttp://d/2,\n")
    _write(tmp_path / "empty.jsonl", b"")  # an empty JSONL file is 0 rows; an empty CSV has no header
    _write(tmp_path / "empty.csv", b"")
    files = list_pool_files([str(tmp_path)])
    assert [f.rsplit("/", 1)[1] for f in files] == ["datacomp.jsonl", "empty.csv", "empty.jsonl", "i2d.parquet",
                                                    "laion.tsv.gz", "plain.csv"]
    with pytest.raises(PoolFormatError, match=r"empty\.csv: empty file \(0 bytes\)"):
        read_pool_file(files.pop(1))
    tables = {f.rsplit("/", 1)[1]: read_pool_file(f) for f in files}
    assert tables["i2d.parquet"].column_names == ["uid", "url", "text", "width", REASON]
    assert tables["laion.tsv.gz"].column(REASON).to_pylist() == ["", "invalid_utf8"]
    assert tables["datacomp.jsonl"].column("uid").to_pylist() == ["abc", "abd"]
    assert tables["datacomp.jsonl"].column(REASON).to_pylist() == ["", "null_url"]
    assert tables["plain.csv"].column("text").to_pylist() == ["quoted, with comma", None]
    assert tables["plain.csv"].column(REASON).to_pylist() == ["", "null_text"]
    assert tables["empty.jsonl"].num_rows == 0
    uid = tables["i2d.parquet"].column("uid")[0].as_py()
    assert uid == read_pool_file(files[2]).column("uid")[0].as_py() and len(uid) == 32  # stable hash


def test_bad_pool_files_raise_errors_naming_the_file(tmp_path):
    pq.write_table(pa.table({"link": ["x"], "text": ["t"]}), tmp_path / "wrong.parquet")
    with pytest.raises(PoolFormatError, match=r"wrong\.parquet: missing url column"):
        read_pool_file(str(tmp_path / "wrong.parquet"))
    with pytest.raises(PoolFormatError, match=r"missing text column 'alt'"):
        read_pool_file(str(tmp_path / "wrong.parquet"), PoolConfig(url_column="link", text_column="alt"))
    _write(tmp_path / "broken.parquet", b"not parquet at all")
    with pytest.raises(PoolFormatError, match=r"broken\.parquet: cannot read as parquet"):
        read_pool_file(str(tmp_path / "broken.parquet"))
    with pytest.raises(PoolFormatError, match="unknown pool format"):
        read_pool_file(_write(tmp_path / "pool.xml", b"<x/>"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_pool_files([str(tmp_path / "missing")])


def test_dedup_keeps_smallest_uid_whatever_the_buckets():
    table = pa.table({"uid": ["c", "a", "b", "d", "e"], "url": ["u1", "u1", "u2", "u1", "u3"],
                      "text": ["x", "y", "z", "w", "v"], REASON: ["", "", "", "", "null_text"]})
    marked = mark_duplicates(table, "url")
    by_uid = dict(zip(marked.column("uid").to_pylist(), marked.column(REASON).to_pylist()))
    assert by_uid == {"a": "", "b": "", "c": "duplicate_url", "d": "duplicate_url", "e": "null_text"}
    for buckets in (1, 2, 7):
        ids = key_buckets(table, "url", buckets)
        parts = [mark_duplicates(table.filter(pa.array(ids == b)), "url") for b in np.unique(ids)]
        merged = {u: r for p in parts for u, r in zip(p.column("uid").to_pylist(), p.column(REASON).to_pylist())}
        assert merged == by_uid
    assert kept_rows(marked).num_rows == 2
