"""Merging, output files, the counts-file unigram source, and the entry point on Beam / Ray / local."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.build_queries import run
from queries.build import (
    QUERY_SCHEMA,
    load_queries,
    merge_sources,
    read_unigram_counts_file,
    select_unigrams,
)
from queries.text import is_matchable

from test_queries_titles_wordnet import HOUR_0, HOUR_1  # same dir (rootdir-style imports)


def _entries(queries, counts=None, views=None):
    n = len(queries)
    return pa.table(
        {
            "query": pa.array(queries, pa.string()),
            "count": pa.array(counts or [None] * n, pa.int64()),
            "pmi": pa.nulls(n, pa.float64()),
            "views": pa.array(views or [None] * n, pa.int64()),
        }
    )


def test_merge_priority_sort_and_ids():
    table, duplicates = merge_sources(
        {
            "wordnet": _entries(["dog", "zebra crossing", "Paris"]),
            "title": _entries(["Paris", "Zürich"], views=[10, 20]),
            "unigram": _entries(["dog", "cat"], counts=[500, 300]),
        }
    )
    assert table.schema == QUERY_SCHEMA
    assert table["query"].to_pylist() == ["Paris", "Zürich", "cat", "dog", "zebra crossing"]  # code point order
    assert table["query_id"].to_pylist() == [0, 1, 2, 3, 4]
    assert table["source"].to_pylist() == ["title", "title", "unigram", "unigram", "wordnet"]
    assert table["count"].to_pylist() == [None, None, 300, 500, None]
    assert table["views"].to_pylist() == [10, 20, None, None, None]
    assert duplicates == {"unigram": 0, "bigram": 0, "title": 0, "wordnet": 2}


def test_unigram_counts_file(sample):
    counts, bad = read_unigram_counts_file(sample["unigram_counts"])
    assert bad == {"empty_word": 1, "bad_line": 0}
    assert counts.num_rows + sum(bad.values()) == 829_254
    entries, dropped = select_unigrams(counts, min_count=100)
    # 274,687 words have count >= 100, the empty word among them; 7,440 can never match and
    # 1,900 more are not words by the counting rule ('""the', 'colspan=9', ...)
    assert dropped["unmatchable"] == 7_440 and dropped["not_a_word"] == 1_900
    assert entries.num_rows == 265_346
    assert dropped["below_min_count"] + dropped["unmatchable"] + dropped["not_a_word"] + entries.num_rows == counts.num_rows
    queries = entries["query"].to_pylist()
    assert all(is_matchable(q) for q in queries) and '""the' not in queries and "the" in queries


def test_counts_file_bad_input(tmp_path):
    path = tmp_path / "counts.gz"
    path.write_bytes(gzip.compress(b"the;10\nbroken line\n;5\nword;x\n"))
    counts, bad = read_unigram_counts_file(path)
    assert counts.to_pylist() == [{"ngram": "the", "count": 10}]
    assert bad == {"empty_word": 1, "bad_line": 2}


@pytest.fixture(scope="module")
def small_sources(sample, tmp_path_factory):
    """A small but real build: the gensim dump, two hours of pageviews, WordNet."""
    root = tmp_path_factory.mktemp("sources")
    for name, data in (("pageviews-20240101-000000.gz", HOUR_0), ("pageviews-20240101-010000.gz", HOUR_1)):
        (root / name).write_bytes(gzip.compress(data))
    return [
        "--wiki-dump", sample["wiki_dump"],
        "--pageviews", str(root / "pageviews-*.gz"),
        "--wordnet", sample["wordnet_dir"],
        "--min-count", "20", "--min-bigram-count", "3", "--pmi-threshold", "6", "--min-views", "100",
        "--quiet",
    ]  # fmt: skip


def _build(tmp_path, name, args, runner):
    out = tmp_path / name
    stats = run(["--out", str(out), "--runner", runner, *args])
    return out / "queries", stats


def test_local_build_outputs_and_stable_ids(small_sources, tmp_path):
    first, stats = _build(tmp_path, "a", small_sources, "local")
    second, _ = _build(tmp_path, "b", small_sources, "local")
    for name in ("queries.parquet", "metadata.json", "stats.json"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    table = pq.read_table(first / "queries.parquet")
    assert table.schema.equals(QUERY_SCHEMA)
    queries = table["query"].to_pylist()
    assert queries == sorted(set(queries)) and table["query_id"].to_pylist() == list(range(len(queries)))
    assert load_queries(first / "metadata.json") == queries
    assert stats["rows"] == len(queries) == sum(stats["sources"].values())
    assert stats["sources"]["title"] == 3 and stats["sources"]["unigram"] > 1000 and stats["sources"]["bigram"] > 100
    wordnet = stats["dropped"]["wordnet"]
    assert stats["sources"]["wordnet"] + wordnet["duplicate"] + wordnet["unmatchable"] == 86_571
    assert stats["pageviews"]["bad_lines"]["bad_utf8"] == 1
    assert json.loads((first / "stats.json").read_text())["config"]["min_count"] == 20
    einstein = table.filter(pa.compute.equal(table["query"], "Albert Einstein")).to_pylist()[0]
    assert (einstein["source"], einstein["views"], einstein["count"]) == ("title", 500, None)
    bigram = table.filter(pa.compute.equal(table["source"], "bigram")).slice(0, 1).to_pylist()[0]
    assert bigram["pmi"] >= 6 and bigram["count"] >= 3 and bigram["views"] is None


@pytest.mark.ray
@pytest.mark.slow
def test_beam_and_ray_builds_identical(sample, tmp_path, ray_session):
    # only the counted source: titles and WordNet do not go through the engines
    args = ["--wiki-dump", sample["wiki_dump"], "--min-count", "20", "--pmi-threshold", "6", "--quiet"]
    local, _ = _build(tmp_path, "local", args, "local")
    beam, _ = _build(tmp_path, "beam", args, "beam")
    ray, stats = _build(tmp_path, "ray", args, "ray")
    assert stats["sources"]["unigram"] > 1000 and stats["sources"]["bigram"] > 100
    assert stats["runner"] == "ray"
    for name in ("queries.parquet", "metadata.json"):
        assert (beam / name).read_bytes() == (local / name).read_bytes(), name
        assert (ray / name).read_bytes() == (local / name).read_bytes(), name


def test_cli_rejects_unknown_flags_without_beam(tmp_path):
    with pytest.raises(SystemExit, match="pass-through flags are for --runner beam"):
        run(["--out", str(tmp_path), "--runner", "local", "--bogus-flag=1"])
    with pytest.raises(SystemExit, match="no file matches"):
        run(["--out", str(tmp_path), "--pageviews", str(tmp_path / "none-*.gz")])


def test_sample_build_matches_stored_reference(sample, tmp_path):
    """Regression: the build from the real sample equals the committed reference
    (tests/queries/regenerate_expected.py rewrites it after an intended change)."""
    from regenerate_expected import EXPECTED, sample_build_args, summarize

    stats = run(["--out", str(tmp_path), *sample_build_args(sample)])
    expected = json.loads(EXPECTED.read_text(encoding="utf-8"))
    assert summarize(tmp_path / "queries", stats) == expected


def test_uri_inputs_and_outputs(sample, tmp_path):
    """Sources and the run directory are URIs (fsspec); memory:// stands in for s3:// / gs://."""
    import fsspec

    from storage.files import expand_glob

    fs = fsspec.filesystem("memory")
    fs.pipe("/src/dump.xml.bz2", open(sample["wiki_dump"], "rb").read())
    fs.pipe("/src/pageviews-20240101-000000.gz", gzip.compress(HOUR_0))
    fs.pipe("/src/pageviews-20240101-010000.gz", gzip.compress(HOUR_1))
    assert expand_glob("memory://src/pageviews-*.gz") == [
        "memory:///src/pageviews-20240101-000000.gz",
        "memory:///src/pageviews-20240101-010000.gz",
    ]
    args = ["--wiki-dump", "memory://src/dump.xml.bz2", "--pageviews", "memory://src/pageviews-*.gz"]
    stats = run(["--out", "memory://run", "--runner", "local", "--min-views", "100", "--quiet", *args])
    local_args = ["--wiki-dump", sample["wiki_dump"], "--pageviews", _write_pageviews(tmp_path)]
    local = run(["--out", str(tmp_path), "--runner", "local", "--min-views", "100", "--quiet", *local_args])
    assert stats["sources"] == local["sources"] and stats["sources"]["title"] == 3
    assert fs.cat("/run/queries/metadata.json") == (tmp_path / "queries" / "metadata.json").read_bytes()
    assert sorted(fs.ls("/run/queries", detail=False)) == [
        "/run/queries/_counts",  # the corpus counts + their marker (a rerun skips counting)
        "/run/queries/metadata.json",
        "/run/queries/queries.parquet",
        "/run/queries/stats.json",
    ]


