"""CLI and Ray adapter of the image stages (``curation.images.recipe``): download, check, dedup, shards.

The image half of ``pipelines/build_wit.py`` (which calls :func:`add_arguments` and
:func:`run`); also runnable alone on a curation directory that holds ``selected/*.parquet``::

    python pipelines/wit_images.py --curation-dir runs/demo/curation \\
        --serve-images data/sample/images          # the sample pool's loopback server

The stage order, accounting and resume live in :mod:`curation.images.recipe`; this module turns flags
into its typed config, runs the image check on a Ray Data actor pool, and (for the demo and
tests) serves a local image folder on 127.0.0.1 during the download.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python pipelines/wit_images.py` (also under `ray job submit`)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pyarrow as pa

from curation.images.download import DownloadConfig
from curation.images.check import RESIZE_MODES, ImageCheckConfig
from curation.images.dedup import ImageDedupConfig
from curation.images.recipe import CheckDownloadShards, ImageStagesConfig, run_image_stages
from curation.images.robots import RespectConfig
from storage.layout import RunLayout
from curation.images.shards import ShardConfig
from curation.images.urlguard import UrlGuardConfig, parse_allow_networks
from contamination.evalindex import write_eval_index
from pipelines import decontaminate
from pipelines.runtime import configure_environment, init_ray

LOOPBACK = "127.0.0.1"
SERVE_PORT = 18765  # the sample pool's URLs use 18765


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the image-stage flags to ``parser`` (defaults = :class:`WitImagesConfig`'s)."""
    d, c = DownloadConfig(), ImageCheckConfig()
    g = parser.add_argument_group("images (download, dedup, shards)")
    g.add_argument("--allow-private-networks", action="store_true",
                   help="let the downloader fetch from loopback/private addresses (metadata never)")
    g.add_argument("--allow-network", action="append", default=[], metavar="CIDR",
                   help="always allow this address/CIDR (repeatable), e.g. 127.0.0.1")
    g.add_argument("--processes", type=int, default=d.processes, help="img2dataset processes")
    g.add_argument("--threads", type=int, default=d.threads, help="img2dataset threads per process")
    g.add_argument("--timeout", type=int, default=d.timeout_s, help="per-request timeout, seconds")
    g.add_argument("--download-shard-size", type=int, default=d.shard_size,
                   help="rows per img2dataset shard (unit of resumption)")
    g.add_argument("--no-retry-pass", action="store_true", help="skip the retry pass over failed URLs")
    g.add_argument("--distributor", choices=("ray", "multiprocessing"), default=d.distributor,
                   help="img2dataset distributor: ray = one task per download shard on any node of the "
                        "cluster (default); multiprocessing = --processes on this node")
    g.add_argument("--ignore-robots", action="store_true",
                   help="do not fetch robots.txt: its Disallow rules and Crawl-delay are then NOT honoured "
                        "(the opt-out ledger, X-Robots-Tag and the User-Agent still are)")
    g.add_argument("--contact-url", default=RespectConfig.contact_url,
                   help="contact URL sent in the User-Agent ('openwit/1.0 (+URL)')")
    g.add_argument("--opt-out-ledger", default=None, metavar="FILE",
                   help="domains / URL prefixes / SHA-256 image hashes always refused (reason opted_out)")
    g.add_argument("--image-size", type=int, default=c.image_size, help="output image side, pixels")
    g.add_argument("--resize-mode", choices=RESIZE_MODES, default=c.resize_mode)
    g.add_argument("--max-pixels", type=int, default=c.max_pixels, help="decompression-bomb limit (w*h)")
    g.add_argument("--shard-size", type=int, default=ShardConfig().shard_size, help="samples per final tar")
    g.add_argument("--holdout-fraction", type=float, default=ShardConfig().holdout_fraction,
                   help="share of samples (by uid hash) written to heldout/ shards for evaluation, never shards/")
    g.add_argument("--dedup-threshold", type=int, default=ImageDedupConfig().threshold,
                   help="pHash Hamming distance for near duplicates (-1: exact only)")
    g.add_argument("--dedup-buckets", type=int, default=ImageDedupConfig().buckets,
                   help="tasks per round of the distributed image dedup (0: one per 100k images, at least 2)")
    g.add_argument("--serve-images", default=None, metavar="DIR",
                   help=f"serve DIR on {LOOPBACK}:--serve-port during the download (sample pool)")
    g.add_argument("--serve-port", type=int, default=SERVE_PORT)
    g.add_argument("--no-report", action="store_true", help="do not write report.html")
    decontaminate.add_arguments(parser)


