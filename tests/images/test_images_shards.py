"""Final shard writer: member names, shard cutting, reproducible bytes, webdataset readback."""

from __future__ import annotations

import json
import tarfile

import pyarrow as pa
import webdataset as wds

from curation.run import RunLayout
from curation.shards import ShardConfig, rebatch, sanitize_key, write_shards
from tests.images.conftest import jpeg_bytes


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
