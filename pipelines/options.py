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
import re

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
    from queries.worldwide import WorldwideConfig

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
    src.add_argument("--unigram-counts", action="append", default=[],
                     help=source_help("unigram_counts", "(e.g. pywordfreq word_frequencies.gz; with --language also a "
                                                        "word<TAB>count file or wordfreq:CODE, the wordfreq package's list)"))
    src.add_argument("--titles", action="append", default=[], help=source_help("titles", "(or --pageviews, not both)"))
    src.add_argument("--pageviews", action="append", default=[], help=source_help("pageviews", "(here: a file glob, repeatable)"))
    src.add_argument("--wordnet", default=[], action="append",
                     help=source_help("wordnet", "(with --language also an Open Multilingual Wordnet .tab file or a "
                                                 "word_synset .db)"))
    src.add_argument("--sample", action="store_true", help="no source flag: use the sample data's sources (`make sample-data`)")
    add_data_dir_flag(src)
    world = parser.add_argument_group(
        "worldwide (MetaCLIP 2): one list per Wikipedia language, with a language column",
        "With --language, a source flag takes CODE=PATH (that language's source) or a PATH holding {lang} "
        "(one per language, e.g. --wiki-dump 'dumps/{lang}wiki-latest-pages-articles.xml.bz2', --unigram-counts "
        "'wordfreq:{lang}'); a plain --pageviews GLOB is shared: each language reads its <code> and <code>.m lines "
        "(a language's own --titles CODE=PATH replaces them). With --sample: the sample data's sources of each "
        "language (en: the English sample; es, fr: their lead paragraphs + wordfreq; th: pythainlp's corpora; "
        "other wordfreq languages: wordfreq). The caps below replace --min-count, --min-views and --max-bigrams, "
        "which only the English-only list applies.")
    world.add_argument("--language", action="append", default=[], metavar="CODE",
                       help="build this Wikipedia language's list (repeatable; e.g. en, es, zh, ja, th)")
    world.add_argument("--languages", default=None, metavar="FILE",
                       help="a file of Wikipedia language codes (whitespace or comma separated, # comments), "
                            "added to --language")
    add_config_flags(world, WorldwideConfig, prefix="world_")
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


def _last(values: list[str]) -> str | None:
    return values[-1] if values else None


def query_sources_from_args(args: argparse.Namespace):
    """The sources named on the command line, or (with ``--sample``) the data dir's sample sources."""
    from pipelines.jobs import sample_query_sources
    from queries.recipe import QuerySources

    named = (args.wiki_dump, args.text, args.unigram_counts, args.titles, args.pageviews, args.wordnet)
    if any(named):
        if args.titles and args.pageviews:
            raise SystemExit("build_queries: --titles and --pageviews are alternatives: give one of them")
        return QuerySources(tuple(args.wiki_dump), tuple(args.text), _last(args.unigram_counts), _last(args.titles),
                            _expand_globs(args.pageviews), _last(args.wordnet))
    if not args.sample:
        raise SystemExit("build_queries: name at least one source (--wiki-dump, --text, --unigram-counts, "
                         "--titles/--pageviews, --wordnet), or --sample for the sample data")
    return sample_query_sources(args.data_dir)


def language_codes_from_args(args: argparse.Namespace) -> tuple[str, ...]:
    """The sorted, distinct codes of ``--language`` and ``--languages FILE`` (empty: English-only)."""
    from queries.languages import check_language_code
    from storage.files import open_input_text

    codes = list(args.language)
    if args.languages:
        try:
            with open_input_text(args.languages) as f:
                for line in f:
                    codes += line.split("#", 1)[0].replace(",", " ").split()
        except (OSError, UnicodeDecodeError) as err:
            raise SystemExit(f"--languages {args.languages}: unreadable ({err})") from err
        if not codes:
            raise SystemExit(f"--languages {args.languages}: no language code in the file")
    try:
        return tuple(sorted({check_language_code(code.strip()) for code in codes}))
    except ValueError as err:
        raise SystemExit(f"build_queries: {err}") from err


_LANGUAGE_VALUE = re.compile(r"^([a-z][a-z0-9]*(?:-[a-z0-9]+)*)=(.+)$")


