"""Download one shard of the guarded selection with img2dataset's downloader, then retry its
transiently failed URLs once more.

The image stages hand out download shards as tasks (:mod:`curation.images.recipe`): each task
fetches its shard here, into ``<curation>/download/pNNNNNN/``::

    rows/KKKKK.parquet          the shard's rows (uid, url + the metadata the shards carry)
    pass0/KKKKK.tar|.parquet    img2dataset's output (webdataset; per-shard parquet + stats)
    retry/KKKKK.tar|.parquet    the rows whose failure looks transient, fetched once more

The fetching is img2dataset's own ``Downloader`` (its thread pool, User-Agent, X-Robots-Tag
opt-out), built the way ``img2dataset.download`` builds it and run on one shard file at a time,
so no img2dataset reader runs in the driver: the task writes the shard's input itself. A
finished pass (its ``KKKKK_stats.json``) is not fetched again, so a retried task resumes.
img2dataset is asked to keep the bytes it fetched (``disable_all_reencoding``): decoding, the
decompression-bomb check and the resize happen in :mod:`curation.images.check` with Pillow,
because img2dataset's resizer decodes the whole image with OpenCV *before* its area check (a
bomb costs up to 2^30 pixels of memory per worker thread), and reports every decode failure as
one "Image decoding error", so HTML, a truncated file and a bomb could not be told apart.
"""

from __future__ import annotations

import re
import tarfile
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from curation.images.deadline import FetchLimits
from curation.images.politeness import PolitenessConfig
from curation.images.robots import REASONS as RESPECT_REASONS
from curation.images.robots import RespectConfig
from storage.files import atomic_write, is_local
from storage.layout import RunLayout

DEFAULT_DISALLOWED_DIRECTIVES = ("noai", "noimageai", "noindex", "noimageindex")  # img2dataset's own
OWN_REASONS = ("timeout", "too_large", "host_unavailable")  # errors raised by our opener, "<reason>: ..."
RETRYABLE_REASONS = ("timeout", "connection_error", "http_408", "http_429", "http_5xx", "download_error")
RESULT_COLUMNS = ("uid", "key", "status", "error_message")


@dataclass(frozen=True)
class DownloadConfig:
    """img2dataset settings for the download stage."""

    processes: int = 2  # download tasks at once without Ray (--distributor multiprocessing)
    threads: int = 64  # img2dataset thread_count per download task
    timeout_s: int = 10  # per-request deadline: connect, headers, body and redirects in all
    shard_size: int = 1000  # rows per download shard (the task, the unit of resumption)
    retries: int = 0  # img2dataset's immediate per-URL retries
    retry_pass: bool = True  # re-fetch a shard's transiently failed URLs once more, after the shard
    distributor: str = "ray"  # where the download tasks run: "ray" (Ray tasks over the cluster) or "multiprocessing"
    shard_attempts: int = 3  # tries of a download task on Ray (a lost worker or node, an error it raised)
    user_agent_token: str | None = "openwit"  # announced in the User-Agent, matched by X-Robots-Tag
    # X-Robots-Tag directives that refuse an image (img2dataset's disallowed_header_directives)
    disallowed_header_directives: tuple[str, ...] = field(default=DEFAULT_DISALLOWED_DIRECTIVES)
    respect: RespectConfig = field(default_factory=RespectConfig)  # robots.txt, User-Agent, opt-out ledger
    max_bytes: int = 20_000_000  # largest response body accepted (reject reason too_large), enforced while reading
    politeness: PolitenessConfig = field(default_factory=PolitenessConfig)  # per-host limits, cluster-wide

    @property
    def limits(self) -> FetchLimits:
        """Each request's limits: ``timeout_s`` as the total deadline of the request and its
        redirects (as well as per socket read), ``max_bytes``."""
        return FetchLimits(float(self.timeout_s), self.max_bytes)


def download_reject_reason(error_message: str | None) -> str:
    """Map img2dataset's ``error_message`` of a failed row to a reject reason."""
    message = error_message or ""
    respect = re.search(r"\b(" + "|".join(RESPECT_REASONS + OWN_REASONS) + r"): ", message)
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


