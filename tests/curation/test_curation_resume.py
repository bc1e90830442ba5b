"""Resume and accounting that can fail: interrupted writes, lost or damaged parts, changed
inputs, deterministic dedup ties, and bad pool files (clear errors or counted whole-file rejects)."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.text.config import CurationConfig
from curation.text.pool import PoolFormatError, read_pool_file
from curation.text.selection import fill_empty_parts
from pipelines import build_wit
from storage.layout import RunLayout


def _argv(pool, queries, out, *extra):
    return ["--pool", pool, "--queries", queries, "--out", str(out), "--until", "select", "--t", "20",
            "--parts", "4", "--runner", "beam", *extra]


def _selection(out: Path) -> dict[str, bytes]:
    cur = out / "curation"
    paths = sorted(cur.glob("selected/part-*.parquet")) + sorted(cur.glob("rejects/*/part-*.parquet"))
    return {str(p.relative_to(cur)): p.read_bytes() for p in paths}


def test_interrupted_writes_lost_and_damaged_parts(pool_and_queries, tmp_path, capsys):
    pool, queries, _ = pool_and_queries
    out = tmp_path / "run"
    build_wit.run(_argv(pool, queries, out))
    cur = out / "curation"
    before = _selection(out)

    # stray temp files of interrupted writes, a torn marker, a file that is not ours in every dir
    for folder in ("selected", "selected/_done", "stats", "rejects/text"):
        (cur / folder / "README.txt").write_text("not ours")
        (cur / folder / ".part-00002.parquet.tmp-0a1b").write_bytes(b"torn")
    (cur / "selected" / "_done" / "part-00003").write_text('{"rows": 1')  # torn marker
    (cur / "selected" / "part-00001.parquet").unlink()  # a part lost after the run
    build_wit.run(_argv(pool, queries, out))
    assert _selection(out) == before  # redone byte for byte
    assert not list(cur.rglob("*.tmp-*")) and (cur / "selected" / "README.txt").exists()

    # a truncated part fails loudly, naming it
    part = cur / "selected" / "part-00002.parquet"
    part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])
    with pytest.raises(ValueError, match="part-00002.parquet"):
        build_wit.run(_argv(pool, queries, out))
    part.unlink()
    build_wit.run(_argv(pool, queries, out))
    assert _selection(out) == before

    # a file added to --pool DIR is noticed: the selection is recomputed and names the change
    extra = Path(pool).parent / "pool_plus"
    shutil.copytree(pool, extra)
    build_wit.run(_argv(str(extra), queries, tmp_path / "plus"))
    pq.write_table(pa.table({"url": ["http://127.0.0.1/new.jpg"], "text": ["The United States of America"]}),
                   extra / "e.parquet")
    capsys.readouterr()
    summary = build_wit.run(_argv(str(extra), queries, tmp_path / "plus"))
    assert "pool file added" in capsys.readouterr().out
    assert summary["stages"]["read"]["in"] == summary["stages"]["read"]["out"] + 3 and summary["selected"] > 0


def test_lost_rows_are_an_error_not_a_balanced_ledger(pool_and_queries, tmp_path):
    pool, queries, _ = pool_and_queries
    out = tmp_path / "run"
    build_wit.run(_argv(pool, queries, out))
    layout = RunLayout(str(out))
    # a part the engine never wrote, while the reader counted rows for it: error naming the part
    marker = layout.marker(1)
    Path(marker).unlink()
    with pytest.raises(RuntimeError, match="part-00001"):
        fill_empty_parts(layout, 4, rows_read=10_000)
    # a marker whose tally no longer matches what the reader counted: the stats refuse to balance
    tally = json.loads(Path(layout.marker(0)).read_text())
    tally["reasons"][""] -= 1
    Path(layout.marker(0)).write_text(json.dumps(tally))
    from curation.text.config import stage_stats

    config = CurationConfig(queries=queries, pool=(pool,), curation_dir=layout.curation, t=20, num_parts=4)
    Path(marker).write_text(json.dumps({"rows": 0, "reasons": {}}))
    with pytest.raises(AssertionError, match="rows were lost"):
        stage_stats(config)


@pytest.mark.ray
def test_duplicate_rows_with_other_metadata_same_bytes_everywhere(tmp_path, pool_and_queries, ray_session):
    """Rows with the same url+text (so the same hashed uid) but different metadata: which one is
    kept no longer depends on arrival order. Ray == Beam at Beam parallelism 1 and 2 and two Ray
    batch sizes."""
    _, queries, _ = pool_and_queries
    words = pq.read_table(queries).column("query").to_pylist()[:40]
    rows = []
    for i, w in enumerate(words):
        text = f"A photo of {w} in the United States"
        for copy in range(3):  # same url+text, different metadata; listed in other orders per file
            rows.append({"url": f"http://127.0.0.1/{i}.jpg", "text": text, "source": f"crawl-{(i + copy) % 3}",
                         "width": 100 + copy})
    pool = tmp_path / "pool"
    pool.mkdir()
    pq.write_table(pa.Table.from_pylist(rows[::2]), pool / "a.parquet")
    pq.write_table(pa.Table.from_pylist(rows[1::2][::-1]), pool / "b.parquet")
    runs = {}
    for name, extra in (("beam1", ["--parallelism", "1", "--batch-size", "7"]),
                        ("beam2", ["--parallelism", "2", "--batch-size", "5"]),
                        ("ray16", ["--runner", "ray", "--batch-size", "16"]),
                        ("ray64", ["--runner", "ray", "--batch-size", "64"])):
        build_wit.run(_argv(str(pool), queries, tmp_path / name, *extra))
        runs[name] = _selection(tmp_path / name)
    assert runs["beam1"] == runs["beam2"] == runs["ray16"] == runs["ray64"]
    kept = pa.concat_tables([pq.read_table(p) for p in sorted((tmp_path / "beam1" / "curation").glob(
        "selected/part-*.parquet"))])
    assert kept.num_rows > 0 and len(set(kept.column("url").to_pylist())) == kept.num_rows


def _bad_pool_files(root: Path) -> dict[str, Path]:
    """One file per class of bad pool file a real pool contains."""
    root.mkdir()
    files = {}
    files["int_url"] = root / "int_url.jsonl"
    files["int_url"].write_text('{"url": 12, "text": "a cat"}\n{"url": 13, "text": "a dog"}\n')
    files["empty_parquet"] = root / "empty.parquet"
    files["empty_parquet"].write_bytes(b"")
    files["not_parquet"] = root / "html.parquet"
    files["not_parquet"].write_bytes(b"<html><body>403 Forbidden</body></html>")
    good = gzip.compress(b'{"url": "http://127.0.0.1/a.jpg", "text": "a cat on a mat"}\n' * 2000)
    files["truncated_gzip"] = root / "cut.jsonl.gz"
    files["truncated_gzip"].write_bytes(good[: len(good) // 2])
    buffer = pa.BufferOutputStream()
    pq.write_table(pa.table({"url": ["http://127.0.0.1/b.jpg"] * 50, "text": ["a dog"] * 50}), buffer)
    files["bad_footer"] = root / "cut.parquet"
    files["bad_footer"].write_bytes(buffer.getvalue().to_pybytes()[:-20])
    return files


def test_bad_pool_files_name_file_column_and_type(tmp_path):
    files = _bad_pool_files(tmp_path / "bad")
    with pytest.raises(PoolFormatError, match=r"int_url.jsonl: url column 'url' has type int64; accepted types: "
                                              r"string, large_string, binary, large_binary") as err:
        read_pool_file(str(files["int_url"]))
    assert err.value.reason == "bad_schema"
    for name in ("empty_parquet", "not_parquet", "truncated_gzip", "bad_footer"):
        with pytest.raises(PoolFormatError, match=files[name].name) as err:
            read_pool_file(str(files[name]))
        assert err.value.reason == "unreadable_file", name
    (tmp_path / "empty.jsonl").write_bytes(b"")  # an empty JSONL file really is 0 rows
    assert read_pool_file(str(tmp_path / "empty.jsonl")).num_rows == 0


@pytest.mark.parametrize("runner", ["beam", pytest.param("ray", marks=pytest.mark.ray)])
def test_bad_pool_files_stop_the_run_or_are_counted_skips(tmp_path, pool_and_queries, runner, request):
    pool, queries, _ = pool_and_queries
    if runner == "ray":
        request.getfixturevalue("ray_session")
    bad = _bad_pool_files(tmp_path / "bad")
    mixed = tmp_path / "mixed"
    shutil.copytree(pool, mixed)
    shutil.copy(bad["int_url"], mixed / "int_url.jsonl")
    with pytest.raises(Exception, match=r"int_url.jsonl: url column 'url' has type int64"):
        build_wit.run(_argv(str(mixed), queries, tmp_path / "stop", "--runner", runner))
    for f in bad.values():
        shutil.copy(f, mixed / f.name)
    clean = build_wit.run(_argv(pool, queries, tmp_path / "clean", "--runner", runner))
    summary = build_wit.run(_argv(str(mixed), queries, tmp_path / "skip", "--runner", runner,
                                  "--on-bad-file", "skip"))
    read = summary["stages"]["read"]
    assert read["files_skipped"] == {"bad_schema": 1, "unreadable_file": 4}
    assert read["in"] == clean["stages"]["read"]["in"] and summary["selected"] == clean["selected"]
    rejects = pq.read_table(tmp_path / "skip" / "curation" / "rejects" / "read" / "files.parquet").to_pylist()
    assert sorted(Path(r["file"]).name for r in rejects) == sorted(f.name for f in bad.values())
    assert all(r["error"] and r["reason"] in ("bad_schema", "unreadable_file") for r in rejects)
