"""The storage layer: the one atomic writer, temp names, the run layout's names, shard discovery
and the data directory — locally and on the S3 API server."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pytest

from storage.datadir import DATA_ENV, data_manifest
from storage.files import TEMP_MARK, atomic_write, is_temp_name
from storage.layout import RunLayout, expand_shards, shard_pattern


def test_atomic_write_leaves_nothing_on_failure_and_no_temp_on_success(tmp_path):
    target = tmp_path / "sub" / "file.json"
    atomic_write(str(target), lambda f: f.write(b"one"))
    assert target.read_bytes() == b"one" and os.listdir(target.parent) == ["file.json"]

    def fail(f):
        f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(str(target), fail)
    assert target.read_bytes() == b"one" and os.listdir(target.parent) == ["file.json"]


def test_listings_skip_temp_names_and_clean_temp_removes_them(tmp_path):
    layout = RunLayout(str(tmp_path))
    layout.write_json(layout.stats("text"), {"in": 1})
    stale = tmp_path / "curation" / "stats" / f".match.json{TEMP_MARK}0123"
    stale.write_bytes(b"partial")
    assert is_temp_name(str(stale))
    assert layout.list(layout.stats_dir, ".json") == [layout.stats("text")]
    assert layout.clean_temp(layout.stats_dir) == 1 and not stale.exists()


def test_every_run_path_has_one_name():
    layout = RunLayout("s3://bucket/run/")
    assert layout.root == "s3://bucket/run"
    assert layout.queries.parquet == "s3://bucket/run/queries/queries.parquet"
    assert layout.queries_parquet == layout.queries.parquet
    assert layout.pool.pairs(3) == "s3://bucket/run/pool/pairs/part-00003.parquet"
    assert layout.part(3) == "s3://bucket/run/curation/selected/part-00003.parquet"
    assert layout.marker(3) == "s3://bucket/run/curation/selected/_done/part-00003"
    assert layout.shard_tar(7, "heldout") == "s3://bucket/run/curation/heldout/00007.tar"
    assert layout.checked_name(3, 2) == "p000003_00002"
    assert layout.download_rows(3, 2) == "s3://bucket/run/curation/download/p000003/rows/00002.parquet"
    assert layout.download_pass(3, "retry") == "s3://bucket/run/curation/download/p000003/retry"
    assert layout.checked_node_record("p000003_00002") == "s3://bucket/run/curation/checked/_nodes/p000003_00002.json"
    run = layout.pretrain("tiny")
    assert run.checkpoint(12) == "s3://bucket/run/pretrain/tiny/checkpoints/step_00000012"
    assert run.result == "s3://bucket/run/pretrain/tiny/result.json"
    assert run.eval_result("fashion-mnist") == "s3://bucket/run/pretrain/tiny/eval/fashion-mnist.json"
    assert layout.contamination_report.html == "s3://bucket/run/reports/contamination/report.html"
    assert RunLayout.of_curation("s3://bucket/run/curation") == layout
    with pytest.raises(ValueError, match="unknown scratch dir"):
        layout.scratch("elsewhere")
    with pytest.raises(ValueError, match="unknown shard split"):
        layout.split_dir("test")


def _write_shards(directory, n):
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (directory / f"{i:05d}.tar").write_bytes(b"")
        (directory / f"{i:05d}.parquet").write_bytes(b"")
    (directory / "stats.json").write_text("{}")


def test_shard_pattern_and_expansion_agree(tmp_path):
    shards = tmp_path / "curation" / "shards"
    _write_shards(shards, 3)
    pattern = shard_pattern(str(shards))
    assert pattern == f"{shards}/{{00000..00002}}.tar"
    assert RunLayout(str(tmp_path)).shard_pattern() == pattern
    files = [f"{shards}/{i:05d}.tar" for i in range(3)]
    assert expand_shards(pattern) == files
    assert expand_shards(str(shards)) == files
    assert expand_shards(f"{shards}/*.tar") == files
    assert expand_shards(f"{shards}/00000.tar::{shards}/00002.tar") == [files[0], files[2]]
    with pytest.raises(FileNotFoundError, match="00003.tar: shard not found"):
        expand_shards(f"{shards}/{{00000..00003}}.tar")
    with pytest.raises(FileNotFoundError, match="no NNNNN.tar shards"):
        shard_pattern(str(tmp_path))


def test_layout_io_on_the_s3_server(s3_bucket):
    layout = RunLayout(f"{s3_bucket}/run")
    table = pa.table({"uid": ["a", "b"], "n": [1, 2]})
    layout.write_parquet(table, layout.part(0))
    layout.write_json(layout.marker(0), {"rows": 2})
    assert layout.read_parquet(layout.part(0)).equals(table)
    assert layout.parquet_rows(layout.part(0)) == 2
    assert layout.list(layout.selected_dir, ".parquet") == [layout.part(0)]
    layout.remove_tree(layout.selected_dir)
    assert not layout.exists(layout.part(0))


def test_data_manifest_from_flag_or_environment(tmp_path, monkeypatch):
    (tmp_path / "manifest.json").write_text(json.dumps({"fashion_mnist_dir": "/x"}))
    assert data_manifest(tmp_path) == {"fashion_mnist_dir": "/x"}
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    assert data_manifest() == {"fashion_mnist_dir": "/x"}
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="make sample-data"):
        data_manifest()
