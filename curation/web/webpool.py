"""Pool extraction from web archives: Common Crawl WARC / WAT files → (image url, alt text) pairs.

Engine-free: :func:`extract_file` reads one gzip-per-record WARC or WAT file (local path or any
pyarrow/fsspec URI) and returns Arrow tables; the engines in ``pipelines/webpool_*.py`` run it
once per file. Readers: ``fastwarc`` (WARC framing, gzip) and ``resiliparse``'s lexbor HTML5
parser (chosen over warcio + ``html.parser`` by ``bench/bench_webpool.py``).

Two accounted stages per file (``rows_in`` counted independently of the outcomes):

- ``webpool_records`` — every archive record. Kept: HTML responses (WARC) or response metadata
  with ``HTML-Metadata`` (WAT). Rejects: ``not_response``, ``http_status`` (non-2xx),
  ``not_html``, ``page_too_large`` (> ``max_record_bytes``, not read), ``truncated_record``
  (the file ends inside the record), ``bad_json`` (WAT).
- ``webpool`` — every ``<img>`` of a kept page (WARC) / every ``IMG@/src`` link (WAT). Kept rows
  are the pool: ``uid`` (``xxh3_128(url + "\\t" + text)`` hex, as :mod:`curation.text.pool`), ``url``,
  ``text`` (alt, whitespace collapsed), ``title``, ``page_url``, ``source`` ("warc"/"wat"),
  ``warc_record_id``. Rejects: ``no_src``, ``data_uri``, ``bad_url``, ``no_alt``,
  ``alt_too_long``, ``duplicate_on_page`` (same url + text earlier on the same page).

Image URL: ``src``; else the first ``srcset`` candidate; else, inside ``<picture>``, the first
``<source srcset>`` candidate — resolved against ``<base href>`` (itself resolved against the
page URL) and the page URL. Page text is decoded with the HTTP charset, else the page's
``<meta charset>`` / ``http-equiv`` declaration, else resiliparse's detector.
A file that is not a WARC at all raises :class:`WebPoolError` naming it.
"""

from __future__ import annotations

import codecs
import fnmatch
import glob
import json
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from urllib.parse import urljoin, urlsplit

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import xxhash
from fastwarc.warc import ArchiveIterator
from resiliparse.parse.encoding import bytes_to_str, detect_encoding
from resiliparse.parse.html import HTMLTree

from curation.stage import WEB_STAGES, StageStats
from storage.layout import PoolLayout

RECORD_STAGE, PAIR_STAGE = WEB_STAGES  # every archive record; every <img> of the kept records
HTML_TYPES = ("text/html", "application/xhtml+xml")
POOL_SCHEMA = pa.schema([("uid", pa.string()), ("url", pa.string()), ("text", pa.string()),
                         ("title", pa.string()), ("page_url", pa.string()), ("source", pa.string()),
                         ("warc_record_id", pa.string())])
REJECT_SCHEMA = pa.schema([("stage", pa.string()), ("reject_reason", pa.string()), ("page_url", pa.string()),
                           ("warc_record_id", pa.string()), ("url", pa.string()), ("text", pa.string())])
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9._:-]+)""", re.I)


class WebPoolError(ValueError):
    """A file that cannot be read as a WARC/WAT archive (the message names the file)."""


@dataclass(frozen=True)
class WebPoolConfig:
    """How to extract pairs from web archives."""

    max_record_bytes: int = 10 * 2**20  # larger records are rejected unread (page_too_large)
    max_alt_chars: int = 2000  # longer alt text is rejected (alt_too_long), never truncated
    max_url_chars: int = 2048  # longer image URLs are bad_url


@dataclass
class FileResult:
    """The output of one archive file: pool rows, reject rows and both stages' accounting."""

    pairs: pa.Table  # pool rows of the file (POOL_SCHEMA)
    rejects: pa.Table  # dropped records and images (REJECT_SCHEMA: stage, reject_reason, page_url, …)
    records: StageStats  # accounting of the webpool_records stage (the archive records)
    images: StageStats  # accounting of the webpool stage (the image candidates of the kept pages)


