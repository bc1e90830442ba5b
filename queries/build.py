"""Select each source's entries, merge them into one sorted query list, and write it.

Sources, in priority order (an entry found by several keeps the first, as CLIP adds "WordNet
synsets not already in the query list"): ``unigram``, ``bigram``, ``title``, ``wordnet``.
Every source drops entries the matcher can never match (:func:`queries.text.is_matchable`),
counted under ``unmatchable``. The merged list is sorted by ``query`` (UTF-8 byte order, i.e.
code point order), so ``query_id`` is stable between builds of the same inputs.

Output, under ``<out>/queries/`` (each file written to a temp name, then renamed):
``queries.parquet`` (query_id, query, source, count, pmi, views), ``metadata.json`` (MetaCLIP's
format: a JSON list of the entries in id order), ``stats.json`` (per-source counts, dropped
counts by reason, corpus totals, the PMI calibration table, the config).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from queries.ngrams import COUNT_SCHEMA, WORD_PATTERN
from queries.text import is_matchable
from storage.files import atomic_write, open_input_text
from storage.layout import RunLayout

SOURCES = ("unigram", "bigram", "title", "wordnet")
QUERY_SCHEMA = pa.schema(
    [
        ("query_id", pa.int64()),
        ("query", pa.string()),
        ("source", pa.string()),
        ("count", pa.int64()),  # unigram / bigram occurrences; null for titles and WordNet
        ("pmi", pa.float64()),  # bigram PMI (log2); null otherwise
        ("views", pa.int64()),  # summed pageviews of a title; null otherwise (and for title lists)
    ]
)
PMI_CALIBRATION_POINTS = (4, 6, 8, 10, 12, 14, 16, 18, 20)


@dataclass(frozen=True)
class QueryListConfig:
    """Thresholds of the query list (CLI flags of pipelines/build_queries.py)."""

    min_count: int = 100  # unigram: occurrences over the whole corpus (CLIP: 100)
    min_bigram_count: int = 3  # bigram: occurrences before PMI is considered (PMI favours rare pairs)
    # bigram: keep PMI = log2(n_ab * N / (n_a * n_b)) >= this. 8 means "seen together 256x more
    # often than chance". Calibrated on the demo corpus (N = 1.2 M word tokens; README has the
    # table); the largest PMI possible is log2(N / min_bigram_count), so a bigger corpus needs a
    # higher threshold: stats.json lists how many bigrams pass at other thresholds.
    pmi_threshold: float = 8.0
    max_bigrams: int | None = None  # keep at most this many bigrams, highest PMI first (None: all)
    min_views: int = 1000  # titles from pageview dumps: summed views >= this (title lists: ignored)
    lowercase: bool = True  # count lowercased text (MetaCLIP's unigram list is lowercase)
    wordnet_all_lemmas: bool = False  # WordNet: every lemma name instead of each synset's head name


def _entries(queries, counts=None, pmi=None, views=None) -> pa.Table:
    n = len(queries)
    return pa.table(
        {
            "query": pa.array(queries, pa.string()),
            "count": pa.array(counts, pa.int64()) if counts is not None else pa.nulls(n, pa.int64()),
            "pmi": pa.array(pmi, pa.float64()) if pmi is not None else pa.nulls(n, pa.float64()),
            "views": pa.array(views, pa.int64()) if views is not None else pa.nulls(n, pa.int64()),
        }
    )


def _matchable_mask(queries: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return np.array([is_matchable(q) for q in queries.to_pylist()], dtype=bool)


def read_unigram_counts_file(path: str | Path, lowercase: bool = True) -> tuple[pa.Table, dict[str, int]]:
    """A ``word;count`` file (pywordfreq's ``word_frequencies.gz``; .gz or plain) -> (count table
    with columns ngram, count; dropped lines by reason: ``empty_word``, ``bad_line``). Words that
    lowercase to the same string are summed when ``lowercase``."""
    path = str(path)
    counts: dict[str, int] = {}
    dropped = {"empty_word": 0, "bad_line": 0}
    try:
        with open_input_text(path) as f:
            for line in f:
                word, sep, count = line.rstrip("\n").rpartition(";")
                if not sep or not count.isdigit():
                    dropped["bad_line"] += 1
                elif not word:
                    dropped["empty_word"] += 1
                else:
                    word = word.lower() if lowercase else word
                    counts[word] = counts.get(word, 0) + int(count)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{path}: no such unigram counts file") from err
    except (UnicodeDecodeError, OSError, EOFError) as err:
        raise ValueError(f"{path}: unreadable unigram counts file ({err})") from err
    table = pa.table({"ngram": list(counts), "count": list(counts.values())}, schema=COUNT_SCHEMA)
    return table, dropped



def select_unigrams(counts: pa.Table, min_count: int) -> tuple[pa.Table, dict[str, int]]:
    """Unigram entries: ``count >= min_count``, matchable, and a word by the counting rule
    (:data:`queries.ngrams.WORD_PATTERN`: a counts file may hold pieces such as ``""the`` that
    the corpus counter would never count). Returns (entries, dropped by reason)."""
    frequent = counts.filter(pc.greater_equal(counts["count"], min_count))
    matchable = _matchable_mask(frequent["ngram"])
    words = pc.match_substring_regex(frequent["ngram"], WORD_PATTERN).to_numpy(zero_copy_only=False)
    kept = frequent.filter(pa.array(matchable & words))
    dropped = {
        "below_min_count": counts.num_rows - frequent.num_rows,
        "unmatchable": int((~matchable).sum()),
        "not_a_word": int((matchable & ~words).sum()),
    }
    return _entries(kept["ngram"], kept["count"]), dropped


def select_bigrams(scored: pa.Table, config: QueryListConfig) -> tuple[pa.Table, dict[str, int], dict[str, int]]:
    """Bigram entries from a (ngram, count, pmi) table: ``count >= min_bigram_count`` and
    ``pmi >= pmi_threshold``, then the ``max_bigrams`` highest PMI (ties: by query). Returns
    (entries, dropped by reason, calibration: bigrams passing at each PMI in
    :data:`PMI_CALIBRATION_POINTS` among those with enough count)."""
    frequent = scored.filter(pc.greater_equal(scored["count"], config.min_bigram_count))
    pmi = frequent["pmi"].to_numpy()
    calibration = {f"pmi>={p}": int((pmi >= p).sum()) for p in PMI_CALIBRATION_POINTS}
    passing = frequent.filter(pc.greater_equal(frequent["pmi"], config.pmi_threshold))
    over_max = 0
    if config.max_bigrams is not None and passing.num_rows > config.max_bigrams:
        over_max = passing.num_rows - config.max_bigrams
        passing = passing.sort_by([("pmi", "descending"), ("ngram", "ascending")]).slice(0, config.max_bigrams)
    dropped = {
        "below_min_bigram_count": scored.num_rows - frequent.num_rows,
        "below_pmi_threshold": frequent.num_rows - passing.num_rows - over_max,
        "over_max_bigrams": over_max,
    }
    return _entries(passing["ngram"], passing["count"], passing["pmi"]), dropped, calibration


def merge_sources(entries: dict[str, pa.Table]) -> tuple[pa.Table, dict[str, int]]:
    """Merge per-source entry tables (keys from :data:`SOURCES`) into the final sorted list.
    A query found by several sources keeps the first in :data:`SOURCES` order; the others are
    counted per source as ``duplicate``. Returns (:data:`QUERY_SCHEMA` table, duplicates)."""
    parts = []
    for rank, source in enumerate(SOURCES):
        table = entries.get(source)
        if table is None or table.num_rows == 0:
            continue
        n = table.num_rows
        parts.append(table.append_column("rank", pa.array(np.full(n, rank, np.int8))))
    if not parts:
        return QUERY_SCHEMA.empty_table(), {s: 0 for s in SOURCES}
    stacked = pa.concat_tables(parts).sort_by([("query", "ascending"), ("rank", "ascending")])
    queries = stacked["query"].combine_chunks()
    first = np.ones(len(queries), dtype=bool)
    if len(queries) > 1:
        first[1:] = pc.not_equal(queries.slice(1), queries.slice(0, len(queries) - 1)).to_numpy(zero_copy_only=False)
    ranks = stacked["rank"].to_numpy()
    duplicates = {s: int(((ranks == r) & ~first).sum()) for r, s in enumerate(SOURCES)}
    kept = stacked.filter(pa.array(first))
    source = pa.array(np.array(SOURCES, dtype=object)[kept["rank"].to_numpy()], pa.string())
    table = pa.table(
        {
            "query_id": pa.array(np.arange(kept.num_rows, dtype=np.int64)),
            "query": kept["query"],
            "source": source,
            "count": kept["count"],
            "pmi": kept["pmi"],
            "views": kept["views"],
        },
        schema=QUERY_SCHEMA,
    )
    return table, duplicates


def write_query_list(out_dir: str | Path, table: pa.Table, stats: dict, config: QueryListConfig) -> str:
    """Write ``queries.parquet``, ``metadata.json`` and ``stats.json`` under ``<out_dir>/queries``
    (a local path or URI; temp name + rename each). Returns that directory."""
    target = RunLayout(str(out_dir)).queries
    atomic_write(target.parquet, lambda f: pq.write_table(table, f, compression="zstd"))
    metadata = json.dumps(table["query"].to_pylist(), ensure_ascii=False) + "\n"
    atomic_write(target.metadata, lambda f: f.write(metadata.encode("utf-8")))
    text = json.dumps({**stats, "config": asdict(config)}, indent=2, sort_keys=True) + "\n"
    atomic_write(target.stats, lambda f: f.write(text.encode("utf-8")))
    return target.root


def load_queries(path: str | Path) -> list[str]:
    """The entries of a ``metadata.json`` (ours or MetaCLIP's), in id order."""
    with open_input_text(str(path)) as f:
        data = json.load(f)
    if not isinstance(data, list) or not all(isinstance(q, str) for q in data):
        raise ValueError(f"{path}: expected a JSON list of strings (MetaCLIP metadata.json)")
    return data