def config_from_args(args: argparse.Namespace) -> ImageStagesConfig:
    """Typed config from parsed flags; serving images adds 127.0.0.1 to the allow-list."""
    allow = parse_allow_networks(args.allow_network) + ((LOOPBACK,) if args.serve_images else ())
    return ImageStagesConfig(
        guard=UrlGuardConfig(allow_private_networks=args.allow_private_networks,
                             allow_networks=tuple(dict.fromkeys(allow))),
        download=DownloadConfig(processes=args.processes, threads=args.threads, timeout_s=args.timeout,
                                shard_size=args.download_shard_size, retry_pass=not args.no_retry_pass,
                                distributor=args.distributor,
                                respect=RespectConfig(robots=not args.ignore_robots, contact_url=args.contact_url,
                                                      opt_out_ledger=args.opt_out_ledger)),
        check=ImageCheckConfig(image_size=args.image_size, resize_mode=args.resize_mode,
                               max_pixels=args.max_pixels),
        dedup=ImageDedupConfig(threshold=args.dedup_threshold, buckets=args.dedup_buckets),
        shards=ShardConfig(shard_size=args.shard_size, holdout_fraction=args.holdout_fraction),
        decontaminate=decontaminate.config_from_args(args),
        report=not args.no_report,
    )


def ray_check_tasks(layout: RunLayout):
    """``map_check_tasks`` on Ray Data: one block per download shard on an actor pool sized to
    the cluster's CPUs (each actor loads the checker once)."""

    def run(tasks: pa.Table, config: ImageCheckConfig) -> None:
        ray = init_ray()
        workers = max(1, min(len(tasks), int(ray.cluster_resources().get("CPU", 1))))
        blocks = [tasks.slice(i, 1) for i in range(len(tasks))]  # one block per shard: parallel, no shuffle
        ray.data.from_arrow(blocks).map_batches(
            CheckDownloadShards, fn_constructor_kwargs={"config": config, "layout": layout}, batch_size=1,
            batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=1,
        ).materialize()

    return run


def ray_map_tasks(fn, items: list) -> list:
    """``map_tasks`` on Ray: one task per item (1 CPU, spread over the nodes), results in item
    order. The tasks write through the run layout and are idempotent, so Ray retries a task
    whose worker or node died (``max_retries``) and the result is the same."""
    ray = init_ray()
    remote = ray.remote(num_cpus=1, max_retries=3, scheduling_strategy="SPREAD")(_call)
    return ray.get([remote.remote(fn, item) for item in items])


def _call(fn, item):
    return fn(item)


def run(args: argparse.Namespace, curation_dir: str, until: str = "all") -> dict:
    """Run the image stages on ``curation_dir`` (holding ``selected/*.parquet``; a path or URI);
    return the summary of :func:`curation.images.recipe.run_image_stages`. ``until="download"`` stops
    after the download stage (its stats written; a later run resumes from there)."""
    configure_environment()
    layout = RunLayout.of_curation(curation_dir)
    config = config_from_args(args)
    if config.download.distributor == "ray":
        init_ray()  # the downloads become Ray tasks on the cluster's nodes
    if config.decontaminate.datasets:  # its URL/caption half runs before the download
        write_eval_index(layout, config.decontaminate.datasets)
    serving = _serving(args.serve_images, args.serve_port) if args.serve_images else None
    return run_image_stages(layout, config, ray_check_tasks(layout), serving, until=until, map_tasks=ray_map_tasks)


@contextlib.contextmanager
def _serving(directory: str, port: int):
    from pipelines.demo.serve_images import serving

    with serving(directory, port=port):
        yield


def main(argv: list[str] | None = None) -> dict:
    """CLI: ``python pipelines/wit_images.py --curation-dir DIR [image flags]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--curation-dir", required=True, help="run dir's curation/ (holds selected/)")
    add_arguments(parser)
    args = parser.parse_args(argv)
    summary = run(args, args.curation_dir)
    print(json.dumps(summary, indent=2))
    print(f"[wit_images] shards in {summary['shards_dir']}; report: {summary['report']}")
    return summary


if __name__ == "__main__":
    main()