class _Collector:
    """Accumulates pairs, rejects and counts of one file."""

    def __init__(self, source: str):
        self.source = source
        self.pairs: dict[str, list] = {name: [] for name in POOL_SCHEMA.names}
        self.rejects: dict[str, list] = {name: [] for name in REJECT_SCHEMA.names}
        self.records = StageStats(RECORD_STAGE)
        self.images = StageStats(PAIR_STAGE)
        self.seen: set[tuple[str, str]] = set()

    def reject(self, stage: StageStats, reason: str, page_url: str, record_id: str,
               url: str | None = None, text: str | None = None) -> None:
        """Count one reject of ``stage`` and keep its row (text cut to 200 chars)."""
        stage.rejected[reason] = stage.rejected.get(reason, 0) + 1
        for name, value in zip(REJECT_SCHEMA.names, (stage.stage, reason, page_url, record_id, url,
                                                     None if text is None else text[:200])):
            self.rejects[name].append(value)

    def keep_page(self) -> None:
        """Count a kept page; per-page dedup starts afresh."""
        self.records.rows_out += 1
        self.seen = set()

    def image(self, config: WebPoolConfig, page_url: str, base: str, record_id: str,
              raw_url: str | None, alt: str | None, title: str | None) -> None:
        """Decide one image candidate (counted in ``images.rows_in`` by the caller)."""
        raw_url = (raw_url or "").strip()
        text = " ".join(alt.split()) if alt else ""
        reason, url = _url_refusal(raw_url, base, config)
        if reason is None:
            if not text:
                reason = "no_alt"
            elif len(text) > config.max_alt_chars:
                reason = "alt_too_long"
            elif (url, text) in self.seen:
                reason = "duplicate_on_page"
        if reason is not None:
            self.reject(self.images, reason, page_url, record_id, url or raw_url[:200], text)
            return
        self.seen.add((url, text))
        self.images.rows_out += 1
        row = (xxhash.xxh3_128_hexdigest(f"{url}\t{text}".encode()), url, text,
               " ".join(title.split()) if title else None, page_url, self.source, record_id)
        for name, value in zip(POOL_SCHEMA.names, row):
            self.pairs[name].append(value)

    def result(self) -> FileResult:
        """The tables and the checked accounting of the file."""
        return FileResult(pa.table(self.pairs, schema=POOL_SCHEMA), pa.table(self.rejects, schema=REJECT_SCHEMA),
                          self.records.check(), self.images.check())


def _url_refusal(raw: str, base: str, config: WebPoolConfig) -> tuple[str | None, str | None]:
    """(reason or None, resolved url) for one raw src value."""
    if not raw:
        return "no_src", None
    if raw[:5].lower() == "data:":
        return "data_uri", None
    try:
        url = urljoin(base, raw)
        parts = urlsplit(url)
    except ValueError:
        return "bad_url", None
    if parts.scheme not in ("http", "https") or not parts.hostname or len(url) > config.max_url_chars:
        return "bad_url", url
    return None, url


def first_srcset_candidate(srcset: str | None) -> str | None:
    """The URL of a ``srcset`` attribute's first candidate (``"a.jpg 1x, b.jpg 2x"`` → ``a.jpg``)."""
    if not srcset or not srcset.strip():
        return None
    return srcset.strip().split(",")[0].split()[0]


def open_archive(uri: str):
    """A binary file object for a local path or a pyarrow-filesystem URI (s3://, gs://, …)."""
    if "://" not in uri or uri.startswith("file://"):
        return open(uri.removeprefix("file://"), "rb")
    fs, path = pafs.FileSystem.from_uri(uri)
    return fs.open_input_file(path)


def _records(uri: str) -> Iterator:
    """The file's records (the file is open while the caller reads each record's block)."""
    with open_archive(uri) as stream:
        yield from ArchiveIterator(stream, parse_http=False)


def _target(record) -> str:
    # wget writes WARC-Target-URI as <url> (WARC 1.0's grammar); strip the brackets
    return (record.headers.get("WARC-Target-URI") or "").strip().strip("<>")


def _read_block(record, config: WebPoolConfig, out: _Collector, page_url: str) -> bytes | None:
    """The record block, or None after counting ``page_too_large`` / ``truncated_record``."""
    record_id = record.record_id or ""
    if record.content_length > config.max_record_bytes:
        out.reject(out.records, "page_too_large", page_url, record_id)
        return None
    block = record.reader.read()
    if len(block) < record.content_length:
        out.reject(out.records, "truncated_record", page_url, record_id)
        return None
    return block


