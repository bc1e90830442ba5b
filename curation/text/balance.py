"""Per-entry counts and MetaCLIP balancing with a deterministic, engine-independent draw.

c_e is the number of matched pairs of entry e over the whole (deduplicated) pool;
p_e = t / max(c_e, t); a pair with matched entries E is kept when any entry's uniform draw
u(uid, e, seed) < p_e, i.e. with probability 1 - prod_{e in E} (1 - p_e). The draw is a pure
function of (uid, entry id, seed): ``splitmix64(xxh3_64(uid) ^ splitmix64(seed * 2^32 + e))``
mapped to [0, 1) by its top 53 bits, so any engine, partitioning, worker count or retry draws
the same numbers.
"""

from __future__ import annotations

import numba
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation.stage import with_reasons
from curation.text.threshold import entry_thresholds
from curation.xxh3 import xxh3_64_column

BALANCE_MODES = ("offline", "online")  # curation keeps the draw's pairs | keeps every matched pair, training draws per epoch

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser over a uint64 array (wrapping arithmetic, in place on a copy)."""
    z = np.add(x, _GOLDEN, dtype=np.uint64)
    z ^= z >> np.uint64(30)
    z *= _M1
    z ^= z >> np.uint64(27)
    z *= _M2
    z ^= z >> np.uint64(31)
    return z


def salted_hashes(uid_hash: np.ndarray, salt: int) -> np.ndarray:
    """``splitmix64(uid_hash ^ splitmix64(salt))``: a draw of its own per uid under ``salt`` (the
    hold-out and the shard order each have a salt; the balancing draw salts per entry instead,
    :func:`entry_salts`)."""
    return splitmix64(np.asarray(uid_hash, np.uint64) ^ splitmix64(np.array([salt], dtype=np.uint64))[0])


def uid_hashes(uids: pa.Array | pa.ChunkedArray | list[str]) -> np.ndarray:
    """``xxh3_64`` of each uid's UTF-8 bytes (uint64), computed by the compiled kernel of
    :mod:`curation.xxh3` straight over the Arrow offsets and data buffers (equal to
    ``xxhash.xxh3_64_intdigest`` row for row). A null uid is an error."""
    return xxh3_64_column(uids)


def count_entries(query_ids: pa.Array | pa.ChunkedArray, num_queries: int) -> np.ndarray:
    """Matched pairs per entry (int64, length ``num_queries``) of a ``list<int32>`` column
    (the match stage leaves the ids of rejected rows empty, so they count nothing)."""
    if isinstance(query_ids, pa.ChunkedArray):
        query_ids = query_ids.combine_chunks() if query_ids.num_chunks else pa.array([], pa.list_(pa.int32()))
    flat = pc.list_flatten(query_ids).to_numpy(zero_copy_only=False)
    return np.bincount(flat, minlength=num_queries).astype(np.int64, copy=False)


def balance_probabilities(counts: np.ndarray, t: float) -> np.ndarray:
    """p_e = t / max(c_e, t) (entries never matched get 1.0)."""
    counts = np.asarray(counts, dtype=np.float64)
    return t / np.maximum(counts, t)


def entry_salts(entry_ids: np.ndarray, seed: int) -> np.ndarray:
    """``splitmix64(seed * 2^32 + e)`` per entry id (the per-entry half of the draw)."""
    return splitmix64((np.uint64(seed) << np.uint64(32)) + np.asarray(entry_ids).astype(np.uint64))


def uniform_draws(uid_hash: np.ndarray, entry_ids: np.ndarray, seed: int) -> np.ndarray:
    """u(uid, e, seed) in [0, 1) for aligned arrays of uid hashes and entry ids."""
    bits = splitmix64(uid_hash ^ entry_salts(entry_ids, seed))
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def draw_thresholds(probs: np.ndarray) -> np.ndarray:
    """``ceil(p * 2^53)`` as uint64: for the 53-bit draw x, ``x * 2^-53 < p`` iff ``x < ceil(p * 2^53)``,
    so comparing integers gives exactly the decisions of :func:`uniform_draws` ``< p``."""
    return np.ceil(np.asarray(probs, dtype=np.float64) * float(1 << 53)).astype(np.uint64)


def keep_pairs(uid_hash: np.ndarray, query_ids: pa.ListArray, probs: np.ndarray, seed: int,
               salts: np.ndarray | None = None, thresholds: np.ndarray | None = None) -> np.ndarray:
    """Boolean keep mask per row of ``query_ids``: any matched entry e with u(uid, e, seed) < p_e
    (rows without ids are never kept). ``salts`` / ``thresholds`` (per entry, from
    :func:`entry_salts` / :func:`draw_thresholds`) may be passed precomputed."""
    salts = entry_salts(np.arange(len(probs)), seed) if salts is None else salts
    thresholds = draw_thresholds(probs) if thresholds is None else thresholds
    return keep_rows(np.ascontiguousarray(uid_hash, dtype=np.uint64), query_ids, entry_table(salts, thresholds))


def entry_table(salts: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Per entry ``[salt, threshold]`` side by side (uint64, shape (E, 2)): the draw of a pair
    reads both from one cache line."""
    return np.ascontiguousarray(np.stack([np.asarray(salts, np.uint64), np.asarray(thresholds, np.uint64)], axis=1))


