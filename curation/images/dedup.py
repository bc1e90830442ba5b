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

Two implementations with the same result: :func:`deduplicate` (one process, all hashes in
memory) and :func:`deduplicate_distributed` (tasks over the run dir, any engine: no machine holds
every hash; see its doc). The single-process neighbour search is faiss's multi-index hashing over the binary codes
(``IndexBinaryMultiHash`` with ``threshold + 1`` hash tables: by pigeonhole two codes within
``threshold`` bits agree exactly on at least one of the ``threshold + 1`` sub-strings), so it is
exact and sub-quadratic; the greedy pass is linear in rows + neighbour pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numba
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curation.images.phash import PHASH_BITS
from curation.stage import MapTasks, in_process
from storage.layout import bucket_name, task_part_name


@dataclass(frozen=True)
class ImageDedupConfig:
    """Image de-duplication settings."""

    threshold: int = 4  # max Hamming distance (bits of 64) of two near-duplicate pHashes; -1 = exact only
    buckets: int = 0  # hash buckets (tasks per round) of the distributed dedup; 0: one per 100k rows (min 2)


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
        codes = fixed_bytes(table.column("phash"), 8)
        limits, neighbours = near_duplicate_pairs(np.ascontiguousarray(codes[survivors]), config.threshold)
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


# -- distributed: tasks over the run dir ------------------------------------------------------
#
# Round 1 (a task per checked part): the part's (uid, pixel_hash, phash) rows, numbered
#   (part, row), are scattered into B buckets by their pixel hash (dedup/exact/bNNNNN/<part>).
# Round 2 (a task per exact bucket): equal pixel hashes meet in one bucket; sorted by
#   (pixel_hash, uid) the first of each run is kept and the rest are ``exact_duplicate`` of it.
#   Each survivor is written once per band (the 64 bits cut into threshold + 1 bands; by
#   pigeonhole two codes within ``threshold`` bits agree on a whole band) into the bucket of
#   (band, band value) (dedup/band/cNNNNN/bNNNNN).
# Round 3 (a task per band bucket): rows with equal (band, value) meet in one bucket; every
#   pair of them within ``threshold`` bits is an edge (dedup/edges/cNNNNN).
# Round 4 (one task): the union of the edges (each pair once), then the greedy pass of
#   :func:`deduplicate` over them in uid order: a row with a kept smaller-uid neighbour is a
#   ``near_duplicate`` of the smallest such uid. Its memory is the edges (the duplicates), not
#   the rows.
# The driver only hands out file names and adds counts. The edges are the same pairs faiss's
# range search finds, and the greedy pass is the same, so the result equals deduplicate()'s,
# whatever B and the number of parts (tests check it).

