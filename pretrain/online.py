"""Online balancing (MetaCLIP 2's training): each epoch a fresh balanced sample of the matched,
unbalanced pool, drawn by the training loader with curation's balancing draw.

The pool's shards were written by ``build_wit.py --balance online``: every matched pair, its
json member carrying ``uid`` and ``query_ids``, and beside the shards
(:func:`storage.layout.balance_files`) ``balance.parquet``
(per entry: ``query_id``, ``count`` c_e, ``t``) and ``balance.json`` (the curation ``seed``,
``num_queries``…). In epoch ``k`` a pair is kept when any of its entries e draws
u(uid, e, :func:`epoch_seed` (seed, k)) < p_e = t_e / max(c_e, t_e) — the offline balance
stage's pure draw (:mod:`curation.text.balance`), so epoch 0 keeps exactly the pairs the offline
selection with the same seed keeps, and every epoch keeps min(c_e, t_e) pairs of entry e in
expectation (more, through the pair's other entries, for pairs matching several), a different
sample of the head entries each time, the whole tail every time.
"""

from __future__ import annotations

import hashlib
import json
import posixpath

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curation.text.balance import (balance_probabilities, draw_thresholds, entry_salts, entry_table, keep_rows, splitmix64,
                                   uid_hashes)
from storage.files import open_input
from storage.layout import balance_files

_MASK32 = (1 << 32) - 1


def epoch_seed(seed: int, epoch: int) -> int:
    """The draw's seed in epoch ``epoch``: ``seed`` itself in epoch 0 (the offline draw), else
    ``seed`` xor a splitmix64 hash of the epoch (low 32 bits: the draw salts with
    ``seed * 2^32 + e``), so the epochs of one seed and the seeds of one epoch all draw apart."""
    if epoch == 0:
        return int(seed)
    mixed = int(splitmix64(np.array([epoch], dtype=np.uint64))[0]) & _MASK32
    return (int(seed) ^ mixed) & ((1 << 64) - 1)


class OnlineBalance:
    """The per-epoch draw over a pool's entry counts: ``keep(uids, query_ids, epoch)`` is the
    keep mask of those pairs in that epoch. Entry tables are cached for the last two epochs."""

    def __init__(self, query_ids: np.ndarray, counts: np.ndarray, t: np.ndarray, seed: int, num_queries: int,
                 source: str = ""):
        self.seed, self.source = int(seed), source
        probs = np.zeros(num_queries, dtype=np.float64)
        present = np.asarray(query_ids, dtype=np.int64)
        probs[present] = balance_probabilities(counts, np.asarray(t, np.float64))
        self.thresholds = draw_thresholds(probs)
        self.present = np.zeros(num_queries, dtype=bool)  # the entries of the table (c_e > 0)
        self.present[present] = True
        # what the draw depends on: the entries' thresholds and the seed
        self.digest = hashlib.sha1(self.thresholds.tobytes() + str(self.seed).encode()).hexdigest()[:16]
        self._tables: dict[int, np.ndarray] = {}

    @classmethod
    def from_shards(cls, first_shard: str) -> "OnlineBalance":
        """The balance files beside ``first_shard`` (local or URI); missing: a ``FileNotFoundError``
        saying which ``build_wit.py`` run writes them."""
        directory = posixpath.dirname(first_shard.rstrip("/"))
        table_uri, info_uri = balance_files(directory)
        try:
            with open_input(info_uri) as f:
                info = json.load(f)
            with open_input(table_uri) as f:
                table = pq.read_table(f)
        except FileNotFoundError as err:
            raise FileNotFoundError(f"{directory}: no {posixpath.basename(table_uri)} / {posixpath.basename(info_uri)}: "
                                    f"--balance online trains on a "
                                    f"pool written by 'build_wit.py --balance online' ({err.filename or err})") from None
        missing = {"query_id", "count", "t"} - set(table.column_names)
        if missing or "seed" not in info or "num_queries" not in info:
            raise ValueError(f"{table_uri}: not an online pool's balance table (missing {sorted(missing) or 'seed'})")
        return cls(table.column("query_id").to_numpy(), table.column("count").to_numpy(),
                   table.column("t").to_numpy(), info["seed"], info["num_queries"], source=directory)

    def table(self, epoch: int) -> np.ndarray:
        """The :func:`curation.text.balance.entry_table` of ``epoch``'s draw."""
        if epoch not in self._tables:
            while len(self._tables) >= 2:
                self._tables.pop(min(self._tables))
            salts = entry_salts(np.arange(len(self.thresholds)), epoch_seed(self.seed, epoch))
            self._tables[epoch] = entry_table(salts, self.thresholds)
        return self._tables[epoch]

    def known(self, ids: list[int]) -> bool:
        """Whether every id is an entry of the pool's table (a matched pair's ids always are: else
        the sample and the balance files do not belong together)."""
        return all(0 <= q < len(self.present) and self.present[q] for q in ids)

    def keep(self, uids: list[str], query_ids: list[list[int]], epoch: int) -> np.ndarray:
        """Keep mask of the pairs (``uids``, their matched ``query_ids``, all :meth:`known`) in
        ``epoch``."""
        if not uids:
            return np.zeros(0, dtype=bool)
        return keep_rows(uid_hashes(uids), pa.array(query_ids, type=pa.list_(pa.int32())), self.table(epoch))
