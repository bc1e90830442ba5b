"""The selection output: ``selected/part-NNNNN.parquet``, deterministic and resumable.

A row's part is ``xxh3_64(uid) % num_parts``; a part's rows are sorted by (uid, url), so the
bytes of a part depend only on the set of selected rows, not on the engine or parallelism. The
same part index holds that part's rejects, ``rejects/<stage>/part-NNNNN.parquet``. Each file is
written to a temp name and renamed, then ``selected/_done/part-NNNNN`` marks the part complete
(with its reason tally, so stats survive a rerun that skips it). Parts with no rows are written
too (empty files), so a complete selection always has every part.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation.balance import uid_hashes
from curation.stage import KEPT, REASON, kept_rows, reason_counts, write_parquet_atomic

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


def part_counts(out_dir: str, index: int) -> dict[str, int]:
    """The ``{reason: rows}`` tally recorded in a done part's marker (``""`` = selected)."""
    return json.loads(Path(out_dir, "_done", part_name(index)).read_text())["reasons"]


def write_part(table: pa.Table, curation_dir: str, index: int, reasons: dict[str, str]) -> dict[str, int]:
    """Write part ``index`` of an annotated, final table: live rows sorted by (uid, url) to
    ``selected/part-NNNNN.parquet``, rejected rows as (uid, reason) sorted by (uid, reason) to
    ``rejects/<stage>/part-NNNNN.parquet`` (``reasons`` maps reason → stage), each atomically, then
    the marker with the part's reason tally. Skips a done part. Returns the tally."""
    out_dir = f"{curation_dir}/selected"
    if part_done(out_dir, index):
        return part_counts(out_dir, index)
    if PART_COLUMN in table.column_names:
        table = table.drop_columns([PART_COLUMN])
    tally = reason_counts(table) if table.num_rows else {}
    unknown = set(tally) - set(reasons) - {KEPT}
    if unknown:
        raise ValueError(f"part {index}: reasons {sorted(unknown)} belong to no stage")
    selected = kept_rows(table).sort_by([("uid", "ascending"), ("url", "ascending")]).combine_chunks()
    write_parquet_atomic(selected, f"{out_dir}/{part_name(index)}.parquet")
    rejected = table.filter(pc.not_equal(table.column(REASON), KEPT)).select(["uid", REASON])
    rejected = rejected.rename_columns(["uid", "reason"]).sort_by([("uid", "ascending"), ("reason", "ascending")])
    stage_of = pa.array([reasons[r] for r in rejected.column("reason").to_pylist()], pa.string())
    for stage in sorted(set(stage_of.to_pylist())):
        rows = rejected.filter(pc.equal(stage_of, stage)).combine_chunks()
        write_parquet_atomic(rows, f"{curation_dir}/rejects/{stage}/{part_name(index)}.parquet")
    marker = Path(out_dir, "_done", part_name(index))
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"rows": selected.num_rows, "reasons": tally}, sort_keys=True) + "\n")
    return tally


DEFAULT_SCHEMA = pa.schema([("uid", pa.string()), ("url", pa.string()), ("text", pa.string()),
                            ("query_ids", pa.list_(pa.int32()))])


def write_missing_parts(curation_dir: str, num_parts: int) -> None:
    """Write every part without a marker as an empty part (after the engine wrote the rest),
    with the schema of the written parts (or the minimal selection schema if none has rows)."""
    import pyarrow.parquet as pq

    out_dir = f"{curation_dir}/selected"
    written = sorted(Path(out_dir).glob("part-*.parquet")) if Path(out_dir).exists() else []
    schema = pq.read_schema(written[0]) if written else DEFAULT_SCHEMA
    for index in range(num_parts):
        if not part_done(out_dir, index):
            empty = schema.empty_table().append_column(REASON, pa.array([], pa.string()))
            write_part(empty, curation_dir, index, {})


def selection_complete(out_dir: str, num_parts: int) -> bool:
    """Whether all ``num_parts`` parts are marked done."""
    return all(part_done(out_dir, i) for i in range(num_parts))


def clear_markers(out_dir: str) -> None:
    """Forget completed parts (a run with a different configuration rewrites everything)."""
    done = Path(out_dir, "_done")
    if done.exists():
        for marker in done.iterdir():
            os.remove(marker)
