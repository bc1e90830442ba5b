"""Ray Data adapter of the text-side curation stages (``curation.text.config`` lists them).

Stages are ``map_batches`` calls with ``batch_format="pyarrow"``, all tasks: the fastText model
is loaded once per worker process, the matcher and the balancing tables are built once per run
and shared read-only through the object store (numpy arrays, read zero-copy), which lets every
stage run in the same executions as the shuffles (two executions per run). Rows rejected by a stage travel on with their reason, so the plan has
only the barriers the algorithm needs: the dedup shuffles (``groupby(bucket).map_groups``), the
global entry counts (sparse per-block counts summed on the driver) and the output shuffle by part,
whose writer splits each part into the selection and the rejects. The core functions are the ones
the Beam adapter calls.
"""

from __future__ import annotations

import functools
import time

import numpy as np
import pyarrow as pa

from curation.text.balance import count_entries
from curation.text.config import (
    CurationConfig,
    dedup_bucket_count,
    read_tallies,
    record_part_plan,
    rows_read,
    write_entry_counts,
)
from curation.text.dedup import key_buckets, mark_duplicates
from curation.text.match import MatchStage, load_queries, load_query_languages
from curation.text.pool import PoolConfig, list_pool_files, raise_read_failures, read_counted
from curation.text.selection import (
    PART_COLUMN,
    BalanceAndPart,
    balance_inputs,
    fill_empty_parts,
    write_part,
)
from curation.text.textfilter import TextConfig, TextFilter
from storage.layout import RunLayout

BUCKET = "_bucket"


@functools.lru_cache(maxsize=2)
def _text_filter(config: TextConfig) -> TextFilter:
    """The text stage of ``config``, built once per worker process (the fastText model loaded
    once; Ray reuses its worker processes across tasks)."""
    return TextFilter(config)


def _read_and_filter(pool_config: PoolConfig, text_config: TextConfig, batch_size: int, layout: RunLayout,
                     on_bad_file: str, bucket_key: str | None, num_buckets: int):
    """Reads the pool files named in a batch's ``path`` column, applies the text stage in chunks
    of ``batch_size`` rows and adds the first dedup key's bucket (``bucket_key``, if any)."""

    def read(batch: pa.Table) -> pa.Table:
        text_filter = _text_filter(text_config)
        tables = [read_counted(p, pool_config, layout, on_bad_file) for p in batch.column("path").to_pylist()]
        table = pa.concat_tables(tables, promote_options="permissive")
        table = pa.concat_tables([text_filter(table.slice(i, batch_size))
                                  for i in range(0, max(table.num_rows, 1), batch_size)])
        if bucket_key is not None:  # the first dedup's bucket, while the rows are here
            table = table.append_column(BUCKET, pa.array(key_buckets(table, bucket_key, num_buckets)))
        return table

    return read


def _add_bucket(key: str, num_buckets: int):
    """Adds the dedup bucket of each row's ``key``."""

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


_SHARED: dict[str, object] = {}  # per worker process: the last shared stage objects, by object id


def _apply(batch: pa.Table, shared: list) -> pa.Table:
    """Run a stage object shared through the object store (``shared``: ``[ObjectRef]``): fetched
    once per worker process from the node's object store (its numpy tables read zero-copy),
    never rebuilt."""
    ref = shared[0]
    key = ref.hex()
    stage = _SHARED.get(key)
    if stage is None:
        import ray

        while len(_SHARED) >= 2:  # keep the last two (one run uses two: matcher, balancer)
            _SHARED.pop(next(iter(_SHARED)))
        stage = _SHARED[key] = ray.get(ref)
    return stage(batch)


def _write_part(layout: RunLayout, reasons: dict[str, str], max_rows: int):
    """Writes one output part (a ``_part`` group): selection, rejects, marker."""

    def write(group: pa.Table) -> pa.Table:
        index = int(group.column(PART_COLUMN)[0].as_py())
        tally = write_part(group, layout, index, reasons, max_rows)
        return pa.table({"part": [index], "rows": [tally.get("", 0)]})

    return write


def _raise_recorded_read_failures(config: CurationConfig) -> None:
    """Raise for a pool file the reader recorded as bad, if the tallies are all there."""
    try:
        tallies = read_tallies(config)
    except RuntimeError:
        return
    raise_read_failures(tallies)


def _build_match_stage(queries: str) -> MatchStage:
    """The matcher, built once per run by one task (it runs while the text stage does)."""
    return MatchStage(queries)


