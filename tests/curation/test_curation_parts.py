"""Selection parts sized by rows (issue 21): the part count grows with the balance stage's input
so that no part holds more than ``max_part_rows`` selected rows, the same on Ray and Beam, with
resume and verification working over the recorded count."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.stage import REASON
from curation.text.balance import uid_hashes
from curation.text.config import CurationConfig
from curation.text.selection import (
    balance_inputs,
    plan_parts,
    record_parts_plan,
    recorded_num_parts,
    write_part,
)
from pipelines import build_wit
from storage.layout import RunLayout

BOUND = 100  # selected rows per part: forces more than --parts 4 parts on the fixture pool


def _argv(pool, queries, out, *extra, bound=BOUND):
    return ["--pool", pool, "--queries", queries, "--out", str(out), "--until", "select", "--t", "20",
            "--parts", "4", "--max-part-rows", str(bound), *extra]


def _files(out: Path) -> dict[str, bytes]:
    cur = out / "curation"
    paths = sorted(cur.glob("selected/part-*.parquet")) + sorted(cur.glob("rejects/*/part-*.parquet"))
    return {str(p.relative_to(cur)): p.read_bytes() for p in paths + [cur / "entry_counts.parquet",
                                                                      cur / "selected" / "_parts.json"]}


def _part_rows(out: Path) -> list[int]:
    return [pq.read_metadata(p).num_rows for p in sorted((out / "curation").glob("selected/part-*.parquet"))]


def test_plan_keeps_the_minimum_until_the_bound_asks_for_more():
    counts = np.full(1000, 50_000, dtype=np.int64)
    # a selection that cannot exceed the bound keeps the minimum (today's 8 parts at small scale)
    assert plan_parts(counts, np.array([999_999, 0]), 20_000, 1_000_000, 8)["num_parts"] == 8
    assert plan_parts(counts, np.array([1_000_000, 0]), 20_000, 1_000_000, 8)["num_parts"] == 8
    # WIT scale: 400M rows entering balance, 1M-row parts: ~1% margin, a pure function of its inputs
    wit = plan_parts(np.full(500_000, 5_000, np.int64), np.array([400_000_000, 0]), 20_000, 1_000_000, 8)
    assert 400 < wit["num_parts"] <= 410 and 400_000_000 / wit["num_parts"] < 1_000_000
    assert wit == plan_parts(np.full(500_000, 5_000, np.int64), np.array([400_000_000, 0]), 20_000, 1_000_000, 8)
    # the expected selection (sum_e min(c_e, t)) bounds it when smaller than the rows entering
    small_t = plan_parts(np.full(100, 1_000, np.int64), np.array([50_000_000, 0]), 100, 1_000, 1)
    assert small_t["expected_selected_bound"] == pytest.approx(100 * 100) and small_t["num_parts"] < 20
    with pytest.raises(ValueError, match="max_part_rows=10 is too small"):
        plan_parts(counts, np.array([400, 0]), 20_000, 10, 8)
    with pytest.raises(ValueError, match="num_parts"):
        CurationConfig(queries="q", pool=("p",), curation_dir="c", max_part_rows=0)


def test_hash_parts_of_the_plan_stay_under_the_bound():
    """Every row kept (t above every count): the rows entering balance are the selection; the
    xxh3 parts of the planned count hold at most the bound, with a margin of a few percent."""
    rows, bound = 300_000, 20_000
    uids = pa.array([f"uid-{i}" for i in range(rows)])
    plan = plan_parts(np.array([rows], np.int64), np.array([rows, 0]), 10 * rows, bound, 2)
    sizes = np.bincount((uid_hashes(uids) % np.uint64(plan["num_parts"])).astype(np.int64))
    assert plan["num_parts"] > rows / bound and sizes.max() <= bound
    assert plan["num_parts"] <= rows / bound * 1.2


def test_a_part_over_the_bound_is_an_error_naming_it(tmp_path):
    layout = RunLayout(str(tmp_path))
    table = pa.table({"uid": ["a", "b", "c"], "url": ["u"] * 3, "text": ["t"] * 3,
                      "query_ids": pa.array([[1], [2], [3]], pa.list_(pa.int32())), REASON: ["", "", "not_sampled"]})
    assert list(balance_inputs(table)) == [2, 0]
    with pytest.raises(RuntimeError, match=r"part-00003\.parquet: 2 selected rows, more than max_part_rows=1"):
        write_part(table, layout, 3, {"not_sampled": "balance"}, max_rows=1)
    assert not layout.exists(layout.part(3)) and not layout.exists(layout.marker(3))
    assert write_part(table, layout, 3, {"not_sampled": "balance"}, max_rows=2) == {"": 2, "not_sampled": 1}
    # a recorded plan with another count is never mixed with this run's
    record_parts_plan(layout, {"num_parts": 5, "max_part_rows": 2})
    record_parts_plan(layout, {"num_parts": 5, "max_part_rows": 2})
    assert recorded_num_parts(layout) == 5
    with pytest.raises(RuntimeError, match="records 5 parts"):
        record_parts_plan(layout, {"num_parts": 6, "max_part_rows": 2})


def test_beam_parts_sized_by_rows_resume_and_verify(pool_and_queries, tmp_path):
    pool, queries, total = pool_and_queries
    out = tmp_path / "beam"
    summary = build_wit.run(_argv(pool, queries, out, "--runner", "beam", "--batch-size", "64"))
    plan = json.loads((out / "curation" / "selected" / "_parts.json").read_text())
    sizes = _part_rows(out)
    assert plan["num_parts"] == summary["parts"] == len(sizes) > 4  # the bound asked for more than --parts
    assert plan["balance_rows"] > BOUND and max(sizes) <= BOUND and sum(sizes) == summary["selected"]
    stages = summary["stages"]
    assert stages["read"]["in"] == total and stages["balance"]["in"] == plan["balance_rows"]

    # the same settings with the default bound: today's parts (the --parts minimum)
    default = build_wit.run(_argv(pool, queries, tmp_path / "default", "--runner", "beam", bound=1_000_000))
    assert default["parts"] == 4 and default["selected"] == summary["selected"]

    before = _files(out)
    again = build_wit.run(_argv(pool, queries, out, "--runner", "beam"))
    assert again["selected"] == summary["selected"] and _files(out) == before  # skipped
    last = plan["num_parts"] - 1  # a part beyond the minimum, lost after the run: redone byte for byte
    (out / "curation" / "selected" / f"part-{last:05d}.parquet").unlink()
    (out / "curation" / "selected" / "_done" / f"part-{last:05d}").unlink()
    build_wit.run(_argv(pool, queries, out, "--runner", "beam"))
    assert _files(out) == before
    part = out / "curation" / "selected" / f"part-{last:05d}.parquet"  # a truncated one fails, naming it
    part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])
    with pytest.raises(ValueError, match=f"part-{last:05d}.parquet"):
        build_wit.run(_argv(pool, queries, out, "--runner", "beam"))


@pytest.mark.ray
def test_ray_equals_beam_with_row_sized_parts(pool_and_queries, tmp_path, ray_session):
    pool, queries, _ = pool_and_queries
    beam = build_wit.run(_argv(pool, queries, tmp_path / "beam", "--runner", "beam", "--parallelism", "2"))
    ray = build_wit.run(_argv(pool, queries, tmp_path / "ray", "--runner", "ray", "--batch-size", "32"))
    assert ray["parts"] == beam["parts"] > 4 and max(_part_rows(tmp_path / "ray")) <= BOUND
    assert _files(tmp_path / "ray") == _files(tmp_path / "beam")
    assert ray["stages"] == beam["stages"]