def _write_pageviews(root) -> str:
    for name, data in (("pageviews-20240101-000000.gz", HOUR_0), ("pageviews-20240101-010000.gz", HOUR_1)):
        (root / name).write_bytes(gzip.compress(data))
    return str(root / "pageviews-*.gz")


def test_select_bigrams_thresholds_and_cap():
    from queries.build import QueryListConfig, select_bigrams

    scored = pa.table(
        {
            "ngram": ["a b", "c d", "e f", "g h", "i j"],
            "count": pa.array([2, 5, 5, 9, 7], pa.int64()),
            "pmi": [20.0, 12.0, 7.5, 9.0, 12.0],
        }
    )
    entries, dropped, calibration = select_bigrams(scored, QueryListConfig(min_bigram_count=3, pmi_threshold=8))
    assert entries["query"].to_pylist() == ["c d", "g h", "i j"]
    assert dropped == {"below_min_bigram_count": 1, "below_pmi_threshold": 1, "over_max_bigrams": 0}
    assert calibration["pmi>=8"] == 3 and calibration["pmi>=12"] == 2 and calibration["pmi>=4"] == 4
    capped, dropped, _ = select_bigrams(scored, QueryListConfig(min_bigram_count=3, pmi_threshold=8, max_bigrams=2))
    assert capped["query"].to_pylist() == ["c d", "i j"]  # highest PMI, ties by query
    assert dropped["over_max_bigrams"] == 1 and dropped["below_pmi_threshold"] == 1


