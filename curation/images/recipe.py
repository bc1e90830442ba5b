"""The image half of a run: selection → guard → download → check → dedup → WebDataset shards.

Stages (the registry's :data:`curation.stage.IMAGE_STAGES`; each accounts for every row in
``stats/<stage>.json`` + ``rejects/<stage>/``): ``evaltext`` (only with ``--decontaminate``:
selected rows whose URL or normalised caption is an eval image's, reasons ``eval_url`` /
``eval_caption``, never downloaded) → ``urlguard`` → ``download`` (img2dataset + a
retry pass) → ``imagecheck`` (decode, bomb guard, resize, hashes) → ``imagededup`` →
``decontaminate`` (only with an eval index: training images whose pHash is within a Hamming
distance of an eval image's, reason ``eval_duplicate`` + the matched ``eval_id``) → ``shards``.
Everything is read and written through the run's :class:`~storage.layout.RunLayout`, so the run
dir may be an object store. The engine is handed in: ``map_check_tasks(tasks, check_config)``
runs :class:`CheckDownloadShards` over one task row per download shard (Ray Data in
``pipelines/wit_images.py``, :func:`check_in_process` without an engine). A rerun skips finished
work (the download is incremental, checked parts and matching shards are kept) and writes the
same bytes; a rerun over other inputs or settings stops with a message naming what changed.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from curation.images.check import ImageCheckConfig, ImageChecker
from curation.images.decontaminate import DecontaminateConfig, decontaminate_stage, evaltext_stage
from curation.images.dedup import ImageDedupConfig, deduplicate_distributed
from curation.images.download import DownloadConfig, download, read_download_shard, rows_by_node
from curation.images.fetch import node_name
from curation.images.holdout import heldout_of_hashes
from curation.images.shards import ShardConfig, finish_shards, plan_shards, write_shard
from curation.images.urlguard import UrlGuard, UrlGuardConfig
from curation.stage import (
    IMAGE_STAGES,
    MapTasks,
    StageStats,
    dropped_rows,
    in_process,
    read_stats,
    reject_counts,
    run_task_stage,
    stage_done,
    without_rejects,
    without_uids,
    write_rejects,
)
from curation.text.balance import salted_hashes, uid_hashes
from storage.layout import SPLITS, RunLayout, bucket_name, part_name, task_part_name


@dataclass(frozen=True)
class ImageStagesConfig:
    """Everything the image stages need."""

    guard: UrlGuardConfig = field(default_factory=UrlGuardConfig)  # SSRF policy
    download: DownloadConfig = field(default_factory=DownloadConfig)  # img2dataset settings
    check: ImageCheckConfig = field(default_factory=ImageCheckConfig)  # decode/bomb/resize
    dedup: ImageDedupConfig = field(default_factory=ImageDedupConfig)  # exact + pHash dedup
    shards: ShardConfig = field(default_factory=ShardConfig)  # final shard size
    decontaminate: DecontaminateConfig = field(default_factory=DecontaminateConfig)  # eval copies out
    report: bool = True  # write report.html + PNGs at the end


MapCheckTasks = Callable[[pa.Table, ImageCheckConfig], None]


def selected_parts(layout: RunLayout) -> list[str]:
    """The selection's part files (``selected/part-*.parquet``), in order."""
    return [f for f in layout.list(layout.selected_dir, ".parquet") if f.rsplit("/", 1)[-1].startswith("part-")]


def read_selected(layout: RunLayout) -> pa.Table:
    """The selection (``selected/part-*.parquet``), sorted by uid; a clear error when missing
    or when a part is unreadable (the error names it)."""
    files = selected_parts(layout)
    if not files:
        raise FileNotFoundError(f"{layout.selected_dir}: no part-*.parquet (run the curation stages first)")
    table = pa.concat_tables([layout.read_parquet(f) for f in files], promote_options="permissive")
    missing = {"uid", "url", "text"} - set(table.column_names)
    if missing:
        raise ValueError(f"{layout.selected_dir}: selection lacks columns {sorted(missing)}")
    return table.sort_by([("uid", "ascending")])


