"""Paths are URIs: local paths by default, ``s3://``, ``gs://``, ``memory://`` ... through fsspec
(the backend package of a remote filesystem must be installed: s3fs, gcsfs)."""

from __future__ import annotations

import io
import posixpath
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


def atomic_write(path: str, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` by writing a temp name beside it and renaming (atomic on local disks;
    on object stores the rename is a copy, still never leaving a half-written final name)."""
    fs, local = url_to_fs(path)
    directory, name = posixpath.split(local)
    fs.makedirs(directory, exist_ok=True)
    tmp = posixpath.join(directory, f".{name}.tmp")
    with fs.open(tmp, "wb") as f:
        write(f)
    fs.mv(tmp, local)
