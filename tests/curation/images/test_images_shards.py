"""Final shard writer: member names, shard cutting, reproducible bytes, webdataset readback."""

from __future__ import annotations

import json
import tarfile

import pyarrow as pa
import webdataset as wds

from curation.images.shards import ShardConfig, rebatch, sanitize_key, write_shards
from storage.layout import RunLayout
from tests.curation.images.conftest import jpeg_bytes


def samples(n: int) -> pa.Table:
    return pa.table({
        "uid": [f"uid/{i}.x" for i in range(n)],
        "url": [f"http://127.0.0.1/{i}.jpg" for i in range(n)],
        "text": [f"caption {i} ünïcode" for i in range(n)],
        "query_ids": pa.array([[i, 3] for i in range(n)], pa.list_(pa.int32())),
        "source": ["test"] * n,
        "jpg": [jpeg_bytes(i) for i in range(n)],
        "width": [160] * n, "height": [120] * n, "original_width": [160] * n, "original_height": [120] * n,
    })


def test_sanitize_key():
    assert sanitize_key("../../etc/passwd") == "______etc_passwd"
    assert sanitize_key("a.b c/d") == "a_b_c_d"
    assert sanitize_key("") == "_"


def test_rebatch_cuts_exact_sizes():
    tables = [pa.table({"x": list(range(k))}) for k in (3, 0, 5, 1)]
    assert [len(t) for t in rebatch(tables, 4)] == [4, 4, 1]


def shards_dir(root, name: str) -> RunLayout:
    """The layout of run ``root/name`` (its shards are in ``root/name/curation/shards``)."""
    return RunLayout(str(root / name))


