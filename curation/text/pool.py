"""Candidate pool readers: parquet, jsonl, csv/tsv (optionally gzipped), local or remote URIs.

A pool file becomes a table with ``uid``, ``url``, ``text`` (strings) plus the file's other
columns as metadata, and a ``reject_reason`` column (the "read" stage): rows with a null or
non-UTF-8 url/text are kept in the table but marked. The common layouts are recognised:
img2dataset ``url``/``caption``, LAION ``URL``/``TEXT``, DataComp ``url``/``text``/``uid``.
A pool without ``uid`` gets ``uid = xxh3_128(url + "\\t" + text)`` (hex), stable across runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.json as pajson
import pyarrow.parquet as pq
import xxhash

from curation.stage import with_reasons
from storage.files import file_identity, is_temp_name

URL_NAMES = ("url", "URL", "image_url")
TEXT_NAMES = ("text", "caption", "TEXT", "alt", "alt_text")
UID_NAMES = ("uid", "key")
FORMATS = ("parquet", "jsonl", "csv", "tsv")


STRING_TYPES = ("string", "large_string", "binary", "large_binary")  # what url/text may be


class PoolFormatError(ValueError):
    """A pool file that cannot be read as a candidate pool (the message names the file).
    ``reason`` is the whole-file reject reason: ``unreadable_file`` (empty, truncated, corrupt,
    not the format its name says) or ``bad_schema`` (a needed column missing or of a wrong type)."""

    def __init__(self, message: str, reason: str = "unreadable_file"):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class PoolConfig:
    """How to read the candidate pool."""

    url_column: str | None = None  # url column name; None: first of URL_NAMES present
    text_column: str | None = None  # text column name; None: first of TEXT_NAMES present
    uid_column: str | None = None  # uid column; None: first of UID_NAMES present, else hashed
    format: str | None = None  # one of FORMATS; None: from the file name


def list_pool_files(uris: Sequence[str]) -> list[str]:
    """Expand pool URIs (files or directories, local or remote) into a sorted file list."""
    files: list[str] = []
    for uri in uris:
        fs, path = pafs.FileSystem.from_uri(uri) if "://" in uri else (pafs.LocalFileSystem(), uri)
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise FileNotFoundError(f"pool {uri} does not exist")
        if info.type == pafs.FileType.Directory:
            found = fs.get_file_info(pafs.FileSelector(path, recursive=True))
            names = sorted(f.path for f in found if f.type == pafs.FileType.File and _format_of(f.path, None)
                           and not f.base_name.startswith(".") and not is_temp_name(f.base_name))
            prefix = uri[: len(uri) - len(path)] if "://" in uri else ""
            files += [prefix + n for n in names]
        else:
            files.append(uri)
    return files


def pool_file_identity(uri: str) -> dict:
    """What identifies a pool file's content without reading it (:func:`storage.files.file_identity`)."""
    return file_identity(uri)


def read_counted(uri: str, config: PoolConfig, layout, on_bad_file: str = "error") -> pa.Table:
    """:func:`read_pool_file`, recording the rows read in the run's ``_read/`` tally (the
    ``in`` of the read stage, counted here, independently of what later stages output). With
    ``on_bad_file="skip"`` an unreadable or badly-typed file is recorded as skipped (reason,
    error) and gives no rows; ``"record"`` records it as a failure for the driver to raise
    (:func:`raise_read_failures`: an engine whose workers must not die mid-job); otherwise its
    :class:`PoolFormatError` stops the run."""
    try:
        table = read_pool_file(uri, config)
    except PoolFormatError as err:
        if on_bad_file not in ("skip", "record"):
            raise
        key = "skipped" if on_bad_file == "skip" else "failed"
        layout.write_json(layout.read_tally(uri), {"file": uri, "rows": None, key: err.reason, "error": str(err)})
        return conform_pool(_empty_pool(), uri, PoolConfig("url", "text", None))
    layout.write_json(layout.read_tally(uri), {"file": uri, "rows": table.num_rows})
    return table


