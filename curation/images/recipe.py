"""The image half of a run: selection → guard → download → check → dedup → WebDataset shards.

Stages (the registry's :data:`curation.stage.IMAGE_STAGES`; each accounts for every row in
``stats/<stage>.json`` + ``rejects/<stage>/``): ``evaltext`` (only with ``--decontaminate``:
selected rows whose URL or normalised caption is an eval image's, reasons ``eval_url`` /
``eval_caption``, never downloaded) → ``urlguard`` → ``download`` (img2dataset + a
retry pass) → ``imagecheck`` (decode, bomb guard, resize, hashes) → ``imagededup`` →
``decontaminate`` (only with an eval index: training images whose pHash is within a Hamming
distance of an eval image's, reason ``eval_duplicate`` + the matched ``eval_id``) → ``shards``.
Everything is read and written through the run's :class:`~storage.layout.RunLayout`, so the run
dir may be an object store.

**The driver holds no rows.** The first four stages are one pipeline of tasks
(:func:`fetch_stages`, :class:`PartTasks`): a task per selection part (evaltext + guard, cut
into download shards), and as each part is ready, a task per download shard (img2dataset's
downloader + the retry of its transient failures, then the image check and hashes), so a
part's downloads and checks run while other parts are still prepared and fetched. The driver
sums each task's small count record; only the global steps wait for every part: the dedup's
union, the decontamination and the shard plan, each run as tasks over groups of checked parts
(:func:`checked_groups`). Every task writes its completion marker last and returns its
recorded counts when it finds it, so a rerun after a lost worker, node or driver redoes only
unfinished tasks and its counts (and bytes) are the same; each stage's ``in`` is checked
against the ``out`` of the stage before. The engine is handed in: ``pipe`` (the pipeline) and
``map_tasks`` (the global steps) — Ray in ``pipelines/images_ray.py``, a local process pool
(:func:`curation.stage.process_pipe`) or this process (the defaults). A rerun over other inputs
or settings stops with a message naming what changed.
"""

from __future__ import annotations

