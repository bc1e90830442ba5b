"""Paths are URIs: local paths by default, ``s3://``, ``gs://``, ``memory://`` ... through fsspec
(the backend package of a remote filesystem must be installed: s3fs, gcsfs)."""

from __future__ import annotations

import io
import os
import posixpath
import tempfile
import uuid
from collections.abc import Callable
from typing import IO

import fsspec
from fsspec.core import url_to_fs


def open_input(path: str) -> IO[bytes]:
    """Open ``path`` for binary reading, decompressing ``.bz2`` / ``.gz`` by extension (the
    returned stream supports ``peek``). Raises FileNotFoundError if it does not exist."""
    compression = "bz2" if path.endswith(".bz2") else "gzip" if path.endswith(".gz") else None
    return fsspec.open(path, "rb", compression=compression).open()


def open_input_text(path: str) -> IO[str]:
    """:func:`open_input` decoded as UTF-8 text (decode errors raise UnicodeDecodeError)."""
    return io.TextIOWrapper(open_input(path), encoding="utf-8")


def is_input_file(path: str) -> bool:
    """Whether ``path`` names an existing file."""
    fs, local = url_to_fs(path)
    return fs.isfile(local)


def join(base: str, *parts: str) -> str:
    """Join path components of a local path or URI with ``/``."""
    return posixpath.join(base, *parts)


def expand_glob(pattern: str) -> list[str]:
    """The files matching a glob (local or URI), sorted, as full paths/URIs."""
    fs, local = url_to_fs(pattern)
    return sorted(fs.unstrip_protocol(p) if "://" in pattern else p for p in fs.glob(local))


def file_identity(uri: str) -> dict:
    """What identifies a file's content without reading it: its URI, size and modification time
    (local) or ETag/generation (object stores)."""
    fs, path = url_to_fs(uri)
    info = fs.info(path)
    keys = ("size", "mtime", "ETag", "etag", "generation", "md5Hash", "LastModified")
    return {"file": uri, **{k: str(info[k]) for k in keys if info.get(k) is not None}}


TEMP_MARK = ".tmp-"  # the infix of every temp name written by :func:`atomic_write`


def is_temp_name(name: str) -> bool:
    """Whether a file name is one of our temp names (an interrupted :func:`atomic_write`)."""
    return TEMP_MARK in posixpath.basename(name)


def is_local(path: str) -> bool:
    """Whether ``path`` is on the local filesystem (a plain path or ``file://``)."""
    return "://" not in path or path.startswith("file://")


def atomic_write(path: str, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` so that no reader ever sees a partial file (the one atomic writer of the
    project): on a local disk the bytes go to a temp name beside it (``.<name>.tmp-<hex>``) and
    are renamed; on an object store the bytes are spooled to a local temp file and the complete
    object is sent by one upload (a PUT, or a multipart upload completed only at the end) (object stores
    have no rename, and a PUT is all-or-nothing)."""
    fs, local = url_to_fs(path)
    if not is_local(path):  # spooled on local disk, not memory: a multi-GB shard streams through
        with tempfile.NamedTemporaryFile(prefix="openwit-put-") as spool:
            write(spool)
            spool.flush()
            fs.put_file(spool.name, local)
        return
    directory, name = os.path.split(local)
    os.makedirs(directory or ".", exist_ok=True)
    tmp = os.path.join(directory, f".{name}{TEMP_MARK}{uuid.uuid4().hex}")
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, local)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
