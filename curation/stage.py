"""The text-side stage contract: every stage annotates rows instead of dropping them.

A stage is a callable ``(pa.Table) -> pa.Table`` that returns *every* input row with a
``reject_reason`` string column: ``""`` for a live row, a short reason otherwise. A row rejected
by an earlier stage passes through every later stage unchanged (the first reason wins), so the
rows travel together to the output writer, which splits them into the selection and
``rejects/<stage>/`` and tallies reasons. Reason names are unique per stage
(``curation.config.REASONS``), so one tally gives every stage's ``in / out / rejected`` and
``rows_in == rows_out + sum(rejected)`` holds by construction (checked by :class:`StageStats`).
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

REASON = "reject_reason"
KEPT = ""


def with_reasons(table: pa.Table, reasons: np.ndarray | pa.Array | None = None) -> pa.Table:
    """``table`` with its ``reject_reason`` column set (``None`` keeps every row); an existing
    non-empty reason is never overwritten (the first reason wins)."""
    if reasons is None and REASON in table.column_names:
        return table
    new = pa.array(np.full(table.num_rows, KEPT, dtype=object) if reasons is None else reasons, pa.string())
    if REASON in table.column_names:
        old = table.column(REASON)
        new = pc.if_else(pc.equal(old, KEPT), new, old)
        return table.set_column(table.schema.get_field_index(REASON), REASON, new)
    return table.append_column(REASON, new)


def kept_rows(table: pa.Table) -> pa.Table:
    """The rows whose reason is empty, without the reason column."""
    return table.filter(pc.equal(table.column(REASON), KEPT)).drop_columns([REASON])


def reason_counts(table: pa.Table) -> dict[str, int]:
    """``{reason: rows}`` over an annotated table (``""`` counts the kept rows)."""
    counts = pc.value_counts(table.column(REASON)).to_pylist()
    return {c["values"]: int(c["counts"]) for c in counts}


def live_mask(table: pa.Table) -> np.ndarray:
    """Boolean mask of the rows no stage has rejected yet."""
    return np.asarray(pc.equal(table.column(REASON), KEPT).to_numpy(zero_copy_only=False), dtype=bool)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp name in the same directory and a rename
    (readers never see a partial file; the one atomic writer of curation/)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    Path(tmp).write_bytes(data)
    os.replace(tmp, path)


def write_parquet_atomic(table: pa.Table, path: str | Path) -> None:
    """Write ``table`` to ``path`` through a temp name and a rename (readers never see a
    partial file). Deterministic bytes: no timestamps, fixed writer settings."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    pq.write_table(table, tmp, compression="zstd", write_statistics=True, store_schema=True)
    os.replace(tmp, path)


@dataclass
class StageStats:
    """Row accounting of one stage: ``rows_in == rows_out + sum(rejected.values())``."""

    stage: str  # stage name, also the stats/<stage>.json and rejects/<stage>/ names
    rows_in: int = 0  # rows the stage received
    rows_out: int = 0  # rows it kept
    rejected: dict[str, int] = field(default_factory=dict)  # rows dropped, by reason

    @classmethod
    def from_counts(cls, stage: str, counts: dict[str, int]) -> StageStats:
        """Stats from merged ``{reason: rows}`` counts (``""`` = kept)."""
        rejected = {r: n for r, n in sorted(counts.items()) if r != KEPT and n}
        kept = counts.get(KEPT, 0)
        return cls(stage, kept + sum(rejected.values()), kept, rejected)

    def check(self) -> StageStats:
        """Raise if the accounting invariant does not hold; return self."""
        if self.rows_in != self.rows_out + sum(self.rejected.values()):
            raise AssertionError(f"stage {self.stage}: {self.rows_in} in != {self.rows_out} out + {self.rejected}")
        return self

    def write(self, stats_dir: str) -> str:
        """Write ``stats_dir/<stage>.json`` (atomically); return its path."""
        self.check()
        path = f"{stats_dir}/{self.stage}.json"
        body = {"stage": self.stage, "in": self.rows_in, "out": self.rows_out, "rejected": self.rejected}
        write_bytes_atomic(path, (json.dumps(body, indent=2, sort_keys=True) + "\n").encode())
        return path


def merge_counts(parts: list[dict[str, int]]) -> dict[str, int]:
    """Sum several ``{reason: rows}`` dicts."""
    total: dict[str, int] = {}
    for part in parts:
        for reason, n in part.items():
            total[reason] = total.get(reason, 0) + int(n)
    return total