def extract_file(uri: str, kind: str, config: WebPoolConfig = WebPoolConfig()) -> FileResult:
    """Extract one WARC (``kind="warc"``) or WAT (``kind="wat"``) file; see the module docstring.

    Raises :class:`WebPoolError` naming the file (and the records read before) when it is not a
    WARC or a gzip member is corrupt; a file that merely ends early gives ``truncated_record``."""
    if kind not in ("warc", "wat"):
        raise ValueError(f"kind must be 'warc' or 'wat', not {kind!r}")
    out = _Collector(kind)
    try:
        for record in _records(uri):
            out.records.rows_in += 1
            _extract_record(record, kind, config, out)
    except OSError as err:
        raise WebPoolError(f"{uri}: not a readable WARC/WAT file (after {out.records.rows_in} records): "
                           f"{err}") from err
    return out.result()


def _extract_record(record, kind: str, config: WebPoolConfig, out: _Collector) -> None:
    """Account for one record: a reject, or a kept page whose images go to ``out``."""
    page_url = _target(record)
    wanted = "response" if kind == "warc" else "metadata"
    if record.headers.get("WARC-Type") != wanted:
        out.reject(out.records, "not_response", page_url, record.record_id or "")
        return
    block = _read_block(record, config, out, page_url)
    if block is None:
        return
    if kind == "warc":
        _warc_response(block, page_url, record.record_id or "", config, out)
    else:
        _wat_metadata(block, page_url, record.headers.get("WARC-Refers-To") or "", config, out)


def _http_head(block: bytes) -> tuple[int, str, bytes]:
    """(status, content-type header, payload) of an HTTP response block."""
    head, _, payload = block.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split()[1])
    except (IndexError, ValueError):
        status = 0
    ctype = ""
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-type":
            ctype = value.strip()
    return status, ctype, payload


def decode_html(payload: bytes, content_type: str) -> str:
    """Page text: the HTTP charset, else the page's declared charset, else detected."""
    declared = None
    for param in content_type.split(";")[1:]:
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset":
            declared = value.strip().strip("\"'")
    if not declared:
        found = _META_CHARSET.search(payload[:4096])
        declared = found.group(1).decode("ascii") if found else None
    try:
        if declared:
            return payload.decode(codecs.lookup(declared).name, errors="replace")
    except LookupError:
        pass
    return bytes_to_str(payload, detect_encoding(payload))


def _warc_response(block: bytes, page_url: str, record_id: str, config: WebPoolConfig, out: _Collector) -> None:
    status, ctype, payload = _http_head(block)
    if not 200 <= status < 300:
        out.reject(out.records, "http_status", page_url, record_id)
        return
    if ctype.split(";")[0].strip().lower() not in HTML_TYPES:
        out.reject(out.records, "not_html", page_url, record_id)
        return
    out.keep_page()
    tree = HTMLTree.parse(decode_html(payload, ctype))
    base_el = tree.document.query_selector("base[href]")
    base = urljoin(page_url, base_el.getattr("href").strip()) if base_el is not None else page_url
    images = tree.document.query_selector_all("img")
    out.images.rows_in += len(images)
    for img in images:
        raw = img.getattr("src") or first_srcset_candidate(img.getattr("srcset"))
        parent = img.parent
        if not (raw and raw.strip()) and parent is not None and parent.tag == "picture":
            source = parent.query_selector("source[srcset]")
            raw = first_srcset_candidate(source.getattr("srcset")) if source is not None else None
        out.image(config, page_url, base, record_id, raw, img.getattr("alt"), img.getattr("title"))


