"""The selection output: ``selected/part-NNNNN.parquet``, deterministic, resumable, checked.

A row's part is ``xxh3_64(uid) % num_parts``; a part's rows are sorted by (uid, url, text), so the
bytes of a part depend only on the set of selected rows, not on the engine or parallelism.

Parts are sized by rows: ``num_parts`` is derived by :func:`plan_parts` from what every engine
knows once the global entry counts are summed (the live rows entering the balance stage and the
counts c_e), never from the engine or its parallelism, so that no part holds more than
``max_part_rows`` selected rows (the bound is also checked when a part is written, which fails
naming the part). The plan is recorded in ``selected/_parts.json``; every reader of the parts
takes their number from there (:func:`recorded_num_parts`). The
same part index holds that part's rejects, ``rejects/<stage>/part-NNNNN.parquet``. Each file is
written atomically, then ``selected/_done/part-NNNNN`` (also atomic, written last) marks the part
complete with its row count and reason tally, so stats survive a rerun that skips it.

A part an engine never produced is only filled in empty by :func:`fill_empty_parts` when the
accounting proves it has no rows (the rows counted by the reader are all in the marked parts);
otherwise it is an error naming the part.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation.stage import KEPT, REASON, kept_rows, reason_counts
from curation.text.balance import EPOCH0_COLUMN, balance_probabilities, draw_thresholds, uid_hashes
from curation.text.threshold import language_thresholds, per_entry, resolve_threshold
from storage.layout import RunLayout, part_name

PART_COLUMN = "_part"
OVERFLOW_PROBABILITY = 1e-9  # the chance, under a random hash, that some part exceeds the bound


def balance_inputs(table: pa.Table) -> np.ndarray:
    """``[live rows, live rows without query ids]`` (int64) of a matched batch: summed over the
    pool, what :func:`plan_parts` needs besides c_e (the live rows entering the balance stage
    bound the selection; the match stage leaves no live row without ids, counted for rigour)."""
    if table.num_rows == 0:
        return np.zeros(2, dtype=np.int64)
    live = pc.equal(table.column(REASON), KEPT)
    no_ids = pc.and_(live, pc.equal(pc.list_value_length(table.column("query_ids")), 0))
    return np.array([pc.sum(live.cast(pa.int64())).as_py() or 0,
                     pc.sum(no_ids.cast(pa.int64())).as_py() or 0], dtype=np.int64)


def _overflow_exponent(mean: float, bound: int) -> float:
    """Chernoff: a sum X of independent Bernoullis with E[X] <= ``mean`` < a = ``bound`` + 1 has
    P(X >= a) <= exp(-(a - mean)^2 / (a + mean)); returns that exponent (inf when mean is 0, 0
    when mean >= a: no bound)."""
    a = bound + 1
    if mean <= 0:
        return math.inf
    return 0.0 if mean >= a else (a - mean) ** 2 / (a + mean)


def plan_parts(counts: np.ndarray, inputs: np.ndarray, t: float | None, max_part_rows: int,
               min_parts: int, languages: np.ndarray | None = None, online: bool = False) -> dict:
    """The selection's part count, a pure function of the global entry counts ``counts`` (c_e),
    ``inputs`` (:func:`balance_inputs` summed over the pool), ``t`` and the two settings
    (``online``: online balancing keeps every live row, as if p_e = 1 for every entry).

    The selection holds at most N = the live rows entering the balance stage, and in expectation
    at most S = sum_e c_e * P(u < p_e) (+ live rows without ids): a row is kept with probability
    <= sum of its entries' p_e. Parts are ``xxh3_64(uid) % P``; treating the hash as random, the
    rows of one part are a sum of independent Bernoullis with mean <= mu = min(N, S) / P, so
    P(some part > max_part_rows) <= P * exp(-(a - mu)^2 / (a + mu)), a = max_part_rows + 1 (Chernoff
    and a union bound). P is the smallest count >= ``min_parts`` found that makes that <=
    :data:`OVERFLOW_PROBABILITY`; when N <= max_part_rows no part can exceed the bound and P =
    ``min_parts`` (the historical 8 parts at small scale). At 1M rows per part the margin is ~1%
    (a 400M-row selection: ~404 parts). The bound is still checked when each part is written."""
    if max_part_rows < 1 or min_parts < 1:
        raise ValueError(f"max_part_rows ({max_part_rows}) and the minimum part count ({min_parts}) must be >= 1")
    live, live_without_ids = (int(x) for x in inputs)
    recorded = resolve_threshold(counts, t) if languages is None else language_thresholds(counts, languages, t)
    t = recorded if languages is None else per_entry(recorded, languages)  # per entry for a worldwide list
    counts = np.asarray(counts, dtype=np.int64)
    probs = np.ones(len(counts)) if online else balance_probabilities(counts, t)
    chance = np.minimum(draw_thresholds(probs), np.uint64(1 << 53)).astype(np.float64)
    expected = float(np.dot(counts.astype(np.float64), chance / float(1 << 53)))
    mean = min(float(live), expected * (1 + 1e-9) + 1 + live_without_ids)  # slack for float sums
    parts = min_parts
    if live > max_part_rows:
        parts = max(min_parts, math.ceil(mean / max_part_rows))
        a = max_part_rows + 1
        while math.log(parts) - _overflow_exponent(mean / parts, max_part_rows) > math.log(OVERFLOW_PROBABILITY):
            log_terms = math.log(parts / OVERFLOW_PROBABILITY)
            if a <= log_terms:  # even empty-looking parts could overflow: no P guarantees the bound
                raise ValueError(f"max_part_rows={max_part_rows} is too small to bound parts of a selection of up "
                                 f"to {live} rows (needs at least {math.ceil(log_terms)})")
            # the largest mean per part the exponent allows at this P: (a - mu)^2 >= L (a + mu)
            limit = ((2 * a + log_terms) - math.sqrt(8 * a * log_terms + log_terms ** 2)) / 2
            parts = max(parts + 1, math.ceil(mean / limit))
    return {"num_parts": parts, "max_part_rows": max_part_rows, "min_parts": min_parts, "balance_rows": live,
            "expected_selected_bound": round(expected, 3), "t": recorded}


def record_parts_plan(layout: RunLayout, plan: dict) -> None:
    """Write ``selected/_parts.json`` (the driver, or the one Beam task holding the counts). A
    plan already recorded with another part count means the done parts were cut otherwise: an
    error, never a mix."""
    path = layout.parts_plan
    if layout.exists(path):
        previous = layout.read_json(path)
        if (previous.get("num_parts"), previous.get("max_part_rows")) != (plan["num_parts"], plan["max_part_rows"]):
            raise RuntimeError(f"{path} records {previous.get('num_parts')} parts (max_part_rows "
                               f"{previous.get('max_part_rows')}), this run derives {plan['num_parts']} "
                               f"(max_part_rows {plan['max_part_rows']}): remove {layout.selected_dir} to redo it")
        if previous == plan:
            return
    layout.write_json(path, plan)


def recorded_num_parts(layout: RunLayout) -> int:
    """The selection's part count, as recorded in ``selected/_parts.json`` (an error naming the
    file when the selection was never planned)."""
    if not layout.exists(layout.parts_plan):
        raise FileNotFoundError(f"{layout.parts_plan}: no part plan (the selection was never run to its balance stage)")
    return int(layout.read_json(layout.parts_plan)["num_parts"])


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
    """A done part's marker: ``{"rows": selected rows, "reasons": {reason: rows}}`` (+ online
    balancing's ``"epoch0"``: the selected rows the offline draw keeps)."""
    return layout.read_json(layout.marker(index))


