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
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import pyarrow as pa
import webdataset as wds

from curation.run import RunLayout, shard_name

INDEX_COLUMNS = ("key", "uid", "url", "text", "query_ids", "source", "width", "height",
                 "original_width", "original_height")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


@dataclass(frozen=True)
class ShardConfig:
    """Final shard layout."""

    shard_size: int = 10_000  # samples per tar (the last shard holds the rest)
    holdout_fraction: float = 0.0  # share of samples (by uid hash, curation/holdout.py) written to heldout/


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


def tar_bytes(rows: list[dict]) -> bytes:
    """The bytes of a WebDataset tar holding ``rows`` (fixed owner and mtime: reproducible)."""
    buffer = io.BytesIO()
    with wds.TarWriter(buffer, user="openwit", group="openwit", mtime=0, encoder=False) as sink:
        for row in rows:
            sink.write(sample_members(row))
    return buffer.getvalue()


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


def _shard_matches(layout: RunLayout, shard_id: int, table: pa.Table, split: str = "shards") -> bool:
    """Whether a finished shard from an earlier run holds exactly these samples (the index
    is written after the tar, so its presence marks a complete shard)."""
    tar, index = layout.shard_tar(shard_id, split), layout.shard_index(shard_id, split)
    if not (layout.exists(tar) and layout.exists(index)):
        return False
    done = layout.read_parquet(index, columns=["key", "uid"])
    return done.column("uid").equals(table.column("uid")) and done.column("key").equals(table.column("key"))


def write_shards(samples: Iterable[pa.Table], layout: RunLayout, config: ShardConfig, split: str = "shards") -> dict:
    """Write ``samples`` (tables with ``uid, url, text, query_ids, source, jpg, width, height,
    original_width, original_height``, in the order they should appear) as the run's shards; a
    shard already there with the same keys and uids is kept as is (rerun). Files in ``shards/``
    that are not ours (a README, a temp file of an interrupted write) are left alone or cleaned.
    Returns the stats written to ``shards/stats.json``: shards, samples, bytes. ``split`` =
    ``heldout`` writes the held-out pairs' shards to ``heldout/`` the same way."""
    directory = layout.split_dir(split)
    layout.clean_temp(directory)
    shards = samples_total = 0
    for shard_id, table in enumerate(rebatch(samples, config.shard_size)):
        name = shard_name(shard_id)
        keys = pa.array([f"{name}_{i:06d}" for i in range(len(table))], pa.string())
        table = table.append_column("key", keys)
        if not _shard_matches(layout, shard_id, table, split):
            layout.write_bytes(layout.shard_tar(shard_id, split), tar_bytes(table.to_pylist()))
            layout.write_parquet(table.select(list(INDEX_COLUMNS)), layout.shard_index(shard_id, split))
        shards += 1
        samples_total += len(table)
    for uri in layout.list(directory):  # left over from an earlier, larger run
        stem, _, ext = uri.rsplit("/", 1)[-1].partition(".")
        if stem.isdigit() and ext in ("tar", "parquet") and int(stem) >= shards:
            layout.remove(uri)
    tars = [layout.shard_tar(i, split) for i in range(shards)]
    stats = {"shards": shards, "samples": samples_total, "shard_size": config.shard_size,
             "bytes": sum(layout.size(t) for t in tars)}
    layout.write_json(layout.shard_stats_of(split), stats)
    return stats