def test_shards_are_reproducible_and_readable(tmp_path):
    table = samples(7)
    stats = write_shards([table.slice(0, 2), table.slice(2)], shards_dir(tmp_path, "ra"), ShardConfig(shard_size=3))
    assert stats["shards"] == 3 and stats["samples"] == 7
    write_shards([table], shards_dir(tmp_path, "rb"), ShardConfig(shard_size=3))
    a, b = tmp_path / "ra" / "curation" / "shards", tmp_path / "rb" / "curation" / "shards"
    for name in ("00000.tar", "00001.tar", "00002.tar", "00002.parquet"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    with tarfile.open(a / "00000.tar") as tar:
        names = tar.getnames()
    assert names[:3] == ["00000_000000.jpg", "00000_000000.json", "00000_000000.txt"]
    assert all("/" not in n and ".." not in n for n in names)
    loaded = list(wds.WebDataset(sorted(str(p) for p in a.glob("*.tar")), shardshuffle=False))
    assert [json.loads(s["json"])["uid"] for s in loaded] == table.column("uid").to_pylist()
    assert loaded[4]["txt"].decode() == "caption 4 ünïcode"
    # a smaller rerun with other settings leaves no stale shards behind; a torn temp file of an
    # interrupted write is cleaned, a file that is not ours is left alone
    (a / "00001.tar.tmp-x").write_bytes(b"torn")
    (a / ".00002.tar.tmp-0123").write_bytes(b"torn")
    (a / "README.txt").write_text("not ours")
    write_shards([table], shards_dir(tmp_path, "ra"), ShardConfig(shard_size=10))
    assert sorted(p.name for p in a.iterdir()) == ["00000.parquet", "00000.tar", "README.txt", "stats.json"]
    assert len(list(wds.WebDataset(str(a / "00000.tar"), shardshuffle=False))) == 7


def test_plan_cuts_like_rebatch():
    import random

    from curation.images.shards import plan_shards

    rng = random.Random(3)
    for _ in range(50):
        counts = [rng.choice([0, 1, 2, 7, 30]) for _ in range(rng.randint(0, 8))]
        size = rng.randint(1, 12)
        tables = [pa.table({"x": list(range(sum(counts[:i]), sum(counts[:i + 1])))}) for i in range(len(counts))]
        expected = [t.column("x").to_pylist() for t in rebatch(tables, size)]
        offsets = [sum(counts[:i]) for i in range(len(counts))]
        got = [[x for part, a, b in ranges for x in range(offsets[part] + a, offsets[part] + b)]
               for ranges in plan_shards(counts, size)]
        assert got == expected


def in_sample_order(table: pa.Table) -> pa.Table:
    from curation.images.recipe import sample_order

    order = pa.array(sample_order(table.column("uid")), pa.uint64())
    return table.append_column("order", order).sort_by([("order", "ascending"), ("uid", "ascending")]).drop_columns(
        ["order"])


def test_shard_tasks_write_the_bytes_of_the_one_process_writer(tmp_path):
    """The shard stage as tasks (mark + scatter by order bucket + one task per shard, no dedup
    rejects) writes the bytes write_shards writes from the same rows, in sample order, in one
    process."""
    from curation.images.recipe import shard_stage
    from curation.stage import in_process

    table = samples(23)
    one = shards_dir(tmp_path, "one")
    write_shards([in_sample_order(table)], one, ShardConfig(shard_size=5))
    tasks = shards_dir(tmp_path, "tasks")
    parts = []
    for i, (a, b) in enumerate(((0, 9), (9, 9), (9, 23))):  # an empty checked part too
        parts.append(tasks.checked_part(f"pass0_{i:05d}"))
        tasks.write_parquet(table.slice(a, b - a), parts[-1])
    stats = shard_stage(tasks, parts, ShardConfig(shard_size=5), in_process, dedup_out=23)
    assert stats["shards"] == 5 and stats["samples"] == 23
    for k in range(5):
        assert tasks.read_bytes(tasks.shard_tar(k)) == one.read_bytes(one.shard_tar(k))
        assert tasks.read_parquet(tasks.shard_index(k)).equals(one.read_parquet(one.shard_index(k)))
    assert not tasks.exists(tasks.split_dir("heldout")) and not tasks.exists(tasks.cur("shardplan"))


def test_shard_bytes_depend_only_on_the_final_samples(tmp_path):
    """The same samples in other checked parts, in another order, with other dedup rejects
    around them and another bucket count give the same shard bytes (as after retried downloads,
    another node count or another download shard size)."""
    import numpy as np

    from curation.images import recipe
    from curation.stage import in_process, write_rejects

    table = samples(31)
    runs = []
    for name, cuts, seed, extra in (("a", (0, 10, 31), None, 0), ("b", (0, 3, 3, 20, 31), 7, 0),
                                    ("c", (0, 31), 11, 4)):
        layout = shards_dir(tmp_path, name)
        rows = table if seed is None else table.take(np.random.default_rng(seed).permutation(len(table)))
        parts = []
        for i, (a, b) in enumerate(zip(cuts, cuts[1:])):
            part = rows.slice(a, b - a)
            if extra and i == 0:  # rows the image dedup rejected: never in the shards
                part = pa.concat_tables([samples(extra + 31).slice(31), part])
                write_rejects(layout, "imagededup", pa.table({
                    "uid": part.column("uid").slice(0, extra), "reason": ["exact_duplicate"] * extra,
                    "part": pa.array([i] * extra, pa.int32()), "row": pa.array(range(extra), pa.int32())}),
                    part="exact-b00000")
            parts.append(layout.checked_part(f"pass0_{i:05d}"))
            layout.write_parquet(part, parts[-1])
        if name == "c":  # another bucket count: one bucket for everything
            recipe.MAX_ORDER_BUCKETS, keep = 1, recipe.MAX_ORDER_BUCKETS
        try:
            stats = recipe.shard_stage(layout, parts, ShardConfig(shard_size=4, holdout_fraction=0.3), in_process,
                                       dedup_out=31)
        finally:
            if name == "c":
                recipe.MAX_ORDER_BUCKETS = keep
        runs.append((layout, stats))
    first, stats = runs[0]
    assert stats["samples"] + first.read_json(first.shard_stats_of("heldout"))["samples"] == 31
    for layout, other in runs[1:]:
        assert other == stats
        for split in ("shards", "heldout"):
            names = [u.rsplit("/", 1)[-1] for u in first.list(first.split_dir(split))]
            assert names == [u.rsplit("/", 1)[-1] for u in layout.list(layout.split_dir(split))]
            for n in names:
                assert layout.read_bytes(f"{layout.split_dir(split)}/{n}") == first.read_bytes(
                    f"{first.split_dir(split)}/{n}"), (split, n)
