"""Image de-duplication: exact (decoded pixels) then near-duplicate (64-bit pHash, Hamming).

Input: an Arrow table with ``uid``, ``pixel_hash`` (binary) and ``phash`` (8 bytes).
Rows are visited in ascending uid order, so the survivor of every group is its smallest uid,
whatever the input order or partitioning:

1. exact: rows with equal ``pixel_hash`` → the smallest uid is kept, the others are rejected as
   ``exact_duplicate`` with ``duplicate_of`` = the kept uid;
2. near: among the exact survivors, a row whose pHash is within ``threshold`` bits of an
   *already kept* row (smaller uid) is rejected as ``near_duplicate`` of the smallest such uid.
   Each row is compared with kept rows only, so groups never chain (A~B, B~C does not drop C
   when C is far from A).

The neighbour search is faiss's multi-index hashing over the binary codes
(``IndexBinaryMultiHash`` with ``threshold + 1`` hash tables: by pigeonhole two codes within
``threshold`` bits agree exactly on at least one of the ``threshold + 1`` sub-strings), so it is
exact and sub-quadratic; the greedy pass is linear in rows + neighbour pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

PHASH_BITS = 64


@dataclass(frozen=True)
class ImageDedupConfig:
    """Image de-duplication settings."""

    threshold: int = 4  # max Hamming distance (bits of 64) of two near-duplicate pHashes; -1 = exact only


def near_duplicate_pairs(codes: np.ndarray, threshold: int) -> tuple[np.ndarray, np.ndarray]:
    """All (i, j), i != j, with Hamming(codes[i], codes[j]) <= threshold, as a CSR structure:
    ``(limits, neighbours)`` where row i's neighbours are ``neighbours[limits[i]:limits[i+1]]``.
    ``codes`` is ``(n, 8)`` uint8."""
    n = len(codes)
    if n == 0:
        return np.zeros(1, np.int64), np.zeros(0, np.int64)
    nhash = threshold + 1
    index = faiss.IndexBinaryMultiHash(PHASH_BITS, nhash, PHASH_BITS // nhash)
    index.add(codes)
    limits, _, neighbours = index.range_search(codes, threshold + 1)  # strict "<" radius
    return limits.astype(np.int64), neighbours.astype(np.int64)


def deduplicate(table: pa.Table, config: ImageDedupConfig) -> tuple[pa.Table, pa.Table]:
    """(kept rows sorted by uid, rejected rows: uid, reason, duplicate_of); see module doc."""
    table = table.sort_by([("uid", "ascending")])
    n = len(table)
    uids = table.column("uid")
    pixel = table.column("pixel_hash").to_pylist()
    duplicate_of = np.full(n, -1, np.int64)
    reasons: list[str | None] = [None] * n
    first_seen: dict[bytes, int] = {}
    for i, digest in enumerate(pixel):
        j = first_seen.setdefault(digest, i)
        if j != i:
            duplicate_of[i], reasons[i] = j, "exact_duplicate"
    if config.threshold >= 0:
        survivors = np.flatnonzero(duplicate_of < 0)
        phash = table.column("phash").combine_chunks()
        codes = np.frombuffer(phash.buffers()[1], np.uint8)[phash.offset * 8:(phash.offset + n) * 8]
        limits, neighbours = near_duplicate_pairs(codes.reshape(n, 8)[survivors], config.threshold)
        rows = np.repeat(np.arange(len(survivors)), np.diff(limits))
        has_earlier = np.unique(rows[neighbours < rows])  # rows with a smaller-uid neighbour
        kept = np.ones(len(survivors), bool)  # rows without one are kept outright
        for k in has_earlier:  # ascending uid: each row's earlier neighbours are decided already
            earlier = neighbours[limits[k]:limits[k + 1]]
            earlier = earlier[earlier < k]
            earlier = earlier[kept[earlier]]
            if len(earlier):
                kept[k] = False
                i = survivors[k]
                duplicate_of[i], reasons[i] = survivors[earlier.min()], "near_duplicate"
    dropped = duplicate_of >= 0
    rejected = pa.table({
        "uid": uids.filter(pa.array(dropped)),
        "reason": pa.array([r for r in reasons if r is not None], pa.string()),
        "duplicate_of": uids.take(pa.array(duplicate_of[dropped])),
    })
    return table.filter(pc.invert(pa.array(dropped))), rejected
