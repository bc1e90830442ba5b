"""Selected pairs → guarded download (img2dataset) → image check → image dedup → WebDataset shards.

The image half of ``pipelines/build_wit.py`` (which calls :func:`add_arguments` and
:func:`run`); also runnable alone on a curation directory that holds ``selected/*.parquet``::

    python pipelines/wit_images.py --curation-dir runs/demo/curation \\
        --serve-images data/sample/images          # the sample pool's loopback server

Stages (each accounts for every row in ``stats/<stage>.json`` + ``rejects/<stage>/``):
``urlguard`` → ``download`` (img2dataset + a retry pass) → ``imagecheck`` (decode, bomb guard,
resize, hashes; Ray Data) → ``imagededup`` → ``shards``. A rerun skips finished work (the
download is incremental, checked parts and shards are skipped when present) and writes the
same bytes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # `python pipelines/wit_images.py` (also under `ray job submit`)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import xxhash

from curation.download import DownloadConfig, download, read_download_shard
from curation.image_accounting import (
    read_stats,
    reject_counts,
    stage_done,
    write_rejects,
    write_stats,
)
from curation.image_check import RESIZE_MODES, ImageCheckConfig, ImageChecker
from curation.imagededup import ImageDedupConfig, deduplicate
from curation.shards import ShardConfig, write_shards
from curation.stage import write_bytes_atomic, write_parquet_atomic
from curation.urlguard import UrlGuard, UrlGuardConfig, parse_allow_networks
from pipelines.runtime import configure_environment, init_ray

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class WitImagesConfig:
    """Everything the image stages need (built from the CLI by :func:`config_from_args`)."""

    guard: UrlGuardConfig = field(default_factory=UrlGuardConfig)  # SSRF policy
    download: DownloadConfig = field(default_factory=DownloadConfig)  # img2dataset settings
    check: ImageCheckConfig = field(default_factory=ImageCheckConfig)  # decode/bomb/resize
    dedup: ImageDedupConfig = field(default_factory=ImageDedupConfig)  # exact + pHash dedup
    shards: ShardConfig = field(default_factory=ShardConfig)  # final shard size
    serve_images: str | None = None  # serve this dir on 127.0.0.1 while downloading (sample pool)
    serve_port: int = 18765  # port of that server (the sample pool's URLs use 18765)
    report: bool = True  # write report.html + PNGs at the end


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
    g.add_argument("--image-size", type=int, default=c.image_size, help="output image side, pixels")
    g.add_argument("--resize-mode", choices=RESIZE_MODES, default=c.resize_mode)
    g.add_argument("--max-pixels", type=int, default=c.max_pixels, help="decompression-bomb limit (w*h)")
    g.add_argument("--shard-size", type=int, default=ShardConfig().shard_size, help="samples per final tar")
    g.add_argument("--dedup-threshold", type=int, default=ImageDedupConfig().threshold,
                   help="pHash Hamming distance for near duplicates (-1: exact only)")
    g.add_argument("--serve-images", default=None, metavar="DIR",
                   help=f"serve DIR on {LOOPBACK}:--serve-port during the download (sample pool)")
    g.add_argument("--serve-port", type=int, default=WitImagesConfig.serve_port)
    g.add_argument("--no-report", action="store_true", help="do not write report.html")
    from pipelines import decontaminate  # eval decontamination flags (--decontaminate DATASET...)

    decontaminate.add_arguments(parser)


def config_from_args(args: argparse.Namespace) -> WitImagesConfig:
    """Typed config from parsed flags; serving images adds 127.0.0.1 to the allow-list."""
    allow = parse_allow_networks(args.allow_network) + ((LOOPBACK,) if args.serve_images else ())
    return WitImagesConfig(
        guard=UrlGuardConfig(allow_private_networks=args.allow_private_networks,
                             allow_networks=tuple(dict.fromkeys(allow))),
        download=DownloadConfig(processes=args.processes, threads=args.threads, timeout_s=args.timeout,
                                shard_size=args.download_shard_size, retry_pass=not args.no_retry_pass),
        check=ImageCheckConfig(image_size=args.image_size, resize_mode=args.resize_mode,
                               max_pixels=args.max_pixels),
        dedup=ImageDedupConfig(threshold=args.dedup_threshold),
        shards=ShardConfig(shard_size=args.shard_size),
        serve_images=args.serve_images,
        serve_port=args.serve_port,
        report=not args.no_report,
    )


def read_selected(curation_dir: Path) -> pa.Table:
    """The selection (``selected/*.parquet``), sorted by uid; a clear error when missing."""
    folder = curation_dir / "selected"
    files = sorted(folder.glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"{folder}: no selected/*.parquet (run the curation stages first)")
    table = ds.dataset([str(f) for f in files], format="parquet").to_table()
    missing = {"uid", "url", "text"} - set(table.column_names)
    if missing:
        raise ValueError(f"{folder}: selection lacks columns {sorted(missing)}")
    return table.sort_by([("uid", "ascending")])


def fingerprint(selected: pa.Table, config: WitImagesConfig) -> dict:
    """What decides the image stages' results: the selected uids and the result-relevant
    settings (not processes, threads, timeouts or the local server)."""
    uids = xxhash.xxh3_128()
    for chunk in selected.column("uid").cast(pa.string()).chunks:
        for buffer in chunk.buffers()[1:]:
            uids.update(memoryview(buffer) if buffer is not None else b"")
    return {"selected_rows": len(selected), "selected_uids": uids.hexdigest(),
            "guard": asdict(config.guard), "check": asdict(config.check), "dedup": asdict(config.dedup),
            "shards": asdict(config.shards), "retry_pass": config.download.retry_pass,
            "disallowed_header_directives": list(config.download.disallowed_header_directives)}


def check_fingerprint(curation_dir: Path, selected: pa.Table, config: WitImagesConfig) -> None:
    """Record the run's fingerprint; refuse to resume a run made from other inputs/settings
    (its finished stages would be reused silently)."""
    path = curation_dir / "images_fingerprint.json"
    current = json.loads(json.dumps(fingerprint(selected, config)))
    if path.exists():
        previous = json.loads(path.read_text())
        if previous != current:
            changed = sorted(k for k in current if previous.get(k) != current[k])
            raise ValueError(f"{path}: this run's {changed} differ from the earlier image run in "
                             f"{curation_dir}; use a new --out, or remove its download/, checked/, "
                             "shards/, rejects/ and stats/ image files to start over")
        return
    write_bytes_atomic(path, (json.dumps(current, indent=2, sort_keys=True) + "\n").encode())


def guard_stage(curation_dir: Path, selected: pa.Table, config: UrlGuardConfig) -> pa.Table:
    """Stage ``urlguard``: the selected rows whose URL the SSRF guard allows."""
    if stage_done(curation_dir, "urlguard"):
        refused = ds.dataset(str(curation_dir / "rejects" / "urlguard"), format="parquet").to_table(columns=["uid"])
        return selected.filter(pc.invert(pc.is_in(selected.column("uid"), value_set=refused.column("uid"))))
    kept, rejected = UrlGuard(config)(selected.select(["uid", "url"]))
    write_rejects(curation_dir, "urlguard", rejected)
    write_stats(curation_dir, "urlguard", len(selected), len(kept), reject_counts(rejected))
    return selected.filter(pc.is_in(selected.column("uid"), value_set=kept.column("uid")))


def download_stage(curation_dir: Path, allowed: pa.Table, config: WitImagesConfig) -> pa.Table:
    """Stage ``download``: (uid, key, shard) of every image fetched; failures are rejects."""
    ok, rejected = download(allowed.select(["uid", "url"]), curation_dir / "download", config.download, config.guard)
    write_rejects(curation_dir, "download", rejected)
    write_stats(curation_dir, "download", len(allowed), len(ok), reject_counts(rejected))
    return ok


class CheckDownloadShards:
    """Ray Data callable (``batch_format="pyarrow"``): each row names one download shard
    (``tar``, ``uids``, ``keys``, ``name``, ``out``, ``rejects_dir``); its images are checked with
    :class:`~curation.image_check.ImageChecker`, the rejects then the checked part (the
    completion marker) are written atomically. Returns the counts per shard."""

    def __init__(self, config: ImageCheckConfig):
        self.checker = ImageChecker(config)

    def __call__(self, batch: pa.Table) -> pa.Table:
        counts = {"out": [], "kept": [], "rejected": []}
        for task in batch.to_pylist():
            images = read_download_shard(task["tar"], task["uids"], task["keys"])
            kept, rejected = self.checker(images)
            write_rejects(task["rejects_dir"], "imagecheck", rejected, part=task["name"])
            write_parquet_atomic(kept, task["out"])
            for key, value in (("out", task["out"]), ("kept", len(kept)), ("rejected", len(rejected))):
                counts[key].append(value)
        return pa.table(counts)


def check_tasks(curation_dir: Path, downloaded: pa.Table) -> pa.Table:
    """One task row per download shard holding fetched images, in shard order."""
    rows = []
    for shard in sorted(set(downloaded.column("shard").to_pylist())):
        mine = downloaded.filter(pc.equal(downloaded.column("shard"), shard))
        name = f"{Path(shard).parent.name}_{Path(shard).stem}"  # pass0_00000, retry_00000
        rows.append({"tar": shard, "uids": mine.column("uid").to_pylist(), "keys": mine.column("key").to_pylist(),
                     "name": name, "out": str(curation_dir / "checked" / f"{name}.parquet"),
                     "rejects_dir": str(curation_dir)})
    return pa.Table.from_pylist(rows) if rows else pa.table({"out": pa.array([], pa.string())})


def check_stage(curation_dir: Path, downloaded: pa.Table, config: WitImagesConfig) -> list[Path]:
    """Stage ``imagecheck`` on Ray Data, one task per download shard not checked yet: returns
    the checked parts (``checked/<pass>_NNNNN.parquet``) in shard order."""
    tasks = check_tasks(curation_dir, downloaded)
    todo = tasks.filter(pa.array([not Path(o).exists() for o in tasks.column("out").to_pylist()], pa.bool_()))
    if len(todo):
        ray = init_ray()
        workers = max(1, min(len(todo), int(ray.cluster_resources().get("CPU", 1))))
        blocks = [todo.slice(i, 1) for i in range(len(todo))]  # one block per shard: parallel, no shuffle
        ray.data.from_arrow(blocks).map_batches(
            CheckDownloadShards, fn_constructor_kwargs={"config": config.check}, batch_size=1,
            batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=1,
        ).materialize()
    parts = [Path(o) for o in tasks.column("out").to_pylist()]
    rejected = _read_parts(curation_dir / "rejects" / "imagecheck", ["uid", "reason"])
    kept = sum(pq.read_metadata(p).num_rows for p in parts)
    write_stats(curation_dir, "imagecheck", len(downloaded), kept, reject_counts(rejected))
    return parts


def _read_parts(folder: Path, columns: list[str]) -> pa.Table:
    files = sorted(folder.glob("*.parquet")) if folder.exists() else []
    if not files:
        return pa.table({c: pa.array([], pa.string()) for c in columns})
    return ds.dataset([str(f) for f in files], format="parquet").to_table(columns=columns)


def dedup_stage(curation_dir: Path, parts: list[Path], config: ImageDedupConfig) -> pa.Table:
    """Stage ``imagededup``: the uids kept (exact and near duplicates are rejects)."""
    hashes = ds.dataset([str(p) for p in parts], format="parquet").to_table(columns=["uid", "pixel_hash", "phash"])
    kept, rejected = deduplicate(hashes, config)
    write_rejects(curation_dir, "imagededup", rejected)
    write_stats(curation_dir, "imagededup", len(hashes), len(kept), reject_counts(rejected))
    return kept.select(["uid"])


def shard_stage(curation_dir: Path, selected: pa.Table, parts: list[Path], kept: pa.Table,
                config: ShardConfig) -> dict:
    """Stage ``shards``: kept images + their captions/metadata as final WebDataset shards."""
    if "source" not in selected.column_names:
        selected = selected.append_column("source", pa.nulls(len(selected), pa.string()))
    if "query_ids" not in selected.column_names:
        selected = selected.append_column("query_ids", pa.nulls(len(selected), pa.list_(pa.int32())))
    meta = selected.select(["uid", "url", "text", "query_ids", "source"])

    def samples():
        for part in parts:  # download-shard order, then img2dataset key order: deterministic
            table = pq.read_table(part)
            table = table.filter(pc.is_in(table.column("uid"), value_set=kept.column("uid")))
            rows = meta.take(pc.index_in(table.column("uid"), value_set=meta.column("uid")))
            columns = {"uid": table.column("uid"), **{c: rows.column(c) for c in ("url", "text", "query_ids", "source")}}
            columns.update({c: table.column(c) for c in ("jpg", "width", "height", "original_width", "original_height")})
            yield pa.table(columns)

    stats = write_shards(samples(), curation_dir / "shards", config)
    write_stats(curation_dir, "shards", len(kept), stats["samples"], {})
    return stats


def run(args: argparse.Namespace, curation_dir: str) -> dict:
    """Run the image stages on ``curation_dir`` (holding ``selected/*.parquet``); return a
    summary: per-stage stats, the shards dir and the report path. A finished run is a no-op."""
    configure_environment()
    config = config_from_args(args)
    root = Path(curation_dir)
    selected = read_selected(root)
    check_fingerprint(root, selected, config)
    if stage_done(root, "shards") and (root / "shards" / "stats.json").exists():
        return _summary(root, config, skipped=True)
    started = time.time()
    allowed = guard_stage(root, selected, config.guard)
    with _serving(config):
        downloaded = download_stage(root, allowed, config)
    parts = check_stage(root, downloaded, config)
    kept = dedup_stage(root, parts, config.dedup)
    if args.decontaminate:  # eval decontamination hook: pipelines/decontaminate.py
        from pipelines.decontaminate import config_from_args as decontaminate_config, decontaminate_stage

        kept = decontaminate_stage(root, parts, kept, decontaminate_config(args))
    shard_stage(root, selected, parts, kept, config.shards)
    if config.report:
        from curation.report import write_report

        write_report(root)
    return _summary(root, config, skipped=False, seconds=round(time.time() - started, 1))


@contextlib.contextmanager
def _serving(config: WitImagesConfig):
    if not config.serve_images:
        yield
        return
    from pipelines.serve_images import serving

    with serving(config.serve_images, port=config.serve_port):
        yield


def _summary(root: Path, config: WitImagesConfig, skipped: bool, seconds: float | None = None) -> dict:
    stages = ("urlguard", "download", "imagecheck", "imagededup", "shards")
    return {
        "stages": {s: read_stats(root, s) for s in stages if stage_done(root, s)},
        "shards_dir": str(root / "shards"),
        "shards": json.loads((root / "shards" / "stats.json").read_text()),
        "report": str(root / "report.html") if (root / "report.html").exists() else None,
        "skipped": skipped,
        "seconds": seconds,
    }


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