def fixed_bytes(column: pa.Array | pa.ChunkedArray, width: int) -> np.ndarray:
    """A ``binary(width)`` column (pHash: 8, pixel hash: 16) as an ``(n, width)`` uint8 view of
    its Arrow buffer, no per-row Python."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks else pa.array([], pa.binary(width))
    n = len(column)
    if not n:
        return np.zeros((0, width), np.uint8)
    return np.frombuffer(column.buffers()[1], np.uint8)[column.offset * width:(column.offset + n) * width].reshape(n, width)


def phash_codes(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """The 8-byte pHashes as uint64 (big-endian; any fixed order keeps Hamming distances)."""
    return np.ascontiguousarray(fixed_bytes(column, 8)).view(">u8").ravel().astype(np.uint64)


def band_layout(threshold: int) -> list[tuple[int, int]]:
    """(shift, bits) of the ``threshold + 1`` contiguous bands covering the 64 bits."""
    nband = threshold + 1
    if not 1 <= nband <= PHASH_BITS:
        raise ValueError(f"dedup threshold must be in [0, {PHASH_BITS - 1}], got {threshold}")
    sizes = [PHASH_BITS // nband + (1 if j < PHASH_BITS % nband else 0) for j in range(nband)]
    shifts = np.cumsum([0, *sizes[:-1]])
    return [(int(s), int(b)) for s, b in zip(shifts, sizes)]


def _bucket_of(keys: np.ndarray, buckets: int) -> np.ndarray:
    from curation.text.balance import splitmix64

    return (splitmix64(keys.astype(np.uint64)) % np.uint64(buckets)).astype(np.int64)


@numba.njit(cache=True)
def _popcount64(x):
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return (x * np.uint64(0x0101010101010101)) >> np.uint64(56)


@numba.njit(cache=True)
def _group_pairs(keys, codes, threshold, count_only, out_a, out_b):
    """Pairs (i, j), i < j, of rows with equal ``keys`` (sorted) within ``threshold`` bits."""
    n = len(keys)
    found = 0
    start = 0
    while start < n:
        stop = start + 1
        while stop < n and keys[stop] == keys[start]:
            stop += 1
        for i in range(start, stop):
            for j in range(i + 1, stop):
                if _popcount64(codes[i] ^ codes[j]) <= threshold:
                    if not count_only:
                        out_a[found] = i
                        out_b[found] = j
                    found += 1
        start = stop
    return found


def band_pairs(keys: np.ndarray, codes: np.ndarray, threshold: int) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs of rows (sorted by ``keys``) sharing a key and within ``threshold`` bits."""
    empty = np.zeros(0, np.int64)
    n = _group_pairs(keys, codes, threshold, True, empty, empty)
    a, b = np.zeros(n, np.int64), np.zeros(n, np.int64)
    _group_pairs(keys, codes, threshold, False, a, b)
    return a, b


