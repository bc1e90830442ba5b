"""Balancing throughput (pairs/s/core): deterministic hash draw vs MetaCLIP's numpy approach.

    python bench/bench_balance.py [--rows 3000000] [--repeats 3]

A synthetic matched pool: each row has 1-5 entry ids drawn Zipf-like from 500,000 entries (the
head entries far above t = 20,000, as in real pools). Both sides count c_e and decide every row:
- MetaCLIP-style: ``np.unique(..., return_counts=True)`` for c_e, ``np.random.random`` per pair
  (not reproducible across partitions), any-hit per row;
- ours: ``np.bincount`` for c_e, the (uid, entry, seed) hash draw (curation.text.balance.keep_rows: one
  compiled pass over the rows, stopping at a row's first hit).
uid hashing (xxh3_64 of each 32-hex-char uid, as the pool reader makes them: the compiled kernel
of curation/xxh3.py over the Arrow buffers, once per row, shared with output partitioning) is
timed too, and "including uid hashing" is the figure issue 9 asks for (goal >= 50M pairs/s/core
including hashing); "python_xxhash" is the per-row ``xxhash.xxh3_64_intdigest`` loop it replaced,
measured in the same run. Anchor here: MetaCLIP's approach ~12M pairs/s; goal >= 50M
pairs/s/core. Rates by wall time and by CPU time (steadier on a shared machine).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import xxhash

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from curation.text.balance import (balance_probabilities, count_entries, draw_thresholds,  # noqa: E402
                              entry_salts, entry_table, keep_pairs, keep_rows, uid_hashes)

ANCHOR_METACLIP, GOAL = 12e6, 50e6
NUM_ENTRIES, T = 500_000, 20_000


def synthetic_pool(rows: int, seed: int = 0) -> tuple[pa.ListArray, pa.StringArray]:
    """(query_ids list<int32>, uids) with Zipf-distributed entries."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 6, rows)
    flat = (rng.zipf(1.3, int(lengths.sum())) - 1) % NUM_ENTRIES
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    query_ids = pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat.astype(np.int32)))
    uids = [xxhash.xxh3_128_hexdigest(f"http://127.0.0.1/{i}.jpg\tcaption {i}".encode()) for i in range(rows)]
    return query_ids, pa.array(uids, pa.string())


def python_xxhash(uids: pa.StringArray) -> np.ndarray:
    """The per-row Python loop uid_hashes used before the compiled kernel (issue 9's "before")."""
    values = uids.cast(pa.binary()).to_pylist()
    return np.fromiter(map(xxhash.xxh3_64_intdigest, values), dtype=np.uint64, count=len(values))


def metaclip_numpy(query_ids: pa.ListArray) -> np.ndarray:
    """MetaCLIP-style: np.unique counts, t / max(c, t), one random draw per pair, any per row."""
    flat = query_ids.flatten().to_numpy()
    offsets = query_ids.offsets.to_numpy()
    entries, counts = np.unique(flat, return_counts=True)
    prob = np.ones(NUM_ENTRIES)
    prob[entries] = T / np.maximum(counts, T)
    hit = np.random.random(len(flat)) < prob[flat]
    return np.logical_or.reduceat(hit, offsets[:-1])


def ours(query_ids: pa.ListArray, uid_hash: np.ndarray, salts: np.ndarray) -> np.ndarray:
    """bincount counts + deterministic (uid, entry, seed) draws (per-entry salts are built once
    per run, like the Balancer does per worker; thresholds and the entry table from the counts)."""
    probs = balance_probabilities(count_entries(query_ids, NUM_ENTRIES), T)
    return keep_rows(uid_hash, query_ids, entry_table(salts, draw_thresholds(probs)))


def best_seconds(fn, repeats: int) -> tuple[float, float, object]:
    """Best wall time and best CPU time (this process) of ``repeats`` calls, and the last result.
    On a shared, loaded machine the CPU time is the steadier per-core figure."""
    wall = cpu = float("inf")
    result = None
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        result = fn()
        wall = min(wall, time.perf_counter() - start)
        cpu = min(cpu, time.process_time() - start_cpu)
    return wall, max(cpu, 1e-9), result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=3_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    query_ids, uids = synthetic_pool(args.rows)
    pairs = len(query_ids.flatten())
    uid_hashes(uids.slice(0, 10))  # load the compiled kernel
    t_hash, c_hash, uid_hash = best_seconds(lambda: uid_hashes(uids), args.repeats)
    t_py, c_py, py_hash = best_seconds(lambda: python_xxhash(uids), 1)
    assert np.array_equal(py_hash, uid_hash)
    salts = entry_salts(np.arange(NUM_ENTRIES), 0)
    keep_pairs(uid_hash[:10], query_ids.slice(0, 10), np.ones(NUM_ENTRIES), 0)  # load the compiled kernel
    t_ours, c_ours, keep = best_seconds(lambda: ours(query_ids, uid_hash, salts), args.repeats)
    t_meta, c_meta, keep_meta = best_seconds(lambda: metaclip_numpy(query_ids), args.repeats)
    result = {
        "rows": args.rows, "pairs": pairs, "entries": NUM_ENTRIES, "t": T,
        "kept_fraction": {"ours": round(float(keep.mean()), 4), "metaclip": round(float(keep_meta.mean()), 4)},
        "pairs_per_s": {"ours_hash_draw": round(pairs / t_ours), "metaclip_numpy": round(pairs / t_meta),
                        "ours_including_uid_hashing": round(pairs / (t_ours + t_hash)),
                        "ours_including_python_xxhash": round(pairs / (t_ours + t_py))},
        "pairs_per_cpu_s": {"ours_hash_draw": round(pairs / c_ours), "metaclip_numpy": round(pairs / c_meta),
                            "ours_including_uid_hashing": round(pairs / (c_ours + c_hash)),
                            "ours_including_python_xxhash": round(pairs / (c_ours + c_py))},
        "uid_hashing_rows_per_s": {"compiled": round(args.rows / t_hash), "python_xxhash": round(args.rows / t_py)},
        "ratio": {"vs_metaclip_here": round(t_meta / t_ours, 2),
                  "vs_anchor": round(pairs / t_ours / ANCHOR_METACLIP, 2),
                  "of_goal": round(pairs / t_ours / GOAL, 3), "cpu_of_goal": round(pairs / c_ours / GOAL, 3),
                  "incl_hashing_of_goal": round(pairs / (t_ours + t_hash) / GOAL, 3),
                  "incl_hashing_cpu_of_goal": round(pairs / (c_ours + c_hash) / GOAL, 3)},
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
