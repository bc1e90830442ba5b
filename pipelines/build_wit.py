"""Build WIT: candidate pool → English, deduplicated, query-matched, balanced pairs (→ images).

    python pipelines/build_wit.py --out runs/demo --until select
    python pipelines/build_wit.py --queries runs/demo/queries/queries.parquet \\
        --pool pool/*.parquet --out runs/wit --t 20000 --seed 0 --runner beam
    ray job submit --working-dir . -- python pipelines/build_wit.py --out /data/wit ...

Writes ``<out>/curation/selected/part-*.parquet``, ``entry_counts.parquet``, ``stats/*.json``,
``rejects/<stage>/`` and ``stats/entry_counts.png``; then, unless ``--until select``, the image
stages (``pipelines/wit_images.py``: download, image dedup, WebDataset shards).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `python pipelines/build_wit.py` from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from curation.text.config import (CurationConfig, plot_entry_counts, prepare_run, read_entry_counts,
                             selected_entry_counts, stage_stats)
from storage.layout import RunLayout
from curation.text.match import load_queries
from curation.text.pool import PoolConfig
from curation.text.textfilter import TextConfig
from curation.text.threshold import resolve_threshold
from pipelines.runtime import configure_environment


def _image_stages():
    """The image-side module (download → image dedup → shards), imported lazily."""
    from pipelines import wit_images

    return wit_images


def build_parser(with_images: bool = True) -> argparse.ArgumentParser:
    """The CLI (the image stages add their own flags when their module is present)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="run directory (writes <out>/curation/)")
    p.add_argument("--queries", default=None,
                   help="queries.parquet (default: <out>/queries/queries.parquet, built if missing)")
    p.add_argument("--pool", nargs="+", default=None,
                   help="pool files/dirs/URIs: parquet, jsonl, csv, tsv (.gz ok)")
    p.add_argument("--warc", default=None, help="instead of --pool: glob of WARC files, extracted into <out>/pool/")
    p.add_argument("--wat", default=None, help="instead of --pool: glob of WAT files, extracted into <out>/pool/")
    p.add_argument("--sample", action="store_true",
                   help="use the demo's sample pool (fetched by `make sample-data`) when no --pool is given")
    p.add_argument("--t", type=float, default=None,
                   help="balancing threshold per entry (default: scaled to the pool as MetaCLIP's t=20k "
                        "is to its pool: the same tail share of matches; see curation/text/threshold.py)")
    p.add_argument("--seed", type=int, default=0, help="seed of the balancing draw")
    p.add_argument("--runner", choices=("ray", "beam"), default="ray", help="engine (default ray)")
    p.add_argument("--beam-runner", default=None, help="Beam runner (default DirectRunner)")
    p.add_argument("--until", choices=("select", "download", "all"), default="all",
                   help="stop after selection, or after the download (a later run resumes from there)")
    p.add_argument("--parts", type=int, default=8, help="selected/ part files")
    p.add_argument("--dedup", default="url,text", help="exact dedup keys in order ('' disables)")
    p.add_argument("--min-chars", type=int, default=2, help="shortest caption kept")
    p.add_argument("--max-chars", type=int, default=1000, help="longest caption kept")
    p.add_argument("--language", default="en", help="fastText language kept ('' disables language ID)")
    p.add_argument("--lid-threshold", type=float, default=0.5, help="minimum language probability")
    p.add_argument("--url-column", default=None, help="pool url column (default: auto)")
    p.add_argument("--text-column", default=None, help="pool text column (default: auto)")
    p.add_argument("--uid-column", default=None, help="pool uid column (default: auto, else hashed)")
    p.add_argument("--on-bad-file", choices=("error", "skip"), default="error",
                   help="a pool file that cannot be read (corrupt, empty, wrong column types): stop with an "
                        "error naming it (default), or skip it, recorded in rejects/read/ and stats/read.json")
    p.add_argument("--batch-size", type=int, default=4096, help="rows per engine batch")
    p.add_argument("--parallelism", type=int, default=None, help="engine workers (default: all CPUs)")
    if with_images:
        try:
            _image_stages().add_arguments(p)
        except ImportError:
            pass
    return p