class DedupTasks:
    """The four rounds' task bodies (picklable: an engine ships them to its workers)."""

    def __init__(self, layout, config: ImageDedupConfig, buckets: int):
        self.layout, self.config, self.buckets = layout, config, int(buckets)

    def _scratch(self, *parts: str) -> str:
        return self.layout.scratch("dedup", *parts)

    def scatter(self, item: tuple[int, str | list[str]]) -> int:
        """Round 1: one checked group (index, files) → exact buckets; returns its rows (counted)."""
        index, group = item
        table = read_group(self.layout, group, ["uid", "pixel_hash", "phash"])
        n = len(table)
        table = table.append_column("part", pa.array(np.full(n, index, np.int32))).append_column(
            "row", pa.array(np.arange(n, dtype=np.int32)))
        first8 = fixed_bytes(table.column("pixel_hash"), 16)[:, :8].copy().view(">u8").ravel().astype(np.uint64)
        bucket = _bucket_of(first8, self.buckets)
        for b in range(self.buckets):
            mine = table.filter(pa.array(bucket == b))
            self.layout.write_parquet(mine, self._scratch("exact", bucket_name(b), f"{task_part_name(index)}.parquet"))
        return n

    def exact(self, b: int) -> dict:
        """Round 2: exact duplicates of bucket ``b``; survivors → band buckets. Returns counts."""
        layout, config = self.layout, self.config
        files = layout.list(self._scratch("exact", bucket_name(b)), ".parquet")
        table = layout.read_parquets(files, ["uid", "pixel_hash", "phash", "part", "row"]) if files else None
        if table is None or not len(table):
            table = pa.table({"uid": pa.array([], pa.string()), "pixel_hash": pa.array([], pa.binary(16)),
                              "phash": pa.array([], pa.binary(8)), "part": pa.array([], pa.int32()),
                              "row": pa.array([], pa.int32())})
        table = table.sort_by([("pixel_hash", "ascending"), ("uid", "ascending")])
        n = len(table)
        pixel = table.column("pixel_hash")
        same = np.zeros(n, bool)
        if n > 1:
            same[1:] = pc.equal(pixel.slice(1), pixel.slice(0, n - 1)).to_numpy(zero_copy_only=False)
        head = np.maximum.accumulate(np.where(~same, np.arange(n), 0))  # index of the run's first row
        rejected = table.filter(pa.array(same)).select(["uid", "part", "row"])
        rejected = pa.table({"uid": rejected.column("uid"),
                             "reason": pa.array(["exact_duplicate"] * len(rejected), pa.string()),
                             "duplicate_of": table.column("uid").take(pa.array(head[same])),
                             "part": rejected.column("part"), "row": rejected.column("row")})
        from curation.stage import write_rejects

        write_rejects(layout, "imagededup", rejected, part=f"exact-{bucket_name(b)}")
        survivors = table.filter(pa.array(~same)).select(["uid", "phash", "part", "row"])
        if config.threshold >= 0:
            codes = phash_codes(survivors.column("phash"))
            keyed = []
            for j, (shift, bits) in enumerate(band_layout(config.threshold)):
                value = (codes >> np.uint64(shift)) & np.uint64((1 << bits) - 1 if bits < 64 else 0xFFFFFFFFFFFFFFFF)
                key = value if bits == 64 else value | (np.uint64(j) << np.uint64(56))
                keyed.append(survivors.select(["uid", "part", "row"]).append_column("code", pa.array(codes))
                             .append_column("key", pa.array(key)))
            banded = pa.concat_tables(keyed) if keyed else None
            target = _bucket_of(banded.column("key").to_numpy(), self.buckets)
            for c in range(self.buckets):
                layout.write_parquet(banded.filter(pa.array(target == c)),
                                     self._scratch("band", bucket_name(c, "c"), f"{bucket_name(b)}.parquet"))
        return {"rejected": len(rejected), "by_part": _by_part(rejected)}

    def edges(self, c: int) -> int:
        """Round 3: the near pairs among the rows of band bucket ``c``; returns how many."""
        layout = self.layout
        files = layout.list(self._scratch("band", bucket_name(c, "c")), ".parquet")
        table = layout.read_parquets(files, ["uid", "part", "row", "code", "key"]) if files else None
        if table is None or not len(table):
            edges = pa.table({f"{side}_{col}": pa.array([], t) for side in "ab"
                              for col, t in (("uid", pa.string()), ("part", pa.int32()), ("row", pa.int32()))})
        else:
            table = table.sort_by([("key", "ascending"), ("uid", "ascending")])
            a, b = band_pairs(table.column("key").to_numpy(), table.column("code").to_numpy(), self.config.threshold)
            left, right = table.take(pa.array(a)), table.take(pa.array(b))  # a < b: left has the smaller uid
            edges = pa.table({**{f"a_{col}": left.column(col) for col in ("uid", "part", "row")},
                              **{f"b_{col}": right.column(col) for col in ("uid", "part", "row")}})
        layout.write_parquet(edges, self._scratch("edges", f"{bucket_name(c, 'c')}.parquet"))
        return len(edges)

    def near(self, _: int = 0) -> dict:
        """Round 4: the union of the edges and the greedy pass in uid order. Returns counts."""
        layout = self.layout
        files = layout.list(self._scratch("edges"), ".parquet")
        cols = [f"{s}_{c}" for s in "ab" for c in ("uid", "part", "row")]
        edges = layout.read_parquets(files, cols) if files else None
        if edges is None or not len(edges):
            rejected = pa.table({"uid": pa.array([], pa.string()), "reason": pa.array([], pa.string()),
                                 "duplicate_of": pa.array([], pa.string()), "part": pa.array([], pa.int32()),
                                 "row": pa.array([], pa.int32())})
        else:
            edges = edges.group_by(cols).aggregate([])  # a pair found through several bands: once
            nodes = pa.concat_tables([
                edges.select([f"{s}_{c}" for c in ("uid", "part", "row")]).rename_columns(["uid", "part", "row"])
                for s in "ab"]).group_by(["uid", "part", "row"]).aggregate([]).sort_by("uid")
            node_uids = nodes.column("uid")
            a = pc.index_in(edges.column("a_uid"), value_set=node_uids).to_numpy()
            b = pc.index_in(edges.column("b_uid"), value_set=node_uids).to_numpy()
            order = np.lexsort((a, b))  # CSR of each node's smaller-uid neighbours
            a, b = a[order], b[order]
            limits = np.searchsorted(b, np.arange(len(nodes) + 1))
            kept = np.ones(len(nodes), bool)
            duplicate_of = np.full(len(nodes), -1, np.int64)
            for k in np.unique(b):
                earlier = a[limits[k]:limits[k + 1]]
                earlier = earlier[kept[earlier]]
                if len(earlier):
                    kept[k], duplicate_of[k] = False, earlier.min()
            dropped = ~kept
            rejected = pa.table({"uid": node_uids.filter(pa.array(dropped)),
                                 "reason": pa.array(["near_duplicate"] * int(dropped.sum()), pa.string()),
                                 "duplicate_of": node_uids.take(pa.array(duplicate_of[dropped])),
                                 "part": nodes.column("part").filter(pa.array(dropped)),
                                 "row": nodes.column("row").filter(pa.array(dropped))})
        from curation.stage import write_rejects

        write_rejects(layout, "imagededup", rejected, part="near")
        return {"rejected": len(rejected), "by_part": _by_part(rejected)}


