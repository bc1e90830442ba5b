"""The selection output: ``selected/part-NNNNN.parquet``, deterministic and resumable.

A row's part is ``xxh3_64(uid) % num_parts``; a part's rows are sorted by (uid, url), so the
bytes of a part depend only on the set of selected rows, not on the engine or parallelism. Each
part is written to a temp name and renamed, then ``_done/part-NNNNN`` marks it complete; a rerun
skips marked parts. Parts with no rows are written too (empty files), so a complete selection
always has every part.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa

from curation.balance import uid_hashes
from curation.stage import write_parquet_atomic

PART_COLUMN = "_part"


def part_name(index: int) -> str:
    """``part-00042`` for index 42 (the one place a part name is formatted)."""
    return f"part-{index:05d}"


def assign_parts(table: pa.Table, num_parts: int) -> pa.Table:
    """``table`` with a ``_part`` column (int64): ``xxh3_64(uid) % num_parts``."""
    parts = (uid_hashes(table.column("uid")) % np.uint64(num_parts)).astype(np.int64)
    return table.append_column(PART_COLUMN, pa.array(parts))


def part_done(out_dir: str, index: int) -> bool:
    """Whether part ``index`` has its completion marker."""
    return Path(out_dir, "_done", part_name(index)).exists()


def write_part(table: pa.Table, out_dir: str, index: int) -> int:
    """Sort a part's rows by (uid, url), write ``out_dir/part-NNNNN.parquet`` atomically and mark
    it done; skip (return -1) when already done. Returns the rows written."""
    if part_done(out_dir, index):
        return -1
    if PART_COLUMN in table.column_names:
        table = table.drop_columns([PART_COLUMN])
    table = table.sort_by([("uid", "ascending"), ("url", "ascending")]).combine_chunks()
    write_parquet_atomic(table, f"{out_dir}/{part_name(index)}.parquet")
    marker = Path(out_dir, "_done", part_name(index))
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"rows": table.num_rows}) + "\n")
    return table.num_rows


DEFAULT_SCHEMA = pa.schema([("uid", pa.string()), ("url", pa.string()), ("text", pa.string()),
                            ("query_ids", pa.list_(pa.int32()))])


def write_missing_parts(out_dir: str, num_parts: int) -> None:
    """Write every part without a marker as an empty part (after the engine wrote the rest),
    with the schema of the written parts (or the minimal selection schema if none has rows)."""
    import pyarrow.parquet as pq

    written = sorted(Path(out_dir).glob("part-*.parquet")) if Path(out_dir).exists() else []
    schema = pq.read_schema(written[0]) if written else DEFAULT_SCHEMA
    for index in range(num_parts):
        if not part_done(out_dir, index):
            write_part(schema.empty_table(), out_dir, index)


def selection_complete(out_dir: str, num_parts: int) -> bool:
    """Whether all ``num_parts`` parts are marked done."""
    return all(part_done(out_dir, i) for i in range(num_parts))


def clear_markers(out_dir: str) -> None:
    """Forget completed parts (a run with a different configuration rewrites everything)."""
    done = Path(out_dir, "_done")
    if done.exists():
        for marker in done.iterdir():
            os.remove(marker)
