"""Build a candidate pool from web archives: Common Crawl WARC or WAT files → pool parquet parts.

    python pipelines/build_pool.py --warc 'crawl/*.warc.gz' --out runs/web/pool
    python pipelines/build_pool.py --wat 's3://bucket/wat/*.wat.gz' --out runs/web/pool --runner beam

Writes ``<out>/pairs/part-NNNNN.parquet`` (one per input file, in sorted file order; the pool
that ``build_wit.py --pool <out>/pairs`` reads), ``<out>/rejects/{webpool_records,webpool}/``,
``<out>/stats/{webpool_records,webpool}.json`` and ``<out>/done/`` markers (a rerun skips done
files): :class:`storage.layout.PoolLayout`. See :mod:`curation.web.webpool` for what is kept and
each reject reason; the job is :func:`pipelines.jobs.extract_pool`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python pipelines/build_pool.py` from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from curation.web.webpool import WebPoolConfig
from pipelines import jobs
from pipelines.cli import add_config_flags, config_from_args
from pipelines.options import add_engine_flags, engine_from_args
from pipelines.runtime import configure_environment


def build_parser() -> argparse.ArgumentParser:
    """The CLI."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--warc", help="glob of WARC files (gzip per record; local or URI)")
    source.add_argument("--wat", help="glob of Common Crawl WAT files (gzip per record; local or URI)")
    p.add_argument("--out", required=True, help="output dir (pairs/, rejects/, stats/, done/)")
    add_engine_flags(p)
    add_config_flags(p, WebPoolConfig, prefix="webpool_", only=("max_record_bytes", "max_alt_chars"))
    return p


def run(argv: list[str] | None = None) -> dict:
    """Entry point: parse ``argv`` and build the pool."""
    configure_environment()
    args = build_parser().parse_args(argv)
    kind, pattern = ("warc", args.warc) if args.warc else ("wat", args.wat)
    config = config_from_args(WebPoolConfig, args, "webpool_")
    return jobs.extract_pool(kind, pattern, args.out, engine_from_args(args), config)


if __name__ == "__main__":
    run()
