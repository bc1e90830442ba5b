"""The training sample stream: deterministic, resumable exactly, one per (rank, loader worker).

**Order.** A source's shard files (as :func:`storage.layout.expand_shards` lists them) form an
endless sequence of *items*: item ``n`` is shard ``perm_k[n mod N]`` of data epoch ``k = n // N``
(``perm_k`` a permutation seeded by (seed, source, k); with ``resample`` a seeded choice with
replacement instead). The ``S`` = ranks x loader workers *slots* deal the items out: slot ``j``
reads items ``j, j+S, j+2S, …``, so without resampling every epoch reads each shard exactly once
over all slots, whatever S is, even with fewer shards than slots. Within a slot the samples are
shuffled in *blocks*: the next ``block`` samples (those the epoch's online draw keeps, with
``--balance online``) are read, permuted by a generator seeded by (seed, source, the block's
start) and yielded. Mixed sources (``weights``): the slot's k-th sample comes from source ``i``
with probability ``w_i / sum w``, decided by a hash of (seed, slot, k).

**Position.** So a slot's state after any sample is small and exact: per source ``[n, m, q]``
(its current block starts at the m-th sample of item n; q of the block's samples were yielded)
and ``k``, the samples it yielded. Every sample carries the state after it (``__state__``); a
checkpoint records each slot's state of the last batch trained on, and a stream started from it
re-reads one block (never decoding it) and goes on exactly as the uninterrupted stream would: no
sample repeated, none skipped. Reads during that replay are not counted again.

**Counts** (shared with the decoder, attached to batches), all counted when the stream reaches
them, so a resumed stream counts exactly what the uninterrupted one does: ``read`` (samples
read), and for those not passed on ``not_sampled`` (the online draw left it out this epoch),
``no_query_ids`` (an online pool's sample without ``uid`` / ``query_ids`` in its json) or
``unknown_query_id`` (an id the pool's balance table does not have); unreadable shards:
``unreadable_shard``. A slot that reads every shard twice over without a sample to pass on stops
with an error naming the source (an empty pool, or one whose samples all lack their ids).
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Callable, Iterator

import numpy as np

from pretrain.online import OnlineBalance

DRAW_CHUNK = 64  # samples drawn at once by the online balance (one compiled call)
_MASK64 = (1 << 64) - 1


def mix64(*values: int) -> int:
    """A splitmix64-style hash of a few non-negative ints (pure Python: the same everywhere)."""
    z = 0x9E3779B97F4A7C15
    for v in values:
        z = (z ^ (int(v) & _MASK64)) & _MASK64
        z = (z + 0x9E3779B97F4A7C15) & _MASK64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        z ^= z >> 31
    return z


def initial_state(slot: int, sources: int) -> dict:
    """A slot's state before its first sample: each source at its first item (``n = slot``)."""
    return {"k": 0, "sources": [[slot, 0, 0] for _ in range(sources)]}