def _wat_metadata(block: bytes, page_url: str, record_id: str, config: WebPoolConfig, out: _Collector) -> None:
    try:
        envelope = json.loads(block)["Envelope"]
    except (ValueError, KeyError, TypeError):
        out.reject(out.records, "bad_json", page_url, record_id)
        return
    header = envelope.get("WARC-Header-Metadata", {})
    record_id = header.get("WARC-Record-ID", record_id)
    page_url = header.get("WARC-Target-URI", page_url)
    if header.get("WARC-Type") != "response":
        out.reject(out.records, "not_response", page_url, record_id)
        return
    response = envelope.get("Payload-Metadata", {}).get("HTTP-Response-Metadata", {})
    status = str(response.get("Response-Message", {}).get("Status", "0"))
    if not status.startswith("2"):
        out.reject(out.records, "http_status", page_url, record_id)
        return
    html = response.get("HTML-Metadata")
    if not isinstance(html, dict):
        out.reject(out.records, "not_html", page_url, record_id)
        return
    out.keep_page()
    base_href = (html.get("Head", {}).get("Base") or "").strip()
    base = urljoin(page_url, base_href) if base_href else page_url
    links = [link for link in html.get("Links", []) if link.get("path") == "IMG@/src"]
    out.images.rows_in += len(links)
    for link in links:
        out.image(config, page_url, base, record_id, link.get("url"), link.get("alt"), link.get("title"))



def list_archives(pattern: str) -> list[str]:
    """Sorted files matching a glob (local, or ``scheme://bucket/dir/*.warc.gz`` on a pyarrow
    filesystem, wildcards in the last path component only); no match is an error naming it."""
    if "://" in pattern and not pattern.startswith("file://"):
        fs, path = pafs.FileSystem.from_uri(pattern.rsplit("/", 1)[0])
        prefix = pattern[: len(pattern) - len(pattern.split("://", 1)[1])]
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=False))
        found = [prefix + i.path for i in infos if i.type == pafs.FileType.File]
        files = sorted(f for f in found if fnmatch.fnmatch(f, pattern))
    else:
        files = sorted(glob.glob(pattern.removeprefix("file://")))
    if not files:
        raise FileNotFoundError(f"no archive file matches {pattern!r}")
    return files


def write_file_part(uri: str, index: int, kind: str, out_dir: str, config: WebPoolConfig = WebPoolConfig()) -> dict:
    """Extract one file into ``out_dir``: ``pairs/<part>.parquet``, ``rejects/<stage>/<part>.parquet``
    and last the marker ``done/<part>.json`` (the file and both stages' counts), each written
    atomically. A part whose marker exists for the same file is not redone. Returns the marker."""
    pool = PoolLayout(out_dir)  # the pool dir's names and I/O (a path or URI)
    marker = pool.marker(index)
    settings = {"file": uri, "kind": kind, "config": asdict(config)}
    if pool.exists(marker):
        done = pool.read_json(marker)
        if all(done.get(k) == v for k, v in settings.items()):
            return done
    result = extract_file(uri, kind, config)
    pool.write_parquet(result.pairs, pool.pairs(index))
    for stage in (RECORD_STAGE, PAIR_STAGE):
        rows = result.rejects.filter(pc.equal(result.rejects.column("stage"), stage))
        pool.write_parquet(rows, pool.reject_part(stage, index))
    done = {**settings, **{s.stage: {"in": s.rows_in, "out": s.rows_out, "rejected": s.rejected}
                           for s in (result.records, result.images)}}
    pool.write_json(marker, done)
    return done


def write_stats(out_dir: str, files: list[str]) -> dict[str, StageStats]:
    """Merge the parts' markers into ``stats/<stage>.json``. A missing marker, or a part left by
    an earlier run over more files (it would be read as pool), is an error naming it."""
    pool = PoolLayout(out_dir)
    expected = {pool.pairs(i) for i in range(len(files))}
    names = [u.rsplit("/", 1)[-1] for u in pool.list(pool.pairs_dir, ".parquet") if u not in expected]
    stale = sorted(n for n in names if n.startswith("part-"))
    if stale:
        raise FileExistsError(f"{out_dir}/pairs holds {stale[0]} (of an earlier run over other files): "
                              f"remove {out_dir} or use another --out")
    totals = {stage: StageStats(stage) for stage in (RECORD_STAGE, PAIR_STAGE)}
    for index, uri in enumerate(files):
        marker = pool.marker(index)
        if not pool.exists(marker):
            raise FileNotFoundError(f"{marker} missing: {uri} was not extracted")
        done = pool.read_json(marker)
        for stage, total in totals.items():
            total.rows_in += done[stage]["in"]
            total.rows_out += done[stage]["out"]
            for reason, n in done[stage]["rejected"].items():
                total.rejected[reason] = total.rejected.get(reason, 0) + n
    for total in totals.values():
        total.rejected = dict(sorted(total.rejected.items()))
        pool.write_json(pool.stats(total.stage), total.check().body())
    return totals
