"""Build WIT: candidate pool → English, deduplicated, query-matched, balanced pairs (→ images).

    python pipelines/build_wit.py --out runs/demo --until select --sample
    python pipelines/build_wit.py --queries runs/demo/queries/queries.parquet \\
        --pool pool/*.parquet --out runs/wit --t 20000 --seed 0 --runner beam
    ray job submit --working-dir . -- python pipelines/build_wit.py --out /data/wit ...

Writes ``<out>/curation/selected/part-*.parquet``, ``entry_counts.parquet``, ``stats/*.json``,
``rejects/<stage>/`` and ``stats/entry_counts.png``; then, unless ``--until select``, the image
stages (download, image dedup, WebDataset shards). ``--balance online`` keeps every matched pair
and writes ``balance.parquet`` / ``balance.json`` (beside the shards too) for training to draw a
balanced sample each epoch. This module only parses flags; the work is
:mod:`pipelines.jobs`' (``build_query_list`` when the run has no query list yet, ``extract_pool``
for ``--warc/--wat``, ``select``, ``run_image_stages``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python pipelines/build_wit.py` from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from curation.text.config import BALANCE_MODES, CurationConfig
from curation.text.pool import PoolConfig
from curation.text.textfilter import TextConfig
from pipelines import cli, jobs
from pipelines.options import add_data_dir_flag, add_engine_flags, engine_from_args
from pipelines.runtime import configure_environment
from storage.layout import RunLayout

select = jobs.select  # the selection job (kept importable from here)


def build_parser(with_images: bool = True) -> argparse.ArgumentParser:
    """The CLI (the image-stage flags are added when the image stages can be imported)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="run directory (writes <out>/curation/)")
    p.add_argument("--queries", default=None,
                   help=f"{cli.field_help(CurationConfig, 'queries')} (default: <out>/queries/queries.parquet; "
                        "with --sample built from the sample data if missing)")
    source = p.add_argument_group("candidate pool (one of)")
    source.add_argument("--pool", nargs="+", default=None,
                        help=f"{cli.field_help(CurationConfig, 'pool')}: parquet, jsonl, csv, tsv (.gz ok)")
    source.add_argument("--warc", default=None, help="glob of WARC files, extracted into <out>/pool/ first")
    source.add_argument("--wat", default=None, help="glob of WAT files, extracted into <out>/pool/ first")
    source.add_argument("--sample", action="store_true",
                        help="no --pool: the data dir's sample pool (`make sample-data`); also the sample "
                             "query sources when <out> has no query list")
    add_data_dir_flag(source)
    add_engine_flags(p)
    p.add_argument("--until", choices=("select", "download", "all"), default="all",
                   help="stop after selection, or after the download (a later run resumes from there)")
    sel = p.add_argument_group("selection (text stages)")
    cli.add_config_flags(sel, CurationConfig, prefix="select_", flags={"num_parts": "--parts"},
                         only=("t", "seed", "balance", "num_parts", "max_part_rows", "batch_size", "parallelism",
                               "on_bad_file"),
                         choices={"on_bad_file": ("error", "skip"), "balance": BALANCE_MODES},
                         help_extra={"on_bad_file": "(skipped files are recorded in rejects/read/ and stats/read.json)"})
    sel.add_argument("--dedup", default=",".join(cli.field_default(CurationConfig, "dedup_keys")),
                     help=f"{cli.field_help(CurationConfig, 'dedup_keys')}, comma-separated ('' disables) "
                          "(default: %(default)s)")
    cli.add_config_flags(sel, TextConfig, prefix="text_", only=("min_chars", "max_chars", "language", "languages",
                                                                "lid_threshold"))
    cli.add_config_flags(sel, PoolConfig, prefix="pool_", only=("url_column", "text_column", "uid_column"))
    if with_images:
        try:
            from pipelines.options import add_image_flags

            add_image_flags(p)
        except ImportError:
            pass
    return p


def resolve_queries(args: argparse.Namespace) -> str:
    """--queries, else <out>/queries/queries.parquet (built from the sample data with --sample if missing)."""
    if args.queries:
        return args.queries
    layout = RunLayout(args.out)
    if not layout.exists(layout.queries_parquet):
        if not args.sample:
            raise SystemExit(f"build_wit: no query list at {layout.queries_parquet}: build one with "
                             "pipelines/build_queries.py, name one with --queries, or pass --sample")
        from queries.build import QueryListConfig

        jobs.query_logging()
        jobs.build_query_list(jobs.sample_query_sources(args.data_dir), QueryListConfig(), jobs.QueryEngine(),
                              args.out)
    return layout.queries_parquet


def resolve_pool(args: argparse.Namespace) -> list[str]:
    """--pool; else --warc/--wat extracted into <out>/pool/; else (with --sample) the data dir's
    sample pool and its planted eval copies."""
    if args.pool:
        return args.pool
    if args.warc or args.wat:
        kind, pattern = ("warc", args.warc) if args.warc else ("wat", args.wat)
        return [jobs.extract_pool(kind, pattern, RunLayout(args.out).pool.root, engine_from_args(args))["pairs_dir"]]
    if not args.sample:
        raise SystemExit("build_wit: name the candidate pool with --pool, --warc or --wat "
                         "(or --sample for the sample pool)")
    return jobs.sample_pool(args.data_dir)


def config_from_args(args: argparse.Namespace) -> CurationConfig:
    """The typed configuration of a parsed command line."""
    return CurationConfig(
        queries=resolve_queries(args),
        pool=tuple(resolve_pool(args)),
        curation_dir=RunLayout(args.out).curation,
        dedup_keys=tuple(k for k in args.dedup.split(",") if k),
        text=cli.config_from_args(TextConfig, args, "text_", language=args.text_language or None),
        pool_format=cli.config_from_args(PoolConfig, args, "pool_"),
        **cli.config_values(CurationConfig, args, "select_"),
    )


def run(argv: list[str] | None = None) -> dict:
    """Entry point: parse ``argv``, run selection, then (unless ``--until select``) the image stages."""
    configure_environment()
    args, unknown = build_parser().parse_known_args(argv)
    engine = engine_from_args(args)
    if unknown and engine.runner != "beam":
        build_parser().error(f"unrecognized arguments: {' '.join(unknown)} (runner flags go with --runner beam)")
    config = config_from_args(args)
    summary = jobs.select(config, engine.runner, engine.beam_runner, unknown)
    online = (f" (online balancing: every matched pair kept, training draws a balanced sample each epoch; "
              f"epoch 0 = the offline draw keeps {summary['epoch0_pairs']})" if config.online else "")
    print(f"[build_wit] selected {summary['selected']} pairs{online} covering {summary['entries_selected']} entries "
          f"-> {config.layout.selected_dir}", flush=True)
    if args.until != "select":
        from pipelines.options import image_config_from_args

        summary["images"] = jobs.run_image_stages(config.curation_dir, image_config_from_args(args), args.serve_images,
                                                  args.serve_port, until=args.until, data_dir=args.data_dir)
    return summary


if __name__ == "__main__":
    run()
