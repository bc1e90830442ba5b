"""Exact URL / text de-duplication, deterministic whatever the partitioning.

Rows are grouped by a key column; within a group the row with the smallest ``uid`` is kept and
the others get ``duplicate_<key>``. Engines co-locate equal keys with :func:`key_buckets`
(a hash of the key modulo the bucket count) and call :func:`mark_duplicates` per bucket, so the
result does not depend on the number of buckets, workers or batches.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from curation.stage import KEPT, REASON, dedup_reason, live_mask, with_reasons
from curation.xxh3 import xxh3_64_column


def key_buckets(table: pa.Table, key: str, num_buckets: int) -> np.ndarray:
    """Bucket of each row: ``xxh3_64(key value) % num_buckets`` (int64; a null key hashes as "").
    Hashed by the compiled kernel of :mod:`curation.xxh3` over the Arrow buffers."""
    hashes = xxh3_64_column(table.column(key), nulls="empty")
    return (hashes % np.uint64(num_buckets)).astype(np.int64)


TIE = "_tie"


def _break_ties(table: pa.Table, keys: list[str]) -> pa.Table:
    """Order rows that are equal on every sort key (same url and text, hence the same hashed
    uid, but other metadata) by a digest of their whole content, so which one is kept does not
    depend on arrival order (engine, batching). Only tied rows are digested: ties are rare."""
    n = table.num_rows
    if n < 2:
        return table
    equal = np.ones(n - 1, dtype=bool)
    for k in keys:
        column = table.column(k).combine_chunks()
        same = pc.fill_null(pc.equal(column.slice(1), column.slice(0, n - 1)), False)
        both_null = pc.and_(column.slice(1).is_null(), column.slice(0, n - 1).is_null())
        equal &= pc.or_(same, both_null).to_numpy(zero_copy_only=False).astype(bool)
    if not equal.any():
        return table
    tied = np.zeros(n, dtype=bool)
    tied[1:] |= equal
    tied[:-1] |= equal
    rows = np.flatnonzero(tied)
    digests = np.full(n, "", dtype=object)
    records = table.take(pa.array(rows)).to_pylist()
    for i, record in zip(rows, records):
        digests[i] = xxhash.xxh3_128_hexdigest(json.dumps(record, sort_keys=True, default=repr).encode())
    table = table.append_column(TIE, pa.array(digests, pa.string()))
    order = pc.sort_indices(table, sort_keys=[(k, "ascending") for k in keys] + [(TIE, "ascending")])
    return table.take(order).drop_columns([TIE])


def mark_duplicates(table: pa.Table, key: str) -> pa.Table:
    """Annotate every live row sharing ``key`` with a live row of smaller (uid, url, text, then a
    digest of the whole row) as ``duplicate_<key>``; rows rejected upstream neither compete nor change. The input must hold
    every row of each of its keys (one bucket)."""
    if REASON not in table.column_names:
        table = with_reasons(table)
    if table.num_rows == 0:
        return table
    sort_keys = [(REASON, "ascending"), (key, "ascending"), ("uid", "ascending"), ("url", "ascending"),
                 ("text", "ascending")]
    table = table.take(pc.sort_indices(table, sort_keys=sort_keys))
    table = _break_ties(table, [k for k, _ in sort_keys])
    live = live_mask(table)  # live rows ("" sorts first) form a prefix
    n_live = int(live.sum())
    keys = table.column(key).combine_chunks().slice(0, n_live)
    same = pc.fill_null(pc.equal(keys.slice(1), keys.slice(0, max(n_live - 1, 0))), False)
    duplicate = np.zeros(table.num_rows, dtype=bool)
    duplicate[1:n_live] = same.to_numpy(zero_copy_only=False).astype(bool)
    reasons = np.where(duplicate, dedup_reason(key), KEPT).astype(object)
    return with_reasons(table, reasons)