def raise_read_failures(records: list[dict]) -> None:
    """Raise the :class:`PoolFormatError` of the first file the reader recorded as failed."""
    failed = [r for r in records if r.get("failed")]
    if failed:
        more = f" (and {len(failed) - 1} more bad pool files)" if len(failed) > 1 else ""
        raise PoolFormatError(failed[0]["error"] + more, reason=failed[0]["failed"])


def _format_of(path: str, fmt: str | None) -> str | None:
    if fmt:
        return fmt
    name = path.lower().removesuffix(".gz")
    for ext, found in ((".parquet", "parquet"), (".jsonl", "jsonl"), (".json", "jsonl"),
                       (".csv", "csv"), (".tsv", "tsv")):
        if name.endswith(ext):
            return found
    return None


def read_pool_file(uri: str, config: PoolConfig = PoolConfig()) -> pa.Table:
    """Read one pool file into a conformed, annotated table (see module docstring).

    Raises :class:`PoolFormatError` naming the file for an unknown format, unparsable, empty or
    truncated content (a zero-byte parquet/csv/tsv/gzip file is never read as 0 rows), or a
    missing or wrongly typed url/text/uid column. Only an empty plain JSONL file is 0 rows.
    """
    fmt = _format_of(uri, config.format)
    if fmt not in FORMATS:
        raise PoolFormatError(f"{uri}: unknown pool format (expected one of {FORMATS}, .gz allowed)")
    fs, path = pafs.FileSystem.from_uri(uri) if "://" in uri else (pafs.LocalFileSystem(), uri)
    if fs.get_file_info(path).size == 0:
        if fmt == "jsonl" and not path.lower().endswith(".gz"):
            return conform_pool(_empty_pool(), uri, PoolConfig("url", "text", None))
        raise PoolFormatError(f"{uri}: empty file (0 bytes), not a valid {fmt} file (a truncated upload?)")
    try:
        if fmt == "parquet":
            table = pq.read_table(path, filesystem=fs)
        else:
            compression = "gzip" if path.lower().endswith(".gz") else None
            with fs.open_input_stream(path, compression=compression) as stream:
                raw = stream.read()
            table = _read_text_format(raw, fmt)
    except (pa.ArrowInvalid, OSError, EOFError, UnicodeDecodeError) as err:
        raise PoolFormatError(f"{uri}: cannot read as {fmt} (corrupt or truncated?): {err}") from err
    return conform_pool(table, uri, config)


def _read_text_format(raw: bytes, fmt: str) -> pa.Table:
    if not raw.strip():
        return _empty_pool()
    if fmt == "jsonl":
        return pajson.read_json(pa.BufferReader(raw))
    # csv/tsv: read every column as binary so one bad byte becomes a counted reject, not a crash
    names = pacsv.open_csv(pa.BufferReader(raw), parse_options=_csv_parse(fmt)).schema.names
    types = {n: pa.binary() for n in names}
    return pacsv.read_csv(pa.BufferReader(raw), parse_options=_csv_parse(fmt),
                          convert_options=pacsv.ConvertOptions(column_types=types, strings_can_be_null=True))


def _csv_parse(fmt: str) -> pacsv.ParseOptions:
    return pacsv.ParseOptions(delimiter="\t" if fmt == "tsv" else ",", newlines_in_values=True)


def _empty_pool() -> pa.Table:
    return pa.table({"url": pa.array([], pa.string()), "text": pa.array([], pa.string())})


def _pick(table: pa.Table, uri: str, wanted: str | None, names: tuple[str, ...], role: str) -> str | None:
    if wanted is not None:
        if wanted not in table.column_names:
            raise PoolFormatError(f"{uri}: missing {role} column {wanted!r} (columns: {table.column_names})",
                                  reason="bad_schema")
        return wanted
    for name in names:
        if name in table.column_names:
            return name
    return None


