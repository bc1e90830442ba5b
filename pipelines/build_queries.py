"""Build the query list (CLIP §2.2, MetaCLIP's mix) from Wikipedia and WordNet.

    python pipelines/build_queries.py --out DIR [--runner beam|ray|local] [--wiki-dump PATH]...
        [--text PATH]... [--unigram-counts PATH] [--titles PATH | --pageviews GLOB]...
        [--wordnet DIR] [--min-count 100] [--min-bigram-count 3] [--pmi-threshold 8]
        [--max-bigrams K] [--min-views 1000] [--keep-case] [--wordnet-all-lemmas]
        [--sample [--data-dir DIR]]
        [--language CODE]... [--languages FILE] [--unigram-top-fraction 0.1] [--unigram-cap 251465]
        [--bigram-cap 100646] [--title-top-fraction 0.76] [--title-cap 61235] [--max-entry-chars 256]
        [--beam-runner FlinkRunner --beam-temp-dir URI ... any Beam pipeline flags]

With ``--sample`` and no source flag it builds from the sample data (`make sample-data`, read
through the data dir's manifest): the gensim enwiki dump + 10,033 lead paragraphs as the counted
corpus, pywordfreq's unigram counts, the 10,033 Vital Articles titles and WordNet. Writes
DIR/queries/{queries.parquet, metadata.json, stats.json} and prints the per-source counts. The
job is :func:`pipelines.jobs.build_query_list`.

With ``--language`` (MetaCLIP 2, :mod:`queries.worldwide`): one list per Wikipedia language, its
sources named ``--text CODE=PATH`` (or a path holding ``{lang}``; ``--pageviews GLOB`` shared),
written as one list with a ``language`` column plus ``metadata/<code>.json`` per language.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipelines import jobs
from pipelines.options import add_query_list_flags, query_job_from_args
from pipelines.runtime import configure_environment


def build_parser() -> argparse.ArgumentParser:
    """The CLI (unknown flags pass through to Beam with ``--runner beam``)."""
    p = argparse.ArgumentParser(description="Build the CLIP/MetaCLIP query list.")
    add_query_list_flags(p)
    return p


def run(argv: list[str] | None = None) -> dict:
    """Entry point: build the query list; returns the stats written to stats.json."""
    configure_environment()
    args, beam_args = build_parser().parse_known_args(argv)
    jobs.query_logging(args.quiet)
    sources, config, engine = query_job_from_args(args, beam_args)
    return jobs.build_query_list(sources, config, engine, args.out)


if __name__ == "__main__":
    run()
