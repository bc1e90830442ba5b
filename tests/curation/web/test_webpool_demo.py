"""The demo's crawl: the sample images as pages, crawled by wget, give back exactly the sample pool."""

from __future__ import annotations

import pyarrow.parquet as pq

from curation.web.webpool import extract_file
from pipelines.demo.sample_crawl import build_sample_crawl


def test_sample_crawl_gives_back_the_sample_pool(sample, tmp_path):
    entries = build_sample_crawl(tmp_path, sample)
    result = extract_file(entries["sample_crawl_warc"], "warc")
    pool = pq.read_table(sample["sample_pool"])
    expected = set(zip(pool.column("url").to_pylist(), (" ".join(t.split()) for t in pool.column("text").to_pylist())))
    got = list(zip(result.pairs.column("url").to_pylist(), result.pairs.column("text").to_pylist()))
    assert len(got) == len(expected) == pool.num_rows and set(got) == expected
    assert result.images.rejected == {} and result.records.rows_out == result.records.rows_in - result.records.rejected["not_response"]