def fingerprint(selected: pa.Table, config: ImageStagesConfig) -> dict:
    """What decides the image stages' results: the selected uids and the result-relevant
    settings (not processes, threads, timeouts or the local server)."""
    uids = xxhash.xxh3_128()
    for chunk in selected.column("uid").cast(pa.string()).chunks:
        for buffer in chunk.buffers()[1:]:
            uids.update(memoryview(buffer) if buffer is not None else b"")
    body = {"selected_rows": len(selected), "selected_uids": uids.hexdigest(),
            "guard": asdict(config.guard), "check": asdict(config.check),
            "dedup": {k: v for k, v in asdict(config.dedup).items() if k != "buckets"},  # result-free
            "checked_parts": 2,  # v2: checked parts carry the captions and metadata
            "shards": asdict(config.shards), "decontaminate": asdict(config.decontaminate), "retry_pass": config.download.retry_pass,
            "disallowed_header_directives": list(config.download.disallowed_header_directives),
            "respect": asdict(config.download.respect)}
    return _jsonable(body)


def _jsonable(body: dict) -> dict:
    import json

    return json.loads(json.dumps(body, sort_keys=True, default=str))


def check_fingerprint(layout: RunLayout, selected: pa.Table, config: ImageStagesConfig) -> None:
    """Record the run's fingerprint; refuse to resume a run made from other inputs/settings
    (its finished stages would be reused silently), naming what changed."""
    current = fingerprint(selected, config)
    if layout.exists(layout.images_fingerprint):
        previous = layout.read_json(layout.images_fingerprint)
        if previous != current:
            changed = sorted(k for k in current if previous.get(k) != current[k])
            raise ValueError(f"{layout.images_fingerprint}: this run's {changed} differ from the earlier image "
                             f"run in {layout.curation}; use a new --out, or remove its download/, checked/, "
                             "shards/ and the image stages' rejects/ and stats/ to start over")
        return
    layout.write_json(layout.images_fingerprint, current)


class GuardTasks:
    """The URL guard's task body (picklable), one task per selection part: the part's URLs
    (less the rows ``evaltext`` rejected, when it ran) through :class:`~curation.images.urlguard.UrlGuard`
    (its DNS pre-check a thread pool in the task, a per-host cache, ``resolve_timeout_s``), the
    refused rows written as that part's rejects. Returns counts and the node."""

    def __init__(self, layout: RunLayout, config: UrlGuardConfig, after_evaltext: bool = False):
        self.layout, self.config, self.after_evaltext = layout, config, after_evaltext

    def __call__(self, item: tuple[int, str]) -> dict:
        index, uri = item
        table = self.layout.read_parquet(uri, ["uid", "url"])
        if self.after_evaltext:
            table = without_uids(table, self.layout.read_parquet(
                self.layout.reject_part("evaltext", part_name(index)), ["uid"]))
        kept, rejected = UrlGuard(self.config)(table)
        write_rejects(self.layout, "urlguard", rejected, part=part_name(index))
        return {"in": len(table), "out": len(kept), "rejected": reject_counts(rejected), "node": node_name()}


def guard_stage(layout: RunLayout, selected: pa.Table, config: UrlGuardConfig,
                map_tasks: MapTasks = in_process, after_evaltext: bool = False) -> pa.Table:
    """Stage ``urlguard`` as a task per selection part (:class:`GuardTasks`): the rows of
    ``selected`` (the selection, less ``evaltext``'s rejects when ``after_evaltext``) whose URL
    the SSRF guard allows. ``in`` is what the tasks read (checked against ``selected``)."""
    if not stage_done(layout, "urlguard"):
        run_task_stage(layout, "urlguard", GuardTasks(layout, config, after_evaltext),
                       list(enumerate(selected_parts(layout))), map_tasks, expect_in=len(selected))
    return without_rejects(layout, "urlguard", selected)