def write_part(table: pa.Table, layout: RunLayout, index: int, reasons: dict[str, str],
               max_rows: int | None = None) -> dict[str, int]:
    """Write part ``index`` of an annotated, final table: live rows sorted by (uid, url, text)
    to ``selected/part-NNNNN.parquet``, rejected rows as (uid, reason) sorted by (uid, reason) to
    ``rejects/<stage>/part-NNNNN.parquet`` (``reasons`` maps reason → stage), each atomically, then
    the marker with the part's reason tally. Skips a done part. Returns the tally. A part of more
    than ``max_rows`` selected rows is an error naming it, raised before anything is written.
    An online-balanced table's :data:`~curation.text.balance.EPOCH0_COLUMN` is counted over the
    selected rows into the marker's ``epoch0``, never written."""
    if part_done(layout, index):
        return part_marker(layout, index)["reasons"]
    if PART_COLUMN in table.column_names:
        table = table.drop_columns([PART_COLUMN])
    epoch0 = {}
    if EPOCH0_COLUMN in table.column_names:
        drawn = pc.and_(pc.equal(table.column(REASON), KEPT), table.column(EPOCH0_COLUMN))
        epoch0 = {"epoch0": int(pc.sum(drawn.cast(pa.int64())).as_py() or 0)}
        table = table.drop_columns([EPOCH0_COLUMN])
    tally = reason_counts(table) if table.num_rows else {}
    unknown = set(tally) - set(reasons) - {KEPT}
    if unknown:
        raise ValueError(f"part {index}: reasons {sorted(unknown)} belong to no stage")
    order = [(c, "ascending") for c in ("uid", "url", "text")]
    selected = kept_rows(table).sort_by(order).combine_chunks()
    if max_rows is not None and selected.num_rows > max_rows:
        raise RuntimeError(f"{layout.part(index)}: {selected.num_rows} selected rows, more than max_part_rows="
                           f"{max_rows} (a hash imbalance of probability < {OVERFLOW_PROBABILITY:g} under the part "
                           "plan, curation/text/selection.plan_parts); nothing written")
    layout.write_parquet(selected, layout.part(index))
    rejected = table.filter(pc.not_equal(table.column(REASON), KEPT)).select(["uid", REASON])
    rejected = rejected.rename_columns(["uid", "reason"]).sort_by([("uid", "ascending"), ("reason", "ascending")])
    stage_of = pa.array([reasons[r] for r in rejected.column("reason").to_pylist()], pa.string())
    for stage in sorted(set(stage_of.to_pylist())):
        rows = rejected.filter(pc.equal(stage_of, stage)).combine_chunks()
        layout.write_parquet(rows, layout.reject_part(stage, part_name(index)))
    layout.write_json(layout.marker(index), {"rows": selected.num_rows, "reasons": tally, **epoch0})
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
    for uri in (layout.entry_counts, layout.balance_table, layout.balance_meta):
        layout.remove(uri)


class BalanceAndPart:
    """The balance stage (``online``: :class:`~curation.text.balance.Balancer`'s online mode, every
    live row kept) plus each row's output part, the uids hashed once for both (compiled
    xxh3_64, :mod:`curation.xxh3`). Built once per worker (Beam: a DoFn's first batch) or once
    per run and shared read-only through the object store (Ray); the entry tables of a
    500k-entry list take ~15 ms, never rebuilt per batch."""

    def __init__(self, counts: np.ndarray, t: float, seed: int, num_parts: int, languages: np.ndarray | None = None,
                 online: bool = False):
        from curation.text.balance import Balancer

        self.balancer, self.num_parts = Balancer(counts, t, seed, languages, online), int(num_parts)

    def __call__(self, table: pa.Table) -> pa.Table:
        hashes = uid_hashes(table.column("uid"))
        return assign_parts(self.balancer(table, hashes), self.num_parts, hashes)
