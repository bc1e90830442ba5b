"""Apache Beam adapter of the text-side curation stages (``curation.config`` lists them).

Elements are Arrow tables (batches). Stages are DoFns whose ``setup`` builds the per-worker state
(fastText model, matcher); dedup and the output parts are ``GroupByKey`` over hash buckets; the
entry counts are a ``CombineGlobally`` of per-batch count vectors, fed to balancing as a side
input. The core functions are the same ones the Ray adapter calls.
"""

from __future__ import annotations

import apache_beam as beam
import numpy as np
import pyarrow as pa

from curation.balance import Balancer, count_entries
from curation.config import CurationConfig, write_entry_counts
from curation.dedup import key_buckets, mark_duplicates
from curation.match import MatchStage, load_queries
from curation.pool import PoolConfig, list_pool_files, read_pool_file
from curation.selection import PART_COLUMN, assign_parts, write_missing_parts, write_part
from curation.stage import StageStats, kept_rows, merge_counts, record_rejects
from curation.textfilter import TextConfig, TextFilter
from pipelines.runtime import beam_pipeline_options


class ReadPoolDoFn(beam.DoFn):
    """Reads one pool file and emits it in batches of ``batch_size`` rows."""

    def __init__(self, pool_config: PoolConfig, batch_size: int):
        self.pool_config, self.batch_size = pool_config, batch_size

    def process(self, path: str):
        table = read_pool_file(path, self.pool_config)
        for start in range(0, max(table.num_rows, 1), self.batch_size):
            yield table.slice(start, self.batch_size)


class TextDoFn(beam.DoFn):
    """The text stage; the fastText model is loaded once per worker in ``setup``."""

    def __init__(self, config: TextConfig):
        self.config = config

    def setup(self):
        self.stage = TextFilter(self.config)

    def process(self, table: pa.Table):
        yield self.stage(table)


class MatchDoFn(beam.DoFn):
    """The match stage; the matcher is built once per worker in ``setup``."""

    def __init__(self, queries_path: str):
        self.queries_path = queries_path

    def setup(self):
        self.stage = MatchStage(self.queries_path)

    def process(self, table: pa.Table):
        yield self.stage(table)


class BalanceDoFn(beam.DoFn):
    """The balance stage; the probabilities come from the global counts side input."""

    def __init__(self, t: float, seed: int):
        self.t, self.seed, self.stage = t, seed, None

    def process(self, table: pa.Table, counts: np.ndarray):
        if self.stage is None:
            self.stage = Balancer(counts, self.t, self.seed)
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


def _account(annotated, stage: str, config: CurationConfig):
    """Record a stage's rejects and stats (written at the end of the pipeline); return kept rows."""
    rejects_dir, stats_dir = config.dir(f"rejects/{stage}"), config.dir("stats")
    _ = (annotated
         | f"{stage}/Rejects" >> beam.Map(record_rejects, rejects_dir)
         | f"{stage}/Sum" >> beam.CombineGlobally(merge_counts)
         | f"{stage}/Stats" >> beam.Map(lambda c: StageStats.from_counts(stage, c).write(stats_dir)))
    return (annotated
            | f"{stage}/Kept" >> beam.Map(kept_rows)
            | f"{stage}/NonEmpty" >> beam.Filter(lambda t: t.num_rows > 0))


def run_beam(config: CurationConfig, runner: str | None = None, extra_args: list[str] | None = None) -> None:
    """Run every text-side stage as one Beam pipeline; write selected/, entry_counts.parquet, stats/."""
    files = list_pool_files(config.pool)
    num_queries = len(load_queries(config.queries))
    options = beam_pipeline_options(runner, extra_args)
    with beam.Pipeline(options=options) as pipeline:
        tables = (pipeline | "Files" >> beam.Create(files)
                  | "Read" >> beam.ParDo(ReadPoolDoFn(config.pool_format, config.batch_size)))
        tables = _account(tables, "read", config)
        tables = _account(tables | "Text" >> beam.ParDo(TextDoFn(config.text)), "text", config)
        for key in config.dedup_keys:
            bucketize = _by_key(lambda t, k=key: key_buckets(t, k, config.dedup_buckets))
            deduped = (tables
                       | f"dedup_{key}/Bucket" >> beam.FlatMap(bucketize)
                       | f"dedup_{key}/Group" >> beam.GroupByKey()
                       | f"dedup_{key}/Mark" >> beam.MapTuple(
                           lambda _, ts, k=key: mark_duplicates(pa.concat_tables(list(ts)), k)))
            tables = _account(deduped, f"dedup_{key}", config)
        matched = _account(tables | "Match" >> beam.ParDo(MatchDoFn(config.queries)), "match", config)
        counts = (matched
                  | "Counts/Batch" >> beam.Map(lambda t: count_entries(t.column("query_ids"), num_queries))
                  | "Counts/Sum" >> beam.CombineGlobally(SumCounts(num_queries)))
        _ = counts | "Counts/Write" >> beam.Map(write_entry_counts, config.dir("entry_counts.parquet"))
        balanced = matched | "Balance" >> beam.ParDo(BalanceDoFn(config.t, config.seed),
                                                      counts=beam.pvalue.AsSingleton(counts))
        selected = _account(balanced, "balance", config)
        parts = _by_key(lambda t: assign_parts(t, config.num_parts).column(PART_COLUMN).to_numpy())
        _ = (selected
             | "Select/Part" >> beam.FlatMap(parts)
             | "Select/Group" >> beam.GroupByKey()
             | "Select/Write" >> beam.MapTuple(
                 lambda part, ts: write_part(pa.concat_tables(list(ts)), config.dir("selected"), part)))
    write_missing_parts(config.dir("selected"), config.num_parts)
