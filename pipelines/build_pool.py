"""Build a candidate pool from web archives: Common Crawl WARC or WAT files → pool parquet parts.

    python pipelines/build_pool.py --warc 'crawl/*.warc.gz' --out runs/web/pool
    python pipelines/build_pool.py --wat 's3://bucket/wat/*.wat.gz' --out runs/web/pool --runner beam

Writes ``<out>/pairs/part-NNNNN.parquet`` (one per input file, in sorted file order; the pool
that ``build_wit.py --pool <out>/pairs`` reads), ``<out>/rejects/{webpool_records,webpool}/``,
``<out>/stats/{webpool_records,webpool}.json`` and ``<out>/done/`` markers (a rerun skips done
files). See :mod:`curation.web.webpool` for what is kept and each reject reason.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `python pipelines/build_pool.py` from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from curation.web.webpool import WebPoolConfig, list_archives
from pipelines.runtime import configure_environment


def build_parser() -> argparse.ArgumentParser:
    """The CLI."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--warc", help="glob of WARC files (gzip per record; local or URI)")
    source.add_argument("--wat", help="glob of Common Crawl WAT files (gzip per record; local or URI)")
    p.add_argument("--out", required=True, help="output dir (pairs/, rejects/, stats/, done/)")
    p.add_argument("--runner", choices=("ray", "beam"), default="ray", help="engine (default ray)")
    p.add_argument("--beam-runner", default=None, help="Beam runner (default DirectRunner)")
    p.add_argument("--max-record-bytes", type=int, default=WebPoolConfig.max_record_bytes,
                   help="records larger than this are rejected unread (page_too_large)")
    p.add_argument("--max-alt-chars", type=int, default=WebPoolConfig.max_alt_chars,
                   help="longer alt text is rejected (alt_too_long)")
    return p


def build_pool(kind: str, pattern: str, out: str, runner: str = "ray", beam_runner: str | None = None,
               config: WebPoolConfig = WebPoolConfig()) -> dict:
    """Extract every file matching ``pattern`` into ``out``; return a summary (also printed)."""
    started = time.time()
    files = list_archives(pattern)
    if runner == "ray":
        from pipelines.runtime import init_ray
        from pipelines.webpool_ray import run_ray

        init_ray()
        stats = run_ray(files, kind, out, config)
    else:
        from pipelines.webpool_beam import run_beam

        stats = run_beam(files, kind, out, config, beam_runner)
    summary = {"files": len(files), "kind": kind, "runner": runner, "seconds": round(time.time() - started, 2),
               "pairs_dir": f"{out.rstrip('/')}/pairs",
               **{s.stage: {"in": s.rows_in, "out": s.rows_out, "rejected": s.rejected} for s in stats.values()}}
    print(f"[build_pool] {json.dumps(summary)}", flush=True)
    return summary


def run(argv: list[str] | None = None) -> dict:
    """Entry point: parse ``argv`` and build the pool."""
    configure_environment()
    args = build_parser().parse_args(argv)
    kind, pattern = ("warc", args.warc) if args.warc else ("wat", args.wat)
    config = WebPoolConfig(max_record_bytes=args.max_record_bytes, max_alt_chars=args.max_alt_chars)
    return build_pool(kind, pattern, args.out, args.runner, args.beam_runner, config)


if __name__ == "__main__":
    run()
