"""Ray Data adapter of the text-side curation stages (``curation.config`` lists them).

Every stage is a ``map_batches`` call with a callable class (state built once per worker) or a
function, ``batch_format="pyarrow"``; the dedup and output shuffles are ``groupby(...).map_groups``
over hash buckets, and the entry counts a ``groupby("query_id").sum("count")`` reduce. The core
functions are the same ones the Beam adapter calls.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from curation.balance import Balancer, count_entries
from curation.config import CurationConfig, write_entry_counts
from curation.dedup import key_buckets, mark_duplicates
from curation.match import MatchStage, load_queries
from curation.pool import PoolConfig, list_pool_files, read_pool_file
from curation.selection import PART_COLUMN, assign_parts, write_missing_parts, write_part
from curation.stage import StageStats, kept_rows, merge_counts, record_rejects
from curation.textfilter import TextFilter

BUCKET = "_bucket"


class ReadPool:
    """Reads the pool files named in a batch's ``path`` column (one file per batch)."""

    def __init__(self, pool_config: PoolConfig):
        self.pool_config = pool_config

    def __call__(self, batch: pa.Table) -> pa.Table:
        tables = [read_pool_file(p, self.pool_config) for p in batch.column("path").to_pylist()]
        return pa.concat_tables(tables, promote_options="permissive")


def _record_rejects(rejects_dir: str):
    """Writes a batch's rejects and returns its ``(reason, rows)`` counts."""

    def record(batch: pa.Table) -> pa.Table:
        counts = record_rejects(batch, rejects_dir)
        return pa.table({"reason": pa.array(list(counts), pa.string()),
                         "rows": pa.array(list(counts.values()), pa.int64())})

    return record


def _add_bucket(key: str, num_buckets: int):
    """Adds the dedup bucket of each row's ``key`` (a stateless task function)."""

    def add(batch: pa.Table) -> pa.Table:
        return batch.append_column(BUCKET, pa.array(key_buckets(batch, key, num_buckets)))

    return add


def _mark_duplicates(key: str):
    """Dedup of one bucket: all rows sharing a key are in the same group."""

    def mark(group: pa.Table) -> pa.Table:
        return mark_duplicates(group.drop_columns([BUCKET]), key)

    return mark


def _count_entries(num_queries: int):
    """Sparse per-entry counts of a batch's ``query_ids``: (query_id, count)."""

    def count(batch: pa.Table) -> pa.Table:
        counts = count_entries(batch.column("query_ids"), num_queries)
        ids = np.flatnonzero(counts)
        return pa.table({"query_id": pa.array(ids, pa.int64()), "count": pa.array(counts[ids], pa.int64())})

    return count


def _write_part(out_dir: str):
    """Writes one output part (a ``_part`` group) of the selection."""

    def write(group: pa.Table) -> pa.Table:
        index = int(group.column(PART_COLUMN)[0].as_py())
        rows = write_part(group, out_dir, index)
        return pa.table({"part": [index], "rows": [rows]})

    return write


def _assign_parts(num_parts: int):
    def assign(batch: pa.Table) -> pa.Table:
        return assign_parts(batch, num_parts)

    return assign


def _account(annotated, stage: str, config: CurationConfig, stats: dict[str, StageStats]):
    """Materialise a stage's annotated output, record its rejects and stats, return the kept rows."""
    annotated = annotated.materialize()
    rows = annotated.map_batches(_record_rejects(config.dir(f"rejects/{stage}")), batch_format="pyarrow").take_all()
    counts = merge_counts([{r["reason"]: r["rows"]} for r in rows])
    stats[stage] = StageStats.from_counts(stage, counts).check()
    stats[stage].write(config.dir("stats"))
    return annotated.map_batches(kept_rows, batch_format="pyarrow")


def run_ray(config: CurationConfig) -> dict[str, StageStats]:
    """Run every text-side stage on Ray Data; write selected/, entry_counts.parquet, stats/."""
    import ray

    files = list_pool_files(config.pool)
    num_queries = len(load_queries(config.queries))
    workers = config.parallelism or max(1, int(ray.available_resources().get("CPU", 1)))
    batched = {"batch_size": config.batch_size, "batch_format": "pyarrow"}
    stats: dict[str, StageStats] = {}

    ds = ray.data.from_items([{"path": f} for f in files], override_num_blocks=max(1, len(files)))
    ds = ds.map_batches(ReadPool, fn_constructor_kwargs={"pool_config": config.pool_format},
                        batch_size=1, batch_format="pyarrow", concurrency=workers)
    ds = _account(ds, "read", config, stats)
    ds = ds.map_batches(TextFilter, fn_constructor_kwargs={"config": config.text}, concurrency=workers, **batched)
    ds = _account(ds, "text", config, stats)
    for key in config.dedup_keys:
        ds = ds.map_batches(_add_bucket(key, config.dedup_buckets), **batched)
        ds = ds.groupby(BUCKET).map_groups(_mark_duplicates(key), batch_format="pyarrow")
        ds = _account(ds, f"dedup_{key}", config, stats)
    ds = ds.map_batches(MatchStage, fn_constructor_kwargs={"queries_path": config.queries},
                        concurrency=workers, **batched)
    matched = _account(ds, "match", config, stats).materialize()

    counts = np.zeros(num_queries, dtype=np.int64)
    sums = matched.map_batches(_count_entries(num_queries), **batched).groupby("query_id").sum("count").take_all()
    for row in sums:
        counts[row["query_id"]] = row["sum(count)"]
    write_entry_counts(counts, config.dir("entry_counts.parquet"))

    ds = matched.map_batches(Balancer, fn_constructor_kwargs={"counts": counts, "t": config.t, "seed": config.seed},
                             concurrency=workers, **batched)
    selected = _account(ds, "balance", config, stats)
    selected = selected.map_batches(_assign_parts(config.num_parts), **batched)
    selected.groupby(PART_COLUMN).map_groups(_write_part(config.dir("selected")), batch_format="pyarrow").take_all()
    write_missing_parts(config.dir("selected"), config.num_parts)
    return stats