def _by_part(rejected: pa.Table) -> dict[int, int]:
    parts, counts = np.unique(rejected.column("part").to_numpy(), return_counts=True)
    return {int(p): int(n) for p, n in zip(parts, counts)}


def group_files(group: str | list[str]) -> list[str]:
    """The files of a checked group (one checked part, or a list of them)."""
    return [group] if isinstance(group, str) else list(group)


def read_group(layout, group: str | list[str], columns: list[str], optional: pa.Schema | None = None) -> pa.Table:
    """A checked group's rows, its files concatenated in order (a group's row ``r`` is what
    the ``part``/``row`` columns of the rejects name); the ``optional`` schema's columns too,
    null in a file that lacks them (checked without the release-safety checks)."""
    tables = []
    for f in group_files(group):
        if optional is None:
            tables.append(layout.read_parquet(f, columns))
            continue
        with layout.open(f) as handle:
            present = set(pq.read_schema(handle).names)
        table = layout.read_parquet(f, columns + [c for c in optional.names if c in present])
        for column in optional:
            if column.name not in present:
                table = table.append_column(column, pa.nulls(len(table), column.type))
        tables.append(table)
    return pa.concat_tables(tables)


def default_buckets(rows: int) -> int:
    return max(2, min(256, -(-rows // 100_000)))


def deduplicate_distributed(layout, parts: list, config: ImageDedupConfig,
                            map_tasks: MapTasks = in_process, rows: int | None = None) -> dict:
    """Image dedup of the checked ``parts`` (checked groups: :func:`read_group`; ``rows``:
    their rows, counted from the footers when not given) as tasks (see the rounds above); writes the rejects
    (``rejects/imagededup/{exact-bNNNNN,near}.parquet``: uid, reason, duplicate_of, part, row)
    and returns counts: ``in`` (rows read by the tasks), ``rejected`` by reason, ``by_part``
    (rejects per part index). Scratch files under ``curation/dedup/`` are removed at the end."""
    layout.remove_tree(layout.scratch("dedup"))
    layout.remove_tree(layout.rejects_dir("imagededup"))
    rows = rows if rows is not None else sum(layout.parquet_rows(f) for p in parts for f in group_files(p))
    buckets = config.buckets or default_buckets(rows)
    tasks = DedupTasks(layout, config, buckets)
    rows_in = sum(map_tasks(tasks.scatter, list(enumerate(parts))))
    exact = map_tasks(tasks.exact, list(range(buckets)))
    near = {"rejected": 0, "by_part": {}}
    if config.threshold >= 0:
        map_tasks(tasks.edges, list(range(buckets)))
        near = map_tasks(tasks.near, [0])[0]
    by_part: dict[int, int] = {}
    for result in [*exact, near]:
        for part, n in result["by_part"].items():
            by_part[int(part)] = by_part.get(int(part), 0) + n
    layout.remove_tree(layout.scratch("dedup"))
    rejected = {"exact_duplicate": sum(r["rejected"] for r in exact), "near_duplicate": near["rejected"]}
    return {"in": rows_in, "rejected": {k: v for k, v in rejected.items() if v}, "by_part": by_part,
            "buckets": buckets}
