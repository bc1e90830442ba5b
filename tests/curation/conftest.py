"""Fixtures of the curation tests: a small real pool with duplicates and bad rows."""

from __future__ import annotations

import gzip
import json
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest


@pytest.fixture(scope="session")
def pool_and_queries(tmp_path_factory, sample):
    """A small real pool: English and Spanish Wikipedia sentences, duplicates and bad rows."""
    root = tmp_path_factory.mktemp("pool")
    en = [v["extract"].split(". ")[0][:200] for v in json.load(open(sample["wiki_summaries_en"])).values()][:600]
    es = [v["extract"].split(". ")[0][:200] for v in json.load(open(sample["wiki_summaries_es"])).values()][:80]
    rows = [{"url": f"http://127.0.0.1/en/{i}.jpg", "text": t} for i, t in enumerate(en)]
    rows += [{"url": f"http://127.0.0.1/es/{i}.jpg", "text": t} for i, t in enumerate(es)]
    rows += rows[:30]  # exact duplicates
    rows += [{"url": f"http://127.0.0.1/copy/{i}.jpg", "text": rows[i]["text"]} for i in range(10)]
    rows += [{"url": None, "text": "a photo of a cat"}, {"url": "http://127.0.0.1/n.jpg", "text": None},
             {"url": "http://127.0.0.1/big.jpg", "text": "word " * 200_000}]
    (root / "pool").mkdir()
    pq.write_table(pa.Table.from_pylist(rows[:400]), root / "pool" / "a.parquet")
    pq.write_table(pa.Table.from_pylist(rows[400:]), root / "pool" / "b.parquet")
    (root / "pool" / "c.tsv.gz").write_bytes(gzip.compress(
        b"URL\tTEXT\nhttp://127.0.0.1/t/1.jpg\tbroken \xff\xfe caption\nhttp://127.0.0.1/t/2.jpg\tThe old bridge\n"))
    (root / "pool" / "d.jsonl").write_bytes(b"")
    seen = Counter(w for t in en for w in set(t.split(" ")) if w.isalpha())
    queries = sorted({w for w, n in seen.items() if n >= 8} | {"United States", "of the", "Spain"})
    pq.write_table(pa.table({"query_id": np.arange(len(queries)), "query": queries}), root / "queries.parquet")
    return str(root / "pool"), str(root / "queries.parquet"), len(rows) + 2


