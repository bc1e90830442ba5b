"""The distributed image dedup (tasks over the run dir) equals the single-process one."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from curation.images.dedup import ImageDedupConfig, band_layout, deduplicate, deduplicate_distributed
from storage.layout import RunLayout


def _rows(seed: int, n_centres: int = 60) -> pa.Table:
    """Clusters of near codes (noise up to ~10 bits, so groups chain and overlap), exact pixel
    copies, and unrelated codes; uids shuffled so uid order is unrelated to the clusters."""
    rng = np.random.default_rng(seed)
    centres = rng.integers(0, 2**63, n_centres, dtype=np.uint64)
    codes, pixel = [], []
    for c in centres:
        for _ in range(int(rng.integers(1, 7))):
            flips = rng.choice(64, int(rng.integers(0, 11)), replace=False)
            code = int(c)
            for bit in flips:
                code ^= 1 << int(bit)
            codes.append(code)
            pixel.append(rng.bytes(16))
    for i in rng.choice(len(codes), len(codes) // 5, replace=False):  # exact copies
        codes.append(codes[i])
        pixel.append(pixel[i])
    n = len(codes)
    uids = [f"{u:032x}" for u in rng.permutation(10**6)[:n]]
    return pa.table({"uid": uids, "pixel_hash": pa.array(pixel, pa.binary(16)),
                     "phash": pa.array([np.uint64(c).tobytes() for c in codes], pa.binary(8))})


def _as_set(rejected: pa.Table) -> set:
    return set(zip(*(rejected.column(c).to_pylist() for c in ("uid", "reason", "duplicate_of"))))


def _write_parts(layout: RunLayout, table: pa.Table, sizes: list[int]) -> list[str]:
    parts, start = [], 0
    for i, size in enumerate(sizes):
        uri = layout.checked_part(f"pass0_{i:05d}")
        layout.write_parquet(table.slice(start, size), uri)
        parts.append(uri)
        start += size
    return parts


def test_bands_cover_all_bits():
    for threshold in range(0, 64):
        bands = band_layout(threshold)
        assert len(bands) == threshold + 1 and sum(b for _, b in bands) == 64
        assert [s for s, _ in bands] == list(np.cumsum([0] + [b for _, b in bands[:-1]]))
    with pytest.raises(ValueError):
        band_layout(64)


@pytest.mark.parametrize("threshold", [-1, 0, 3, 4, 9])
@pytest.mark.parametrize("buckets", [1, 3, 7])
def test_distributed_equals_single_process(tmp_path, threshold, buckets):
    table = _rows(seed=threshold + 17)
    n = len(table)
    sizes = [n // 3, 0, n // 4, n - n // 3 - n // 4]  # an empty part too
    layout = RunLayout(str(tmp_path / f"run-{buckets}"))
    parts = _write_parts(layout, table, sizes)
    config = ImageDedupConfig(threshold=threshold, buckets=buckets)
    kept, rejected = deduplicate(table, config)
    result = deduplicate_distributed(layout, parts, config)
    files = layout.list(layout.rejects_dir("imagededup"), ".parquet")
    got = layout.read_parquets(files, ["uid", "reason", "duplicate_of", "part", "row"])
    assert result["in"] == n and len(rejected) > 0
    assert _as_set(got) == _as_set(rejected)
    assert sum(result["rejected"].values()) == len(rejected) == len(got)
    # (part, row) point back at the rejected row
    offsets = np.cumsum([0, *sizes])
    for uid, part, row in zip(*(got.column(c).to_pylist() for c in ("uid", "part", "row"))):
        assert table.column("uid")[int(offsets[part]) + row].as_py() == uid
    assert sum(result["by_part"].values()) == len(rejected)
    assert not layout.exists(layout.cur("dedup"))  # scratch removed
    if threshold >= 3:
        assert result["rejected"].get("near_duplicate", 0) > 0


def test_rerun_over_a_stale_scratch_dir_gives_the_same_rejects(tmp_path):
    table = _rows(seed=5)
    layout = RunLayout(str(tmp_path / "run"))
    parts = _write_parts(layout, table, [len(table) // 2, len(table) - len(table) // 2])
    config = ImageDedupConfig(threshold=4, buckets=4)
    first = deduplicate_distributed(layout, parts, config)
    # an interrupted earlier try with another bucket count left scratch files and rejects
    layout.write_parquet(table.slice(0, 3), layout.cur("dedup", "exact", "b00009", "p000000.parquet"))
    layout.write_parquet(table.slice(0, 3).select(["uid"]), layout.reject_part("imagededup", "exact-b00009"))
    second = deduplicate_distributed(layout, parts, config)
    files = layout.list(layout.rejects_dir("imagededup"), ".parquet")
    assert first == second and len(files) == 4 + 1