def download_stage(layout: RunLayout, allowed: pa.Table, config: ImageStagesConfig) -> pa.Table:
    """Stage ``download``: (uid, key, shard) of every image fetched; failures are rejects."""
    ok, rejected = download(allowed.select(["uid", "url"]), layout, config.download, config.guard)
    write_rejects(layout, "download", rejected)
    by_node = rows_by_node(layout, ok)
    StageStats("download", len(allowed), len(ok), reject_counts(rejected), {"by_node": by_node}).write(layout)
    return ok


META_COLUMNS = ("url", "text", "query_ids", "source")  # the selection's columns a shard sample carries


class CheckDownloadShards:
    """Engine callable over Arrow batches: each row names one download shard (``tar``, ``uids``,
    ``keys``, ``name``, ``out``, and the rows' ``url``, ``text``, ``query_ids``, ``source``); its
    images are checked with :class:`~curation.images.check.ImageChecker`, then the rejects and
    the checked part (kept images + their captions and metadata: everything a shard needs; the
    completion marker, written last) are written through the run layout. Returns counts."""

    def __init__(self, config: ImageCheckConfig, layout: RunLayout):
        self.checker, self.layout = ImageChecker(config), layout

    def __call__(self, batch: pa.Table) -> pa.Table:
        counts = {"out": [], "kept": [], "rejected": []}
        for task in batch.to_pylist():
            images = read_download_shard(self.layout, task["tar"], task["uids"], task["keys"])
            kept, rejected = self.checker(images)
            at = pc.index_in(kept.column("uid"), value_set=pa.array(task["uids"], pa.string()))
            for column, kind in zip(META_COLUMNS, (pa.string(), pa.string(), pa.list_(pa.int32()), pa.string())):
                kept = kept.append_column(column, pa.array(task[column], kind).take(at))
            write_rejects(self.layout, "imagecheck", rejected, part=task["name"])
            self.layout.write_json(self.layout.checked_node_record(task["name"]),
                                   {"node": node_name(), "rows": len(images)})
            self.layout.write_parquet(kept, task["out"])  # the completion marker, last
            for key, value in (("out", task["out"]), ("kept", len(kept)), ("rejected", len(rejected))):
                counts[key].append(value)
        return pa.table(counts)


def check_tasks(layout: RunLayout, downloaded: pa.Table, selected: pa.Table) -> pa.Table:
    """One task row per download shard holding fetched images, in shard order, each with its
    images in key order and their metadata from the selection (checked parts are named after
    their download shards; the final shards' order is :func:`sample_order`'s, not this one)."""
    if "source" not in selected.column_names:
        selected = selected.append_column("source", pa.nulls(len(selected), pa.string()))
    if "query_ids" not in selected.column_names:
        selected = selected.append_column("query_ids", pa.nulls(len(selected), pa.list_(pa.int32())))
    # img2dataset records rows in completion order; its keys follow the input order
    ordered = downloaded.sort_by([("shard", "ascending"), ("key", "ascending")])
    meta = selected.take(pc.index_in(ordered.column("uid"), value_set=selected.column("uid")))
    shards = ordered.column("shard").to_numpy(zero_copy_only=False)
    starts = np.flatnonzero(np.r_[True, shards[1:] != shards[:-1]]) if len(shards) else np.zeros(0, np.int64)
    rows = []
    for start, stop in zip(starts, [*starts[1:], len(shards)]):
        shard = str(shards[start])
        name = layout.checked_name(shard)  # pass0_00000, retry_00000
        piece, piece_meta = ordered.slice(start, stop - start), meta.slice(start, stop - start)
        rows.append({"tar": shard, "uids": piece.column("uid").to_pylist(), "keys": piece.column("key").to_pylist(),
                     "name": name, "out": layout.checked_part(name),
                     **{c: piece_meta.column(c).to_pylist() for c in META_COLUMNS}})
    return pa.Table.from_pylist(rows) if rows else pa.table({"out": pa.array([], pa.string())})


def check_in_process(layout: RunLayout) -> MapCheckTasks:
    """A ``map_check_tasks`` without an engine: every task in this process, in order."""

    def run(tasks: pa.Table, config: ImageCheckConfig) -> None:
        CheckDownloadShards(config, layout)(tasks)

    return run