def conform_pool(table: pa.Table, uri: str, config: PoolConfig = PoolConfig()) -> pa.Table:
    """Rename the url/text/uid columns, validate UTF-8, add uids and the read-stage reasons
    (``null_url``, ``null_text``, ``invalid_utf8``)."""
    url_col = _pick(table, uri, config.url_column, URL_NAMES, "url")
    text_col = _pick(table, uri, config.text_column, TEXT_NAMES, "text")
    for col, role, names in ((url_col, "url", URL_NAMES), (text_col, "text", TEXT_NAMES)):
        if col is None:
            raise PoolFormatError(
                f"{uri}: missing {role} column (looked for {names}; columns: {table.column_names})",
                reason="bad_schema")
    uid_col = _pick(table, uri, config.uid_column, UID_NAMES, "uid")
    _check_types(table, uri, url_col, text_col, uid_col)
    url, url_ok = _utf8(table.column(url_col))
    text, text_ok = _utf8(table.column(text_col))
    reasons = np.full(table.num_rows, "", dtype=object)
    reasons[~(url_ok & text_ok)] = "invalid_utf8"
    reasons[np.asarray(text.is_null().to_numpy(zero_copy_only=False)) & (reasons == "")] = "null_text"
    reasons[np.asarray(url.is_null().to_numpy(zero_copy_only=False)) & (reasons == "")] = "null_url"
    if uid_col is not None:
        uid = table.column(uid_col).cast(pa.string())
        uid = pc.if_else(uid.is_null(), pa.array(_hash_uids(table.column(url_col), table.column(text_col))), uid)
    else:
        uid = pa.array(_hash_uids(table.column(url_col), table.column(text_col)), pa.string())
    meta = [c for c in table.column_names if c not in (url_col, text_col, uid_col)]
    out = pa.table({"uid": uid, "url": url, "text": text})
    for name in meta:
        column = table.column(name)
        out = out.append_column(name, column.cast(pa.string()) if pa.types.is_binary(column.type) else column)
    return with_reasons(out, reasons)


def _check_types(table: pa.Table, uri: str, url_col: str, text_col: str, uid_col: str | None) -> None:
    """url/text must be strings or bytes (or all null); a uid strings, bytes or integers."""
    for col, role, ok in ((url_col, "url", _stringlike), (text_col, "text", _stringlike),
                          (uid_col, "uid", lambda t: _stringlike(t) or pa.types.is_integer(t))):
        if col is None:
            continue
        kind = table.schema.field(col).type
        if not ok(kind):
            accepted = ", ".join(STRING_TYPES + (("integer",) if role == "uid" else ()))
            raise PoolFormatError(f"{uri}: {role} column {col!r} has type {kind}; accepted types: {accepted}",
                                  reason="bad_schema")


def _stringlike(kind: pa.DataType) -> bool:
    return (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind)
            or pa.types.is_large_binary(kind) or pa.types.is_null(kind))


def _utf8(column: pa.ChunkedArray) -> tuple[pa.Array, np.ndarray]:
    """The column as strings (invalid UTF-8 → null) and a per-row validity mask."""
    column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if pa.types.is_null(column.type):
        return pa.nulls(len(column), pa.string()), np.ones(len(column), dtype=bool)
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        column = column.cast(pa.binary())
    if not (pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type)):
        column = column.cast(pa.string()).cast(pa.binary())
    try:
        return column.cast(pa.string()), np.ones(len(column), dtype=bool)
    except pa.ArrowInvalid:
        values = column.to_pylist()
        ok = np.array([v is None or _decodes(v) for v in values], dtype=bool)
        strings = [v.decode() if v is not None and good else None for v, good in zip(values, ok)]
        return pa.array(strings, pa.string()), ok


def _decodes(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _hash_uids(url: pa.ChunkedArray, text: pa.ChunkedArray) -> list[str]:
    """``xxh3_128(url + "\\t" + text)`` hex per row, over the raw bytes (nulls as empty)."""
    def raw(column: pa.ChunkedArray) -> list[bytes]:
        if pa.types.is_null(column.type):
            return [b""] * len(column)
        values = column.cast(pa.binary()) if not pa.types.is_binary(column.type) else column
        return [v or b"" for v in values.to_pylist()]

    return [xxhash.xxh3_128_hexdigest(u + b"\t" + t) for u, t in zip(raw(url), raw(text))]