def shard_downloader(config: DownloadConfig, guard, output_folder: str, limiter=None):
    """img2dataset's ``Downloader`` for one pass folder, built as ``img2dataset.download``
    builds it for our settings (webdataset output, the fetched bytes kept, ``uid`` carried),
    guarded (:class:`curation.images.fetch.GuardedDownloader`: SSRF guard, robots.txt, request
    limits, host turns from ``limiter``: the run's, see :mod:`curation.images.politeness`)."""
    from img2dataset.resizer import Resizer
    from img2dataset.writer import WebDatasetSampleWriter

    from curation.images.fetch import GuardedDownloader

    resizer = Resizer(image_size=256, resize_mode="border", resize_only_if_bigger=False, disable_all_reencoding=True)
    return GuardedDownloader(
        guard, config.respect, config.limits, config.politeness, limiter,
        sample_writer_class=WebDatasetSampleWriter, resizer=resizer,
        thread_count=config.threads, save_caption=False, extract_exif=False, output_folder=output_folder,
        column_list=["uid", "url"], timeout=config.timeout_s, number_sample_per_shard=config.shard_size,
        oom_shard_count=5, compute_hash=None, verify_hash_type=None, encode_format="jpg", retries=config.retries,
        user_agent_token=config.user_agent_token,
        disallowed_header_directives=list(config.disallowed_header_directives))


def fetch_pass(rows: pa.Table, layout: RunLayout, index: int, shard: int, name: str, config: DownloadConfig,
               guard, limiter=None) -> pa.Table:
    """Fetch ``rows`` (uid, url) as download shard ``shard`` of part ``index``, pass ``name``,
    with img2dataset's downloader (skipped when the pass's ``_stats.json`` exists: a retried
    task resumes); returns what img2dataset recorded per row: uid, key, status,
    error_message, shard (the tar holding the image). A downloader error fails the task (the
    engine runs it again); a pass that recorded another number of rows is an error naming it."""
    folder = layout.download_pass(index, name)
    stem = f"{folder}/{shard:05d}"
    if not layout.exists(f"{stem}_stats.json"):
        source = layout.download_input(index, name, shard)
        if is_local(folder):  # img2dataset's writer opens the tar in the folder
            layout.fs.makedirs(layout.path(folder), exist_ok=True)
        table = rows.select(["uid", "url"])  # img2dataset's shard input (it deletes it when done)

        def feather(f):
            with pa.ipc.new_file(f, table.schema) as writer:
                writer.write_table(table)

        atomic_write(source, feather)
        shard_downloader(config, guard, folder, limiter).download_shard((shard, source))
    results = layout.read_parquet(f"{stem}.parquet", list(RESULT_COLUMNS))
    if len(results) != len(rows):
        raise RuntimeError(f"{stem}.parquet: img2dataset recorded {len(results)} of {len(rows)} rows")
    return results.append_column("shard", pa.array([f"{stem}.tar"] * len(results), pa.string()))


def merge_passes(first: pa.Table, retried: pa.Table | None) -> pa.Table:
    """Final result per uid: the retry pass's row where the uid was retried, else the first's."""
    if retried is None or len(retried) == 0:
        return first
    again = pc.is_in(first.column("uid"), value_set=retried.column("uid"))
    return pa.concat_tables([first.filter(pc.invert(again)), retried.select(first.column_names)])


def download(rows: pa.Table, layout: RunLayout, index: int, shard: int, config: DownloadConfig,
             guard, limiter=None) -> tuple[pa.Table, pa.Table]:
    """Fetch download shard ``shard`` of part ``index`` (``rows``: uid, url): the first pass,
    then (``retry_pass``) its transient failures once more, after the whole shard. Returns
    (downloaded rows: uid, key, shard; rejected rows: uid, error_message, reason). Every input
    uid is in exactly one of the two."""
    results = fetch_pass(rows, layout, index, shard, "pass0", config, guard, limiter)
    if config.retry_pass:
        failed = _failures(results)
        retryable = failed.filter(pc.is_in(failed.column("reason"), value_set=pa.array(RETRYABLE_REASONS)))
        if len(retryable):
            retry_rows = rows.filter(pc.is_in(rows.column("uid"), value_set=retryable.column("uid")))
            retried = fetch_pass(retry_rows, layout, index, shard, "retry", config, guard, limiter)
            results = merge_passes(results, retried)
    ok = results.filter(pc.equal(results.column("status"), "success")).select(["uid", "key", "shard"])
    return ok, _failures(results)


def _failures(results: pa.Table) -> pa.Table:
    """The failed rows of a pass's results: uid, error_message and their reject reason (mapped
    row by row from the message, failures only)."""
    failed = results.filter(pc.not_equal(results.column("status"), "success")).select(["uid", "error_message"])
    reasons = [download_reject_reason(m) for m in failed.column("error_message").to_pylist()]
    return failed.append_column("reason", pa.array(reasons, pa.string()))


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