def check_stage(layout: RunLayout, downloaded: pa.Table, selected: pa.Table, config: ImageStagesConfig,
                map_check_tasks: MapCheckTasks) -> list[str]:
    """Stage ``imagecheck``, one task per download shard not checked yet (run by
    ``map_check_tasks``): returns the checked parts in shard order. The checked rows are counted
    from the parts' footers and the rejects from their files; a part missing after the engine
    ran is an error naming it."""
    layout.clean_temp(layout.checked_dir)
    tasks = check_tasks(layout, downloaded, selected)
    todo = tasks.filter(pa.array([not layout.exists(o) for o in tasks.column("out").to_pylist()], pa.bool_()))
    if len(todo):
        map_check_tasks(todo, config.check)
    parts = tasks.column("out").to_pylist()
    missing = [p for p in parts if not layout.exists(p)]
    if missing:
        raise RuntimeError(f"image check parts missing after the check ran: {missing}")
    names = set(tasks.column("name").to_pylist()) if len(tasks) else set()
    reject_files = [f for f in layout.list(layout.rejects_dir("imagecheck"), ".parquet")
                    if f.rsplit("/", 1)[-1].removesuffix(".parquet") in names]
    rejected = layout.read_parquets(reject_files, ["uid", "reason"])
    kept = sum(layout.parquet_rows(p) for p in parts)
    by_node: dict[str, int] = {}
    for name in sorted(names):
        record = layout.checked_node_record(name)
        body = layout.read_json(record) if layout.exists(record) else {"node": "unknown", "rows": 0}
        by_node[body["node"]] = by_node.get(body["node"], 0) + int(body["rows"])
    StageStats("imagecheck", len(downloaded), kept, reject_counts(rejected), {"by_node": by_node}).write(layout)
    return parts


def dedup_stage(layout: RunLayout, parts: list[str], config: ImageDedupConfig, map_tasks: MapTasks) -> dict:
    """Stage ``imagededup`` as tasks (:func:`curation.images.dedup.deduplicate_distributed`):
    exact and near duplicates become rejects; returns the dedup's counts (``by_part``: rejects
    per checked part)."""
    result = deduplicate_distributed(layout, parts, config, map_tasks)
    rejected = result["rejected"]
    StageStats("imagededup", result["in"], result["in"] - sum(rejected.values()), rejected,
               {"buckets": result["buckets"]}).write(layout)
    return result


_ORDER_SALT = 0x73686172646F7264  # "shardord": the shard order's own draw (apart from holdout and balance)
MAX_ORDER_BUCKETS = 4096  # scatter buckets of the shard stage at most (about one per final shard)


