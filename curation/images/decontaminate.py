"""Eval decontamination inside the image stages (``build_wit.py --decontaminate DATASET...``).

Two stages: ``evaltext`` (in the image stages' task per selection part, before download:
selected rows whose URL is an eval image's, reason ``eval_url``, or whose normalised caption is
an eval caption's, ``eval_caption``; never downloaded) and ``decontaminate`` (a task per checked
group through :func:`curation.stage.run_task_stage`, after image dedup: training images whose
pHash is within ``max_distance`` bits of an eval image's, reason ``eval_duplicate``). Every reject carries the matched
``eval_id``. The eval side comes as files the caller writes before the run
(``layout.eval_index``, ``layout.eval_text_index``: :mod:`contamination.evalindex`), so this
module knows no eval set.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation.images.dedup import fixed_bytes, read_group
from curation.images.phash import PHASH_BITS, nearest_binary
from curation.stage import (
    MapTasks,
    dropped_rows,
    reject_counts,
    run_task_stage,
    write_rejects,
)
from storage.layout import RunLayout, task_part_name

EVAL_DUPLICATE = "eval_duplicate"


@dataclass(frozen=True)
class DecontaminateConfig:
    """Eval decontamination (``build_wit.py --decontaminate DATASET...``): the eval images'
    pHash codes are written to ``layout.eval_index`` (``eval_id``, ``phash``) by the caller."""

    datasets: tuple[str, ...] = ()  # keep these eval sets out of training; none: the stages are off
    max_distance: int = 8  # pHash Hamming distance at or below which a training image is an eval copy


def evaltext_rejects(layout: RunLayout, table: pa.Table) -> pa.Table:
    """The pre-download decontamination of one selection part's rows (``uid``, ``url``,
    ``text``): rows whose URL is an eval image's URL (reason ``eval_url``) or whose caption has
    the same :func:`~curation.text.textfilter.caption_key` as an eval caption (``eval_caption``),
    as rejects with the matched ``eval_id``. Only eval sets that carry URLs or captions
    (WebDataset ``url`` in ``json``, ``txt``) contribute; the others are matched after
    download by image (``decontaminate``). Run inside the image stages' part task
    (:class:`curation.images.recipe.PartTasks`); its stats are ``stats/evaltext.json``."""
    from curation.text.textfilter import caption_key

    if not layout.exists(layout.eval_text_index):
        raise FileNotFoundError(f"{layout.eval_text_index}: decontamination needs the eval URLs/captions index")
    evals = layout.read_parquet(layout.eval_text_index)
    reason = np.full(len(table), "", object)
    eval_id = np.full(len(table), "", object)
    for name, mine, theirs in (("eval_caption", caption_key(table.column("text")), evals.column("caption_key")),
                               ("eval_url", table.column("url"), evals.column("url"))):  # url wins: last
        known = pc.not_equal(pc.fill_null(theirs, ""), "")  # eval rows that carry this field
        at = pc.index_in(mine, value_set=theirs.filter(known))
        hit = pc.is_valid(at).to_numpy(zero_copy_only=False)
        reason[hit] = name
        eval_id[hit] = evals.column("eval_id").filter(known).take(at.filter(pc.is_valid(at))).to_numpy(
            zero_copy_only=False)
    hit = np.flatnonzero(reason != "")
    return pa.table({"uid": table.column("uid").take(pa.array(hit, pa.int64())),
                     "reason": pa.array(reason[hit].tolist(), pa.string()),
                     "eval_id": pa.array(eval_id[hit].tolist(), pa.string())})


class DecontaminateTasks:
    """The decontamination's task body (picklable), one task per checked part: its rows that
    survived the dedup are searched against the eval index's pHash codes (exact Hamming, faiss
    ``IndexBinaryFlat``); rows within ``max_distance`` of an eval image become rejects
    ``eval_duplicate`` with ``eval_id``, ``score`` (1 - distance/64), ``part``, ``row``."""

    def __init__(self, layout: RunLayout, config: DecontaminateConfig):
        self.layout, self.config = layout, config

    def __call__(self, item: tuple[int, str | list[str]]) -> dict:
        index, group = item
        layout = self.layout
        table = read_group(layout, group, ["uid", "phash"])
        rows = np.flatnonzero(~dropped_rows(layout, ("imagededup",), index, len(table)))
        evals = layout.read_parquet(layout.eval_index)
        codes = np.ascontiguousarray(fixed_bytes(table.column("phash"), PHASH_BITS // 8)[rows])
        eval_codes = fixed_bytes(evals.column("phash"), PHASH_BITS // 8)
        score, nearest = nearest_binary(codes, eval_codes)
        hit = np.flatnonzero(score >= 1 - self.config.max_distance / PHASH_BITS)
        rejected = pa.table({
            "uid": table.column("uid").take(pa.array(rows[hit], pa.int64())),
            "reason": pa.array([EVAL_DUPLICATE] * len(hit), pa.string()),
            "eval_id": evals.column("eval_id").take(pa.array(nearest[hit], pa.int64())),
            "score": pa.array(score[hit], pa.float32()),
            "part": pa.array(np.full(len(hit), index, np.int32)), "row": pa.array(rows[hit].astype(np.int32))})
        write_rejects(layout, "decontaminate", rejected, part=task_part_name(index))
        return {"in": int(len(rows)), "out": int(len(rows) - len(hit)), "rejected": reject_counts(rejected)}


def decontaminate_stage(layout: RunLayout, parts: list, config: DecontaminateConfig, map_tasks: MapTasks,
                        dedup_out: int) -> int:
    """Stage ``decontaminate`` as a task per checked part or group (:class:`DecontaminateTasks`) over the
    dedup's survivors, against ``layout.eval_index``; returns the rows it keeps. ``in`` is what
    the tasks count as live (checked against the dedup's ``dedup_out``)."""
    if not layout.exists(layout.eval_index):
        raise FileNotFoundError(f"{layout.eval_index}: decontamination needs the eval index (eval_id, phash)")
    evals = layout.parquet_rows(layout.eval_index)
    counts = run_task_stage(layout, "decontaminate", DecontaminateTasks(layout, config), list(enumerate(parts)),
                            map_tasks, expect_in=dedup_out,
                            extra={"datasets": list(config.datasets), "eval_images": evals,
                                   "max_distance": config.max_distance, "detector": "phash"})
    return sum(int(c["out"]) for c in counts)
