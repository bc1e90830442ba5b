"""Build the query list (CLIP §2.2, MetaCLIP's mix) from Wikipedia and WordNet.

    python pipelines/build_queries.py --out DIR [--runner beam|ray|local] [--wiki-dump PATH]...
        [--text PATH]... [--unigram-counts PATH] [--titles PATH | --pageviews GLOB]...
        [--wordnet DIR] [--min-count 100] [--min-bigram-count 3] [--pmi-threshold 8]
        [--max-bigrams K] [--min-views 1000] [--keep-case] [--wordnet-all-lemmas]
        [--beam-runner FlinkRunner --beam-temp-dir URI ... any Beam pipeline flags]

With no source flag at all it builds from the sample data (`make sample-data`): the gensim
enwiki dump + 10,033 lead paragraphs as the counted corpus, pywordfreq's unigram counts, the
10,033 Vital Articles titles and WordNet. Writes DIR/queries/{queries.parquet, metadata.json,
stats.json} and prints the per-source counts.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipelines.runtime import configure_environment  # noqa: E402
from storage.files import expand_glob  # noqa: E402

log = logging.getLogger("build_queries")


@dataclass(frozen=True)
class EngineOptions:
    """How to run the counting job."""

    runner: str = "beam"  # "beam", "ray" or "local" (in-process reference)
    beam_runner: str | None = None  # Beam runner name (None: offline DirectRunner)
    beam_args: tuple[str, ...] = ()  # extra Beam pipeline flags (Flink/Spark/Dataflow options)
    beam_temp_dir: str | None = None  # where Beam workers write the counts (shared URI on a cluster)
    ray_address: str | None = None  # Ray cluster (None: $RAY_ADDRESS or a local Ray)
    batch_size: int = 256  # documents per counting batch
    progress: bool = True  # progress bars / logs on long stages


def engine_counter(engine: EngineOptions):
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


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """CLI flags -> (known args, pass-through Beam pipeline flags)."""
    p = argparse.ArgumentParser(description="Build the CLIP/MetaCLIP query list.")
    p.add_argument("--out", required=True, help="run directory; writes OUT/queries/")
    p.add_argument("--runner", choices=("beam", "ray", "local"), default="beam", help="counting engine")
    p.add_argument("--beam-runner", default=None, help="Beam runner (default: offline DirectRunner)")
    p.add_argument("--beam-temp-dir", default=None, help="Beam: shared path/URI for the counts (default: local temp)")
    p.add_argument("--ray-address", default=None, help="Ray cluster address (default: $RAY_ADDRESS or local)")
    p.add_argument("--wiki-dump", action="append", default=[], help="pages-articles .xml/.bz2 (repeatable)")
    p.add_argument("--text", action="append", default=[], help="plain-text corpus .json/.jsonl/.txt (repeatable)")
    p.add_argument("--unigram-counts", default=None, help="`word;count` file (e.g. pywordfreq word_frequencies.gz)")
    titles = p.add_mutually_exclusive_group()
    titles.add_argument("--titles", default=None, help="plain title list (.json keys/list or one per line)")
    titles.add_argument("--pageviews", action="append", default=[], help="pageview dump file glob (repeatable)")
    p.add_argument("--wordnet", default=None, help="WordNet dict dir with data.noun etc.")
    p.add_argument("--sample", action="store_true", help="use the demo's sample sources (`make sample-data`)")
    p.add_argument("--min-count", type=int, default=100, help="unigram: minimum occurrences")
    p.add_argument("--min-bigram-count", type=int, default=3, help="bigram: minimum occurrences")
    p.add_argument("--pmi-threshold", type=float, default=8.0, help="bigram: minimum PMI (log2)")
    p.add_argument("--max-bigrams", type=int, default=None, help="bigram: keep at most K, highest PMI first")
    p.add_argument("--min-views", type=int, default=1000, help="title: minimum summed pageviews")
    p.add_argument("--keep-case", action="store_true", help="count case-sensitively (default: lowercase)")
    p.add_argument("--wordnet-all-lemmas", action="store_true", help="WordNet: all lemma names, not head names")
    p.add_argument("--batch-size", type=int, default=256, help="documents per counting batch")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    return p.parse_known_args(argv)


def _expand_globs(patterns: list[str]) -> tuple[str, ...]:
    files: list[str] = []
    for pattern in patterns:
        matched = expand_glob(pattern)
        if not matched:
            raise SystemExit(f"--pageviews {pattern}: no file matches")
        files += matched
    return tuple(files)


def resolve_sources(args: argparse.Namespace):
    """The sources named on the command line, or (with --sample) the demo's sample data."""
    from queries.recipe import QuerySources

    named = (args.wiki_dump, args.text, args.unigram_counts, args.titles, args.pageviews, args.wordnet)
    if any(named):
        return QuerySources(
            tuple(args.wiki_dump), tuple(args.text), args.unigram_counts, args.titles,
            _expand_globs(args.pageviews), args.wordnet,
        )  # fmt: skip
    if not args.sample:
        raise SystemExit("build_queries: name at least one source (--wiki-dump, --text, --unigram-counts, "
                         "--titles/--pageviews, --wordnet), or --sample for the demo's sample data")
    from pipelines.demo.sample_data import load_manifest

    m = load_manifest()
    log.info("no source flags: using the sample data")
    return QuerySources(
        (m["wiki_dump"],), (m["wiki_summaries_en"],), m["unigram_counts"], m["wiki_titles"], (), m["wordnet_dir"]
    )


def run(argv: list[str] | None = None) -> dict:
    """Entry point: build the query list; returns the stats written to stats.json."""
    configure_environment()
    args, beam_args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    # our stage logs (and the adapters') at INFO; the engines' own INFO chatter stays off
    for name in ("build_queries", "pipelines.queries_beam", "pipelines.queries_ray"):
        logging.getLogger(name).setLevel(logging.WARNING if args.quiet else logging.INFO)
    from queries.build import QueryListConfig

    config = QueryListConfig(
        min_count=args.min_count,
        min_bigram_count=args.min_bigram_count,
        pmi_threshold=args.pmi_threshold,
        max_bigrams=args.max_bigrams,
        min_views=args.min_views,
        lowercase=not args.keep_case,
        wordnet_all_lemmas=args.wordnet_all_lemmas,
    )
    if beam_args and args.runner != "beam":
        raise SystemExit(f"unknown arguments {beam_args} (pass-through flags are for --runner beam)")
    from queries.recipe import build_query_list

    engine = EngineOptions(
        runner=args.runner,
        beam_runner=args.beam_runner,
        beam_args=tuple(beam_args),
        beam_temp_dir=args.beam_temp_dir,
        ray_address=args.ray_address,
        batch_size=args.batch_size,
        progress=not args.quiet,
    )
    start = time.time()
    stats = build_query_list(resolve_sources(args), config, engine_counter(engine), args.out, engine.runner,
                             engine.batch_size)
    if not args.quiet:
        print(f"[build_queries] {stats['rows']} queries in {time.time() - start:.1f} s -> {args.out}/queries/")
        for source, n in stats["sources"].items():
            print(f"  {source:8s} {n:8d}")
        print(f"  dropped: {json.dumps(stats['dropped'], sort_keys=True)}")
    return stats


if __name__ == "__main__":
    run()