def sample_order(uids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """The order of samples in the final shards: ``splitmix64(xxh3_64(uid) ^ salt)`` (uint64,
    ties broken by the uid), a pure function of the uid. Shard bytes and keys therefore depend
    only on the final samples and the shard size: never on download order, retries, node count,
    the download's shard size or parallelism."""
    return salted_hashes(uid_hashes(uids), _ORDER_SALT) if len(uids) else np.zeros(0, np.uint64)


def order_bucket(order: np.ndarray, buckets: int) -> np.ndarray:
    """Bucket of each order key: ``order * buckets / 2**64``, monotone in the key, so bucket
    ``b``'s samples all sort before bucket ``b + 1``'s."""
    return ((order >> np.uint64(32)) * np.uint64(buckets)) >> np.uint64(32)


class ShardTasks:
    """The shard stage's task bodies (picklable). ``mark``: a task per checked part; its rows
    that survived the dedup (and the decontamination), each with its order key
    (:func:`sample_order`) and split (held out or not), are scattered by order bucket to
    ``curation/shardplan/<split>/bNNNNN/pNNNNNN.parquet``; returns the rows per bucket.
    ``write``: a task per final shard; it reads the buckets its ranks fall in, sorts them by
    (order, uid) and streams its slice into the tar."""

    def __init__(self, layout: RunLayout, config: ShardConfig, buckets: int = 1):
        self.layout, self.config, self.buckets = layout, config, max(1, int(buckets))

    def _bucket_dir(self, split: str, bucket: int) -> str:
        return self.layout.scratch("shardplan", split, bucket_name(bucket))

    def mark(self, item: tuple[int, str]) -> dict:
        index, uri = item
        layout = self.layout
        table = layout.read_parquet(uri, list(SAMPLE_COLUMNS))
        dropped = dropped_rows(layout, ("imagededup", "decontaminate"), index, len(table))
        table = table.filter(pa.array(~dropped))
        uid_hash = uid_hashes(table.column("uid")) if len(table) else np.zeros(0, np.uint64)
        held = heldout_of_hashes(uid_hash, self.config.holdout_fraction)
        order = salted_hashes(uid_hash, _ORDER_SALT)  # = sample_order(uids), the uids hashed once
        bucket = order_bucket(order, self.buckets).astype(np.int64)
        table = table.append_column("order", pa.array(order, pa.uint64()))
        # one sort by (split, bucket), then a file per run of equal keys
        key = bucket + held.astype(np.int64) * self.buckets
        ranked = np.argsort(key, kind="stable")
        table, key = table.take(pa.array(ranked)), key[ranked]
        starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]]) if len(key) else np.zeros(0, np.int64)
        for start, stop in zip(starts, [*starts[1:], len(key)]):
            split, b = divmod(int(key[start]), self.buckets)
            layout.write_parquet(table.slice(start, stop - start),
                                 f"{self._bucket_dir(SPLITS[split], b)}/{task_part_name(index)}.parquet")
        counts = {split: np.bincount(bucket[mask], minlength=self.buckets).tolist()
                  for split, mask in (("shards", ~held), ("heldout", held))}
        return {"kept": len(table), "heldout": int(held.sum()), "counts": counts, "node": node_name()}

    def write(self, item: tuple[str, int, list[tuple[int, int, int]]]) -> dict:
        split, shard_id, ranges = item
        layout, pieces = self.layout, []
        for bucket, start, stop in ranges:
            files = layout.list(self._bucket_dir(split, bucket), ".parquet")
            rows = layout.read_parquets(files, [*SAMPLE_COLUMNS, "order"]).sort_by([("order", "ascending"),
                                                                                     ("uid", "ascending")])
            if len(rows) < stop:
                raise RuntimeError(f"shards: bucket {self._bucket_dir(split, bucket)} holds {len(rows)} rows, "
                                   f"the marks counted at least {stop}")
            pieces.append(rows.slice(start, stop - start).drop_columns(["order"]))
        table = pa.concat_tables(pieces) if pieces else None
        return {**write_shard(layout, shard_id, table, split), "node": node_name()}


SAMPLE_COLUMNS = ("uid", *META_COLUMNS, "jpg", "width", "height", "original_width", "original_height")


