"""t scaled to the pool (MetaCLIP's head share) and its use by build_wit when --t is not given."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.text.config import read_entry_counts, selected_entry_counts
from curation.text.threshold import METACLIP_TAIL_SHARE, resolve_threshold, scaled_threshold, tail_share
from pipelines import build_wit
from storage.layout import RunLayout


def test_scaled_threshold_keeps_metaclips_tail_share():
    rng = np.random.default_rng(0)
    counts = np.concatenate([np.zeros(5_000, np.int64), rng.zipf(1.6, 100_000)])  # long-tailed
    t = scaled_threshold(counts)
    share = tail_share(counts, t)
    others = [tail_share(counts, c) for c in np.unique(counts[counts > 0])]
    assert abs(share - METACLIP_TAIL_SHARE) == min(abs(s - METACLIP_TAIL_SHARE) for s in others)
    # a pool shaped like MetaCLIP's (16k head entries with 5.35B matches, 0.32B in the tail)
    metaclip_like = np.concatenate([np.linspace(20_000, 650_000, 16_000), np.linspace(1, 19_999, 32_000)])
    assert tail_share(metaclip_like, 20_000) == pytest.approx(METACLIP_TAIL_SHARE, rel=0.02)
    assert scaled_threshold(metaclip_like) == pytest.approx(20_000, rel=0.1)
    # of 104 matches, t = 2 leaves the 4 singletons (3.8%) in the tail, t = 3 also the 2s (7.7%)
    assert scaled_threshold(np.array([0, 1, 1, 1, 1, 2, 2, 96])) == 2
    assert scaled_threshold(np.array([1, 1, 2, 2, 96])) == 3  # 2.0% or 5.9% of 102: t = 3
    assert scaled_threshold(np.array([5, 5, 5])) == 5  # no tail is closest: the smallest count
    assert scaled_threshold(np.zeros(3)) == 20_000
    assert resolve_threshold(counts, 20.0) == 20.0 and resolve_threshold(counts, None) == t
    with pytest.raises(ValueError, match="-1"):
        resolve_threshold(counts, -1)


@pytest.fixture(scope="module")
def head_heavy_pool(tmp_path_factory, sample):
    """Real English Wikipedia first sentences; queries = words seen in >= 3 of them."""
    root = tmp_path_factory.mktemp("threshold")
    en = [v["extract"].split(". ")[0][:200] for v in json.load(open(sample["wiki_summaries_en"])).values()][:800]
    pq.write_table(pa.table({"url": [f"http://127.0.0.1/{i}.jpg" for i in range(len(en))], "text": en}),
                   root / "pool.parquet")
    seen = Counter(w for t in en for w in set(t.split(" ")) if w.isalpha())
    queries = sorted(w for w, n in seen.items() if n >= 3)
    pq.write_table(pa.table({"query_id": np.arange(len(queries)), "query": queries}), root / "queries.parquet")
    return str(root / "pool.parquet"), str(root / "queries.parquet"), len(queries)


def test_build_wit_scales_t_to_the_pool_and_t_overrides(head_heavy_pool, tmp_path):
    pool, queries, num_queries = head_heavy_pool
    argv = ["--pool", pool, "--queries", queries, "--until", "select", "--runner", "beam", "--parts", "2"]
    summary = build_wit.run([*argv, "--out", str(tmp_path / "auto")])
    layout = RunLayout(str(tmp_path / "auto"))
    before = read_entry_counts(layout, num_queries)
    after = selected_entry_counts(layout, num_queries)
    assert summary["t"] == scaled_threshold(before) < 20_000
    assert summary["stages"]["balance"]["rejected"]["not_sampled"] > 0
    assert abs(tail_share(before, summary["t"]) - METACLIP_TAIL_SHARE) < 0.05
    head = before >= summary["t"]  # the head is sampled down (little here: a sentence matches
    assert after[head].sum() < before[head].sum()  # dozens of entries, one tail entry keeps it) ...
    assert (after[before > 0] > 0).mean() > 0.8  # ... while most entries keep some pairs
    fixed = build_wit.run([*argv, "--out", str(tmp_path / "fixed"), "--t", "20000"])
    assert fixed["t"] == 20_000 and fixed["stages"]["balance"]["rejected"].get("not_sampled", 0) == 0
