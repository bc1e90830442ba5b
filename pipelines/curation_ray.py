"""Ray Data adapter of the text-side curation stages (``curation.config`` lists them).

Stages are ``map_batches`` calls with ``batch_format="pyarrow"``: callable classes where a worker
holds state (fastText model, matcher, balancing probabilities), functions otherwise. Rows rejected
by a stage travel on with their reason, so the plan has only the barriers the algorithm needs:
the dedup shuffles (``groupby(bucket).map_groups``), the global entry counts
(``groupby("query_id").sum("count")``) and the output shuffle by part, whose writer splits each
part into the selection and the rejects. The core functions are the ones the Beam adapter calls.
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa

from curation.balance import count_entries
from curation.config import CurationConfig, read_tallies, rows_read, write_entry_counts
from curation.dedup import key_buckets, mark_duplicates
from curation.match import MatchStage, load_queries
from curation.pool import PoolConfig, list_pool_files, raise_read_failures, read_counted
from curation.run import RunLayout
from curation.selection import PART_COLUMN, BalanceAndPart, fill_empty_parts, write_part
from curation.textfilter import TextConfig, TextFilter

BUCKET = "_bucket"


class ReadAndFilterText:
    """Reads the pool files named in a batch's ``path`` column and applies the text stage in
    chunks of ``batch_size`` rows; the fastText model is loaded once per actor."""

    def __init__(self, pool_config: PoolConfig, text_config: TextConfig, batch_size: int, layout: RunLayout,
                 on_bad_file: str):
        self.pool_config, self.batch_size, self.layout, self.on_bad_file = pool_config, batch_size, layout, on_bad_file
        self.text_filter = TextFilter(text_config)

    def __call__(self, batch: pa.Table) -> pa.Table:
        tables = [read_counted(p, self.pool_config, self.layout, self.on_bad_file)
                  for p in batch.column("path").to_pylist()]
        table = pa.concat_tables(tables, promote_options="permissive")
        chunks = [self.text_filter(table.slice(i, self.batch_size))
                  for i in range(0, max(table.num_rows, 1), self.batch_size)]
        return pa.concat_tables(chunks)


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


def _write_part(layout: RunLayout, reasons: dict[str, str]):
    """Writes one output part (a ``_part`` group): selection, rejects, marker."""

    def write(group: pa.Table) -> pa.Table:
        index = int(group.column(PART_COLUMN)[0].as_py())
        tally = write_part(group, layout, index, reasons)
        return pa.table({"part": [index], "rows": [tally.get("", 0)]})

    return write


def run_ray(config: CurationConfig) -> dict[str, float]:
    """Run every text-side stage on Ray Data: writes entry_counts.parquet, then selected/ and
    rejects/ part by part (the driver derives stats/ from the part markers and checks them
    against the rows the reader counted).

    Actor stages (fastText, matcher) and task stages (shuffles) run in separate executions, split
    by ``materialize()``: an actor pool sized to the cluster beside a shuffle that needs CPUs for
    its tasks would wait forever for each other. Returns the wall seconds of each phase."""
    import ray

    clock = _PhaseClock()
    files = list_pool_files(config.pool)
    num_queries = len(load_queries(config.queries))
    workers = config.parallelism or max(1, int(ray.available_resources().get("CPU", 1)))
    batched = {"batch_size": config.batch_size, "batch_format": "pyarrow"}

    # 1. read + text stage (actors); rejected rows carry their reason from here on
    ds = ray.data.from_items([{"path": f} for f in files], override_num_blocks=max(1, len(files)))
    kwargs = {"pool_config": config.pool_format, "text_config": config.text, "batch_size": config.batch_size,
              "layout": config.layout, "on_bad_file": "skip" if config.on_bad_file == "skip" else "record"}
    ds = ds.map_batches(ReadAndFilterText, fn_constructor_kwargs=kwargs, batch_size=1, batch_format="pyarrow",
                        concurrency=min(workers, max(1, len(files)))).materialize()
    raise_read_failures(read_tallies(config))  # a bad file stops the run here, naming it
    clock.lap("read_text")
    # 2. exact dedup (tasks): equal keys meet in one hash bucket
    for key in config.dedup_keys:
        ds = ds.map_batches(_add_bucket(key, config.dedup_buckets), **batched)
        ds = ds.groupby(BUCKET, num_partitions=config.dedup_buckets).map_groups(
            _mark_duplicates(key), batch_format="pyarrow")
    ds = ds.materialize()
    clock.lap("dedup")
    # 3. match (actors), then the global per-entry counts c_e (tasks)
    matched = ds.map_batches(MatchStage, fn_constructor_kwargs={"queries_path": config.queries},
                             concurrency=workers, **batched).materialize()
    clock.lap("match")
    counts = np.zeros(num_queries, dtype=np.int64)
    sums = (matched.map_batches(_count_entries(num_queries), **batched)
            .groupby("query_id", num_partitions=workers).sum("count").take_all())
    for row in sums:
        counts[row["query_id"]] = row["sum(count)"]
    write_entry_counts(counts, config.layout)
    clock.lap("counts")
    # 4. balance (actors: the entry tables are built once per worker), then one writer per part
    balance_args = {"counts": counts, "t": config.t, "seed": config.seed, "num_parts": config.num_parts}
    ds = matched.map_batches(BalanceAndPart, fn_constructor_kwargs=balance_args, concurrency=workers,
                             **batched).materialize()  # actors, then the shuffle: separate executions
    ds.groupby(PART_COLUMN, num_partitions=config.num_parts).map_groups(
        _write_part(config.layout, config.reason_stages()), batch_format="pyarrow").take_all()
    fill_empty_parts(config.layout, config.num_parts, rows_read(config))
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
