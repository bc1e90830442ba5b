"""Download the guarded selection with img2dataset, then retry failed URLs across all shards.

Layout under ``<curation_dir>/download/``::

    input/urls.parquet          the rows to fetch (uid, url), as img2dataset's input
    pass0/NNNNN.tar|.parquet    img2dataset output (webdataset; per-shard parquet + stats)
    retry/input/urls.parquet    rows whose failure looks transient, re-fetched once more
    retry/NNNNN.tar|.parquet

img2dataset is asked to keep the bytes it fetched (``disable_all_reencoding``): decoding,
the decompression-bomb check and the resize happen in :mod:`curation.images.check` with Pillow,
because img2dataset's resizer decodes the whole image with OpenCV *before* its area check (a
bomb costs up to 2^30 pixels of memory per worker thread), and reports every decode failure as
one "Image decoding error", so HTML, a truncated file and a bomb could not be told apart. img2dataset keeps its X-Robots-Tag opt-out
(``disallowed_header_directives``) and its incremental mode: a rerun skips finished shards.
"""

from __future__ import annotations

import re
import tarfile
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from curation.images.robots import REASONS as RESPECT_REASONS
from curation.images.robots import RespectConfig
from storage.layout import RunLayout

DEFAULT_DISALLOWED_DIRECTIVES = ("noai", "noimageai", "noindex", "noimageindex")  # img2dataset's own
RETRYABLE_REASONS = ("timeout", "connection_error", "http_408", "http_429", "http_5xx", "download_error")
RESULT_COLUMNS = ("uid", "key", "status", "error_message")


@dataclass(frozen=True)
class DownloadConfig:
    """img2dataset settings for the download stage."""

    processes: int = 2  # img2dataset processes_count (spawned worker processes)
    threads: int = 64  # img2dataset thread_count per process
    timeout_s: int = 10  # per-request timeout
    shard_size: int = 1000  # img2dataset number_sample_per_shard (the unit of resumption)
    retries: int = 0  # img2dataset's immediate per-URL retries
    retry_pass: bool = True  # re-fetch transiently failed URLs of all shards once more, at the end
    distributor: str = "ray"  # img2dataset distributor: "ray" (a task per shard, over the cluster) or "multiprocessing"
    shard_attempts: int = 3  # img2dataset runs per pass while shards are unfinished (a lost worker/node)
    user_agent_token: str | None = "openwit"  # announced in the User-Agent, matched by X-Robots-Tag
    # X-Robots-Tag directives that refuse an image (img2dataset's disallowed_header_directives)
    disallowed_header_directives: tuple[str, ...] = field(default=DEFAULT_DISALLOWED_DIRECTIVES)
    respect: RespectConfig = field(default_factory=RespectConfig)  # robots.txt, User-Agent, opt-out ledger


def img2dataset_kwargs(config: DownloadConfig, url_list: str, output_folder: str) -> dict:
    """The keyword arguments of ``img2dataset.download`` for one pass (also used by the
    benchmark's bare img2dataset run, so both run with the same settings)."""
    return dict(
        url_list=url_list,
        output_folder=output_folder,
        input_format="parquet",
        url_col="url",
        save_additional_columns=["uid"],
        output_format="webdataset",
        processes_count=config.processes,
        thread_count=config.threads,
        timeout=config.timeout_s,
        number_sample_per_shard=config.shard_size,
        retries=config.retries,
        disable_all_reencoding=True,
        extract_exif=False,
        compute_hash=None,
        distributor=config.distributor,
        incremental_mode="incremental",
        user_agent_token=config.user_agent_token,
        disallowed_header_directives=list(config.disallowed_header_directives),
    )


def download_reject_reason(error_message: str | None) -> str:
    """Map img2dataset's ``error_message`` of a failed row to a reject reason."""
    message = error_message or ""
    respect = re.search(r"\b(" + "|".join(RESPECT_REASONS) + r"): ", message)
    if respect:
        return respect.group(1)
    refusal = re.search(r"urlguard refused (\w+): (\w+)", message)
    if refusal:
        return f"urlguard_{refusal.group(1)}_{refusal.group(2)}"
    http = re.search(r"HTTP Error (\d{3})", message)
    if http:
        code = int(http.group(1))
        return "http_5xx" if code >= 500 else f"http_{code}"
    if "X-Robots-Tag" in message:
        return "x_robots_tag_optout"
    if "timed out" in message.lower():
        return "timeout"
    if any(s in message for s in ("Connection refused", "Connection reset", "Remote end closed",
                                  "Name or service not known", "EOF occurred")):
        return "connection_error"
    return "download_error"


def read_pass_results(layout: RunLayout, output_folder: str) -> pa.Table:
    """All rows img2dataset recorded in one pass: uid, key, status, error_message, shard
    (the tar URI holding the row's image when ``status == "success"``)."""
    tables = []
    for part in layout.list(output_folder, ".parquet"):
        if not part.rsplit("/", 1)[-1][0].isdigit():
            continue
        table = layout.read_parquet(part, columns=list(RESULT_COLUMNS))
        shard = pa.array([part.removesuffix(".parquet") + ".tar"] * len(table), pa.string())
        tables.append(table.append_column("shard", shard))
    if not tables:
        return pa.table({c: pa.array([], pa.string()) for c in (*RESULT_COLUMNS, "shard")})
    return pa.concat_tables(tables, promote_options="permissive")