def shard_stage(layout: RunLayout, parts: list[str], config: ShardConfig, map_tasks: MapTasks,
                dedup_out: int | None = None) -> dict:
    """Stage ``shards`` as tasks: the kept images + captions/metadata of the checked ``parts`` as
    WebDataset shards, in the order of :func:`sample_order` (a pure function of the uids), cut
    every ``shard_size`` samples; with ``holdout_fraction`` a uid-hash share goes to
    ``heldout/`` instead. The marks scatter the samples to order buckets (about one per final
    shard, at most :data:`MAX_ORDER_BUCKETS`; the driver keeps the rows per bucket, never
    rows); shard ``k`` takes ranks ``k*shard_size..`` of the concatenated buckets. ``in`` is
    what the mark tasks count as kept (checked against ``dedup_out`` when given)."""
    expected = dedup_out if dedup_out is not None else sum(layout.parquet_rows(p) for p in parts)
    buckets = min(MAX_ORDER_BUCKETS, max(1, -(-expected // config.shard_size)))
    tasks = ShardTasks(layout, config, buckets)
    layout.remove_tree(layout.scratch("shardplan"))
    marks = map_tasks(tasks.mark, list(enumerate(parts)))
    rows_in = sum(m["kept"] for m in marks)
    if dedup_out is not None and rows_in != dedup_out:
        raise RuntimeError(f"shards: the dedup (and decontamination) kept {dedup_out} rows but their rejects "
                           f"leave {rows_in}: rows were lost")
    stats, by_node = {}, {}
    for split in ("shards", "heldout"):
        counts = np.sum([m["counts"][split] for m in marks], axis=0, dtype=np.int64).tolist() if marks else []
        if split == "heldout" and not config.holdout_fraction:
            layout.remove_tree(layout.split_dir("heldout"))
            continue
        layout.clean_temp(layout.split_dir(split))
        plan = plan_shards(counts, config.shard_size)
        written = map_tasks(tasks.write, [(split, k, ranges) for k, ranges in enumerate(plan)])
        for w in written:
            by_node[w["node"]] = by_node.get(w["node"], 0) + w["samples"]
        stats[split] = finish_shards(layout, written, config, split)
    layout.remove_tree(layout.scratch("shardplan"))
    heldout = stats.get("heldout", {}).get("samples", 0)
    StageStats("shards", rows_in, stats["shards"]["samples"] + heldout, {},
               {"heldout": heldout, "by_node": by_node, "order_buckets": buckets}).write(layout)
    return stats["shards"]


def run_image_stages(layout: RunLayout, config: ImageStagesConfig, map_check_tasks: MapCheckTasks,
                     serving: contextlib.AbstractContextManager | None = None, until: str = "all",
                     map_tasks: MapTasks = in_process) -> dict:
    """Run the image stages on the run's selection; return a summary (per-stage stats, the
    shards dir, the report URI). ``serving`` wraps the download (e.g. a local image server);
    ``until="download"`` stops after the download (a later run resumes there). A finished run
    is a no-op. ``map_tasks(fn, items)`` runs the dedup's and the shards' tasks (Ray tasks in
    pipelines/wit_images.py; in this process by default)."""
    selected = read_selected(layout)
    check_fingerprint(layout, selected, config)
    if stage_done(layout, "shards") and layout.exists(layout.shard_stats):
        return summary(layout, skipped=True)
    started = time.time()
    decontaminating = bool(config.decontaminate.datasets)
    candidates = evaltext_stage(layout, selected, selected_parts(layout), map_tasks) if decontaminating else selected
    allowed = guard_stage(layout, candidates, config.guard, map_tasks, after_evaltext=decontaminating)
    with serving or contextlib.nullcontext():
        downloaded = download_stage(layout, allowed, config)
    if until == "download":
        return {"stages": {s: read_stats(layout, s) for s in ("evaltext", "urlguard", "download") if stage_done(layout, s)},
                "until": "download"}
    parts = check_stage(layout, downloaded, selected, config, map_check_tasks)
    del selected, candidates, allowed, downloaded  # from here on the driver holds file names and counts
    dedup = dedup_stage(layout, parts, config.dedup, map_tasks)
    kept = dedup["in"] - sum(dedup["rejected"].values())
    if config.decontaminate.datasets:
        kept = decontaminate_stage(layout, parts, config.decontaminate, map_tasks, dedup_out=kept)
    shard_stage(layout, parts, config.shards, map_tasks, dedup_out=kept)
    if config.report:
        from curation.report import write_report

        write_report(layout)
    return summary(layout, skipped=False, seconds=round(time.time() - started, 1))


def summary(layout: RunLayout, skipped: bool, seconds: float | None = None) -> dict:
    """Per-stage stats of the image stages that ran, the shards and the report."""
    return {
        "stages": {s: read_stats(layout, s) for s in IMAGE_STAGES if stage_done(layout, s)},
        "shards_dir": layout.shards_dir,
        "shards": layout.read_json(layout.shard_stats),
        "report": layout.report_html if layout.exists(layout.report_html) else None,
        "skipped": skipped,
        "seconds": seconds,
    }