def _by_language(values: list[str], codes: tuple[str, ...], flag: str, shared_ok: bool = False):
    """A worldwide source flag's values -> ({code: [values]}, [values shared by every language]):
    ``CODE=PATH`` is one language's, a PATH holding ``{lang}`` every language's."""
    mine: dict[str, list[str]] = {code: [] for code in codes}
    shared: list[str] = []
    for value in values:
        match = _LANGUAGE_VALUE.match(value)
        if match:
            if match.group(1) not in mine:
                raise SystemExit(f"{flag} {value}: {match.group(1)!r} is not among the languages built "
                                 f"({', '.join(codes)})")
            mine[match.group(1)].append(match.group(2))
        elif "{lang}" in value:
            for code in codes:
                mine[code].append(value.replace("{lang}", code))
        elif shared_ok:
            shared.append(value)
        else:
            raise SystemExit(f"{flag} {value}: with --language, name the source's language ({flag} CODE=PATH) "
                             "or give a path holding {lang}")
    return mine, shared


def _one(values: list[str], flag: str, code: str) -> str | None:
    if len(values) > 1:
        raise SystemExit(f"{flag}: {len(values)} values for {code} ({', '.join(values)}): give one")
    return values[0] if values else None


def _files(paths, flag: str, code: str):
    """``paths``, each checked to be a file (a ``wordfreq:`` list is not one)."""
    from queries.worldwide import WORDFREQ_PREFIX
    from storage.files import is_input_file

    for path in (paths,) if isinstance(paths, str) or paths is None else paths:
        if path and not path.startswith(WORDFREQ_PREFIX) and not is_input_file(path):
            raise SystemExit(f"{flag} {path}: no such file (a source of {code})")
    return paths


def worldwide_sources_from_args(args: argparse.Namespace, codes: tuple[str, ...]):
    """Each language's sources (:class:`queries.worldwide.WorldwideSources`) from the source flags
    (``CODE=PATH``, ``{lang}`` templates, shared ``--pageviews``), or with ``--sample`` the
    sample sources of each language."""
    from pipelines.jobs import sample_worldwide_sources
    from queries.recipe import QuerySources
    from queries.worldwide import WorldwideSources

    named = (args.wiki_dump, args.text, args.unigram_counts, args.titles, args.pageviews, args.wordnet)
    if not any(named):
        if not args.sample:
            raise SystemExit("build_queries: name each language's sources (--wiki-dump CODE=PATH, ...), "
                             "or --sample for the sample data")
        return sample_worldwide_sources(codes, args.data_dir)
    dumps, _ = _by_language(args.wiki_dump, codes, "--wiki-dump")
    texts, _ = _by_language(args.text, codes, "--text")
    counts, _ = _by_language(args.unigram_counts, codes, "--unigram-counts")
    titles, _ = _by_language(args.titles, codes, "--titles")
    pageviews, shared = _by_language(args.pageviews, codes, "--pageviews", shared_ok=True)
    wordnets, _ = _by_language(args.wordnet, codes, "--wordnet")
    languages = []
    for code in codes:
        title_list = _one(titles[code], "--titles", code)
        if title_list and pageviews[code]:
            raise SystemExit(f"{code}: --titles and --pageviews are alternatives: give one of them")
        views = () if title_list else _expand_globs(pageviews[code] + shared)
        if not (dumps[code] or texts[code] or counts[code] or title_list or views or wordnets[code]):
            raise SystemExit(f"build_queries: no source names {code} (--wiki-dump {code}=PATH, --text {code}=PATH, ...)")
        languages.append((code, QuerySources(_files(tuple(dumps[code]), "--wiki-dump", code),
                                             _files(tuple(texts[code]), "--text", code),
                                             _files(_one(counts[code], "--unigram-counts", code), "--unigram-counts",
                                                    code),
                                             _files(title_list, "--titles", code), views,
                                             _one(wordnets[code], "--wordnet", code))))
    return WorldwideSources(tuple(languages))


def query_job_from_args(args: argparse.Namespace, beam_args: list[str]):
    """(sources, config, :class:`~pipelines.jobs.QueryEngine`) of parsed ``build_queries.py``
    flags; ``beam_args``: the flags argparse did not know (Beam's). English-only (no
    ``--language``): :class:`~queries.recipe.QuerySources` and
    :class:`~queries.build.QueryListConfig`; worldwide: :class:`~queries.worldwide.WorldwideSources`
    and :class:`~queries.worldwide.WorldwideConfig`."""
    from queries.build import QueryListConfig
    from queries.worldwide import WorldwideConfig

    if beam_args and args.engine_runner != "beam":
        raise SystemExit(f"unknown arguments {beam_args} (pass-through flags are for --runner beam)")
    config = config_from_args(QueryListConfig, args, "queries_")
    engine = config_from_args(QueryEngine, args, "engine_", beam_args=tuple(beam_args), progress=not args.quiet)
    codes = language_codes_from_args(args)
    if codes:
        world = config_from_args(WorldwideConfig, args, "world_", base=config)
        return worldwide_sources_from_args(args, codes), world, engine
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
