"""Paths are URIs: local paths by default, ``s3://``, ``gs://``, ``memory://`` ... through fsspec
(the backend package of a remote filesystem must be installed: s3fs, gcsfs)."""

from __future__ import annotations

import io
import os
import posixpath
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
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


def is_dir(path: str) -> bool:
    """Whether ``path`` (a local path or URI) names an existing directory."""
    fs, local = url_to_fs(path)
    return fs.isdir(local)


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


ASIDE_MARK = ".old-"  # the prefix of the directory :func:`atomic_write_dir` replaces, until the new one is in place


def aside_path(path: str | Path) -> Path:
    """Where :func:`atomic_write_dir` keeps the directory it replaces (``.old-<name>``) until the
    new one is in place."""
    path = Path(path)
    return path.with_name(f"{ASIDE_MARK}{path.name}")


def completed_dir(path: str | Path) -> Path:
    """The directory :func:`atomic_write_dir` last completed at ``path``: ``path`` itself, or,
    when a replace was interrupted between its two renames (``path`` missing), the previous
    directory kept aside (:func:`aside_path`). ``path`` if neither exists."""
    path = Path(path)
    if not path.exists() and aside_path(path).is_dir():
        return aside_path(path)
    return path


def atomic_write_dir(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Write the directory ``path`` (local only) so that a crash at any point leaves a complete
    directory under ``path`` or under its aside name (read it through :func:`completed_dir`):
    ``write(tmp)`` fills a temp dir beside it (``.<name>.tmp-<hex>``), every file and the dir are
    fsynced, an existing ``path`` is renamed aside (``.old-<name>``), the temp dir renamed into
    place, the parent dir fsynced, and only then is the aside copy removed. A failing ``write``
    leaves ``path`` untouched and no temp dir. Returns ``path``."""
    if not is_local(str(path)):
        raise ValueError(f"{path}: atomic_write_dir writes local directories only")
    path = Path(str(path).removeprefix("file://"))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}{TEMP_MARK}", dir=path.parent))
    try:
        write(tmp)
        for folder, _, files in os.walk(tmp, topdown=False):
            for name in files:
                _fsync(Path(folder) / name)
            _fsync(Path(folder))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = aside_path(path)
    if path.exists():
        if old.exists():  # left by a crash after its replacement was in place: stale
            shutil.rmtree(old)
        os.rename(path, old)
    os.rename(tmp, path)
    _fsync(path.parent)
    shutil.rmtree(old, ignore_errors=True)
    return path


def _fsync(path: Path) -> None:
    """Flush a file's or a directory's entry to disk (a rename is durable once its dir is synced)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
