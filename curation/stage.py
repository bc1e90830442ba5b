"""The stage contract and the one ledger of every stage, text and image.

The ordered stage registry (:data:`TEXT_STAGES`, :data:`IMAGE_STAGES`) and :class:`StageStats`
(``stats/<stage>.json``) are shared by both halves. Text stages annotate rows instead of
dropping them:

A stage is a callable ``(pa.Table) -> pa.Table`` that returns *every* input row with a
``reject_reason`` string column: ``""`` for a live row, a short reason otherwise. A row rejected
by an earlier stage passes through every later stage unchanged (the first reason wins), so the
rows travel together to the output writer, which splits them into the selection and
``rejects/<stage>/`` and tallies reasons. Reason names are unique per stage
(:data:`REASONS`), so one tally gives every stage's ``in / out / rejected`` and
``rows_in == rows_out + sum(rejected)`` is checked by :class:`StageStats`, with ``in`` measured
independently: the reader counts the pool rows it read, and the driver checks the part tallies
against that count (a lost part or row is an error, never a balanced ledger).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

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


# The ordered stage registry, the one list of stages: config, reports, gates, both engine
# adapters and the image runner read it. The exact-dedup stages are one per configured key
# (``CurationConfig.dedup_keys``): :func:`text_stages` names them.
DEDUP_KEYS = ("url", "text")  # the exact-dedup keys of a default run, in order


def dedup_stage_name(key: str) -> str:
    """The exact-dedup stage of one key: ``dedup_url``."""
    return f"dedup_{key}"


def dedup_reason(key: str) -> str:
    """Its reject reason: ``duplicate_url``."""
    return f"duplicate_{key}"


def text_stages(dedup_keys: tuple[str, ...] = DEDUP_KEYS) -> tuple[str, ...]:
    """The text stages of a run deduplicating on ``dedup_keys``, in data-flow order."""
    return ("read", "text", *(dedup_stage_name(k) for k in dedup_keys), "match", "balance")


WEB_STAGES = ("webpool_records", "webpool")  # pool extraction from web archives (its own pool dir)
TEXT_STAGES = text_stages()
IMAGE_STAGES = ("evaltext", "safetytext", "urlguard", "download", "hashlist", "imagecheck", "safety", "imagededup",
                "decontaminate", "shards", "takedown")  # takedown: pipelines/takedown.py on a finished run
# the reasons each text stage can give (a reason belongs to exactly one stage; a dedup stage's:
# :func:`stage_reasons`); image stages' reasons are mostly open-ended (``http_<code>``…) and named
# in their modules, except the eval decontamination's (its rejects also carry ``eval_id``)
REASONS = {
    "read": ("null_url", "null_text", "invalid_utf8"),
    "text": ("empty_text", "text_too_short", "text_too_long", "not_english", "uncertain_language", "unwanted_language"),
    "match": ("no_match",),
    "balance": ("not_sampled",),
    "evaltext": ("eval_url", "eval_caption"),
    "decontaminate": ("eval_duplicate",),
    "safetytext": ("nsfw_caption",),
    "hashlist": ("hashlist_match",),
    "safety": ("nsfw",),
    "takedown": ("takedown_url", "takedown_hash"),
}


def stage_reasons(stage: str) -> tuple[str, ...]:
    """The reasons ``stage`` can give (a dedup stage's from its key)."""
    if stage in REASONS:
        return REASONS[stage]
    if stage.startswith(dedup_stage_name("")):
        return (dedup_reason(stage.removeprefix(dedup_stage_name(""))),)
    return ()


@dataclass
class StageStats:
    """The one ledger of a stage, text or image: ``rows_in == rows_out + sum(rejected)``,
    written as ``stats/<stage>.json`` = ``{stage, in, out, rejected: {reason: n}}`` (+ extras)."""

    stage: str  # stage name, also the stats/<stage>.json and rejects/<stage>/ names
    rows_in: int = 0  # rows the stage received (measured, never derived from its outputs)
    rows_out: int = 0  # rows it kept
    rejected: dict[str, int] = field(default_factory=dict)  # rows dropped, by reason
    extra: dict = field(default_factory=dict)  # stage-specific figures (files skipped, per node…)

    @classmethod
    def from_counts(cls, stage: str, counts: dict[str, int]) -> StageStats:
        """Stats from merged ``{reason: rows}`` counts (``""`` = kept)."""
        rejected = {r: n for r, n in sorted(counts.items()) if r != KEPT and n}
        kept = counts.get(KEPT, 0)
        return cls(stage, kept + sum(rejected.values()), kept, rejected)

    def check(self) -> StageStats:
        """Raise if the accounting invariant does not hold; return self."""
        dropped = sum(self.rejected.values())
        if self.rows_in != self.rows_out + dropped:
            raise AssertionError(f"stage {self.stage}: {self.rows_in} in != {self.rows_out} out + "
                                 f"{dropped} rejected {self.rejected}: rows went missing")
        return self

    def body(self) -> dict:
        return {"stage": self.stage, "in": self.rows_in, "out": self.rows_out,
                "rejected": dict(sorted(self.rejected.items())), **self.extra}

    def write(self, layout) -> dict:
        """Check, then write ``stats/<stage>.json`` of ``layout`` (a :class:`storage.layout.RunLayout`)
        atomically; return the JSON body."""
        self.check()
        body = self.body()
        layout.write_json(layout.stats(self.stage), body)
        return body


def read_stats(layout, stage: str) -> dict:
    """A finished stage's ``stats/<stage>.json`` (FileNotFoundError if it has not run)."""
    return layout.read_json(layout.stats(stage))


def stage_done(layout, stage: str) -> bool:
    """Whether the stage finished (its stats file is written last)."""
    return layout.exists(layout.stats(stage))


def reject_counts(rejected: pa.Table) -> dict[str, int]:
    """``{reason: rows}`` of a rejects table (``uid``, ``reason``…), sorted by reason."""
    if not len(rejected):
        return {}
    counts = pc.value_counts(rejected.column("reason")).to_pylist()
    return dict(sorted((c["values"], int(c["counts"])) for c in counts))


def write_rejects(layout, stage: str, rejected: pa.Table, part: str = "part-00000") -> None:
    """Write one rejects part of ``stage`` (``uid``, ``reason`` first, then the rest)."""
    first = [c for c in ("uid", "reason") if c in rejected.column_names]
    rest = [c for c in rejected.column_names if c not in first]
    layout.write_parquet(rejected.select(first + rest), layout.reject_part(stage, part))


def merge_counts(parts: list[dict[str, int]]) -> dict[str, int]:
    """Sum several ``{reason: rows}`` dicts."""
    total: dict[str, int] = {}
    for part in parts:
        for reason, n in part.items():
            total[reason] = total.get(reason, 0) + int(n)
    return total


MapTasks = Callable[[Callable, list], list]  # map_tasks(fn, items) -> [fn(item) for item in items], in order


def in_process(fn: Callable, items: list) -> list:
    """A ``map_tasks`` without an engine."""
    return [fn(item) for item in items]


PipeTasks = Callable[[Callable, Callable, list], Iterator[tuple[str, dict]]]
"""``pipe(first, then, items)``: runs ``first(item)`` for every item and, as each finishes,
``then(x)`` for every ``x`` in its result's ``"then"`` list, while other items' first tasks
still run; yields ``("first" | "then", result)`` as tasks finish (the caller sums counts and
keeps no per-row data). The per-part pipeline of the image stages runs on it."""


def pipelined_in_process(first: Callable, then: Callable, items: list) -> Iterator[tuple[str, dict]]:
    """A ``pipe`` without an engine: each item's first task, then its follow-ups, in order."""
    for item in items:
        result = first(item)
        yield "first", result
        for follow in result["then"]:
            yield "then", then(follow)


def windowed_pipe(submit: Callable, wait: Callable, window: int) -> PipeTasks:
    """A ``pipe`` on an engine: ``submit(kind, fn, item)`` starts a task and returns its handle,
    ``wait(handles)`` blocks until at least one finished and returns ``[(handle, result)]``. At
    most ``window`` tasks are in flight; follow-ups go first (a part's downloads before the next
    part's guard), and one first task more is started whenever fewer than ``window`` follow-ups
    wait, so the next part is prepared while this one downloads."""

    def pipe(first: Callable, then: Callable, items: list) -> Iterator[tuple[str, dict]]:
        firsts, thens, pending = list(reversed(items)), deque(), {}
        while firsts or thens or pending:
            while thens and len(pending) < window:
                pending[submit("then", then, thens.popleft())] = "then"
            if firsts and len(thens) < window and (len(pending) < window or "first" not in pending.values()):
                pending[submit("first", first, firsts.pop())] = "first"
                continue
            for handle, result in wait(list(pending)):
                kind = pending.pop(handle)
                if kind == "first":
                    thens.extend(result["then"])
                yield kind, result

    return pipe


def process_pipe(processes: int) -> PipeTasks:
    """A ``pipe`` on a local pool of ``processes`` spawned worker processes (no Ray)."""
    import concurrent.futures as cf
    import multiprocessing

    def pipe(first: Callable, then: Callable, items: list) -> Iterator[tuple[str, dict]]:
        with cf.ProcessPoolExecutor(max(1, processes), mp_context=multiprocessing.get_context("spawn")) as pool:
            def wait(handles):
                done, _ = cf.wait(handles, return_when=cf.FIRST_COMPLETED)
                return [(f, f.result()) for f in done]

            yield from windowed_pipe(lambda kind, fn, item: pool.submit(fn, item), wait, max(1, processes))(
                first, then, items)

    return pipe


class Tally:
    """One stage's counts summed over its tasks as they finish (``in``, ``out``, reasons, the
    tasks' ``seconds`` in the stage, and per node the rows it read, or with ``per_node="out"``
    the rows it kept: the images a node downloaded); the driver keeps these, never rows."""

    def __init__(self, stage: str, per_node: str = "in"):
        self.stage, self.per_node = stage, per_node
        self.rows_in, self.rows_out, self.rejected, self.by_node, self.seconds = 0, 0, {}, {}, 0.0
        self.sums: dict[str, int] = {}  # the tasks' own counters (``counts["sums"]``), summed

    def add(self, counts: dict, node: str | None = None) -> None:
        self.rows_in += int(counts["in"])
        self.rows_out += int(counts["out"])
        self.rejected = merge_counts([self.rejected, counts["rejected"]])
        if node is not None:
            self.by_node[node] = self.by_node.get(node, 0) + int(counts[self.per_node])
        self.seconds += float(counts.get("seconds", 0.0))
        for key, n in counts.get("sums", {}).items():
            self.sums[key] = self.sums.get(key, 0) + int(n)

    def write(self, layout, expect_in: int | None = None, extra: dict | None = None) -> None:
        """``stats/<stage>.json`` (+ ``by_node`` when the tasks named their nodes); with
        ``expect_in`` (what the stage before kept) a different ``in`` is an error naming the stage."""
        if expect_in is not None and self.rows_in != expect_in:
            raise RuntimeError(f"{self.stage}: the tasks read {self.rows_in} rows, "
                               f"the stage before it kept {expect_in}")
        details = {**(extra or {}), **dict(sorted(self.sums.items())),
                   **({"by_node": dict(sorted(self.by_node.items()))} if self.by_node else {})}
        StageStats(self.stage, self.rows_in, self.rows_out, dict(sorted(self.rejected.items())), details).write(layout)


def run_task_stage(layout, stage: str, task: Callable[[object], dict], items: list, map_tasks: MapTasks,
                   expect_in: int | None = None, extra: dict | None = None) -> list[dict]:
    """The one skeleton of a task stage: items → tasks → counts → ledger. ``stage``'s rejects
    left by an interrupted try are removed, ``task`` runs once per item through the engine's
    ``map_tasks`` and writes its own rejects part, returning ``{"in": rows read, "out": rows
    kept, "rejected": {reason: n}}`` (+ ``node``: the rows read are then tallied per node as
    ``by_node``). ``in`` is what the tasks counted; with ``expect_in`` (what the stage before
    kept) a difference is an error naming the stage. Writes ``stats/<stage>.json`` (through
    :class:`Tally`) and returns the tasks' counts."""
    layout.remove_tree(layout.rejects_dir(stage))
    counts = map_tasks(task, items)
    tally = Tally(stage)
    for c in counts:
        tally.add(c, c.get("node"))
    tally.write(layout, expect_in, extra)
    return counts


def dropped_rows(layout, stages: tuple[str, ...], index: int, n: int) -> np.ndarray:
    """Mask of checked part ``index``'s ``n`` rows that ``stages`` rejected (their rejects carry
    ``part`` and ``row``)."""
    import pyarrow.dataset as ds

    dropped = np.zeros(n, bool)
    files = [layout.path(f) for stage in stages for f in layout.list(layout.rejects_dir(stage), ".parquet")]
    if files:
        dropped[ds.dataset(files, filesystem=layout.fs, format="parquet").to_table(
            columns=["row"], filter=pc.field("part") == index).column("row").to_numpy()] = True
    return dropped


def without_uids(table: pa.Table, refused: pa.Table) -> pa.Table:
    """``table`` less the rows whose uid is in ``refused``'s ``uid`` column."""
    return table.filter(pc.invert(pc.is_in(table.column("uid"), value_set=refused.column("uid"))))


def without_rejects(layout, stage: str, table: pa.Table) -> pa.Table:
    """``table`` less the rows whose uid is among ``stage``'s rejects."""
    return without_uids(table, layout.read_parquets(layout.list(layout.rejects_dir(stage), ".parquet"), ["uid"]))