def keep_rows(uid_hash: np.ndarray, query_ids: pa.ListArray, table: np.ndarray) -> np.ndarray:
    """:func:`keep_pairs` over a precomputed :func:`entry_table` (one compiled pass over the rows)."""
    offsets = np.asarray(query_ids.offsets.to_numpy(), dtype=np.int64)
    flat = pc.list_flatten(query_ids).to_numpy(zero_copy_only=False)
    return _keep_rows(uid_hash, offsets - offsets[0], np.asarray(flat, dtype=np.int32), table)


@numba.njit(cache=True, nogil=True)
def _keep_rows(uid_hash: np.ndarray, offsets: np.ndarray, flat: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Per row: does any entry e of the row draw ``splitmix64(uid_hash ^ salt_e) >> 11 <
    threshold_e``? Stops at the row's first hit; an entry with p_e = 1 (threshold 2^53) is a hit
    without hashing. Same decisions as the vectorised formula, pair for pair."""
    rows = len(offsets) - 1
    keep = np.zeros(rows, dtype=np.bool_)
    certain = np.uint64(1 << 53)
    for r in range(rows):
        h = uid_hash[r]
        for k in range(offsets[r], offsets[r + 1]):
            entry = flat[k]
            threshold = table[entry, 1]
            if threshold >= certain:
                keep[r] = True
                break
            z = (h ^ table[entry, 0]) + _GOLDEN
            z = (z ^ (z >> np.uint64(30))) * _M1
            z = (z ^ (z >> np.uint64(27))) * _M2
            z ^= z >> np.uint64(31)
            if (z >> np.uint64(11)) < threshold:
                keep[r] = True
                break
    return keep


EPOCH0_COLUMN = "_epoch0"  # online balancing: whether the offline draw (epoch 0's sample) keeps the row


class Balancer:
    """The balance stage: annotates live rows not drawn as ``not_sampled`` (rows rejected
    upstream keep their reason). ``counts`` are the global c_e (:func:`count_entries` summed);
    ``t=None`` scales t to them (curation/text/threshold.py); with ``languages`` (each entry's,
    a worldwide list) each entry is balanced with its language's t (MetaCLIP 2's ``p_to_t``).

    ``online`` (MetaCLIP 2's online balancing): no row is rejected -- training draws a fresh
    balanced sample each epoch from the whole matched pool -- and the draw's decision is
    recorded instead, in an :data:`EPOCH0_COLUMN` boolean column, so the run can say how many
    pairs the offline draw (epoch 0's sample) keeps."""

    def __init__(self, counts: np.ndarray, t: float | None = 20_000, seed: int = 0, languages: np.ndarray | None = None,
                 online: bool = False):
        self.t = entry_thresholds(counts, t, languages)  # a float; per entry for a worldwide list (its language's)
        self.probs = balance_probabilities(counts, self.t)
        self.seed = int(seed)
        self.salts = entry_salts(np.arange(len(self.probs)), self.seed)
        self.thresholds = draw_thresholds(self.probs)
        self.table = entry_table(self.salts, self.thresholds)
        self.online = bool(online)

    def __call__(self, table: pa.Table, hashes: np.ndarray | None = None) -> pa.Table:
        """``hashes``: the rows' :func:`uid_hashes`, when the caller already has them."""
        query_ids = table.column("query_ids").combine_chunks()
        if table.num_rows == 0:
            kept = np.zeros(0, dtype=bool)
        else:
            hashes = uid_hashes(table.column("uid")) if hashes is None else hashes
            empty = pc.list_value_length(query_ids).to_numpy(zero_copy_only=False) == 0
            kept = keep_rows(hashes, query_ids, self.table) | empty
        if self.online:
            return with_reasons(table).append_column(EPOCH0_COLUMN, pa.array(kept, pa.bool_()))
        return with_reasons(table, np.where(kept, "", "not_sampled").astype(object))
