"""Held-out pairs: a pure function of (uid, seed), about the requested share, and the shard
stage writes them to heldout/ and never to shards/ (accounted in stats/shards.json)."""

from __future__ import annotations

import json
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.images.holdout import heldout_mask
from curation.images.shards import ShardConfig
from curation.stage import in_process


def test_mask_is_a_function_of_uid_and_seed_with_the_requested_share():
    uids = [f"{i:032x}" for i in range(20_000)]
    mask = heldout_mask(uids, 0.1)
    assert 0.09 < mask.mean() < 0.11
    shuffled = list(uids)
    random.Random(0).shuffle(shuffled)
    by_uid = dict(zip(uids, mask))
    assert [by_uid[u] for u in shuffled] == heldout_mask(shuffled, 0.1).tolist()  # order-free
    assert np.array_equal(heldout_mask(pa.chunked_array([uids[:7], uids[7:]]), 0.1), mask)  # arrow, chunked
    other = heldout_mask(uids, 0.1, seed=1)
    assert 0.05 < (mask & other).sum() / mask.sum() < 0.2  # another seed: another, independent set
    assert not heldout_mask(uids, 0.0).any() and heldout_mask(uids, 1.0).all()
    assert (heldout_mask(uids, 0.05) <= mask).all()  # nested: a smaller share is a subset
    with pytest.raises(ValueError, match="1.5"):
        heldout_mask(uids, 1.5)


def test_shard_stage_writes_heldout_pairs_apart(tmp_path):
    from curation.images.recipe import shard_stage
    from curation.stage import write_rejects
    from storage.layout import RunLayout
    from tests.curation.images.conftest import jpeg_bytes

    n = 200
    uids = [f"{i:032x}" for i in range(n)]
    layout = RunLayout(str(tmp_path))
    part = layout.checked_part("pass0_00000")
    layout.write_parquet(pa.table({
        "uid": uids, "url": [f"http://127.0.0.1/{i}.jpg" for i in range(n)],
        "text": [f"caption {i}" for i in range(n)],
        "query_ids": pa.array([[i] for i in range(n)], pa.list_(pa.int32())), "source": ["test"] * n,
        "jpg": [jpeg_bytes(i % 5) for i in range(n)], "width": [8] * n, "height": [8] * n,
        "original_width": [8] * n, "original_height": [8] * n}), part)
    # the last 10 were image-dedup rejects upstream
    write_rejects(layout, "imagededup", pa.table({
        "uid": uids[-10:], "reason": ["exact_duplicate"] * 10, "duplicate_of": uids[:10],
        "part": pa.array([0] * 10, pa.int32()), "row": pa.array(range(n - 10, n), pa.int32())}), part="exact-b00000")
    cur = tmp_path / "curation"
    stats = shard_stage(layout, [part], ShardConfig(shard_size=64, holdout_fraction=0.25), in_process, dedup_out=n - 10)
    train = pa.concat_tables(pq.read_table(p) for p in sorted((cur / "shards").glob("0*.parquet")))
    held = pa.concat_tables(pq.read_table(p) for p in sorted((cur / "heldout").glob("0*.parquet")))
    expected = set(np.array(uids[:-10])[heldout_mask(uids[:-10], 0.25)])
    assert set(held["uid"].to_pylist()) == expected and 20 < len(expected) < 75
    assert set(train["uid"].to_pylist()) == set(uids[:-10]) - expected
    assert train["text"].to_pylist() == [f"caption {int(u, 16)}" for u in train["uid"].to_pylist()]
    assert stats["samples"] == len(train) and (cur / "heldout" / "00000.tar").is_file()
    ledger = json.loads((cur / "stats" / "shards.json").read_text())
    assert ledger["in"] == n - 10 == ledger["out"] and ledger["heldout"] == len(expected)
    with pytest.raises(RuntimeError, match="rows were lost"):  # counts that disagree are an error
        shard_stage(layout, [part], ShardConfig(shard_size=64, holdout_fraction=0.25), in_process, dedup_out=n - 9)