class SourceStream:
    """One source's samples for one slot (module doc), from ``start`` = ``[n, m, q]``."""

    def __init__(self, shards: list[str], index: int, seed: int, slot: int, slots: int, block: int, resample: bool,
                 balance: OnlineBalance | None, counts: Counter, open_shard: Callable[[str, Callable], Iterator[dict]],
                 on_error: Callable[[str, str], None], start: list[int] | None = None):
        if not shards:
            raise ValueError(f"source {index}: no shard files")
        self.shards, self.index, self.seed = shards, index, int(seed)
        self.slot, self.slots, self.block, self.resample = slot, slots, max(1, int(block)), resample
        self.balance, self.counts, self.open_shard, self.on_error = balance, counts, open_shard, on_error
        self.position = list(start) if start else [slot, 0, 0]
        self._perms: dict[int, list[int]] = {}

    def item(self, n: int) -> tuple[str, int]:
        """(shard, data epoch) of item ``n``."""
        count = len(self.shards)
        epoch = n // count
        if self.resample:
            return self.shards[mix64(self.seed, self.index, n) % count], epoch
        if epoch not in self._perms:
            self._perms.clear()
            order = list(range(count))
            random.Random(mix64(self.seed, self.index, epoch, 0x5EED)).shuffle(order)
            self._perms[epoch] = order
        return self.shards[self._perms[epoch][n % count]], epoch

    def _too_many(self, items: int, what: str) -> None:
        """Raise when ``items`` of this slot's items in a row (more than 2 N + 1: every shard
        twice over) gave ``what`` — an endless loop otherwise."""
        if items > 2 * len(self.shards) + 1:
            raise RuntimeError(f"{len(self.shards)} shard(s) of source {self.index} ({self.shards[0]} …): {items} read "
                               f"in a row gave {what}; counts so far: {dict(self.counts)}")

    def _raw(self, n: int, m: int) -> Iterator[tuple[int, int, int, dict | None]]:
        """(item, index in the item, epoch, sample) from the m-th sample of item n on, this slot's
        items only; a shard that cannot be read (or stops being readable) adds ``None`` after its
        readable samples, the index then being the next sample's."""
        empty = 0
        while True:
            url, epoch = self.item(n)
            errors: list[Exception] = []
            j = -1
            for j, sample in enumerate(self.open_shard(url, lambda exn: errors.append(exn) or True)):
                if j >= m:
                    yield n, j, epoch, sample
            if errors:
                yield n, max(j + 1, m), epoch, None
            empty = empty + 1 if j < 0 else 0
            self._too_many(empty, "no sample (empty or unreadable)")
            n, m = n + self.slots, 0

    def _drawn(self, n: int, m: int) -> Iterator[tuple[int, int, int, dict | None, str]]:
        """:meth:`_raw` with each sample's fate: ``""`` kept, else the reason it is not passed on
        (``unreadable_shard``; the online draw's, in chunks of :data:`DRAW_CHUNK`)."""
        raw = self._raw(n, m)
        while True:
            chunk = [next(raw) for _ in range(DRAW_CHUNK if self.balance is not None else 1)]
            fates = self._draw(chunk) if self.balance is not None else [""] * len(chunk)
            for (n, j, epoch, sample), fate in zip(chunk, fates):
                yield n, j, epoch, sample, "unreadable_shard" if sample is None else fate

    def _draw(self, chunk: list[tuple[int, int, int, dict | None]]) -> list[str]:
        """The online draw's fate of each sample: ``not_sampled``, ``no_query_ids`` (no json
        ``uid`` / ``query_ids``) or ``unknown_query_id`` (an id the pool's balance table lacks)."""
        fates = ["no_query_ids"] * len(chunk)
        by_epoch: dict[int, list[tuple[int, str, list[int]]]] = {}
        for i, (_, _, epoch, sample) in enumerate(chunk):
            try:
                meta = json.loads(sample["json"])
                uid, ids = meta["uid"], [int(q) for q in meta["query_ids"]]
            except (KeyError, TypeError, ValueError):
                continue
            if not isinstance(uid, str) or not uid:
                continue
            if not self.balance.known(ids):
                fates[i] = "unknown_query_id"
                continue
            by_epoch.setdefault(epoch, []).append((i, uid, ids))
        for epoch, rows in by_epoch.items():
            keep = self.balance.keep([r[1] for r in rows], [r[2] for r in rows], epoch)
            for (i, uid, _), kept in zip(rows, keep):
                fates[i] = "" if kept else "not_sampled"
                chunk[i][3]["__uid__"] = uid  # its id, read once (pretrain.data.sample_id)
        return fates

    def __iter__(self) -> Iterator[dict]:
        n, m, q = self.position
        replay = q > 0  # the block was read (and counted) before the state was recorded
        drawn = self._drawn(n, m)
        dry, last = 0, n  # this slot's items read in a row without a sample passed on
        while True:
            start, block = (n, m), []
            for n_, j, epoch, sample, fate in drawn:
                if sample is None:  # an unreadable shard (its readable samples came before)
                    if not replay:
                        self.on_error("unreadable_shard", self.item(n_)[0])
                    n, m = n_, j
                    continue
                if not replay:
                    self.counts["read"] += 1
                    if fate:
                        self.counts[fate] += 1
                n, m = n_, j + 1
                if fate:
                    dry, last = dry + (n_ != last), n_
                    self._too_many(dry, "no sample to train on (every one left out: " + fate + ")")
                    continue
                dry, last = 0, n_
                block.append({**sample, "__epoch__": epoch})
                if len(block) == self.block:
                    break
            order = list(range(len(block)))
            random.Random(mix64(self.seed, self.index, *start)).shuffle(order)
            for i in range(q, len(block)):
                self.position = [start[0], start[1], i + 1]
                yield block[order[i]]
            q, replay = 0, False


class SlotStream:
    """All sources of one slot: samples tagged with ``__state__`` (the slot's state after it),
    ``__source__`` (the source's index) and ``__epoch__`` (the data epoch of the item it came from)."""

    def __init__(self, sources: list[SourceStream], weights: list[float] | None, seed: int, slot: int, k: int = 0):
        self.sources, self.seed, self.slot, self.k = sources, int(seed), slot, int(k)
        total = sum(weights) if weights else 1.0
        self.cumulative = np.cumsum(np.asarray(weights or [1.0], dtype=np.float64) / total)

    def choose(self, k: int) -> int:
        """The source of the slot's k-th sample (a pure function of seed, slot and k)."""
        if len(self.sources) == 1:
            return 0
        u = (mix64(self.seed, self.slot, k, 0xC0FFEE) >> 11) * (1.0 / (1 << 53))
        return min(int(np.searchsorted(self.cumulative, u, side="right")), len(self.sources) - 1)

    def state(self) -> dict:
        return {"k": self.k, "sources": [list(s.position) for s in self.sources]}

    def __iter__(self) -> Iterator[dict]:
        streams = [iter(s) for s in self.sources]
        while True:
            i = self.choose(self.k)
            sample = next(streams[i])
            self.k += 1
            yield {**sample, "__state__": self.state(), "__source__": i}