def resolve_queries(args: argparse.Namespace) -> str:
    """--queries, else <out>/queries/queries.parquet, built by build_queries.py if missing."""
    if args.queries:
        return args.queries
    layout = RunLayout(args.out)
    if not layout.exists(layout.queries_parquet):
        from pipelines import build_queries

        build_queries.run(["--out", args.out, *(["--sample"] if args.sample else [])])
    return layout.queries_parquet


def resolve_pool(args: argparse.Namespace) -> list[str]:
    """--pool; else --warc/--wat extracted into <out>/pool/ (build_pool.py); else (with --sample)
    the demo's sample pool and its planted eval copies."""
    if args.pool:
        return args.pool
    if args.warc or args.wat:
        from pipelines import build_pool

        source = ["--warc", args.warc] if args.warc else ["--wat", args.wat]
        out = f"{args.out.rstrip('/')}/pool"
        return [build_pool.run([*source, "--out", out, "--runner", args.runner])["pairs_dir"]]
    if not args.sample:
        raise SystemExit("build_wit: name the candidate pool with --pool, --warc or --wat "
                         "(or --sample for the demo's sample pool)")
    from pipelines.demo.sample_data import load_manifest

    manifest = load_manifest()
    if "sample_pool" not in manifest:
        raise SystemExit("no --pool given and the sample data has no 'sample_pool' (run `make sample-data`)")
    # the planted Fashion-MNIST test copies (pipelines/demo/planted_copies.py) go through curation
    # like every other candidate: what survives balancing is what the contamination report finds
    return [manifest["sample_pool"]] + ([manifest["sample_planted_pool"]] if "sample_planted_pool" in manifest else [])


def config_from_args(args: argparse.Namespace) -> CurationConfig:
    """The typed configuration of a parsed command line."""
    return CurationConfig(
        queries=resolve_queries(args),
        pool=tuple(resolve_pool(args)),
        curation_dir=RunLayout(args.out).curation,
        t=args.t,
        seed=args.seed,
        num_parts=args.parts,
        dedup_keys=tuple(k for k in args.dedup.split(",") if k),
        batch_size=args.batch_size,
        parallelism=args.parallelism,
        text=TextConfig(min_chars=args.min_chars, max_chars=args.max_chars,
                        language=args.language or None, lid_threshold=args.lid_threshold),
        pool_format=PoolConfig(args.url_column, args.text_column, args.uid_column),
        on_bad_file=args.on_bad_file,
    )


def select(config: CurationConfig, runner: str = "ray", beam_runner: str | None = None,
           beam_args: list[str] | None = None) -> dict:
    """Run the text-side stages (skipped when a complete, identical selection exists) and the
    before/after plot; return the summary written to ``stats/summary.json``."""
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
    after = selected_entry_counts(layout, config.num_parts, num_queries)
    t = resolve_threshold(before, config.t)
    plot_entry_counts(before, after, t, layout)
    stages = {name: stats.body() for name, stats in stage_stats(config).items()}
    summary = {"runner": runner, "seconds": round(time.time() - started, 2), "stages": stages, "t": t,
               "selected": int(stages["balance"]["out"]), "entries_matched": int((before > 0).sum()),
               "entries_selected": int((after > 0).sum())}
    layout.write_json(layout.summary, summary)
    return summary


def run(argv: list[str] | None = None) -> dict:
    """Entry point: parse ``argv``, run selection, then (unless ``--until select``) the image stages."""
    configure_environment()
    args, unknown = build_parser().parse_known_args(argv)
    if unknown and args.runner != "beam":
        build_parser().error(f"unrecognized arguments: {' '.join(unknown)} (runner flags go with --runner beam)")
    config = config_from_args(args)
    summary = select(config, args.runner, args.beam_runner, unknown)
    print(f"[build_wit] selected {summary['selected']} pairs covering {summary['entries_selected']} entries "
          f"-> {config.layout.selected_dir}", flush=True)
    if args.until != "select":
        summary["images"] = _image_stages().run(args, config.curation_dir, until=args.until)
    return summary


if __name__ == "__main__":
    run()
