"""The query-list recipe: count the corpus (on an engine handed in), select each source,
merge, write. ``pipelines/build_queries.py`` parses the CLI, picks the engine and calls
:func:`build_query_list`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from queries.build import (
    SOURCES,
    QueryListConfig,
    merge_sources,
    read_unigram_counts_file,
    select_bigrams,
    select_unigrams,
    write_query_list,
)
from queries.corpus import DocumentSource
from storage.files import atomic_write, file_identity, is_input_file, open_input
from storage.layout import RunLayout
from queries.counting import CountingJob
from queries.ngrams import bigram_pmi, split_counts
from queries.text import is_matchable
from queries.titles import read_title_list, select_titles, titles_from_pageviews
from queries.wordnet import read_wordnet

log = logging.getLogger("build_queries")

Count = Callable[[CountingJob], pa.Table]  # an engine: counting job -> (ngram, count) table


@dataclass(frozen=True)
class QuerySources:
    """Where each source comes from (None / empty: that source is left out)."""

    wiki_dumps: tuple[str, ...]  # pages-articles XML dumps, counted for unigrams and bigrams
    texts: tuple[str, ...]  # plain-text corpora counted alongside the dumps
    unigram_counts: str | None  # a `word;count` file: the unigram entries come from it if given
    titles: str | None  # a plain title list (JSON keys / list, or one per line)
    pageviews: tuple[str, ...]  # pageview dump files (expanded globs)
    wordnet: str | None  # directory with WordNet's data.{noun,verb,adj,adv}


def _select_titles(sources, config: QueryListConfig, stats: dict) -> pa.Table | None:
    if sources.pageviews:
        views, pv_stats = titles_from_pageviews(list(sources.pageviews))
        stats["pageviews"] = {
            "files": pv_stats.files,
            "lines": pv_stats.lines,
            "kept_lines": pv_stats.kept,
            "other_project_lines": pv_stats.other_project,
            "bad_lines": pv_stats.bad,
        }
    elif sources.titles:
        views = read_title_list(sources.titles)
    else:
        return None
    titles, dropped = select_titles(views, config.min_views)
    stats["dropped"]["title"] = dropped
    return titles.rename_columns(["query", "views"])


def _wordnet_entries(sources, config: QueryListConfig, stats: dict) -> pa.Table | None:
    if not sources.wordnet:
        return None
    names = read_wordnet(sources.wordnet, all_lemmas=config.wordnet_all_lemmas)
    kept = [n for n in names.names if is_matchable(n)]
    stats["wordnet"] = {"synsets": names.synsets, "distinct_names": len(names.names)}
    stats["dropped"]["wordnet"] = {"unmatchable": len(names.names) - len(kept)}
    return pa.table({"query": pa.array(kept, pa.string())})


def _with_nulls(table: pa.Table) -> pa.Table:
    """Add the provenance columns a source does not have, as nulls."""
    n = table.num_rows
    for name, typ in (("count", pa.int64()), ("pmi", pa.float64()), ("views", pa.int64())):
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(n, typ))
    return table.select(["query", "count", "pmi", "views"])


def counting_job(sources: QuerySources, config: QueryListConfig, batch_size: int) -> CountingJob:
    """What an engine counts: the dumps and text corpora, with the thresholds the sources need
    (unigram entries from a counts file need only the corpus counts that PMI uses)."""
    docs = tuple(DocumentSource(p, "wiki_dump") for p in sources.wiki_dumps) + tuple(
        DocumentSource(p, "text") for p in sources.texts
    )
    min_unigram = config.min_bigram_count if sources.unigram_counts else min(config.min_count, config.min_bigram_count)
    return CountingJob(docs, config.lowercase, min_unigram, config.min_bigram_count, batch_size)


def counted(count: Count, job: CountingJob, out: str) -> pa.Table:
    """``count(job)``, kept in ``<out>/queries/_counts/<key>.parquet`` with a marker naming every
    counted input file (name, size, mtime/ETag) and the thresholds: a rerun over the same inputs
    (after a later step failed, or to change a selection threshold) skips the counting, and a
    changed or added input file counts again."""
    identity = {"inputs": [file_identity(s.path) for s in job.sources], "lowercase": job.lowercase,
                "min_unigram": job.min_unigram, "min_bigram": job.min_bigram}
    if job.language is not None:  # a worldwide list's per-language counts (English-only keys unchanged)
        identity["language"] = job.language
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    table_uri, marker_uri = RunLayout(out).queries.counts(key)
    if is_input_file(marker_uri) and is_input_file(table_uri):
        log.info("counts of these %d input files found in %s: not counting again", len(job.sources), table_uri)
        with open_input(table_uri) as f:
            return pq.read_table(f)
    table = count(job)
    atomic_write(table_uri, lambda f: pq.write_table(table, f, compression="zstd"))
    body = json.dumps(identity, indent=2, sort_keys=True).encode()
    atomic_write(marker_uri, lambda f: f.write(body))  # the marker last
    return table


def _corpus_entries(sources, config, count: Count, batch_size: int, stats, out: str) -> dict[str, pa.Table]:
    entries: dict[str, pa.Table] = {}
    if sources.wiki_dumps or sources.texts:
        t0 = time.time()
        unigrams, bigrams, totals = split_counts(counted(count, counting_job(sources, config, batch_size), out))
        log.info("counted %d documents, %d tokens in %.1f s", totals["documents"], totals["tokens"], time.time() - t0)
        stats["corpus"] = {**totals, "frequent_unigrams": unigrams.num_rows, "candidate_bigrams": bigrams.num_rows}
        scored = bigram_pmi(unigrams, bigrams, totals["tokens"])
        entries["bigram"], stats["dropped"]["bigram"], stats["bigram_pmi_calibration"] = select_bigrams(scored, config)
        log.info("bigrams: %d of %d candidates pass", entries["bigram"].num_rows, bigrams.num_rows)
        if not sources.unigram_counts:
            entries["unigram"], stats["dropped"]["unigram"] = select_unigrams(unigrams, config.min_count)
    if sources.unigram_counts:
        counts, bad = read_unigram_counts_file(sources.unigram_counts, config.lowercase)
        entries["unigram"], dropped = select_unigrams(counts, config.min_count)
        stats["dropped"]["unigram"] = {**bad, **dropped}
        log.info("unigrams: %d from %s", entries["unigram"].num_rows, sources.unigram_counts)
    return entries


def build_query_list(sources: QuerySources, config: QueryListConfig, count: Count, out: str,
                     runner: str = "local", batch_size: int = 256) -> dict:
    """Build and write the query list under ``<out>/queries`` (a path or URI); ``count`` is
    the engine, a callable that counts a :class:`~queries.counting.CountingJob` into the count
    table (``runner`` names it in the stats). Returns the stats written."""
    stats: dict = {"dropped": {}, "runner": runner}
    entries = _corpus_entries(sources, config, count, batch_size, stats, out)
    titles = _select_titles(sources, config, stats)
    if titles is not None:
        entries["title"] = _with_nulls(titles)
        log.info("titles: %d selected", titles.num_rows)
    wordnet = _wordnet_entries(sources, config, stats)
    if wordnet is not None:
        entries["wordnet"] = _with_nulls(wordnet)
        log.info("wordnet: %d names from %d synsets", wordnet.num_rows, stats["wordnet"]["synsets"])
    table, duplicates = merge_sources(entries)
    for source, n in duplicates.items():
        if source in entries:
            stats["dropped"].setdefault(source, {})["duplicate"] = n
    counts = table["source"].value_counts().to_pylist()
    found = {c["values"]: c["counts"] for c in counts}
    stats["sources"] = {s: found.get(s, 0) for s in SOURCES if s in entries}
    stats["rows"] = table.num_rows
    target = write_query_list(out, table, stats, config)
    log.info("wrote %d queries to %s", table.num_rows, target)
    return stats
