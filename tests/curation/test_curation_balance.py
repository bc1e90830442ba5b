"""Balancing: E[kept per entry] ~ min(c_e, t), multi-entry probability, deterministic draws."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from curation.text.balance import Balancer, balance_probabilities, count_entries, keep_pairs, uid_hashes, uniform_draws


def _pool(counts: dict[int, int]) -> pa.Table:
    """One single-entry pair per count (uids unique)."""
    uids, ids = [], []
    for entry, n in counts.items():
        uids += [f"e{entry}-{i}" for i in range(n)]
        ids += [[entry]] * n
    return pa.table({"uid": uids, "query_ids": pa.array(ids, pa.list_(pa.int32()))})


def test_expected_kept_per_entry_is_min_count_t():
    t = 200
    counts = {0: 50, 1: 200, 2: 1_000, 3: 5_000, 4: 20_000}
    table = _pool(counts)
    c = count_entries(table.column("query_ids"), 5)
    assert c.tolist() == list(counts.values())
    kept = Balancer(c, t=t, seed=3)(table)
    ids = np.array([q[0] for q in table.column("query_ids").to_pylist()])
    kept_mask = np.array(kept.column("reject_reason").to_pylist()) == ""
    for entry, n in counts.items():
        got = kept_mask[ids == entry].sum()
        expect = min(n, t)
        p = expect / n
        sd = np.sqrt(n * p * (1 - p))
        assert abs(got - expect) <= 5 * sd + 1e-9, (entry, got, expect)
    assert kept_mask[ids == 0].all() and kept_mask[ids == 1].all()  # c_e <= t: all kept


def test_multi_entry_keep_probability():
    n = 40_000
    probs = balance_probabilities(np.array([10_000, 40_000, 5]), t=5_000)  # 0.5, 0.125, 1.0
    np.testing.assert_allclose(probs, [0.5, 0.125, 1.0])
    query_ids = pa.array([[0, 1]] * n, pa.list_(pa.int32()))
    keep = keep_pairs(uid_hashes([f"u{i}" for i in range(n)]), query_ids, probs, seed=0)
    expect = 1 - (1 - 0.5) * (1 - 0.125)
    assert abs(keep.mean() - expect) < 5 * np.sqrt(expect * (1 - expect) / n)
    always = keep_pairs(uid_hashes(["a", "b"]), pa.array([[0, 2], []], pa.list_(pa.int32())), probs, seed=0)
    assert always.tolist() == [True, False]  # an entry with p=1 keeps the pair; no match never


def test_draws_are_pure_and_partition_independent():
    uids = [f"uid-{i}" for i in range(5_000)]
    rng = np.random.default_rng(0)
    query_ids = pa.array([sorted(set(rng.integers(0, 50, rng.integers(1, 4)).tolist())) for _ in uids],
                         pa.list_(pa.int32()))
    table = pa.table({"uid": uids, "query_ids": query_ids})
    counts = count_entries(query_ids, 50)
    whole = Balancer(counts, t=40, seed=7)(table).column("reject_reason").to_pylist()
    pieces = []
    for start in range(0, len(uids), 333):  # any batching gives the same decisions
        pieces += Balancer(counts, t=40, seed=7)(table.slice(start, 333)).column("reject_reason").to_pylist()
    assert pieces == whole
    shuffled = rng.permutation(len(uids))
    again = Balancer(counts, t=40, seed=7)(table.take(shuffled)).column("reject_reason").to_pylist()
    assert again == [whole[i] for i in shuffled]
    other_seed = Balancer(counts, t=40, seed=8)(table).column("reject_reason").to_pylist()
    assert other_seed != whole
    u = uniform_draws(uid_hashes(uids), np.zeros(len(uids), dtype=np.int64), 0)
    assert u.min() >= 0 and u.max() < 1 and abs(u.mean() - 0.5) < 0.02


def test_compiled_draw_equals_the_float_formula():
    """keep_pairs (compiled, early exit, integer thresholds, p = 1 shortcut) decides every row
    exactly as ``any(uniform_draws(uid, e, seed) < p_e)`` computed pair by pair in floats."""
    rng = np.random.default_rng(1)
    rows = 20_000
    lengths = rng.integers(0, 5, rows)
    flat = rng.integers(0, 300, int(lengths.sum()))
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    query_ids = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(flat.astype(np.int32)))
    probs = balance_probabilities(rng.integers(1, 4_000, 300), t=1_000)
    assert (probs == 1.0).any() and (probs < 0.5).any()
    uid_hash = uid_hashes([f"r{i}" for i in range(rows)])
    for seed in (0, 5):
        u = uniform_draws(np.repeat(uid_hash, lengths), flat, seed)
        hit = np.concatenate([[0], np.cumsum(u < probs[flat])])
        expect = hit[offsets[1:]] > hit[offsets[:-1]]
        assert keep_pairs(uid_hash, query_ids, probs, seed).tolist() == expect.tolist()
        sliced = keep_pairs(uid_hash[777:], query_ids.slice(777), probs, seed)
        assert sliced.tolist() == expect[777:].tolist()


def test_uid_hashes_are_xxh3_of_the_utf8_bytes():
    import xxhash

    uids = ["a", "", "é-日本", "uid-000000000042", "x" * 300]
    expect = [xxhash.xxh3_64_intdigest(u.encode()) for u in uids]
    for given in (uids, pa.array(uids), pa.array(uids, pa.large_string()), pa.chunked_array([uids[:2], uids[2:]]),
                  pa.array(["pad", *uids]).slice(1)):
        assert uid_hashes(given).tolist() == expect
