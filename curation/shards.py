"""Final WebDataset shards: ``shards/NNNNN.tar`` + ``NNNNN.parquet`` index + ``stats.json``.

Each sample is three tar members sharing a key: ``<key>.jpg`` (the checked, resized JPEG),
``<key>.txt`` (the caption) and ``<key>.json`` (uid, url, query_ids, source, sizes). Keys are
``<shard:05d>_<index:06d>``, passed through :func:`sanitize_key` anyway, so a member name can
never hold a path separator, ``..`` or the dot WebDataset splits extensions at. Tars are written
with webdataset's ``TarWriter`` with a fixed mtime/owner (byte-identical reruns), to a temp name,
then renamed. They load unchanged with ``webdataset.WebDataset``, ``ray.data.read_webdataset``
(``file_extensions=["tar"]``) and open_clip (``--train-data 'shards/{00000..000NN}.tar'``).
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import webdataset as wds

from curation.stage import write_bytes_atomic, write_parquet_atomic

INDEX_COLUMNS = ("key", "uid", "url", "text", "query_ids", "source", "width", "height",
                 "original_width", "original_height")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


@dataclass(frozen=True)
class ShardConfig:
    """Final shard layout."""

    shard_size: int = 10_000  # samples per tar (the last shard holds the rest)
    holdout_fraction: float = 0.0  # share of samples (by uid hash, curation/holdout.py) written to heldout/


def shard_name(shard_id: int) -> str:
    """The one shard-name format: ``00042``."""
    return f"{shard_id:05d}"


def sanitize_key(key: str) -> str:
    """A tar member stem that is safe everywhere: only ``[A-Za-z0-9_-]``, never empty."""
    return _UNSAFE.sub("_", key) or "_"


def sample_members(row: dict) -> dict:
    """One WebDataset sample (``__key__``, ``jpg``, ``txt``, ``json`` as bytes) from an index
    row plus its ``jpg`` bytes."""
    meta = {k: row[k] for k in ("uid", "url", "query_ids", "source", "width", "height",
                                "original_width", "original_height")}
    return {
        "__key__": sanitize_key(row["key"]),
        "jpg": row["jpg"],
        "txt": (row["text"] or "").encode("utf-8"),
        "json": json.dumps(meta, sort_keys=True, ensure_ascii=False).encode("utf-8"),
    }


def write_tar(rows: list[dict], path: Path) -> None:
    """Write samples to a tar at ``path`` atomically (built in memory, then renamed)."""
    buffer = io.BytesIO()
    with wds.TarWriter(buffer, user="openwit", group="openwit", mtime=0, encoder=False) as sink:
        for row in rows:
            sink.write(sample_members(row))
    write_bytes_atomic(path, buffer.getvalue())


def rebatch(tables: Iterable[pa.Table], size: int) -> Iterator[pa.Table]:
    """Re-cut a stream of tables into tables of exactly ``size`` rows (the last one shorter)."""
    pending: list[pa.Table] = []
    count = 0
    for table in tables:
        while len(table):
            take = min(size - count, len(table))
            pending.append(table.slice(0, take))
            table = table.slice(take)
            count += take
            if count == size:
                yield pa.concat_tables(pending)
                pending, count = [], 0
    if count:
        yield pa.concat_tables(pending)


def _shard_matches(tar: Path, index: Path, table: pa.Table) -> bool:
    """Whether a finished shard from an earlier run holds exactly these samples (the index
    is written after the tar, so its presence marks a complete shard)."""
    if not (tar.exists() and index.exists()):
        return False
    done = pq.read_table(index, columns=["key", "uid"])
    return done.column("uid").equals(table.column("uid")) and done.column("key").equals(table.column("key"))


def write_shards(samples: Iterable[pa.Table], out_dir: str | Path, config: ShardConfig) -> dict:
    """Write ``samples`` (tables with ``uid, url, text, query_ids, source, jpg, width, height,
    original_width, original_height``, in the order they should appear) as shards; a shard
    already on disk with the same keys and uids is kept as is (rerun). Returns the stats written to
    ``out_dir/stats.json``: shards, samples, bytes."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shards = samples_total = 0
    for shard_id, table in enumerate(rebatch(samples, config.shard_size)):
        name = shard_name(shard_id)
        keys = pa.array([f"{name}_{i:06d}" for i in range(len(table))], pa.string())
        table = table.append_column("key", keys)
        tar, index = out_dir / f"{name}.tar", out_dir / f"{name}.parquet"
        if not _shard_matches(tar, index, table):
            write_tar(table.to_pylist(), tar)
            write_parquet_atomic(table.select(list(INDEX_COLUMNS)), index)
        shards += 1
        samples_total += len(table)
    stale = sorted(p for p in out_dir.glob("[0-9]*.*") if int(p.stem) >= shards)
    for path in stale:  # left over from an earlier, larger run with other settings
        os.remove(path)
    stats = {"shards": shards, "samples": samples_total, "shard_size": config.shard_size,
             "bytes": sum(p.stat().st_size for p in out_dir.glob("*.tar"))}
    write_bytes_atomic(out_dir / "stats.json", (json.dumps(stats, indent=2) + "\n").encode())
    return stats