def run_pass(rows: pa.Table, layout: RunLayout, name: str, config: DownloadConfig, guard) -> pa.Table:
    """Download ``rows`` (uid, url) into the pass folder ``download/<name>`` with img2dataset
    (incremental: finished shards are skipped; the folder may be on an object store) under the
    in-worker guard; return :func:`read_pass_results`. With the ``ray`` distributor each shard
    is a Ray task on any node (Ray must be initialised by the caller); img2dataset is run again,
    up to ``shard_attempts`` times, while a shard lacks its completion record (a worker or node
    lost mid-shard)."""
    import img2dataset

    from curation.images.fetch import guarded_img2dataset

    folder = layout.download_pass(name)
    url_list = f"{folder}/input/urls.parquet"
    if not layout.exists(url_list):
        layout.write_parquet(rows.select(["uid", "url"]), url_list)
    elif layout.parquet_rows(url_list) != len(rows):
        raise ValueError(f"{url_list} holds a different input than this run: remove {folder} to restart")
    for _ in range(config.shard_attempts):  # incremental: each run redoes only unfinished shards
        if not (len(rows) and _unfinished(layout, folder, len(rows), config)):
            break
        with guarded_img2dataset(guard, config.respect):
            img2dataset.download(**img2dataset_kwargs(config, url_list, folder))
    results = read_pass_results(layout, folder)
    if len(results) != len(rows):
        raise RuntimeError(f"img2dataset recorded {len(results)} of {len(rows)} rows in {folder}")
    return results


def _unfinished(layout: RunLayout, folder: str, rows: int, config: DownloadConfig) -> bool:
    """Whether img2dataset has not yet written a stats file (its completion marker) for every
    shard of the pass."""
    expected = -(-rows // config.shard_size)
    return len(layout.list(folder, "_stats.json")) < expected


def rows_by_node(layout: RunLayout, downloaded: pa.Table) -> dict[str, int]:
    """Downloaded rows per node that fetched them (from each shard's ``_nodes/`` record)."""
    counts: dict[str, int] = {}
    for item in pc.value_counts(downloaded.column("shard")).to_pylist() if len(downloaded) else []:
        shard, n = item["values"], item["counts"]
        record = layout.download_node_record(shard)
        node = layout.read_json(record)["node"] if layout.exists(record) else "unknown"
        counts[node] = counts.get(node, 0) + int(n)
    return dict(sorted(counts.items()))


def merge_passes(first: pa.Table, retried: pa.Table | None) -> pa.Table:
    """Final result per uid: the retry pass's row where the uid was retried, else the first's."""
    if retried is None or len(retried) == 0:
        return first
    again = pc.is_in(first.column("uid"), value_set=retried.column("uid"))
    return pa.concat_tables([first.filter(pc.invert(again)), retried.select(first.column_names)])


def download(rows: pa.Table, layout: RunLayout, config: DownloadConfig, guard) -> tuple[pa.Table, pa.Table]:
    """Fetch ``rows`` (uid, url): first pass, then one retry pass over every shard's transient
    failures. Returns (downloaded rows: uid, key, shard; rejected rows: uid, reason,
    error_message). Every input uid is in exactly one of the two."""
    results = run_pass(rows, layout, "pass0", config, guard)
    reasons = pa.array([download_reject_reason(m) for m in results.column("error_message").to_pylist()])
    failed = pc.not_equal(results.column("status"), "success")
    if config.retry_pass:
        retry = pc.and_(failed, pc.is_in(reasons, value_set=pa.array(RETRYABLE_REASONS)))
        retry_uids = results.filter(retry).column("uid")
        if len(retry_uids):
            retry_rows = rows.filter(pc.is_in(rows.column("uid"), value_set=retry_uids))
            results = merge_passes(results, run_pass(retry_rows, layout, "retry", config, guard))
            reasons = pa.array([download_reject_reason(m) for m in results.column("error_message").to_pylist()])
            failed = pc.not_equal(results.column("status"), "success")
    ok = results.filter(pc.invert(failed)).select(["uid", "key", "shard"])
    rejected = results.filter(failed).select(["uid", "error_message"]).append_column("reason", reasons.filter(failed))
    return ok, rejected


def read_download_shard(layout: RunLayout, tar_uri: str, uids: list, keys: list[str]) -> pa.Table:
    """The fetched bytes of ``keys`` from one img2dataset tar, as a table ``(uid, image)``
    (``image`` is null when the tar lacks the member: the checker rejects it). An unreadable
    tar is an error naming it."""
    wanted = {f"{key}.jpg": i for i, key in enumerate(keys)}
    images: list[bytes | None] = [None] * len(keys)
    try:
        with layout.open(tar_uri) as f, tarfile.open(fileobj=f, mode="r|") as tar:
            for member in tar:
                i = wanted.get(member.name)
                if i is not None and member.isfile():
                    images[i] = tar.extractfile(member).read()
    except (OSError, EOFError, tarfile.TarError) as err:
        raise RuntimeError(f"{tar_uri}: unreadable img2dataset shard ({err}); remove it to re-download") from err
    return pa.table({"uid": pa.array(uids), "image": pa.array(images, pa.binary())})