import contextlib
import functools
import json
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from curation.images.check import SAFETY_SCHEMA, ImageCheckConfig, ImageChecker
from curation.images.decontaminate import DecontaminateConfig, decontaminate_stage, evaltext_rejects
from curation.images.dedup import ImageDedupConfig, deduplicate_distributed, group_files, read_group
from curation.images.download import DownloadConfig, download, read_download_shard
from curation.images.fetch import node_name
from curation.images.holdout import heldout_of_hashes
from curation.images.politeness import limiter_report
from curation.images.safety import (
    FACE_DETECTOR,
    NSFW_DETECTOR,
    SafetyConfig,
    caption_rejects,
    list_identities,
    safety_fingerprint,
)
from curation.images.shards import ShardConfig, finish_shards, plan_shards, publish_balance, write_shard
from curation.images.urlguard import UrlGuard, UrlGuardConfig
from curation.stage import (
    IMAGE_STAGES,
    MapTasks,
    PipeTasks,
    StageStats,
    Tally,
    dropped_rows,
    in_process,
    pipelined_in_process,
    read_stats,
    reject_counts,
    stage_done,
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
    safety: SafetyConfig = field(default_factory=SafetyConfig)  # hash lists, NSFW, faces
    report: bool = True  # write report.html + PNGs at the end


def fingerprint(layout: RunLayout, parts: list[str], config: ImageStagesConfig, map_tasks: MapTasks) -> dict:
    """What decides the image stages' results: the selected uids (a digest per part, computed
    in tasks) and the result-relevant settings (not processes, threads, timeouts or the local
    server)."""
    digests = map_tasks(PartTasks(layout, config).digest, parts)
    uids = xxhash.xxh3_128()
    for d in digests:
        uids.update(d["uids"].encode())
    body = {"selected_rows": sum(d["rows"] for d in digests), "selected_uids": uids.hexdigest(),
            "guard": asdict(config.guard), "check": asdict(config.check),
            "dedup": {k: v for k, v in asdict(config.dedup).items() if k != "buckets"},  # result-free
            "layout": 5,  # v5: + the release-safety stages (safetytext, hashlist, safety) and their columns
            "safety": safety_fingerprint(config.safety),  # the lists' identities (digests), never their paths
            "download_shard_size": config.download.shard_size,
            "shards": asdict(config.shards), "decontaminate": asdict(config.decontaminate),
            "retry_pass": config.download.retry_pass, "max_bytes": config.download.max_bytes,
            "disallowed_header_directives": list(config.download.disallowed_header_directives),
            "respect": asdict(config.download.respect)}
    return json.loads(json.dumps(body, sort_keys=True, default=str))


def check_fingerprint(layout: RunLayout, current: dict) -> None:
    """Record the run's fingerprint; refuse to resume a run made from other inputs/settings
    (its finished stages would be reused silently), naming what changed."""
    if layout.exists(layout.images_fingerprint):
        previous = layout.read_json(layout.images_fingerprint)
        if previous != current:
            changed = sorted(k for k in current if previous.get(k) != current[k])
            raise ValueError(f"{layout.images_fingerprint}: this run's {changed} differ from the earlier image "
                             f"run in {layout.curation}; use a new --out, or remove its download/, checked/, "
                             "shards/ and the image stages' rejects/ and stats/ to start over")
        return
    layout.write_json(layout.images_fingerprint, current)


def selected_parts(layout: RunLayout) -> list[str]:
    """The selection's part files (``selected/part-*.parquet``), in order; a clear error when
    there are none."""
    files = [f for f in layout.list(layout.selected_dir, ".parquet") if f.rsplit("/", 1)[-1].startswith("part-")]
    if not files:
        raise FileNotFoundError(f"{layout.selected_dir}: no part-*.parquet (run the curation stages first)")
    return files


META_COLUMNS = ("url", "text", "query_ids", "source", "language")  # the selection's columns a shard sample carries
META_TYPES = (pa.string(), pa.string(), pa.list_(pa.int32()), pa.string(), pa.string())  # (language: worldwide only)


def with_meta_columns(table: pa.Table, uri: str) -> pa.Table:
    """A selection part's ``uid`` + :data:`META_COLUMNS` (``query_ids`` and ``source`` null when
    the part lacks them); a part without ``uid``, ``url`` or ``text`` is an error naming it."""
    missing = {"uid", "url", "text"} - set(table.column_names)
    if missing:
        raise ValueError(f"{uri}: the selection part lacks columns {sorted(missing)}")
    columns = {"uid": table.column("uid").cast(pa.string())}
    for name, kind in zip(META_COLUMNS, META_TYPES):
        columns[name] = table.column(name).cast(kind) if name in table.column_names else pa.nulls(len(table), kind)
    return pa.table(columns)


class PartTasks:
    """The task bodies of the per-part pipeline (picklable; an engine ships them to any node).

    ``digest``: a selection part's row count and uid digest (the fingerprint's input).
    ``prepare``, one per selection part: its rows less ``evaltext``'s rejects (with
    ``--decontaminate``) and the URL guard's (:class:`~curation.images.urlguard.UrlGuard`, DNS
    pre-check in a thread pool) are cut into download shards of ``shard_size`` rows
    (``download/pNNNNNN/rows/KKKKK.parquet``, each row with the metadata its sample carries);
    the part's counts and shard count go to ``download/pNNNNNN/_part.json``, written last.
    ``fetch_check``, one per download shard: img2dataset's downloader fetches it (+ the retry
    of its transient failures), :class:`~curation.images.check.ImageChecker` decodes, guards,
    resizes and hashes the images, and the kept ones with their metadata (joined by uid from
    the shard's rows file) become ``checked/pNNNNNN_KKKKK.parquet``, written last after the
    rejects and the task's counts (``checked/_nodes/<name>.json``). A task whose last file
    exists returns its recorded counts without work, so a rerun resumes where the last one
    stopped and the counts are the same."""

    def __init__(self, layout: RunLayout, config: ImageStagesConfig, decontaminating: bool = False, limiter=None,
                 list_digests: tuple[str, ...] = ()):
        self.layout, self.config, self.decontaminating = layout, config, decontaminating
        self.limiter = limiter  # the run's host limiter (curation.images.politeness), shared by every download
        self.list_digests = list_digests  # the SHA-256 of each hash list as the run recorded it: workers check theirs

    def digest(self, uri: str) -> dict:
        table = self.layout.read_parquet(uri, ["uid"])
        digest = xxhash.xxh3_128()
        for chunk in table.column("uid").cast(pa.string()).chunks:
            for buffer in chunk.buffers()[1:]:
                digest.update(memoryview(buffer) if buffer is not None else b"")
        return {"rows": len(table), "uids": digest.hexdigest()}

    def prepare(self, item: tuple[int, str]) -> dict:
        index, uri = item
        layout, config = self.layout, self.config
        manifest = layout.download_manifest(index)
        if layout.exists(manifest):
            return layout.read_json(manifest)
        table = with_meta_columns(layout.read_parquet(uri), uri)
        result: dict = {"part": index, "node": node_name()}
        if self.decontaminating:
            rejected = evaltext_rejects(layout, table)
            write_rejects(layout, "evaltext", rejected, part=part_name(index))
            result["evaltext"] = {"in": len(table), "out": len(table) - len(rejected),
                                  "rejected": reject_counts(rejected)}
            table = without_uids(table, rejected)
        unsafe = caption_rejects(table.column("text").to_pylist(), config.safety.nsfw_words)
        rejected = table.filter(pa.array(unsafe)).select(["uid", "url"])
        rejected = rejected.append_column("reason", pa.array(["nsfw_caption"] * len(rejected), pa.string()))
        write_rejects(layout, "safetytext", rejected, part=part_name(index))
        result["safetytext"] = {"in": len(table), "out": len(table) - len(rejected), "rejected": reject_counts(rejected)}
        table = table.filter(pa.array(~unsafe))
        started = time.perf_counter()
        kept, rejected = UrlGuard(config.guard)(table)
        write_rejects(layout, "urlguard", rejected.select(["uid", "reason", "url"]), part=part_name(index))
        result["urlguard"] = {"in": len(table), "out": len(kept), "rejected": reject_counts(rejected),
                              "seconds": round(time.perf_counter() - started, 3)}
        size = config.download.shard_size
        hosts = url_hosts(kept.column("url"))
        result["hosts"] = largest_hosts(hosts)
        kept = kept.take(host_cut(hosts, kept.column("uid"), size))
        shards = -(-len(kept) // size)
        for k in range(shards):
            layout.write_parquet(kept.slice(k * size, size).select(["uid", *META_COLUMNS]),
                                 layout.download_rows(index, k))
        result["then"] = [(index, k) for k in range(shards)]
        layout.write_json(manifest, result)  # the part's completion marker, last
        return result

    def fetch_check(self, item: tuple[int, int]) -> dict:
        index, shard = item
        layout, config = self.layout, self.config
        name = layout.checked_name(index, shard)
        record, out = layout.checked_node_record(name), layout.checked_part(name)
        if layout.exists(out) and layout.exists(record):
            remove_fetched(layout, index, shard)  # left by a task that died right after its marker
            return layout.read_json(record)
        rows = layout.read_parquet(layout.download_rows(index, shard))
        started = time.perf_counter()
        ok, failed = download(rows.select(["uid", "url"]), layout, index, shard, config.download, config.guard,
                              self.limiter)
        write_rejects(layout, "download", failed, part=name)
        pieces = [read_download_shard(layout, tar, piece.column("uid").to_pylist(), piece.column("key").to_pylist())
                  for tar, piece in _by_tar(ok)]
        images = pa.concat_tables(pieces) if pieces else pa.table(
            {"uid": pa.array([], pa.string()), "image": pa.array([], pa.binary())})
        fetched = time.perf_counter()
        checker = worker_checker(config.check, config.safety, self.list_digests)
        blurred = checker.blurred
        kept, rejected, removed = checker(images)
        blurred = checker.blurred - blurred
        at = pc.index_in(kept.column("uid"), value_set=rows.column("uid"))
        for column in META_COLUMNS:
            kept = kept.append_column(column, rows.column(column).take(at))
        counts = _split_check_rejects(images, kept, rejected, fetched)
        stage_of = np.array([_stage_of_reason(r) for r in rejected.column("reason").to_pylist()], dtype=object)
        for stage in ("hashlist", "imagecheck", "safety"):
            write_rejects(layout, stage, rejected.filter(pa.array(stage_of == stage, pa.bool_())), part=name)
        if len(removed):  # the removed-links ledger: URL, list, kind, the image's hash, distance (never bytes)
            urls = rows.column("url").take(pc.index_in(removed.column("uid"), value_set=rows.column("uid")))
            layout.write_parquet(pa.table({"uid": removed.column("uid"), "url": urls,
                                           **{c: removed.column(c) for c in ("list", "kind", "hash", "distance")},
                                           "source": pa.array(["download"] * len(removed), pa.string())}),
                                 layout.removed_part(name))
        elif layout.exists(layout.removed_part(name)):  # an earlier try's (a list since changed is refused)
            layout.remove(layout.removed_part(name))
        counts["safety"]["sums"]["blurred"] = blurred
        if "pdq_quality" in kept.column_names and len(kept):  # kept images whose PDQ was too flat to match
            low = pc.less(kept.column("pdq_quality"), config.safety.pdq_min_quality)
            counts["hashlist"]["sums"] = {"pdq_low_quality": int(pc.sum(low).as_py() or 0)}
        body = {"name": name, "node": node_name(),
                "download": {"in": len(rows), "out": len(ok), "rejected": reject_counts(failed),
                             "seconds": round(fetched - started, 3)}, **counts}
        layout.write_json(record, body)
        layout.write_parquet(kept, out)  # the completion marker
        remove_fetched(layout, index, shard)  # then no fetched bytes outlive the check (hash-list matches included)
        return body


STAGE_REASONS = {"hashlist": ("hashlist_match",), "safety": ("nsfw",)}  # the rest of the checker's are imagecheck's


def _stage_of_reason(reason: str) -> str:
    return next((stage for stage, reasons in STAGE_REASONS.items() if reason in reasons), "imagecheck")


def _split_check_rejects(images: pa.Table, kept: pa.Table, rejected: pa.Table, started: float) -> dict:
    """The checker's one pass as three stages' counts, in data-flow order: ``hashlist`` (every
    fetched image), ``imagecheck`` (what the lists left), ``safety`` (what the check kept); the
    ``safety`` counts add the images scored and the faces found and blurred."""
    reasons = reject_counts(rejected)
    by_stage = {stage: {r: n for r, n in reasons.items() if _stage_of_reason(r) == stage}
                for stage in ("hashlist", "imagecheck", "safety")}
    counts, rows_in = {}, len(images)
    for stage in ("hashlist", "imagecheck", "safety"):
        out = rows_in - sum(by_stage[stage].values())
        counts[stage] = {"in": rows_in, "out": out, "rejected": by_stage[stage]}
        rows_in = out
    if len(kept) != rows_in:
        raise RuntimeError(f"imagecheck: {len(images)} images, {len(kept)} kept and {len(rejected)} rejected do not add up")
    counts["imagecheck"]["seconds"] = round(time.perf_counter() - started, 3)
    faces = kept.column("face_bboxes").to_pylist() if "face_bboxes" in kept.column_names else []
    scores = kept.column("nsfw_score") if "nsfw_score" in kept.column_names else pa.array([], pa.float64())
    counts["safety"]["sums"] = {  # images given an NSFW score (the kept and the rejected), faces found
        "scored": len(scores) - scores.null_count + reasons.get("nsfw", 0),
        "images_with_faces": sum(1 for f in faces if f), "faces": sum(len(f) for f in faces if f)}
    return counts


def remove_fetched(layout: RunLayout, index: int, shard: int) -> None:
    """Delete the fetched bytes of a checked download shard (img2dataset's tar of each pass):
    the kept images live on, checked and resized, in ``checked/``; nothing else -- a hash-list
    match least of all -- stays in the run's scratch. The passes' result tables (status per
    row, no bytes) stay."""
    for name in ("pass0", "retry"):
        tar = f"{layout.download_pass(index, name)}/{shard:05d}.tar"
        if layout.exists(tar):
            layout.remove(tar)


def sweep_fetched(layout: RunLayout, parts: int) -> None:
    """After the pipeline: remove any fetched tar still in the ``parts`` selection parts'
    download dirs (a task that died between writing its marker and its clean-up)."""
    for index in range(parts):
        for name in ("pass0", "retry"):
            for tar in layout.list(layout.download_pass(index, name), ".tar"):
                layout.remove(tar)


@functools.lru_cache(maxsize=4)
def worker_checker(config: ImageCheckConfig, safety: SafetyConfig | None = None,
                   list_digests: tuple[str, ...] = ()) -> ImageChecker:
    """One image checker (and its safety models and hash lists, checked against ``list_digests``)
    per worker process and config (the engine ships a fresh task object with every task; this
    cache lives as long as the worker)."""
    return ImageChecker(config, safety, list_digests)


HOST_PATTERN = r"^[A-Za-z][A-Za-z0-9+.-]*://(?:[^@/?#]*@)?(?P<host>\[[^\]]*\]|[^:/?#]*)"
TOP_HOSTS = 20  # hosts per part (and in the stats) with the most URLs


def url_hosts(urls: pa.ChunkedArray) -> pa.ChunkedArray:
    """Each URL's host as the politeness limiter keys it (``urlsplit(url).hostname``: lower
    case, no user or port, IPv6 without brackets), in one batch operation; null when none."""
    return pc.utf8_trim(pc.utf8_lower(pc.struct_field(pc.extract_regex(urls, HOST_PATTERN), "host")), "[]")


def host_cut(hosts: pa.ChunkedArray, uids: pa.ChunkedArray, size: int) -> np.ndarray:
    """The row order of a part's download shards of ``size`` rows: a host's URLs together
    (sorted by host, then uid), so a slow or rate-limited host holds few shards; inside each
    shard its hosts interleaved (round robin), so the shard's threads fetch from all of them at
    once instead of queueing behind one host's turns. The final shards' order does not depend
    on this cut."""
    by_host = pc.sort_indices(pa.table({"host": hosts, "uid": uids}), [("host", "ascending"), ("uid", "ascending")])
    names = pc.fill_null(hosts.take(by_host), "").to_numpy(zero_copy_only=False)
    n = len(names)
    if n == 0:
        return by_host.to_numpy()
    starts = np.r_[True, names[1:] != names[:-1]]  # a host's first row (in host order)
    group = np.cumsum(starts) - 1
    position = np.arange(n)
    shard = position // size
    # the row's turn among its host's rows in its shard
    rank = position - np.maximum(np.flatnonzero(starts)[group], shard * size)
    return by_host.to_numpy()[np.lexsort((group, rank, shard))]


def largest_hosts(hosts: pa.ChunkedArray) -> dict[str, int]:
    """The :data:`TOP_HOSTS` hosts with the most URLs: ``{host: urls}``."""
    counts = pc.value_counts(pc.fill_null(hosts, ""))  # one batch op; only the top rows reach Python
    table = pa.table({"host": counts.field("values"), "urls": counts.field("counts")})
    top = table.sort_by([("urls", "descending"), ("host", "ascending")]).slice(0, TOP_HOSTS)
    return dict(zip(top.column("host").to_pylist(), top.column("urls").to_pylist()))


def host_skew(part_hosts: dict[str, int], politeness) -> list[dict]:
    """The largest hosts over all parts (each part's :data:`TOP_HOSTS` summed: a lower bound
    for a host outside some part's top list) with the time their rate limit alone imposes on
    the download (``urls / rate``; a lower bound for the stage's wall time)."""
    overrides = politeness.overrides()
    out = []
    for host, urls in sorted(part_hosts.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_HOSTS]:
        rate, _ = politeness.limits_for(host, overrides)
        out.append({"host": host, "urls": urls, "rate": rate or None,
                    "min_seconds": round(urls / rate, 1) if rate else None})
    return out


def _by_tar(ok: pa.Table) -> list[tuple[str, pa.Table]]:
    """The downloaded rows grouped by the tar holding them (pass0, retry), in key order."""
    ok = ok.sort_by([("shard", "ascending"), ("key", "ascending")])
    return [(tar, ok.filter(pc.equal(ok.column("shard"), tar))) for tar in pc.unique(ok.column("shard")).to_pylist()]


def fetch_stages(layout: RunLayout, config: ImageStagesConfig, pipe: PipeTasks, decontaminating: bool,
                 selected_rows: int, limiter=None,
                 identities: dict | None = None) -> tuple[list[tuple[str, int]], dict[str, float]]:
    """Stages ``evaltext`` (with ``decontaminating``), ``urlguard``, ``download`` and
    ``imagecheck`` as one pipeline (:class:`PartTasks`: a task per selection part, then a task
    per download shard as soon as its part is prepared, while other parts are prepared and
    fetched): the driver sums the tasks' counts and keeps, per download shard, its checked
    part's name and kept rows. Every stage's ``in`` is checked against the ``out`` of the one
    before (the first against ``selected_rows``, counted by the digest tasks); returns
    ``[(checked part, rows)]`` in name order and the tasks' seconds per stage (summed over
    tasks; this run's, not in the stats files, which depend only on the results)."""
    if identities is None:  # the lists' names, sizes and digests (the fingerprint's, when it is at hand)
        identities = list_identities(config.safety)
    tasks = PartTasks(layout, config, decontaminating, limiter,
                      tuple(identity["sha256"] for identity in identities["hash_list_files"]))
    part_hosts: dict[str, int] = {}  # the parts' largest hosts, summed (at most TOP_HOSTS per part)
    tallies = {stage: Tally(stage, "out" if stage == "download" else "in") for stage in FETCH_STAGES}
    checked: list[tuple[str, int]] = []
    parts = selected_parts(layout)
    for kind, result in pipe(tasks.prepare, tasks.fetch_check, list(enumerate(parts))):
        for stage in (FETCH_STAGES[:3] if kind == "first" else FETCH_STAGES[3:]):
            if stage in result:
                tallies[stage].add(result[stage], result["node"])
        if kind == "first":
            for host, urls in result.get("hosts", {}).items():
                part_hosts[host] = part_hosts.get(host, 0) + urls
        if kind == "then":
            checked.append((layout.checked_part(result["name"]), int(result["safety"]["out"])))
    rows_in = selected_rows
    if decontaminating:
        evals = layout.read_parquet(layout.eval_text_index, ["url", "caption_key"])
        tallies["evaltext"].write(layout, rows_in, {
            "eval_urls": evals.column("url").length() - evals.column("url").null_count,
            "eval_captions": evals.column("caption_key").length() - evals.column("caption_key").null_count})
        rows_in = tallies["evaltext"].rows_out
    safety = config.safety
    extras = {
        "safetytext": {"words": identities["nsfw_words_file"]},
        "download": {"largest_hosts": host_skew(part_hosts, config.download.politeness)},
        "hashlist": {"lists": identities["hash_list_files"], "pdq_threshold": safety.pdq_threshold},
        "safety": {"nsfw_detector": NSFW_DETECTOR if safety.nsfw else None,
                   "nsfw_threshold": safety.nsfw_threshold if safety.nsfw else None,
                   "face_detector": FACE_DETECTOR if safety.faces else None, "blur_faces": safety.blur_faces}}
    for stage in FETCH_STAGES[1:]:
        tallies[stage].write(layout, rows_in, extras.get(stage))
        rows_in = tallies[stage].rows_out
    sweep_fetched(layout, len(parts))  # fetched bytes of tasks that died between their marker and the clean-up
    return sorted(checked), {stage: round(t.seconds, 1) for stage, t in tallies.items() if t.seconds}


FETCH_STAGES = ("evaltext", "safetytext", "urlguard", "download", "hashlist", "imagecheck", "safety")  # per-part pipeline's

GROUP_ROWS = 20_000  # checked rows per task of the global steps (dedup scatter, decontamination, shard marks)


def checked_groups(checked: list[tuple[str, int]], rows: int = GROUP_ROWS) -> list[list[str]]:
    """Consecutive checked parts (in name order) in groups of about ``rows`` rows: the unit of
    the global steps' tasks (a group's rows are its parts' rows in order; empty parts are left
    out), so a task holds about ``rows`` images whatever the download shard size."""
    groups: list[list[str]] = []
    size = 0
    for uri, n in checked:
        if not n:
            continue
        if not groups or size + n > rows:
            groups.append([])
            size = 0
        groups[-1].append(uri)
        size += n
    return groups


def dedup_stage(layout: RunLayout, parts: list, config: ImageDedupConfig, map_tasks: MapTasks,
                rows: int | None = None) -> dict:
    """Stage ``imagededup`` as tasks (:func:`curation.images.dedup.deduplicate_distributed`)
    over the checked groups ``parts`` (``rows`` of them): exact and near duplicates become
    rejects; returns the dedup's counts (``by_part``: rejects per checked group)."""
    result = deduplicate_distributed(layout, parts, config, map_tasks, rows=rows)
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

    def mark(self, item: tuple[int, str | list[str]]) -> dict:
        index, group = item
        layout = self.layout
        table = read_group(layout, group, list(SAMPLE_BASE), optional=OPTIONAL_SCHEMA)
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


OPTIONAL_SCHEMA = pa.schema([*SAFETY_SCHEMA, pa.field("language", pa.string())])  # null where a part lacks them
SAMPLE_BASE = ("uid", *(c for c in META_COLUMNS if c != "language"), "jpg", "width", "height", "original_width",
               "original_height")
SAMPLE_COLUMNS = (*SAMPLE_BASE, *OPTIONAL_SCHEMA.names)


def shard_stage(layout: RunLayout, parts: list, config: ShardConfig, map_tasks: MapTasks,
                dedup_out: int | None = None) -> dict:
    """Stage ``shards`` as tasks: the kept images + captions/metadata of the checked ``parts`` as
    WebDataset shards, in the order of :func:`sample_order` (a pure function of the uids), cut
    every ``shard_size`` samples; with ``holdout_fraction`` a uid-hash share goes to
    ``heldout/`` instead; online balancing's metadata goes beside the training shards
    (:func:`~curation.images.shards.publish_balance`). The marks scatter the samples to order
    buckets (about one per final shard, at most :data:`MAX_ORDER_BUCKETS`; the driver keeps the
    rows per bucket, never rows); shard ``k`` takes ranks ``k*shard_size..`` of the concatenated
    buckets. ``in`` is what the mark tasks count as kept (checked against ``dedup_out`` when given)."""
    expected = dedup_out if dedup_out is not None else sum(
        layout.parquet_rows(f) for p in parts for f in group_files(p))
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
    publish_balance(layout)
    layout.remove_tree(layout.scratch("shardplan"))
    heldout = stats.get("heldout", {}).get("samples", 0)
    StageStats("shards", rows_in, stats["shards"]["samples"] + heldout, {},
               {"heldout": heldout, "by_node": by_node, "order_buckets": buckets}).write(layout)
    return stats["shards"]


def run_image_stages(layout: RunLayout, config: ImageStagesConfig, pipe: PipeTasks = pipelined_in_process,
                     serving: contextlib.AbstractContextManager | None = None, until: str = "all",
                     map_tasks: MapTasks = in_process, limiter=None) -> dict:
    """Run the image stages on the run's selection; return a summary (per-stage stats, the
    shards dir, the report URI). ``pipe`` runs the per-part pipeline (guard → download →
    check: :func:`fetch_stages`; Ray tasks in pipelines/images_ray.py), ``map_tasks(fn,
    items)`` the digests' and the global steps' tasks (dedup, decontamination, shards).
    ``serving`` wraps the pipeline (e.g. a local image server); ``until="download"`` stops
    after it (downloaded and checked; a later run resumes there). ``limiter``: the run's host
    limiter shared by the download tasks (:mod:`curation.images.politeness`; None: one per
    worker process -- the whole run's only with ``pipe`` in process). The driver holds file names and counts, never
    rows. A finished run is a no-op."""
    parts = selected_parts(layout)
    current = fingerprint(layout, parts, config, map_tasks)
    check_fingerprint(layout, current)
    if stage_done(layout, "shards") and layout.exists(layout.shard_stats):
        publish_balance(layout)  # a rerun of an online selection with another seed or t: same shards, new draw
        return summary(layout, skipped=True)
    started = time.time()
    decontaminating = bool(config.decontaminate.datasets)
    with serving or contextlib.nullcontext():
        checked, task_seconds = fetch_stages(layout, config, pipe, decontaminating, current["selected_rows"], limiter,
                                             identities=current["safety"])  # the lists read once, by the fingerprint
    hosts = limiter_report(limiter) if limiter is not None else None  # turns per host: requests, waits, trips
    if until == "download":
        return {"stages": {s: read_stats(layout, s) for s in FETCH_STAGES if stage_done(layout, s)}, "until": "download", "task_seconds": task_seconds,
                "hosts": hosts}
    groups = checked_groups(checked)
    rows = sum(n for _, n in checked)
    del checked  # from here on the driver holds the groups' file names and counts
    dedup = dedup_stage(layout, groups, config.dedup, map_tasks, rows=rows)
    kept = dedup["in"] - sum(dedup["rejected"].values())
    if decontaminating:
        kept = decontaminate_stage(layout, groups, config.decontaminate, map_tasks, dedup_out=kept)
    shard_stage(layout, groups, config.shards, map_tasks, dedup_out=kept)
    from curation.datasheet import write_datasheet

    write_datasheet(layout)  # <out>/datasheet.md + .json from the ledgers (the report links it)
    if config.report:
        from curation.report import write_report

        write_report(layout)
    return {**summary(layout, skipped=False, seconds=round(time.time() - started, 1)), "task_seconds": task_seconds,
            "hosts": hosts}


def summary(layout: RunLayout, skipped: bool, seconds: float | None = None) -> dict:
    """Per-stage stats of the image stages that ran, the shards and the report."""
    return {
        "stages": {s: read_stats(layout, s) for s in IMAGE_STAGES if stage_done(layout, s)},
        "shards_dir": layout.shards_dir,
        "shards": layout.read_json(layout.shard_stats),
        "report": layout.report_html if layout.exists(layout.report_html) else None,
        "datasheet": layout.datasheet_md if layout.exists(layout.datasheet_md) else None,
        "skipped": skipped,
        "seconds": seconds,
    }