def test_counting_is_kept_per_set_of_counted_input_files(tmp_path, sample):
    """The corpus counts are stored with a marker naming every counted input file: a rerun over
    the same files does not count again (the engine is not called), a changed file counts again."""
    import json as _json

    from queries.build import QueryListConfig
    from queries.counting import count_locally
    from queries.recipe import QuerySources, build_query_list

    text = tmp_path / "corpus.txt"
    paragraphs = [v["extract"] for v in _json.load(open(sample["wiki_summaries_en"])).values()][:300]
    text.write_text("\n".join(paragraphs))
    sources = QuerySources((), (str(text),), None, None, (), None)
    calls = []

    def count(job):
        calls.append([s.path for s in job.sources])
        return count_locally(job, progress=False).sort_by("ngram")

    config = QueryListConfig(min_count=5, min_bigram_count=3, pmi_threshold=4)
    first = build_query_list(sources, config, count, str(tmp_path / "run"))
    before = (tmp_path / "run" / "queries" / "queries.parquet").read_bytes()
    again = build_query_list(sources, config, count, str(tmp_path / "run"))
    assert len(calls) == 1 and again["rows"] == first["rows"]  # counted once
    assert (tmp_path / "run" / "queries" / "queries.parquet").read_bytes() == before
    marker = next(p for p in (tmp_path / "run" / "queries" / "_counts").iterdir() if not p.suffix)
    assert _json.loads(marker.read_text())["inputs"][0]["file"] == str(text)
    text.write_text("\n".join(paragraphs[:200]))  # the input changed: counted again
    build_query_list(sources, config, count, str(tmp_path / "run"))
    assert len(calls) == 2
