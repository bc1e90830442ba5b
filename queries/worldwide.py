"""The worldwide query list (MetaCLIP 2, "Meta CLIP 2: A Worldwide Scaling Recipe"): one list per
Wikipedia language, all written as one file with a ``language`` column.

Per language, from that language's sources (:class:`WorldwideSources`):

- **unigrams**: the words of its counted text (its pages-articles dump, plain-text corpora; a
  no-space language cut by its segmenter, :mod:`queries.languages`) or of a frequency list
  (``word<TAB>count`` / ``word;count`` file, or ``wordfreq:<code>``: the lists the ``wordfreq``
  package ships), the top ``unigram_top_fraction`` (10%) by count, at most ``unigram_cap``
  (251,465, MetaCLIP's English count);
- **bigrams**: pairs of its counted text with ``count >= min_bigram_count`` and
  ``PMI >= pmi_threshold`` (:class:`queries.build.QueryListConfig`), highest PMI first, at most
  ``bigram_cap`` (100,646); in a no-space language the pair ``a b`` is the entry ``ab``;
- **titles**: its Wikipedia's titles from the pageview dumps (domains ``<code>`` and
  ``<code>.m``), the top ``title_top_fraction`` (76%) by summed views, at most ``title_cap``
  (61,235); a plain title list has no views: the fraction is not applied, and past the cap the
  shortest titles are kept;
- **WordNet**, where a WordNet of that language is given (Princeton's data files for English, an
  Open Multilingual WordNet ``.tab`` file or a ``word_synset`` SQLite table for others);
- entries longer than ``max_entry_chars`` (256) are dropped, and so are entries that can never
  match under the language's rule (:func:`queries.languages.is_matchable_in`).

Within a language the sources merge as in the English list (:func:`queries.build.merge_sources`:
priority unigram, bigram, title, WordNet). The whole list is sorted by (language, query), code
point order, and ``query_id`` is the position in it, so ids are stable between builds and do not
depend on the order the languages were named in.

Output, under ``<out>/queries/``: ``queries.parquet`` (:data:`WORLDWIDE_SCHEMA`: the English
columns plus ``language``), ``metadata.json`` (every entry in id order; an entry of two languages
appears twice), ``metadata/<code>.json`` (one language's entries in id order, MetaCLIP's format),
``stats.json`` (``by_language``: inputs, counts per source, dropped per reason, the caps applied).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from fractions import Fraction

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from queries.build import PMI_CALIBRATION_POINTS, QUERY_SCHEMA, SOURCES, QueryListConfig, merge_sources
from queries.corpus import DocumentSource
from queries.counting import CountingJob
from queries.languages import check_language_code, is_matchable_in, is_no_space, matching_rule, segmenter_name
from queries.ngrams import COUNT_SCHEMA, WORD_PATTERN, bigram_pmi, split_counts
from queries.recipe import Count, QuerySources, counted
from queries.titles import read_title_list, sum_views, titles_from_language_pageviews
from queries.wordnet import read_language_wordnet
from storage.files import atomic_write, open_input_text
from storage.layout import RunLayout

log = logging.getLogger("build_queries")

WORLDWIDE_SCHEMA = pa.schema([QUERY_SCHEMA.field("query_id"), ("language", pa.string()),
                              *(QUERY_SCHEMA.field(n) for n in QUERY_SCHEMA.names[1:])])
WORDFREQ_PREFIX = "wordfreq:"
# Wikipedia code -> wordfreq's code where they differ (Norwegian Bokmål, Tagalog/Filipino)
WORDFREQ_CODES = {"no": "nb", "tl": "fil"}
WORDFREQ_SCALE = 1_000_000_000  # a wordfreq frequency becomes a count per 10^9 words


@dataclass(frozen=True)
class WorldwideConfig:
    """Per-language caps of a worldwide list (MetaCLIP 2; CLI flags of build_queries.py --language)."""

    unigram_top_fraction: float = 0.10  # unigrams: keep this share of a language's distinct words, most frequent first
    unigram_cap: int = 251_465  # unigrams: at most this many per language (MetaCLIP's English count)
    bigram_cap: int = 100_646  # bigrams: at most this many per language, highest PMI first (MetaCLIP's English count)
    title_top_fraction: float = 0.76  # titles: keep this share of a language's titles, most viewed first
    title_cap: int = 61_235  # titles: at most this many per language (MetaCLIP's English count)
    max_entry_chars: int = 256  # entries longer than this many characters are dropped
    # the thresholds every language shares (PMI, bigram count, case, WordNet lemmas)
    base: QueryListConfig = field(default_factory=QueryListConfig)

    def caps(self) -> dict:
        """The caps alone (stats.json's ``config.worldwide``)."""
        return {k: v for k, v in asdict(self).items() if k != "base"}


@dataclass(frozen=True)
class WorldwideSources:
    """The sources of each language of a worldwide list (its ``pageviews`` are read for the
    ``<code>`` and ``<code>.m`` domains only)."""

    languages: tuple[tuple[str, QuerySources], ...]  # (Wikipedia code, its sources)

    def __post_init__(self):
        codes = [code for code, _ in self.languages]
        for code in codes:
            check_language_code(code)
        if len(set(codes)) != len(codes):
            raise ValueError(f"a language is named twice: {codes}")
        object.__setattr__(self, "languages", tuple(sorted(self.languages)))

    @property
    def codes(self) -> tuple[str, ...]:
        return tuple(code for code, _ in self.languages)


def top_count(n: int, fraction: float) -> int:
    """How many of ``n`` ranked candidates "the top ``fraction``" keeps: ceil(n × fraction),
    computed exactly (0.1 × 30 is 3, not 4)."""
    if not 0 <= fraction <= 1:
        raise ValueError(f"a top fraction is within [0, 1], not {fraction}")
    return math.ceil(Fraction(repr(fraction)) * n)


def _entry_table(queries, counts=None, pmi=None, views=None) -> pa.Table:
    n = len(queries)
    return pa.table({
        "query": pa.array(queries, pa.string()),
        "count": pa.array(counts, pa.int64()) if counts is not None else pa.nulls(n, pa.int64()),
        "pmi": pa.array(pmi, pa.float64()) if pmi is not None else pa.nulls(n, pa.float64()),
        "views": pa.array(views, pa.int64()) if views is not None else pa.nulls(n, pa.int64()),
    })


def _valid(values: list[str], language: str, max_chars: int) -> tuple[np.ndarray, dict[str, int]]:
    """Mask of the entries that can match under ``language``'s rule and are short enough, and
    the others counted by reason (``unmatchable``, ``too_long``)."""
    matchable = np.fromiter((is_matchable_in(v, language) for v in values), bool, len(values))
    short = np.fromiter((len(v) <= max_chars for v in values), bool, len(values))
    return matchable & short, {"unmatchable": int((~matchable).sum()), "too_long": int((matchable & ~short).sum())}


def _cap(n: int, fraction: float | None, cap: int) -> tuple[int, dict[str, int], dict]:
    """(kept, dropped by reason, the caps record) for ``n`` ranked candidates."""
    top = n if fraction is None else top_count(n, fraction)
    kept = min(top, cap)
    record = {"candidates": n, "top_fraction": fraction, "top": top, "cap": cap, "kept": kept,
              "limited_by": "cap" if top > cap else ("fraction" if top < n else None)}
    return kept, {"below_top_fraction": n - top, "over_cap": top - kept}, record


def select_top_unigrams(counts: pa.Table, language: str, config: WorldwideConfig) -> tuple[pa.Table, dict, dict]:
    """Unigram entries of one language from a (ngram, count) table: the words (the counting rule,
    :data:`queries.ngrams.WORD_PATTERN`) that can match and are short enough, ranked by count
    (ties: code point order), the top ``unigram_top_fraction`` of them, at most ``unigram_cap``.
    Returns (entries, dropped by reason, caps record); rows in == kept + Σ dropped."""
    words = pc.match_substring_regex(counts["ngram"], WORD_PATTERN).to_numpy(zero_copy_only=False)
    candidates = counts.filter(pa.array(words))
    ok, dropped = _valid(candidates["ngram"].to_pylist(), language, config.max_entry_chars)
    candidates = candidates.filter(pa.array(ok))
    ranked = candidates.sort_by([("count", "descending"), ("ngram", "ascending")])
    kept, capped, record = _cap(ranked.num_rows, config.unigram_top_fraction, config.unigram_cap)
    top = ranked.slice(0, kept)
    return (_entry_table(top["ngram"], top["count"]),
            {"not_a_word": int((~words).sum()), **dropped, **capped}, record)


def select_top_bigrams(scored: pa.Table, language: str, config: WorldwideConfig) -> tuple[pa.Table, dict, dict, dict]:
    """Bigram entries of one language from a (ngram, count, pmi) table: ``count >=
    min_bigram_count`` and ``pmi >= pmi_threshold`` (``config.base``), written as the language
    writes them (``a b``; ``ab`` in a no-space language, where two pairs joining to one string
    keep the higher PMI), matchable and short enough, highest PMI first (ties: code point order),
    at most ``bigram_cap``. Returns (entries, dropped, caps record, PMI calibration)."""
    base = config.base
    frequent = scored.filter(pc.greater_equal(scored["count"], base.min_bigram_count))
    pmi = frequent["pmi"].to_numpy()
    calibration = {f"pmi>={p}": int((pmi >= p).sum()) for p in PMI_CALIBRATION_POINTS}
    passing = frequent.filter(pc.greater_equal(frequent["pmi"], base.pmi_threshold))
    queries = passing["ngram"]
    if is_no_space(language):
        queries = pc.replace_substring(queries, " ", "")
    table = pa.table({"query": queries, "count": passing["count"], "pmi": passing["pmi"]})
    ok, dropped = _valid(table["query"].to_pylist(), language, config.max_entry_chars)
    table = table.filter(pa.array(ok)).sort_by([("pmi", "descending"), ("query", "ascending")])
    duplicates = 0
    if is_no_space(language) and table.num_rows:
        _, first = np.unique(np.asarray(table["query"].to_pylist(), dtype=object), return_index=True)
        duplicates = table.num_rows - len(first)
        table = table.take(pa.array(np.sort(first)))
    kept, capped, record = _cap(table.num_rows, None, config.bigram_cap)
    top = table.slice(0, kept)
    dropped = {"below_min_bigram_count": scored.num_rows - frequent.num_rows,
               "below_pmi_threshold": frequent.num_rows - passing.num_rows, **dropped,
               "same_joined": duplicates, "over_cap": capped["over_cap"]}
    return _entry_table(top["query"], top["count"], top["pmi"]), dropped, record, calibration


def select_top_titles(titles: pa.Table, language: str, config: WorldwideConfig) -> tuple[pa.Table, dict, dict]:
    """Title entries of one language from a (title, views) table: titles without ``:``, matchable
    and short enough; with pageviews, ranked by views (ties: code point order), the top
    ``title_top_fraction``, at most ``title_cap``; a title list without views is not ranked by
    views: the fraction is not applied and past the cap the shortest titles are kept. Returns
    (entries with ``query``/``views``, dropped by reason, caps record)."""
    names = titles["title"].to_pylist()
    colon = np.fromiter((":" in t for t in names), bool, len(names))
    candidates = titles.filter(pa.array(~colon))
    ok, dropped = _valid(candidates["title"].to_pylist(), language, config.max_entry_chars)
    candidates = candidates.filter(pa.array(ok))
    has_views = titles["views"].null_count == 0  # pageviews (a title list's views are null)
    if has_views:
        ranked = candidates.sort_by([("views", "descending"), ("title", "ascending")])
        kept, capped, record = _cap(ranked.num_rows, config.title_top_fraction, config.title_cap)
    else:
        length = pc.utf8_length(candidates["title"])
        ranked = candidates.append_column("length", length).sort_by([("length", "ascending"), ("title", "ascending")])
        kept, capped, record = _cap(ranked.num_rows, None, config.title_cap)
    record["ranked_by"] = "views" if has_views else "length (a title list: no views)"
    top = ranked.slice(0, kept)
    return (_entry_table(top["title"], views=top["views"]).select(["query", "views"]),
            {"colon": int(colon.sum()), **dropped, **capped}, record)


def read_frequency_list(spec: str, lowercase: bool = True) -> tuple[pa.Table, dict[str, int], str]:
    """A unigram frequency list -> (:data:`~queries.ngrams.COUNT_SCHEMA` table, dropped lines by
    reason, the count's unit). ``spec`` is ``wordfreq:<code>`` (the ``wordfreq`` package's list
    for that language, frequencies scaled to counts per 10^9 words) or a file (.gz or plain) of
    ``word<TAB>count`` or ``word;count`` lines (a line with a tab splits at its last tab, else at
    its last ``;``). Words that lowercase to the same string are summed when ``lowercase``."""
    counts: dict[str, int] = {}
    dropped = {"empty_word": 0, "bad_line": 0}
    if spec.startswith(WORDFREQ_PREFIX):
        import wordfreq

        code = spec[len(WORDFREQ_PREFIX):]
        code = WORDFREQ_CODES.get(code, code)
        if code not in wordfreq.available_languages():
            raise ValueError(f"{spec}: wordfreq has no list for {code!r} "
                             f"(it has: {', '.join(sorted(wordfreq.available_languages()))})")
        pairs = ((w, round(f * WORDFREQ_SCALE)) for w, f in wordfreq.get_frequency_dict(code).items())
        unit = f"per 10^9 words (wordfreq=={_version('wordfreq')}, list {code!r})"
    else:
        pairs = _frequency_file(spec, dropped)
        unit = "occurrences"
    for word, count in pairs:
        if not word:
            dropped["empty_word"] += 1
            continue
        word = word.lower() if lowercase else word
        counts[word] = counts.get(word, 0) + count
    table = pa.table({"ngram": list(counts), "count": list(counts.values())}, schema=COUNT_SCHEMA)
    return table, dropped, unit


def _frequency_file(path: str, dropped: dict[str, int]):
    try:
        with open_input_text(path) as f:
            for line in f:
                line = line.rstrip("\n")
                word, sep, count = line.rpartition("\t" if "\t" in line else ";")
                if not sep or not count.strip().isdigit():
                    dropped["bad_line"] += 1
                else:
                    yield word, int(count)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{path}: no such frequency list") from err
    except (UnicodeDecodeError, OSError, EOFError) as err:
        raise ValueError(f"{path}: unreadable frequency list ({err})") from err


def _version(package: str) -> str:
    from importlib import metadata

    return metadata.version(package)


def _language_entries(code: str, src: QuerySources, config: WorldwideConfig, count: Count, batch_size: int,
                      out: str, views: pa.Table | None) -> tuple[dict[str, pa.Table], dict]:
    base = config.base
    stats: dict = {"matching": matching_rule(code), "segmenter": None, "inputs": _inputs(src),
                   "dropped": {}, "caps": {}}
    entries: dict[str, pa.Table] = {}
    if src.wiki_dumps or src.texts:
        docs = tuple(DocumentSource(p, "wiki_dump") for p in src.wiki_dumps) + tuple(
            DocumentSource(p, "text") for p in src.texts)
        # every distinct word counts toward "the top 10%" unless a frequency list gives the unigrams
        min_unigram = base.min_bigram_count if src.unigram_counts else 1
        job = CountingJob(docs, base.lowercase, min_unigram, base.min_bigram_count, batch_size, language=code)
        stats["segmenter"] = segmenter_name(code)
        t0 = time.time()
        unigrams, bigrams, totals = split_counts(counted(count, job, out))
        log.info("%s: counted %d documents, %d tokens in %.1f s", code, totals["documents"], totals["tokens"],
                 time.time() - t0)
        stats["corpus"] = {**totals, "counted_unigrams": unigrams.num_rows, "candidate_bigrams": bigrams.num_rows}
        scored = bigram_pmi(unigrams, bigrams, totals["tokens"])
        (entries["bigram"], stats["dropped"]["bigram"], stats["caps"]["bigram"],
         stats["bigram_pmi_calibration"]) = select_top_bigrams(scored, code, config)
        if not src.unigram_counts:
            entries["unigram"], stats["dropped"]["unigram"], stats["caps"]["unigram"] = select_top_unigrams(
                unigrams, code, config)
    if src.unigram_counts:
        counts, bad, unit = read_frequency_list(src.unigram_counts, base.lowercase)
        entries["unigram"], dropped, stats["caps"]["unigram"] = select_top_unigrams(counts, code, config)
        stats["dropped"]["unigram"] = {**bad, **dropped}
        stats["unigram_count_unit"] = unit
    if views is None and src.titles:
        views = read_title_list(src.titles)
    if views is not None:
        titles, stats["dropped"]["title"], stats["caps"]["title"] = select_top_titles(views, code, config)
        entries["title"] = _entry_table(titles["query"], views=titles["views"])
    if src.wordnet:
        names = read_language_wordnet(src.wordnet, all_lemmas=base.wordnet_all_lemmas)
        ok, dropped = _valid(names.names, code, config.max_entry_chars)
        entries["wordnet"] = _entry_table([n for n, keep in zip(names.names, ok) if keep])
        stats["wordnet"] = {"synsets": names.synsets, "distinct_names": len(names.names)}
        stats["dropped"]["wordnet"] = dropped
    return entries, stats


def _inputs(src: QuerySources) -> dict:
    return {name: value for name, value in asdict(src).items() if value not in (None, (), [])}


def build_worldwide_query_list(sources: WorldwideSources, config: WorldwideConfig, count: Count, out: str,
                               runner: str = "local", batch_size: int = 256) -> dict:
    """Build and write the worldwide list under ``<out>/queries`` (see the module doc); ``count``
    is the engine (:func:`queries.recipe.build_query_list`'s). Returns the stats written."""
    stats: dict = {"runner": runner, "languages": list(sources.codes), "by_language": {}}
    views = _pageviews(sources, stats)
    tables = []
    for code, src in sources.languages:
        entries, lang_stats = _language_entries(code, src, config, count, batch_size, out, views.get(code))
        table, duplicates = merge_sources(entries)
        for source, n in duplicates.items():
            if source in entries:
                lang_stats["dropped"].setdefault(source, {})["duplicate"] = n
        found = {c["values"]: c["counts"] for c in table["source"].value_counts().to_pylist()}
        lang_stats["sources"] = {s: found.get(s, 0) for s in SOURCES if s in entries}
        lang_stats["rows"] = table.num_rows
        stats["by_language"][code] = lang_stats
        tables.append(table.add_column(1, "language", pa.array([code] * table.num_rows, pa.string())))
        log.info("%s: %d entries %s", code, table.num_rows, lang_stats["sources"])
    table = pa.concat_tables(tables) if tables else WORLDWIDE_SCHEMA.empty_table()
    # languages in code order (sorted by WorldwideSources), each sorted by query: ids = positions
    table = table.set_column(0, "query_id", pa.array(np.arange(table.num_rows, dtype=np.int64))).cast(WORLDWIDE_SCHEMA)
    stats["rows"] = table.num_rows
    stats["sources"] = {s: sum(v["sources"].get(s, 0) for v in stats["by_language"].values()) for s in SOURCES}
    target = write_worldwide_query_list(out, table, stats, config)
    log.info("wrote %d queries in %d languages to %s", table.num_rows, len(sources.codes), target)
    return stats


def _pageviews(sources: WorldwideSources, stats: dict) -> dict[str, pa.Table]:
    """Each language's summed pageviews, every pageview file read once for all the languages
    that name it."""
    languages_of: dict[str, list[str]] = {}
    for code, src in sources.languages:
        for path in src.pageviews:
            languages_of.setdefault(path, []).append(code)
    if not languages_of:
        return {}
    views: dict[str, list[pa.Table]] = {}
    total = None
    for path, codes in languages_of.items():
        per_language, file_stats = titles_from_language_pageviews([path], codes)
        for code, table in per_language.items():
            views.setdefault(code, []).append(table)
        if total is None:
            total = file_stats
        else:
            total.add(file_stats)
    stats["pageviews"] = {"files": total.files, "lines": total.lines, "kept_lines": total.kept,
                          "other_project_lines": total.other_project, "bad_lines": total.bad}
    return {code: sum_views(tables) for code, tables in views.items()}


def write_worldwide_query_list(out_dir: str, table: pa.Table, stats: dict, config: WorldwideConfig) -> str:
    """Write ``queries.parquet``, ``metadata.json``, ``metadata/<code>.json`` per language and
    ``stats.json`` under ``<out_dir>/queries`` (temp name + rename each). Returns that directory."""
    target = RunLayout(str(out_dir)).queries
    atomic_write(target.parquet, lambda f: pq.write_table(table, f, compression="zstd"))
    for code in stats["languages"]:
        mine = table.filter(pc.equal(table["language"], code))["query"].to_pylist()
        body = (json.dumps(mine, ensure_ascii=False) + "\n").encode("utf-8")
        atomic_write(target.language_metadata(code), lambda f, body=body: f.write(body))
    metadata = (json.dumps(table["query"].to_pylist(), ensure_ascii=False) + "\n").encode("utf-8")
    atomic_write(target.metadata, lambda f: f.write(metadata))
    text = json.dumps({**stats, "config": {**asdict(config.base), "worldwide": config.caps()}},
                      indent=2, sort_keys=True) + "\n"
    atomic_write(target.stats, lambda f: f.write(text.encode("utf-8")))
    return target.root
