"""The selection output: ``selected/part-NNNNN.parquet``, deterministic, resumable, checked.

A row's part is ``xxh3_64(uid) % num_parts``; a part's rows are sorted by (uid, url, text), so the
bytes of a part depend only on the set of selected rows, not on the engine or parallelism. The
same part index holds that part's rejects, ``rejects/<stage>/part-NNNNN.parquet``. Each file is
written atomically, then ``selected/_done/part-NNNNN`` (also atomic, written last) marks the part
complete with its row count and reason tally, so stats survive a rerun that skips it.

A part an engine never produced is only filled in empty by :func:`fill_empty_parts` when the
accounting proves it has no rows (the rows counted by the reader are all in the marked parts);
otherwise it is an error naming the part.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation.stage import KEPT, REASON, kept_rows, reason_counts
from curation.text.balance import uid_hashes
from storage.layout import RunLayout, part_name

PART_COLUMN = "_part"


def assign_parts(table: pa.Table, num_parts: int, hashes: np.ndarray | None = None) -> pa.Table:
    """``table`` with a ``_part`` column (int64): ``xxh3_64(uid) % num_parts`` (``hashes``: the
    rows' uid hashes, when the caller already has them)."""
    hashes = uid_hashes(table.column("uid")) if hashes is None else hashes
    parts = (hashes % np.uint64(num_parts)).astype(np.int64)
    return table.append_column(PART_COLUMN, pa.array(parts))


def part_done(layout: RunLayout, index: int) -> bool:
    """Whether part ``index`` has its completion marker."""
    return layout.exists(layout.marker(index))


def part_marker(layout: RunLayout, index: int) -> dict:
    """A done part's marker: ``{"rows": selected rows, "reasons": {reason: rows}}``."""
    return layout.read_json(layout.marker(index))


def write_part(table: pa.Table, layout: RunLayout, index: int, reasons: dict[str, str]) -> dict[str, int]:
    """Write part ``index`` of an annotated, final table: live rows sorted by (uid, url, text)
    to ``selected/part-NNNNN.parquet``, rejected rows as (uid, reason) sorted by (uid, reason) to
    ``rejects/<stage>/part-NNNNN.parquet`` (``reasons`` maps reason → stage), each atomically, then
    the marker with the part's reason tally. Skips a done part. Returns the tally."""
    if part_done(layout, index):
        return part_marker(layout, index)["reasons"]
    if PART_COLUMN in table.column_names:
        table = table.drop_columns([PART_COLUMN])
    tally = reason_counts(table) if table.num_rows else {}
    unknown = set(tally) - set(reasons) - {KEPT}
    if unknown:
        raise ValueError(f"part {index}: reasons {sorted(unknown)} belong to no stage")
    order = [(c, "ascending") for c in ("uid", "url", "text")]
    selected = kept_rows(table).sort_by(order).combine_chunks()
    layout.write_parquet(selected, layout.part(index))
    rejected = table.filter(pc.not_equal(table.column(REASON), KEPT)).select(["uid", REASON])
    rejected = rejected.rename_columns(["uid", "reason"]).sort_by([("uid", "ascending"), ("reason", "ascending")])
    stage_of = pa.array([reasons[r] for r in rejected.column("reason").to_pylist()], pa.string())
    for stage in sorted(set(stage_of.to_pylist())):
        rows = rejected.filter(pc.equal(stage_of, stage)).combine_chunks()
        layout.write_parquet(rows, layout.reject_part(stage, part_name(index)))
    layout.write_json(layout.marker(index), {"rows": selected.num_rows, "reasons": tally})
    return tally


DEFAULT_SCHEMA = pa.schema([("uid", pa.string()), ("url", pa.string()), ("text", pa.string()),
                            ("query_ids", pa.list_(pa.int32()))])


def fill_empty_parts(layout: RunLayout, num_parts: int, rows_read: int) -> list[int]:
    """After the engine ran: write the parts without a marker as empty parts, but only when the
    marked parts already account for every one of the ``rows_read`` rows the reader counted
    (then the missing parts provably hold no rows). Otherwise raise naming the missing parts.
    Returns the indices filled."""
    missing = [i for i in range(num_parts) if not part_done(layout, i)]
    if not missing:
        return []
    accounted = sum(sum(part_marker(layout, i)["reasons"].values()) for i in range(num_parts) if i not in missing)
    if accounted != rows_read:
        names = ", ".join(layout.part(i) for i in missing)
        raise RuntimeError(f"selection parts missing: {names} — the reader counted {rows_read} pool rows "
                           f"but the written parts account for {accounted}")
    written = [p for p in (layout.part(i) for i in range(num_parts) if i not in missing)]
    schema = layout.read_parquet(written[0]).schema if written else DEFAULT_SCHEMA
    for index in missing:
        empty = schema.empty_table().append_column(REASON, pa.array([], pa.string()))
        write_part(empty, layout, index, {})
    return missing


def verify_parts(layout: RunLayout, num_parts: int) -> list[int]:
    """Check every marked part against its file before a rerun trusts it: a part whose file is
    gone loses its marker (the rerun redoes it); a part whose file holds a different number of
    rows than its marker, or is truncated, raises ValueError naming it; an unreadable (torn)
    marker is dropped and its part redone. Returns the parts to (re)do."""
    todo = []
    for index in range(num_parts):
        if not part_done(layout, index):
            todo.append(index)
            continue
        try:
            expected = part_marker(layout, index)["rows"]
        except (ValueError, KeyError):  # a torn marker (not ours to trust): redo the part
            expected = None
        if expected is None or not layout.exists(layout.part(index)):
            layout.remove(layout.marker(index))
            todo.append(index)
            continue
        found = layout.parquet_rows(layout.part(index))
        if found != expected:
            raise ValueError(f"{layout.part(index)}: holds {found} rows, its completion marker says "
                             f"{expected}; remove the part and its marker to redo it")
    return todo


def clear_selection(layout: RunLayout) -> None:
    """Forget a selection (a run with a different configuration rewrites everything)."""
    for directory in (layout.selected_dir, layout.rejects_root, layout.stats_dir, layout.read_tally_dir):
        layout.remove_tree(directory)
    layout.remove(layout.entry_counts)


class BalanceAndPart:
    """The balance stage plus each row's output part, the uids hashed once for both (compiled
    xxh3_64, :mod:`curation.xxh3`). Built once per worker (Beam: a DoFn's first batch) or once
    per run and shared read-only through the object store (Ray); the entry tables of a
    500k-entry list take ~15 ms, never rebuilt per batch."""

    def __init__(self, counts: np.ndarray, t: float, seed: int, num_parts: int):
        from curation.text.balance import Balancer

        self.balancer, self.num_parts = Balancer(counts, t, seed), num_parts

    def __call__(self, table: pa.Table) -> pa.Table:
        hashes = uid_hashes(table.column("uid"))
        return assign_parts(self.balancer(table, hashes), self.num_parts, hashes)