def _block_counts(block: pa.Table, num_queries: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sparse entry counts of one block: (entry ids, counts, its balance inputs)."""
    counts = count_entries(block.column("query_ids"), num_queries)
    ids = np.flatnonzero(counts)
    return ids, counts[ids], balance_inputs(block)


def run_ray(config: CurationConfig, shuffle_strategy: str | None = "sort_shuffle_pull_based") -> dict[str, float]:
    """Run every text-side stage on Ray Data: writes entry_counts.parquet, then selected/ and
    rejects/ part by part (the driver derives stats/ from the part markers and checks them
    against the rows the reader counted).

    Two executions, split by the one barrier the algorithm has (the global entry counts):
    (1) read + text stage + both dedup shuffles + match; (2) balance + output part, then the
    shuffle by part into one writer per part. Every stage runs as tasks, so a shuffle never waits
    on an actor pool holding the CPUs: the fastText model is loaded once per worker process
    (cached), the matcher is built once per run by one task started before (1) (it builds while
    the text stage runs) and the balancing tables once on the driver; both are shared read-only
    through the object store (numpy arrays, read zero-copy). The counts c_e in between are
    sparse per-block counts (one plain task per materialised block) summed on the driver.

    ``shuffle_strategy``: Ray Data's shuffle for this run (``DataContext.shuffle_strategy``;
    None keeps the context's). The default, the pull-based sort shuffle, runs as plain tasks;
    Ray's hash shuffles start aggregator actors for every shuffle, seconds of fixed cost each
    on a small cluster (bench/bench_engines.py). Returns the wall seconds of each phase."""
    import ray
    from ray.data.context import DataContext, ShuffleStrategy

    context = DataContext.get_current()
    previous = context.shuffle_strategy
    if shuffle_strategy is not None:
        context.shuffle_strategy = ShuffleStrategy(shuffle_strategy)
    try:
        return _run(ray, config)
    finally:
        context.shuffle_strategy = previous


def _run(ray, config: CurationConfig) -> dict[str, float]:
    """:func:`run_ray`'s plan."""
    clock = _PhaseClock()
    files = list_pool_files(config.pool)
    num_queries = len(load_queries(config.queries))
    batched = {"batch_size": config.batch_size, "batch_format": "pyarrow"}
    keys = list(config.dedup_keys)
    buckets = dedup_bucket_count(config, files)
    match_stage = ray.remote(_build_match_stage).remote(config.queries)

    # 1. read + text stage, dedup (equal keys meet in one hash bucket), match; rejected rows
    #    carry their reason from the text stage on
    ds = ray.data.from_items([{"path": f} for f in files], override_num_blocks=max(1, len(files)))
    on_bad_file = "skip" if config.on_bad_file == "skip" else "record"
    ds = ds.map_batches(_read_and_filter(config.pool_format, config.text, config.batch_size, config.layout,
                                         on_bad_file, keys[0] if keys else None, buckets),
                        batch_size=1, batch_format="pyarrow")
    for i, key in enumerate(keys):
        if i:
            ds = ds.map_batches(_add_bucket(key, buckets), **batched)
        ds = ds.groupby(BUCKET, num_partitions=buckets).map_groups(
            _mark_duplicates(key), batch_format="pyarrow")
    try:
        matched = ds.map_batches(_apply, fn_args=([match_stage],), **batched).materialize()
    except Exception:
        _raise_recorded_read_failures(config)  # a bad pool file is the cause worth naming
        raise
    raise_read_failures(read_tallies(config))  # a bad file stops the run here, naming it
    del match_stage
    clock.lap("read_text_dedup_match")
    # 2. the global per-entry counts c_e: sparse counts per block (tasks), summed here
    counts = np.zeros(num_queries, dtype=np.int64)
    inputs = np.zeros(2, dtype=np.int64)
    count_block = ray.remote(_block_counts)
    for ids, block_counts, block_inputs in ray.get([count_block.remote(ref, num_queries)
                                                     for ref in matched.to_arrow_refs()]):
        counts[ids] += block_counts
        inputs += block_inputs
    write_entry_counts(counts, config.layout)
    plan = record_part_plan(counts, inputs, config)  # parts sized by rows, known before any is written
    num_parts = plan["num_parts"]
    clock.lap("counts")
    # 3. balance + part (tasks over the shared tables), then one writer per part
    balance = ray.put(BalanceAndPart(counts, config.t, config.seed, num_parts, load_query_languages(config.queries),
                                     config.online))
    (matched.map_batches(_apply, fn_args=([balance],), **batched)
     .groupby(PART_COLUMN, num_partitions=num_parts)
     .map_groups(_write_part(config.layout, config.reason_stages(), config.max_part_rows),
                 batch_format="pyarrow").take_all())
    del balance
    fill_empty_parts(config.layout, num_parts, rows_read(config))
    clock.lap("balance_write")
    return clock.laps


class _PhaseClock:
    """Wall seconds per phase (each phase ends with a materialisation)."""

    def __init__(self):
        self.laps: dict[str, float] = {}
        self.last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self.last, 2)
        self.last = now
