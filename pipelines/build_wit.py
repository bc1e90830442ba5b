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
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `python pipelines/build_wit.py` from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from curation.config import (CurationConfig, plot_entry_counts, prepare_run, read_entry_counts,
                             selected_entry_counts, stage_stats)
from curation.match import load_queries
from curation.pool import PoolConfig
from curation.textfilter import TextConfig
from curation.threshold import resolve_threshold
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
                   help="pool files/dirs/URIs: parquet, jsonl, csv, tsv (.gz ok); default: the sample pool")
    p.add_argument("--t", type=float, default=None,
                   help="balancing threshold per entry (default: scaled to the pool as MetaCLIP's t=20k "
                        "to its pool: the same 3.2%% of matched entries over t; see curation/threshold.py)")
    p.add_argument("--seed", type=int, default=0, help="seed of the balancing draw")
    p.add_argument("--runner", choices=("ray", "beam"), default="ray", help="engine (default ray)")
    p.add_argument("--beam-runner", default=None, help="Beam runner (default DirectRunner)")
    p.add_argument("--until", choices=("select", "all"), default="all", help="stop after selection")
    p.add_argument("--parts", type=int, default=8, help="selected/ part files")
    p.add_argument("--dedup", default="url,text", help="exact dedup keys in order ('' disables)")
    p.add_argument("--min-chars", type=int, default=2, help="shortest caption kept")
    p.add_argument("--max-chars", type=int, default=1000, help="longest caption kept")
    p.add_argument("--language", default="en", help="fastText language kept ('' disables language ID)")
    p.add_argument("--lid-threshold", type=float, default=0.5, help="minimum language probability")
    p.add_argument("--url-column", default=None, help="pool url column (default: auto)")
    p.add_argument("--text-column", default=None, help="pool text column (default: auto)")
    p.add_argument("--uid-column", default=None, help="pool uid column (default: auto, else hashed)")
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
    path = Path(args.out) / "queries" / "queries.parquet"
    if not path.exists():
        from pipelines import build_queries

        build_queries.run(["--out", args.out])
    return str(path)


def resolve_pool(args: argparse.Namespace) -> list[str]:
    """--pool, else the sample pool of the sample data manifest."""
    if args.pool:
        return args.pool
    from pipelines.sample_data import load_manifest

    manifest = load_manifest()
    if "sample_pool" not in manifest:
        raise SystemExit("no --pool given and the sample data has no 'sample_pool' (run `make sample-data`)")
    return [manifest["sample_pool"]]


def config_from_args(args: argparse.Namespace) -> CurationConfig:
    """The typed configuration of a parsed command line."""
    return CurationConfig(
        queries=resolve_queries(args),
        pool=tuple(resolve_pool(args)),
        curation_dir=str(Path(args.out) / "curation"),
        t=args.t,
        seed=args.seed,
        num_parts=args.parts,
        dedup_keys=tuple(k for k in args.dedup.split(",") if k),
        batch_size=args.batch_size,
        parallelism=args.parallelism,
        text=TextConfig(min_chars=args.min_chars, max_chars=args.max_chars,
                        language=args.language or None, lid_threshold=args.lid_threshold),
        pool_format=PoolConfig(args.url_column, args.text_column, args.uid_column),
    )


def select(config: CurationConfig, runner: str = "ray", beam_runner: str | None = None) -> dict:
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

            run_beam(config, beam_runner)
    num_queries = len(load_queries(config.queries))
    before = read_entry_counts(config.dir("entry_counts.parquet"), num_queries)
    after = selected_entry_counts(config.dir("selected"), num_queries)
    t = resolve_threshold(before, config.t)
    plot_entry_counts(before, after, t, config.dir("stats/entry_counts.png"))
    stats = stage_stats(config)
    stages = {s: json.loads(Path(config.dir(f"stats/{s}.json")).read_text()) for s in stats}
    summary = {"runner": runner, "seconds": round(time.time() - started, 2), "stages": stages, "t": t,
               "selected": int(stages["balance"]["out"]), "entries_matched": int((before > 0).sum()),
               "entries_selected": int((after > 0).sum())}
    Path(config.dir("stats/summary.json")).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def run(argv: list[str] | None = None) -> dict:
    """Entry point: parse ``argv``, run selection, then (unless ``--until select``) the image stages."""
    configure_environment()
    args = build_parser().parse_args(argv)
    config = config_from_args(args)
    summary = select(config, args.runner, args.beam_runner)
    print(f"[build_wit] selected {summary['selected']} pairs covering {summary['entries_selected']} entries "
          f"-> {config.dir('selected')}", flush=True)
    if args.until != "select":
        summary["images"] = _image_stages().run(args, config.curation_dir)
    return summary


if __name__ == "__main__":
    run()
