"""End to end: build_wit --until select on Beam and Ray, at several parallelisms, with bad rows."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.text.config import CurationConfig
from curation.text.match import QueryMatcher
from curation.text.textfilter import TextConfig
from pipelines import build_wit


def _files(out: Path) -> dict[str, bytes]:
    cur = out / "curation"
    paths = sorted(cur.glob("selected/part-*.parquet")) + sorted(cur.glob("rejects/*/part-*.parquet"))
    return {str(p.relative_to(cur)): p.read_bytes() for p in paths + [cur / "entry_counts.parquet"]}


def _argv(pool, queries, out, *extra):
    return ["--pool", pool, "--queries", queries, "--out", str(out), "--until", "select", "--t", "20",
            "--parts", "4", *extra]


def test_beam_selection_accounting_and_resume(pool_and_queries, tmp_path):
    pool, queries, total = pool_and_queries
    summary = build_wit.run(_argv(pool, queries, tmp_path / "a", "--runner", "beam", "--batch-size", "64"))
    stages = summary["stages"]
    assert stages["read"]["in"] == total
    for prev, stage in zip(stages, list(stages)[1:]):
        assert stages[stage]["in"] == stages[prev]["out"]
    for stage, s in stages.items():
        assert s["in"] == s["out"] + sum(s["rejected"].values()), stage
    assert stages["read"]["rejected"] == {"invalid_utf8": 1, "null_text": 1, "null_url": 1}
    assert stages["text"]["rejected"]["text_too_long"] == 1 and stages["text"]["rejected"]["not_english"] >= 60
    assert stages["dedup_url"]["rejected"] == {"duplicate_url": 30}
    assert stages["dedup_text"]["rejected"]["duplicate_text"] >= 10
    assert stages["balance"]["rejected"]["not_sampled"] > 0

    cur = tmp_path / "a" / "curation"
    selected = pa.concat_tables([pq.read_table(p) for p in sorted(cur.glob("selected/part-*.parquet"))])
    assert selected.num_rows == summary["selected"] == stages["balance"]["out"]
    assert {"uid", "url", "text", "query_ids"} <= set(selected.column_names)
    matcher = QueryMatcher(pq.read_table(queries).column("query").to_pylist())
    assert selected.column("query_ids").to_pylist() == matcher.match(selected.column("text"))
    rejected = sum(pq.read_table(p).num_rows for p in cur.glob("rejects/*/part-*.parquet"))
    assert rejected == total - selected.num_rows
    counts = pq.read_table(cur / "entry_counts.parquet")
    assert counts.column("count").to_numpy().sum() == sum(
        len(q) for q in _matched_ids(cur)), "c_e counts every matched, deduplicated, English pair"
    assert (cur / "stats" / "entry_counts.png").stat().st_size > 1000

    before = _files(tmp_path / "a")
    again = build_wit.run(_argv(pool, queries, tmp_path / "a", "--runner", "beam"))
    assert again["selected"] == summary["selected"] and _files(tmp_path / "a") == before  # skipped
    (cur / "selected" / "part-00001.parquet").unlink()
    (cur / "selected" / "_done" / "part-00001").unlink()
    build_wit.run(_argv(pool, queries, tmp_path / "a", "--runner", "beam"))
    assert _files(tmp_path / "a") == before  # the missing part is rewritten byte for byte

    build_wit.run(_argv(pool, queries, tmp_path / "b", "--runner", "beam", "--batch-size", "1000"))
    assert _files(tmp_path / "b") == before  # other batching, same bytes
    build_wit.run(_argv(pool, queries, tmp_path / "c", "--runner", "beam", "--seed", "1"))
    assert _files(tmp_path / "c")["selected/part-00000.parquet"] != before["selected/part-00000.parquet"]


def _matched_ids(cur: Path) -> list[list[int]]:
    """query_ids of the rows that reached balancing (selected + not_sampled) via the matcher."""
    selected = [pq.read_table(p) for p in sorted(cur.glob("selected/part-*.parquet"))]
    not_sampled = pa.concat_tables([pq.read_table(p) for p in sorted(cur.glob("rejects/balance/part-*.parquet"))])
    ids = [q for t in selected for q in t.column("query_ids").to_pylist()]
    return ids + _recount(cur, set(not_sampled.column("uid").to_pylist()))


def _recount(cur: Path, uids: set[str]) -> list[list[int]]:
    config = json.loads((cur / "_config.json").read_text())["config"]
    matcher = QueryMatcher(pq.read_table(config["queries"]).column("query").to_pylist())
    from curation.text.pool import list_pool_files, read_pool_file
    from curation.text.textfilter import normalize_texts

    texts = {}  # exact duplicate rows share a uid: one text per uid
    for f in list_pool_files(config["pool"]):
        t = read_pool_file(f)
        t = t.filter(pa.array([u in uids for u in t.column("uid").to_pylist()], pa.bool_()))
        texts.update(zip(t.column("uid").to_pylist(), normalize_texts(t.column("text")).to_pylist()))
    assert len(texts) == len(uids)
    return matcher.match(list(texts.values()))


@pytest.mark.ray
def test_ray_equals_beam_byte_for_byte(pool_and_queries, tmp_path, ray_session):
    pool, queries, _ = pool_and_queries
    build_wit.run(_argv(pool, queries, tmp_path / "beam", "--runner", "beam", "--batch-size", "128"))
    ray_summary = build_wit.run(_argv(pool, queries, tmp_path / "ray", "--runner", "ray", "--batch-size", "256"))
    assert _files(tmp_path / "ray") == _files(tmp_path / "beam")
    beam_stats = json.loads((tmp_path / "beam" / "curation" / "stats" / "summary.json").read_text())
    assert ray_summary["stages"] == beam_stats["stages"]


def test_config_fingerprint_ignores_parallelism(pool_and_queries):
    pool, queries, _ = pool_and_queries
    base = CurationConfig(queries=queries, pool=(pool,), curation_dir="out")
    assert base.fingerprint() == CurationConfig(queries=queries, pool=(pool,), curation_dir="elsewhere",
                                                batch_size=7, parallelism=3, dedup_buckets=5).fingerprint()
    assert base.fingerprint() != CurationConfig(queries=queries, pool=(pool,), curation_dir="out",
                                                text=TextConfig(lid_threshold=0.9)).fingerprint()
