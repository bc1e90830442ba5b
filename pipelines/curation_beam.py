"""Apache Beam adapter of the text-side curation stages (``curation.text.config`` lists them).

Elements are Arrow tables (batches) whose rejected rows travel on with their reason. Stages are
DoFns whose ``setup`` builds the per-worker state (fastText model, matcher); dedup and the output
parts are ``GroupByKey`` over hash buckets; the entry counts are a ``CombineGlobally`` of
per-batch count vectors, fed to balancing as a side input. The core functions are the ones the
Ray adapter calls.
"""

from __future__ import annotations

import apache_beam as beam
import numpy as np
import pyarrow as pa

from curation.text.balance import count_entries
from curation.text.config import CurationConfig, dedup_bucket_count, record_part_plan, rows_read, write_entry_counts
from curation.text.dedup import key_buckets, mark_duplicates
from curation.text.match import MatchStage, load_queries, load_query_languages
from curation.text.pool import PoolConfig, list_pool_files, read_counted
from curation.text.selection import (
    PART_COLUMN,
    BalanceAndPart,
    balance_inputs,
    fill_empty_parts,
    recorded_num_parts,
    write_part,
)
from curation.text.textfilter import TextFilter
from pipelines.runtime import beam_pipeline_options
from storage.layout import RunLayout


class ReadPoolDoFn(beam.DoFn):
    """Reads one pool file (counting its rows in the run's ``_read/`` tally) and emits it in
    batches of ``batch_size`` rows."""

    def __init__(self, pool_config: PoolConfig, batch_size: int, layout: RunLayout, on_bad_file: str):
        self.pool_config, self.batch_size, self.layout, self.on_bad_file = pool_config, batch_size, layout, on_bad_file

    def process(self, path: str):
        table = read_counted(path, self.pool_config, self.layout, self.on_bad_file)
        for start in range(0, max(table.num_rows, 1), self.batch_size):
            yield table.slice(start, self.batch_size)


class StageDoFn(beam.DoFn):
    """A per-batch stage built once per worker in ``setup`` (the fastText model, the matcher):
    ``StageDoFn(TextFilter, config)`` calls ``TextFilter(config)(table)`` on every batch."""

    def __init__(self, stage_cls, *args):
        self.stage_cls, self.args = stage_cls, args

    def setup(self):
        self.stage = self.stage_cls(*self.args)

    def process(self, table: pa.Table):
        yield self.stage(table)


class BalanceDoFn(beam.DoFn):
    """The balance stage plus each row's output part; the probabilities come from the global
    counts side input, the part count from the part plan side input (built on the first batch
    a worker sees). ``online``: online balancing, every live row kept."""

    def __init__(self, t: float, seed: int, queries: str | None = None, online: bool = False):
        self.t, self.seed, self.queries, self.online, self.stage = t, seed, queries, online, None

    def process(self, table: pa.Table, counts: np.ndarray, plan: dict):
        if self.stage is None:
            languages = load_query_languages(self.queries) if self.queries else None  # a worldwide list's
            self.stage = BalanceAndPart(counts, self.t, self.seed, plan["num_parts"], languages, self.online)
        yield self.stage(table)


class SumCounts(beam.CombineFn):
    """Sums per-batch entry count vectors (the global c_e)."""

    def __init__(self, num_queries: int):
        self.num_queries = num_queries

    def create_accumulator(self):
        return np.zeros(self.num_queries, dtype=np.int64)

    def add_input(self, acc, counts):
        acc += counts
        return acc

    def merge_accumulators(self, accs):
        return np.sum(list(accs), axis=0, dtype=np.int64)

    def extract_output(self, acc):
        return acc


def _by_key(key_fn):
    """Split a batch into (key, sub-batch) pairs by an int64 key per row."""

    def split(table: pa.Table):
        keys = key_fn(table)
        for key in np.unique(keys):
            yield int(key), table.filter(pa.array(keys == key))

    return split


def run_beam(config: CurationConfig, runner: str | None = None, extra_args: list[str] | None = None) -> None:
    """Run every text-side stage as one Beam pipeline: writes entry_counts.parquet, then
    selected/ and rejects/ part by part (the driver derives stats/ from the part markers)."""
    files = list_pool_files(config.pool)
    num_queries = len(load_queries(config.queries))
    reasons, layout = config.reason_stages(), config.layout
    buckets = dedup_bucket_count(config, files)
    options = beam_pipeline_options(runner, extra_args, parallelism=config.parallelism)
    with beam.Pipeline(options=options) as pipeline:
        tables = (pipeline
                  | "Files" >> beam.Create(files)
                  | "Read" >> beam.ParDo(ReadPoolDoFn(config.pool_format, config.batch_size, layout, config.on_bad_file))
                  | "Text" >> beam.ParDo(StageDoFn(TextFilter, config.text)))
        for key in config.dedup_keys:
            bucketize = _by_key(lambda t, k=key: key_buckets(t, k, buckets))
            tables = (tables
                      | f"dedup_{key}/Bucket" >> beam.FlatMap(bucketize)
                      | f"dedup_{key}/Group" >> beam.GroupByKey()
                      | f"dedup_{key}/Mark" >> beam.MapTuple(
                          lambda _, ts, k=key: mark_duplicates(pa.concat_tables(list(ts)), k)))
        matched = tables | "Match" >> beam.ParDo(StageDoFn(MatchStage, config.queries))
        counts = (matched
                  | "Counts/Batch" >> beam.Map(lambda t: count_entries(t.column("query_ids"), num_queries))
                  | "Counts/Sum" >> beam.CombineGlobally(SumCounts(num_queries)))
        _ = counts | "Counts/Write" >> beam.Map(write_entry_counts, layout)
        inputs = (matched
                  | "Inputs/Batch" >> beam.Map(balance_inputs)
                  | "Inputs/Sum" >> beam.CombineGlobally(SumCounts(2)))
        plan = counts | "Plan" >> beam.Map(record_part_plan, beam.pvalue.AsSingleton(inputs), config)
        parts = _by_key(lambda t: t.column(PART_COLUMN).to_numpy())
        _ = (matched
             | "Balance" >> beam.ParDo(BalanceDoFn(config.t, config.seed, config.queries, config.online),
                                       counts=beam.pvalue.AsSingleton(counts), plan=beam.pvalue.AsSingleton(plan))
             | "Output/Part" >> beam.FlatMap(parts)
             | "Output/Group" >> beam.GroupByKey()
             | "Output/Write" >> beam.MapTuple(
                 lambda part, ts: write_part(pa.concat_tables(list(ts)), layout, part, reasons, config.max_part_rows)))
    fill_empty_parts(layout, recorded_num_parts(layout), rows_read(config))
