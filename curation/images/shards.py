"""Final WebDataset shards: ``shards/NNNNN.tar`` + ``NNNNN.parquet`` index + ``stats.json``.

Each sample is three tar members sharing a key: ``<key>.jpg`` (the checked, resized JPEG),
``<key>.txt`` (the caption) and ``<key>.json`` (uid, url, query_ids, source, sizes; with the
release-safety checks the original's ``sha256``, ``nsfw_score`` and ``face_bboxes`` too: DataComp's
names). The index parquet adds ``md5``, ``sha1``, ``pdq`` and ``pdq_quality``. Keys are
``<shard:05d>_<index:06d>``, passed through :func:`sanitize_key` anyway, so a member name can
never hold a path separator, ``..`` or the dot WebDataset splits extensions at. Tars are written
with webdataset's ``TarWriter`` with a fixed mtime/owner (byte-identical reruns), to a temp name,
then renamed. They load unchanged with ``webdataset.WebDataset``, ``ray.data.read_webdataset``
(``file_extensions=["tar"]``) and open_clip (``--train-data 'shards/{00000..000NN}.tar'``).
An online-balanced run (``--balance online``) also has ``balance.parquet`` and ``balance.json``
in the training shards' directory (:func:`publish_balance`), where a loader finds them from the
shard pattern's directory.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import pyarrow as pa
import webdataset as wds

from storage.files import atomic_write
from storage.layout import RunLayout, shard_name

INDEX_COLUMNS = ("key", "uid", "url", "text", "query_ids", "source", "width", "height",
                 "original_width", "original_height",
                 # the release-safety fields (curation/images/safety.py), when the samples carry them
                 "md5", "sha1", "sha256", "pdq", "pdq_quality", "nsfw_score", "face_bboxes",
                 "language")  # a worldwide selection's caption language (absent in English-only runs)
OPTIONAL_FIELDS = ("md5", "sha1", "sha256", "pdq", "pdq_quality", "nsfw_score", "face_bboxes",
                   "language")  # left out when null
JSON_FIELDS = ("uid", "url", "query_ids", "source", "width", "height", "original_width", "original_height",
               "sha256", "nsfw_score", "face_bboxes", "language")  # a sample's <key>.json (those the row has)
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


@dataclass(frozen=True)
class ShardConfig:
    """Final shard layout."""

    shard_size: int = 10_000  # samples per tar (the last shard holds the rest)
    holdout_fraction: float = 0.0  # share of samples (by uid hash, curation/images/holdout.py) written to heldout/


def sanitize_key(key: str) -> str:
    """A tar member stem that is safe everywhere: only ``[A-Za-z0-9_-]``, never empty."""
    return _UNSAFE.sub("_", key) or "_"


def sample_members(row: dict) -> dict:
    """One WebDataset sample (``__key__``, ``jpg``, ``txt``, ``json`` as bytes) from an index
    row plus its ``jpg`` bytes."""
    meta = {k: row[k] for k in JSON_FIELDS if k in row and not (k in OPTIONAL_FIELDS and row[k] is None)}
    return {
        "__key__": sanitize_key(row["key"]),
        "jpg": row["jpg"],
        "txt": (row["text"] or "").encode("utf-8"),
        "json": json.dumps(meta, sort_keys=True, ensure_ascii=False).encode("utf-8"),
    }


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


def index_columns(table: pa.Table) -> list[str]:
    """The :data:`INDEX_COLUMNS` a shard's index holds: those of the samples, less the optional
    safety fields no sample of the shard has (checks turned off: the same index as without them)."""
    return [c for c in INDEX_COLUMNS if c in table.column_names
            and not (c in OPTIONAL_FIELDS and table.column(c).null_count == len(table))]


def _shard_matches(layout: RunLayout, shard_id: int, table: pa.Table, split: str = "shards") -> bool:
    """Whether a finished shard from an earlier run holds exactly these samples (the index
    is written after the tar, so its presence marks a complete shard)."""
    tar, index = layout.shard_tar(shard_id, split), layout.shard_index(shard_id, split)
    if not (layout.exists(tar) and layout.exists(index)):
        return False
    done = layout.read_parquet(index, columns=["key", "uid"])
    return done.column("uid").equals(table.column("uid")) and done.column("key").equals(table.column("key"))


def tar_writer(f) -> wds.TarWriter:
    """The one way a shard tar is written: webdataset's ``TarWriter`` with a fixed owner and
    mtime and no encoder (members are bytes), so equal samples give equal bytes."""
    return wds.TarWriter(f, user="openwit", group="openwit", mtime=0, encoder=False)


def _write_tar(f, table: pa.Table) -> None:
    """Stream ``table``'s samples into the open file ``f`` as a WebDataset tar (fixed owner and
    mtime), a batch of rows at a time: the shard is never whole in memory."""
    with tar_writer(f) as sink:
        for batch in table.to_batches(max_chunksize=64):
            for row in batch.to_pylist():
                sink.write(sample_members(row))


def write_shard(layout: RunLayout, shard_id: int, table: pa.Table, split: str = "shards") -> dict:
    """Write one shard (``table``: the sample columns, in order; keys are added) unless an
    earlier run left the same one; the tar is streamed to the run's filesystem (atomic), then
    its index. Returns ``{"samples", "bytes"}``."""
    name = shard_name(shard_id)
    keys = pa.array([f"{name}_{i:06d}" for i in range(len(table))], pa.string())
    table = table.append_column("key", keys)
    tar = layout.shard_tar(shard_id, split)
    if not _shard_matches(layout, shard_id, table, split):
        atomic_write(tar, lambda f: _write_tar(f, table))
        layout.write_parquet(table.select(index_columns(table)), layout.shard_index(shard_id, split))
    return {"samples": len(table), "bytes": layout.size(tar)}


def finish_shards(layout: RunLayout, written: list[dict], config: ShardConfig, split: str = "shards") -> dict:
    """After shards ``0..len(written)-1`` are written: remove higher-numbered shards an earlier,
    larger run left, and write ``<split>/stats.json`` (shards, samples, shard_size, bytes)."""
    shards = len(written)
    for uri in layout.list(layout.split_dir(split)):  # left over from an earlier, larger run
        stem, _, ext = uri.rsplit("/", 1)[-1].partition(".")
        if stem.isdigit() and ext in ("tar", "parquet") and int(stem) >= shards:
            layout.remove(uri)
    stats = {"shards": shards, "samples": sum(w["samples"] for w in written), "shard_size": config.shard_size,
             "bytes": sum(w["bytes"] for w in written)}
    layout.write_json(layout.shard_stats_of(split), stats)
    return stats


def publish_balance(layout: RunLayout) -> list[str]:
    """Copy online balancing's metadata (the curation dir's ``balance.parquet`` and
    ``balance.json``, :func:`curation.text.config.write_balance_metadata`) into the training
    shards' directory, each atomically and only when its bytes differ (a rerun rewrites
    nothing); a selection without them (offline balancing) leaves none there. Returns the
    files copied."""
    copied = []
    for source, target in zip((layout.balance_table, layout.balance_meta), layout.shards_balance):
        if not layout.exists(source):
            layout.remove(target)
            continue
        data = layout.read_bytes(source)
        if not layout.exists(target) or layout.read_bytes(target) != data:
            layout.write_bytes(target, data)
            copied.append(target)
    return copied


def write_shards(samples: Iterable[pa.Table], layout: RunLayout, config: ShardConfig, split: str = "shards") -> dict:
    """Write ``samples`` (tables with ``uid, url, text, query_ids, source, jpg, width, height,
    original_width, original_height``, in the order they should appear) as the run's shards in
    this process; a shard already there with the same keys and uids is kept as is (rerun).
    Files in the split's dir that are not ours (a README, a temp file of an interrupted write)
    are left alone or cleaned. Returns the stats written to ``<split>/stats.json``. (The image
    stages write shards as tasks: :func:`plan_shards` + :func:`write_shard`.)"""
    layout.clean_temp(layout.split_dir(split))
    written = [write_shard(layout, shard_id, table, split)
               for shard_id, table in enumerate(rebatch(samples, config.shard_size))]
    return finish_shards(layout, written, config, split)


def plan_shards(counts: list[int], size: int) -> list[list[tuple[int, int, int]]]:
    """Cut parts holding ``counts[i]`` samples each (in order) into shards of ``size``: for
    each shard, its ``(part, start, stop)`` ranges, so shard k holds samples k*size.. of the
    concatenation, exactly as :func:`rebatch` over the parts would cut them."""
    if size <= 0:
        raise ValueError(f"shard size must be > 0, got {size}")
    plan: list[list[tuple[int, int, int]]] = []
    current: list[tuple[int, int, int]] = []
    room = size
    for part, count in enumerate(counts):
        start = 0
        while start < count:
            take = min(room, count - start)
            current.append((part, start, start + take))
            start += take
            room -= take
            if room == 0:
                plan.append(current)
                current, room = [], size
    if current:
        plan.append(current)
    return plan
