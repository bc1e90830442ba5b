"""The jobs the product CLIs compose: build the query list with an engine, extract a web pool,
select the pairs, run the image stages. Each takes typed configs (never an argv), so one CLI
reuses another's job without calling its entry point::

    build_queries.py       → build_query_list
    build_pool.py          → extract_pool
    build_wit.py           → build_query_list (no query list yet), extract_pool (--warc/--wat),
                             select, run_image_stages
    build_queries_beam.py  → build_query_list
    wit_images.py          → run_image_stages

The engine adapters (``curation_ray`` / ``curation_beam``, ``queries_ray`` / ``queries_beam``,
``webpool_ray`` / ``webpool_beam``, ``images_ray``) are imported when a job runs on them; the
sample inputs (``--sample``) are read from the data dir's manifest (:mod:`storage.datadir`).
This module imports no engine at import time (the DAGs read its engine dataclasses).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

from storage.layout import PoolLayout, RunLayout

log = logging.getLogger("build_queries")

ENGINES = ("ray", "beam")  # engines of the selection and of the web-pool extraction
QUERY_ENGINES = ("beam", "ray", "local")  # engines of the query list's counting job


@dataclass(frozen=True)
class Engine:
    """The engine of the text-side selection and of the web-pool extraction."""

    runner: str = "ray"  # engine: "ray" (Ray Data) or "beam" (Apache Beam)
    beam_runner: str | None = None  # Beam runner with --runner beam (None: the offline DirectRunner)


@dataclass(frozen=True)
class QueryEngine:
    """How to run the counting job of the query list."""

    runner: str = "beam"  # counting engine: "beam", "ray" or "local" (in-process reference)
    beam_runner: str | None = None  # Beam runner (None: the offline DirectRunner)
    beam_args: tuple[str, ...] = ()  # extra Beam pipeline flags (Flink/Spark/Dataflow options)
    beam_temp_dir: str | None = None  # where Beam workers write the counts (shared path/URI on a cluster; None: local temp)
    ray_address: str | None = None  # Ray cluster address (None: $RAY_ADDRESS or a local Ray)
    batch_size: int = 256  # documents per counting batch
    progress: bool = True  # progress bars / logs on long stages, and the summary printed


# -- the query list --------------------------------------------------------------------------


def query_counter(engine: QueryEngine):
    """The ``count`` callable of :func:`queries.recipe.build_query_list` for the chosen engine."""
    if engine.runner == "ray":
        from pipelines.queries_ray import count_with_ray
        from pipelines.runtime import init_ray

        def count(job):
            init_ray(engine.ray_address)
            return count_with_ray(job)

        return count
    if engine.runner == "beam":
        from pipelines.queries_beam import count_with_beam

        return lambda job: count_with_beam(job, engine.beam_runner, list(engine.beam_args), engine.beam_temp_dir)
    if engine.runner == "local":
        from queries.counting import count_locally

        return lambda job: count_locally(job, progress=engine.progress).sort_by("ngram")
    raise ValueError(f"unknown runner {engine.runner!r} (beam, ray or local)")


def query_logging(quiet: bool = False) -> None:
    """Our stage logs (and the adapters') at INFO; the engines' own INFO chatter stays off."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    for name in ("build_queries", "pipelines.queries_beam", "pipelines.queries_ray"):
        logging.getLogger(name).setLevel(logging.WARNING if quiet else logging.INFO)


def sample_query_sources(data_dir: str | None = None):
    """The query sources of the sample data (``make sample-data``): the gensim enwiki dump + the
    lead paragraphs as the counted corpus, pywordfreq's unigram counts, the Vital Articles titles
    and WordNet, read from the data dir's manifest (``data_dir``, else ``$OPENWIT_DATA``)."""
    from queries.recipe import QuerySources
    from storage.datadir import data_manifest

    m = data_manifest(data_dir)
    log.info("no source flags: using the sample data")
    return QuerySources((m["wiki_dump"],), (m["wiki_summaries_en"],), m["unigram_counts"], m["wiki_titles"], (),
                        m["wordnet_dir"])


def sample_worldwide_sources(codes, data_dir: str | None = None):
    """The sample sources of each language of a worldwide list (:class:`queries.worldwide.WorldwideSources`):
    ``en`` the English sample's (:func:`sample_query_sources`); ``es``, ``fr`` their Wikipedia lead
    paragraphs (the counted corpus) + the wordfreq list; ``th`` pythainlp's Thai National Corpus
    counts, Thai Wikipedia titles and Thai WordNet; any other language wordfreq has a list for, that
    list. Raises SystemExit for a language with no offline sample source."""
    import importlib.util
    from pathlib import Path

    import wordfreq

    from queries.recipe import QuerySources
    from queries.worldwide import WORDFREQ_CODES, WORDFREQ_PREFIX, WorldwideSources
    from storage.datadir import data_manifest

    manifest = data_manifest(data_dir) if {"en", "es", "fr"} & set(codes) else {}
    languages = []
    for code in codes:
        if code == "en":
            languages.append((code, sample_query_sources(data_dir)))
        elif code == "th":
            corpus = Path(importlib.util.find_spec("pythainlp").submodule_search_locations[0]) / "corpus"
            languages.append((code, QuerySources((), (), str(corpus / "tnc_freq.txt"),
                                                 str(corpus / "wikipedia_titles_th.txt"), (),
                                                 str(corpus / "wordnet_th.db"))))
        elif WORDFREQ_CODES.get(code, code) in wordfreq.available_languages():
            texts = (manifest[f"wiki_summaries_{code}"],) if f"wiki_summaries_{code}" in manifest else ()
            languages.append((code, QuerySources((), texts, WORDFREQ_PREFIX + code, None, (), None)))
        else:
            raise SystemExit(f"build_queries --sample: no offline sample source for {code!r} (en, th, and the "
                             f"wordfreq languages have one: {', '.join(sorted(wordfreq.available_languages()))})")
    return WorldwideSources(tuple(languages))


def build_query_list(sources, config, engine: QueryEngine, out: str) -> dict:
    """Build the query list from ``sources`` (:class:`queries.recipe.QuerySources`) with
    ``config`` (:class:`queries.build.QueryListConfig`) on ``engine`` into ``<out>/queries/``;
    returns the stats written to ``stats.json`` (and prints them unless ``engine.progress`` is off).
    Worldwide (MetaCLIP 2): :class:`queries.worldwide.WorldwideSources` with a
    :class:`queries.worldwide.WorldwideConfig`, one list per language in one file."""
    from pipelines.runtime import configure_environment
    from queries.recipe import build_query_list as build
    from queries.worldwide import WorldwideSources, build_worldwide_query_list

    configure_environment()
    start = time.time()
    if isinstance(sources, WorldwideSources):
        stats = build_worldwide_query_list(sources, config, query_counter(engine), out, engine.runner,
                                           engine.batch_size)
        if engine.progress:
            print(f"[build_queries] {stats['rows']} queries in {len(stats['languages'])} languages in "
                  f"{time.time() - start:.1f} s -> {RunLayout(out).queries.root}/")
            for code, lang in stats["by_language"].items():
                print(f"  {code:8s} {lang['rows']:8d}  {json.dumps(lang['sources'])}  ({lang['matching']})")
        return stats
    stats = build(sources, config, query_counter(engine), out, engine.runner, engine.batch_size)
    if engine.progress:
        print(f"[build_queries] {stats['rows']} queries in {time.time() - start:.1f} s -> {RunLayout(out).queries.root}/")
        for source, n in stats["sources"].items():
            print(f"  {source:8s} {n:8d}")
        print(f"  dropped: {json.dumps(stats['dropped'], sort_keys=True)}")
    return stats


# -- the web pool ----------------------------------------------------------------------------


def extract_pool(kind: str, pattern: str, out: str, engine: Engine = Engine(), config=None) -> dict:
    """Extract every ``kind`` ("warc" or "wat") file matching ``pattern`` into the pool dir
    ``out`` (:class:`storage.layout.PoolLayout`) with ``config``
    (:class:`curation.web.webpool.WebPoolConfig`, default: its defaults) on ``engine``; return a
    summary (also printed)."""
    from curation.web.webpool import WebPoolConfig, list_archives
    from pipelines.runtime import configure_environment

    configure_environment()
    config = config or WebPoolConfig()
    started = time.time()
    files = list_archives(pattern)
    if engine.runner == "ray":
        from pipelines.runtime import init_ray
        from pipelines.webpool_ray import run_ray

        init_ray()
        stats = run_ray(files, kind, out, config)
    else:
        from pipelines.webpool_beam import run_beam

        stats = run_beam(files, kind, out, config, engine.beam_runner)
    summary = {"files": len(files), "kind": kind, "runner": engine.runner, "seconds": round(time.time() - started, 2),
               "pairs_dir": PoolLayout(out).pairs_dir,
               **{s.stage: {"in": s.rows_in, "out": s.rows_out, "rejected": s.rejected} for s in stats.values()}}
    print(f"[build_pool] {json.dumps(summary)}", flush=True)
    return summary


# -- selection and the image stages ----------------------------------------------------------


def sample_pool(data_dir: str | None = None) -> list[str]:
    """The sample pool of the data dir (``make sample-data``) and its planted eval copies, which
    go through curation like every other candidate (what survives balancing is what the
    contamination report finds)."""
    from storage.datadir import data_manifest

    manifest = data_manifest(data_dir)
    if "sample_pool" not in manifest:
        raise SystemExit("no --pool given and the data dir has no 'sample_pool' (run `make sample-data`)")
    return [manifest["sample_pool"]] + ([manifest["sample_planted_pool"]] if "sample_planted_pool" in manifest else [])


def select(config, runner: str = "ray", beam_runner: str | None = None, beam_args: list[str] | None = None) -> dict:
    """Run the text-side stages of ``config`` (:class:`curation.text.config.CurationConfig`;
    skipped when a complete, identical selection exists) and the before/after plot (online
    balancing: and ``balance.parquet`` / ``balance.json``); return the summary written to
    ``stats/summary.json``."""
    from curation.text.config import (
        plot_entry_counts,
        prepare_run,
        read_entry_counts,
        selected_entry_counts,
        stage_stats,
        write_balance_metadata,
    )
    from curation.text.match import load_queries, load_query_languages
    from curation.text.threshold import language_thresholds, resolve_threshold
    from pipelines.runtime import configure_environment

    configure_environment()
    started = time.time()
    if prepare_run(config):
        if runner == "ray":
            from pipelines.curation_ray import run_ray
            from pipelines.runtime import init_ray

            init_ray()
            run_ray(config)
        else:
            from pipelines.curation_beam import run_beam

            run_beam(config, beam_runner, beam_args)
    layout = config.layout
    num_queries = len(load_queries(config.queries))
    before = read_entry_counts(layout, num_queries)
    after = selected_entry_counts(layout, num_queries)
    languages = load_query_languages(config.queries)
    worldwide = {}
    if languages is None:
        t = resolve_threshold(before, config.t)
    else:  # MetaCLIP 2: English's t gives the tail share p, each language its own t_L
        plan = language_thresholds(before, languages, config.t)
        t = plan["t"].get(plan["reference"], max(plan["t"].values()))
        worldwide = {"tail_share": plan["p"], "by_language": language_summary(layout, languages, before, after,
                                                                              plan["t"])}
    plot_entry_counts(before, after, t, layout)
    ledgers = stage_stats(config)
    stages = {name: stats.body() for name, stats in ledgers.items()}
    online = {}
    if config.online:  # training balances per epoch: the metadata its draw needs, beside the selection
        write_balance_metadata(config, before, languages, ledgers["balance"])
        online = {"epoch0_pairs": ledgers["balance"].extra["epoch0_pairs"]}
    summary = {"runner": runner, "seconds": round(time.time() - started, 2), "stages": stages, "t": t,
               "balance": config.balance, **online,
               "selected": int(stages["balance"]["out"]), "parts": layout.read_json(layout.parts_plan)["num_parts"],
               "entries_matched": int((before > 0).sum()),
               "entries_selected": int((after > 0).sum()), **worldwide}
    layout.write_json(layout.summary, summary)
    return summary


def language_summary(layout: RunLayout, languages, before, after, thresholds: dict) -> dict:
    """Per language of a worldwide selection: its t, its entries (in the list, matched,
    selected), matched pairs (sum of c_e: a pair counts once per entry) and selected pairs (the
    selection parts' ``language`` column, counted a part at a time)."""
    import numpy as np
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    languages = np.asarray(languages, dtype=object)
    pairs: dict[str, int] = {}
    for uri in layout.list(layout.selected_dir, ".parquet"):
        with layout.open(uri) as f:
            if "language" not in pq.read_schema(f).names:
                continue
        counts = pc.value_counts(layout.read_parquet(uri, ["language"]).column("language").combine_chunks())
        for row in counts.to_pylist():
            pairs[row["values"]] = pairs.get(row["values"], 0) + int(row["counts"])
    out = {}
    for language in sorted(thresholds):
        mine = languages == language
        out[language] = {"t": thresholds[language], "entries": int(mine.sum()),
                         "entries_matched": int((before[mine] > 0).sum()),
                         "entries_selected": int((after[mine] > 0).sum()),
                         "matches": int(before[mine].sum()), "pairs_selected": pairs.get(language, 0)}
    return out


def run_image_stages(curation_dir: str, config, serve_dir: str | None = None, serve_port: int | None = None,
                     until: str = "all", data_dir: str | None = None) -> dict:
    """Run the image stages (:class:`curation.images.recipe.ImageStagesConfig` ``config``) on
    ``curation_dir`` (holding ``selected/*.parquet``; a path or URI), the tasks on Ray (the
    download pipeline too, unless ``config.download.distributor`` is "multiprocessing": a
    local process pool); return the summary of :func:`curation.images.recipe.run_image_stages`.
    ``serve_dir``: served on 127.0.0.1:``serve_port`` during the download
    (:mod:`pipelines.serve_images`); ``until="download"`` stops after the download and check
    (a later run resumes from there);
    ``data_dir``: where built-in eval sets of ``config.decontaminate`` are read."""
    import multiprocessing

    from contamination.evalindex import write_eval_index
    from curation.images.politeness import LimiterManager
    from curation.images.recipe import run_image_stages as run
    from curation.stage import process_pipe
    from pipelines.images_ray import ray_limiter, ray_map_tasks, ray_pipe_tasks
    from pipelines.runtime import configure_environment, init_ray
    from pipelines.serve_images import DEFAULT_PORT, serving

    configure_environment()
    layout = RunLayout.of_curation(curation_dir)
    init_ray()  # the global steps' tasks run on Ray; the downloads too with the "ray" distributor
    if config.decontaminate.datasets:  # its URL/caption half runs before the download
        write_eval_index(layout, config.decontaminate.datasets, data_dir)
    server = serving(serve_dir, port=DEFAULT_PORT if serve_port is None else serve_port) if serve_dir else None
    if config.download.distributor == "ray":  # one host limiter for the whole cluster
        pipe = ray_pipe_tasks(attempts=config.download.shard_attempts)
        return run(layout, config, pipe, server, until=until, map_tasks=ray_map_tasks,
                   limiter=ray_limiter(config.download.politeness))
    with LimiterManager(ctx=multiprocessing.get_context("spawn")) as manager:  # one for the local pool
        return run(layout, config, process_pipe(config.download.processes), server, until=until,
                   map_tasks=ray_map_tasks,
                   limiter=manager.LocalLimiter(config.download.politeness, config.download.politeness.overrides()))
