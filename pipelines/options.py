"""Flag groups shared by several product CLIs, and the typed configs parsed back from them.

Every flag that mirrors a config field is generated from the dataclass by :mod:`pipelines.cli`
(its default and ``# comment`` are the flag's); the flags kept by hand are the ones with no field
(``--out``, ``--sample``, ``--serve-images``, …) or an older spelling than the field's
(``--keep-case`` for ``lowercase=False``, ``--ignore-robots`` for ``robots=False``,
``--allow-network`` repeated, ``--dedup url,text``). Used by::

    build_queries.py, build_queries_beam.py   add_query_list_flags / query_job_from_args
    build_wit.py, wit_images.py               add_image_flags / image_config_from_args, add_data_dir_flag
    build_wit.py, build_pool.py               add_engine_flags / engine_from_args
"""

from __future__ import annotations

import argparse

from pipelines.cli import (
    add_config_flags,
    config_from_args,
    config_values,
    field_default,
    field_help,
)
from pipelines.jobs import ENGINES, QUERY_ENGINES, Engine, QueryEngine

DATA_DIR_HELP = ("data directory holding manifest.json, where --sample inputs and built-in eval sets are read "
                 "(default: $OPENWIT_DATA, else <repo>/data/sample, what `make sample-data` writes)")


def add_data_dir_flag(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--data-dir`` (dest ``data_dir``; None: :func:`storage.datadir.data_dir`'s default)."""
    parser.add_argument("--data-dir", default=None, metavar="DIR", help=DATA_DIR_HELP)


def add_engine_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--runner ray|beam`` and ``--beam-runner`` (:class:`pipelines.jobs.Engine`)."""
    add_config_flags(parser, Engine, prefix="engine_", choices={"runner": ENGINES})


def engine_from_args(args: argparse.Namespace) -> Engine:
    return config_from_args(Engine, args, "engine_")


# -- the query list (build_queries.py, build_queries_beam.py) --------------------------------


def add_query_list_flags(parser: argparse.ArgumentParser) -> None:
    """Every flag of ``build_queries.py``: the run dir, the engine, the sources (or ``--sample``),
    the thresholds (:class:`queries.build.QueryListConfig`)."""
    from queries.build import QueryListConfig
    from queries.recipe import QuerySources

    def source_help(name: str, extra: str = "") -> str:
        return " ".join(t for t in (field_help(QuerySources, name), extra) if t)

    parser.add_argument("--out", required=True, help="run directory; writes OUT/queries/")
    add_config_flags(parser, QueryEngine, prefix="engine_", only=("runner", "beam_runner", "beam_temp_dir", "ray_address"),
                     choices={"runner": QUERY_ENGINES})
    src = parser.add_argument_group("sources (at least one, or --sample)")
    src.add_argument("--wiki-dump", action="append", default=[],
                     help=source_help("wiki_dumps", "(.xml/.bz2, repeatable)"))
    src.add_argument("--text", action="append", default=[],
                     help=source_help("texts", "(.json/.jsonl/.txt, repeatable)"))
    src.add_argument("--unigram-counts", default=None, help=source_help("unigram_counts", "(e.g. pywordfreq word_frequencies.gz)"))
    titles = src.add_mutually_exclusive_group()
    titles.add_argument("--titles", default=None, help=source_help("titles"))
    titles.add_argument("--pageviews", action="append", default=[], help=source_help("pageviews", "(here: a file glob, repeatable)"))
    src.add_argument("--wordnet", default=None, help=source_help("wordnet"))
    src.add_argument("--sample", action="store_true", help="no source flag: use the sample data's sources (`make sample-data`)")
    add_data_dir_flag(src)
    thresholds = parser.add_argument_group("thresholds")
    add_config_flags(thresholds, QueryListConfig, prefix="queries_", skip=("lowercase",))
    thresholds.add_argument("--keep-case", action="store_false", dest="queries_lowercase",
                            default=field_default(QueryListConfig, "lowercase"),
                            help=f"count case-sensitively (the default: {field_help(QueryListConfig, 'lowercase')})")
    add_config_flags(parser, QueryEngine, prefix="engine_", only=("batch_size",))
    parser.add_argument("--quiet", action="store_true", help="no progress output")


def _expand_globs(patterns: list[str]) -> tuple[str, ...]:
    from storage.files import expand_glob

    files: list[str] = []
    for pattern in patterns:
        matched = expand_glob(pattern)
        if not matched:
            raise SystemExit(f"--pageviews {pattern}: no file matches")
        files += matched
    return tuple(files)


def query_sources_from_args(args: argparse.Namespace):
    """The sources named on the command line, or (with ``--sample``) the data dir's sample sources."""
    from pipelines.jobs import sample_query_sources
    from queries.recipe import QuerySources

    named = (args.wiki_dump, args.text, args.unigram_counts, args.titles, args.pageviews, args.wordnet)
    if any(named):
        return QuerySources(tuple(args.wiki_dump), tuple(args.text), args.unigram_counts, args.titles,
                            _expand_globs(args.pageviews), args.wordnet)
    if not args.sample:
        raise SystemExit("build_queries: name at least one source (--wiki-dump, --text, --unigram-counts, "
                         "--titles/--pageviews, --wordnet), or --sample for the sample data")
    return sample_query_sources(args.data_dir)


def query_job_from_args(args: argparse.Namespace, beam_args: list[str]):
    """(sources, :class:`~queries.build.QueryListConfig`, :class:`~pipelines.jobs.QueryEngine`)
    of parsed ``build_queries.py`` flags; ``beam_args``: the flags argparse did not know (Beam's)."""
    from queries.build import QueryListConfig

    if beam_args and args.engine_runner != "beam":
        raise SystemExit(f"unknown arguments {beam_args} (pass-through flags are for --runner beam)")
    config = config_from_args(QueryListConfig, args, "queries_")
    engine = config_from_args(QueryEngine, args, "engine_", beam_args=tuple(beam_args), progress=not args.quiet)
    return query_sources_from_args(args), config, engine


# -- the image stages (wit_images.py, build_wit.py) ------------------------------------------


def add_image_flags(parser: argparse.ArgumentParser) -> None:
    """The image-stage flags (defaults and help: the fields of
    :class:`curation.images.recipe.ImageStagesConfig`'s parts), the loopback image server's and
    the ``--decontaminate*`` flags."""
    from curation.images.check import RESIZE_MODES, ImageCheckConfig
    from curation.images.dedup import ImageDedupConfig
    from curation.images.download import DownloadConfig
    from curation.images.politeness import PolitenessConfig
    from curation.images.recipe import ImageStagesConfig
    from curation.images.robots import RespectConfig
    from curation.images.safety import SafetyConfig
    from curation.images.shards import ShardConfig
    from curation.images.urlguard import UrlGuardConfig
    from pipelines import decontaminate
    from pipelines.serve_images import DEFAULT_HOST, DEFAULT_PORT

    g = parser.add_argument_group("images (download, dedup, shards)")
    add_config_flags(g, UrlGuardConfig, prefix="guard_", only=("allow_private_networks",))
    g.add_argument("--allow-network", action="append", dest="guard_allow_networks", metavar="CIDR",
                   default=list(field_default(UrlGuardConfig, "allow_networks")),
                   help=f"{field_help(UrlGuardConfig, 'allow_networks')} (one per flag, repeatable)")
    add_config_flags(g, DownloadConfig, prefix="download_",
                     only=("processes", "threads", "timeout_s", "shard_size", "retry_pass", "distributor",
                           "max_bytes"),
                     flags={"timeout_s": "--timeout", "shard_size": "--download-shard-size",
                            "max_bytes": "--max-image-bytes"},
                     choices={"distributor": ("ray", "multiprocessing")},
                     help_extra={"timeout_s": "(seconds)"})
    g.add_argument("--ignore-robots", action="store_false", dest="respect_robots",
                   default=field_default(RespectConfig, "robots"),
                   help="do not fetch robots.txt: its Disallow rules and Crawl-delay are then NOT honoured "
                        "(the opt-out ledger, X-Robots-Tag and the User-Agent still are)")
    add_config_flags(g, PolitenessConfig, prefix="politeness_")
    add_config_flags(g, RespectConfig, prefix="respect_", only=("contact_url", "opt_out_ledger"),
                     help_extra={"opt_out_ledger": "(always refused, reason opted_out)"})
    add_config_flags(g, ImageCheckConfig, prefix="check_",
                     only=("image_size", "resize_mode", "max_pixels", "min_image_size", "max_aspect_ratio"),
                     choices={"resize_mode": RESIZE_MODES})
    add_config_flags(g, ShardConfig, prefix="shards_")
    add_config_flags(g, ImageDedupConfig, prefix="imagededup_",
                     flags={"threshold": "--dedup-threshold", "buckets": "--dedup-buckets"})
    g.add_argument("--serve-images", default=None, metavar="DIR",
                   help=f"serve DIR on {DEFAULT_HOST}:--serve-port during the download (a pool whose URLs point "
                        f"there, e.g. the sample pool); adds {DEFAULT_HOST} to the allowed networks and "
                        f"to the hosts fetched without a rate limit")
    g.add_argument("--serve-port", type=int, default=DEFAULT_PORT,
                   help=f"port of --serve-images (default: {DEFAULT_PORT}, the sample pool's)")
    add_config_flags(g, ImageStagesConfig, prefix="images_", only=("report",))
    safety = parser.add_argument_group("release safety (hash lists, NSFW, faces)")
    add_config_flags(safety, SafetyConfig, prefix="safety_", flags={"hash_lists": "--hash-list"},
                     help_extra={"hash_lists": "(e.g. --hash-list sha256:lists/a.txt pdq:lists/b.txt)"})
    decontaminate.add_arguments(parser)


def image_config_from_args(args: argparse.Namespace):
    """The :class:`~curation.images.recipe.ImageStagesConfig` of parsed image flags; serving
    images adds 127.0.0.1 to the allow-list."""
    from curation.images.check import ImageCheckConfig
    from curation.images.dedup import ImageDedupConfig
    from curation.images.download import DownloadConfig
    from curation.images.politeness import PolitenessConfig
    from curation.images.recipe import ImageStagesConfig
    from curation.images.robots import RespectConfig
    from curation.images.safety import SafetyConfig
    from curation.images.shards import ShardConfig
    from curation.images.urlguard import UrlGuardConfig, parse_allow_networks
    from pipelines import decontaminate
    from pipelines.serve_images import DEFAULT_HOST

    allow = parse_allow_networks(args.guard_allow_networks) + ((DEFAULT_HOST,) if args.serve_images else ())
    return ImageStagesConfig(
        guard=config_from_args(UrlGuardConfig, args, "guard_", allow_networks=tuple(dict.fromkeys(allow))),
        download=config_from_args(DownloadConfig, args, "download_",
                                  respect=config_from_args(RespectConfig, args, "respect_"),
                                  politeness=config_from_args(
                                      PolitenessConfig, args, "politeness_", unlimited_hosts=tuple(dict.fromkeys(
                                          args.politeness_unlimited_hosts + ([DEFAULT_HOST] if args.serve_images
                                                                             else []))))),
        check=config_from_args(ImageCheckConfig, args, "check_"),
        dedup=config_from_args(ImageDedupConfig, args, "imagededup_"),
        shards=config_from_args(ShardConfig, args, "shards_"),
        decontaminate=decontaminate.config_from_args(args),
        safety=config_from_args(SafetyConfig, args, "safety_"),
        **config_values(ImageStagesConfig, args, "images_"),
    )
