"""Exact URL / text de-duplication, deterministic whatever the partitioning.

Rows are grouped by a key column; within a group the row with the smallest ``uid`` is kept and
the others get ``duplicate_<key>``. Engines co-locate equal keys with :func:`key_buckets`
(a hash of the key modulo the bucket count) and call :func:`mark_duplicates` per bucket, so the
result does not depend on the number of buckets, workers or batches.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from curation.stage import KEPT, REASON, with_reasons


def key_buckets(table: pa.Table, key: str, num_buckets: int) -> np.ndarray:
    """Bucket of each row: ``xxh3_64(key value) % num_buckets`` (int64)."""
    values = table.column(key).to_pylist()
    hashes = np.fromiter((xxhash.xxh3_64_intdigest((v or "").encode()) for v in values),
                         dtype=np.uint64, count=len(values))
    return (hashes % np.uint64(num_buckets)).astype(np.int64)


def mark_duplicates(table: pa.Table, key: str) -> pa.Table:
    """Annotate every row sharing ``key`` with an earlier (smaller uid, then smaller url/text)
    row as ``duplicate_<key>``; the input must hold every row of each of its keys."""
    if REASON in table.column_names:
        table = table.drop_columns([REASON])
    if table.num_rows == 0:
        return with_reasons(table)
    order = pc.sort_indices(table, sort_keys=[(key, "ascending"), ("uid", "ascending"),
                                              ("url", "ascending"), ("text", "ascending")])
    table = table.take(order)
    keys = table.column(key).combine_chunks()
    same = pc.equal(keys.slice(1), keys.slice(0, len(keys) - 1)).to_numpy(zero_copy_only=False)
    duplicate = np.concatenate([[False], same.astype(bool)])
    reasons = np.where(duplicate, f"duplicate_{key}", KEPT).astype(object)
    return with_reasons(table, reasons)
