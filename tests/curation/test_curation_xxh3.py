"""The compiled xxh3_64 over Arrow buffers equals xxhash's, for every length class and layout."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import xxhash

from curation.text.balance import uid_hashes
from curation.text.dedup import key_buckets
from curation.xxh3 import xxh3_64_column


def _expected(values: list[bytes | None]) -> np.ndarray:
    return np.array([xxhash.xxh3_64_intdigest(v or b"") for v in values], dtype=np.uint64)


def test_every_length_0_to_600_and_long_blocks():
    rng = np.random.default_rng(9)
    lengths = [n for n in range(601) for _ in range(4)] + [1023, 1024, 1025, 2047, 2048, 2049, 3000, 10_000]
    values = [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in lengths]
    for kind in (pa.binary(), pa.large_binary()):
        np.testing.assert_array_equal(xxh3_64_column(pa.array(values, kind)), _expected(values))


def test_utf8_strings_and_real_uids(sample):
    rng = np.random.default_rng(1)
    alphabet = list("abc xyz,.;:") + ["é", "ß", "日本", "🙂"]
    texts = ["".join(rng.choice(alphabet, int(n))) for n in rng.integers(0, 300, 2_000)]
    uids = pq.read_table(sample["sample_pool"], columns=["uid"]).column("uid")  # 32 hex chars each
    for values in (texts, pa.array(texts, pa.large_string()), uids):
        as_list = values if isinstance(values, list) else values.to_pylist()
        np.testing.assert_array_equal(xxh3_64_column(values), _expected([v.encode() for v in as_list]))
    np.testing.assert_array_equal(uid_hashes(uids), _expected([u.encode() for u in uids.to_pylist()]))


def test_slices_chunks_and_empty():
    values = [f"uid-{i}-{'x' * (i % 300)}" for i in range(1_000)]
    array = pa.array(values)
    expected = _expected([v.encode() for v in values])
    for start, stop in ((0, 0), (1, 2), (13, 500), (999, 1_000), (250, 1_000)):
        np.testing.assert_array_equal(xxh3_64_column(array.slice(start, stop - start)), expected[start:stop])
        np.testing.assert_array_equal(xxh3_64_column(pa.array(values, pa.large_string()).slice(start, stop - start)),
                                      expected[start:stop])
    chunked = pa.chunked_array([array.slice(0, 10), array.slice(10, 0), array.slice(10, 990)])
    np.testing.assert_array_equal(xxh3_64_column(chunked), expected)
    assert len(xxh3_64_column(pa.chunked_array([], pa.string()))) == 0
    np.testing.assert_array_equal(xxh3_64_column(pa.array(["", "", ""])), _expected([b""] * 3))


def test_nulls_raise_or_hash_as_empty():
    array = pa.array(["a" * 40, None, "bc", None]).slice(1)  # nulls after a slice offset
    with pytest.raises(ValueError, match="null"):
        xxh3_64_column(array)
    np.testing.assert_array_equal(xxh3_64_column(array, nulls="empty"), _expected([None, b"bc", None]))


def test_dedup_buckets_keep_their_values():
    table = pa.table({"url": ["http://a/1.jpg", None, "http://b/" + "y" * 500], "text": ["x", "y", None]})
    for key in ("url", "text"):
        old = np.array([xxhash.xxh3_64_intdigest((v or "").encode()) for v in table.column(key).to_pylist()],
                       dtype=np.uint64)
        np.testing.assert_array_equal(key_buckets(table, key, 16), (old % np.uint64(16)).astype(np.int64))
