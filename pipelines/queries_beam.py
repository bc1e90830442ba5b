"""Apache Beam adapter of the n-gram counting job: word count, textbook style.

    Create(sources) | ReadDocuments | Reshuffle | StripWikitext | CountNgrams -> (ngram, count)
                    | CombinePerKey(sum) | BatchElements | KeepFrequent | WriteToParquetBatched

The DoFns wrap the same callables as the Ray adapter (queries/). ``CountNgrams`` emits one
(ngram, count) pair per distinct ngram of a document batch (the count pre-summed over the batch,
as a combiner would), and ``CombinePerKey(sum)`` does the rest. The result goes through
Parquet files under a temp dir, which is how a distributed runner (Flink, Spark, Dataflow:
pass their flags through) hands it back; use a shared ``temp_dir`` there.

Import this module after ``pipelines.runtime.configure_environment()`` (the entry point does).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import uuid

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.parquetio import WriteToParquetBatched
from fsspec.core import url_to_fs

from pipelines.runtime import beam_pipeline_options
from queries.corpus import DocumentSource, iter_document_batches
from queries.counting import CountingJob
from storage.files import expand_glob, join, open_input
from queries.wikidump import DumpStats
from queries.ngrams import COUNT_SCHEMA, FrequentNgrams, NgramCounter
from queries.wikitext import WikitextStripper

log = logging.getLogger(__name__)


class ReadDocuments(beam.DoFn):
    """(path, kind) -> the document record batches of that file."""

    def __init__(self, batch_size: int):
        self.batch_size = batch_size  # documents per record batch

    def setup(self):
        self.documents = beam.metrics.Metrics.counter("queries", "documents_read")

    def process(self, source):
        path, kind = source
        stats = DumpStats()
        n = 0
        for batch in iter_document_batches(DocumentSource(path, kind), self.batch_size, stats):
            n += batch.num_rows
            self.documents.inc(batch.num_rows)
            if n // 10_000 != (n - batch.num_rows) // 10_000:
                log.info("%s: %d documents read", path, n)
            yield batch
        log.info("%s: done, %d documents%s", path, n, f" ({stats})" if stats.pages else "")


class StripWikitext(beam.DoFn):
    """Document batch -> the same batch with plain text (queries.wikitext.WikitextStripper)."""

    def setup(self):
        self.stripper = WikitextStripper()

    def process(self, batch):
        yield self.stripper(batch)


class CountNgrams(beam.DoFn):
    """Document batch -> (ngram, count) pairs, one per distinct ngram of the batch."""

    def __init__(self, lowercase: bool, language: str | None = None):
        self.lowercase = lowercase  # lowercase documents before counting
        self.language = language  # a worldwide list's language (no-space ones are segmented)

    def setup(self):
        self.counter = NgramCounter(self.lowercase, self.language)

    def process(self, batch):
        counts = self.counter(batch)
        yield from zip(counts["ngram"].to_pylist(), counts["count"].to_pylist())


def pairs_to_table(pairs) -> pa.Table:
    """A batch of (ngram, count) pairs -> a COUNT_SCHEMA table."""
    ngrams, counts = zip(*pairs)
    return pa.table({"ngram": list(ngrams), "count": list(counts)}, schema=COUNT_SCHEMA)


class CountNgramsTransform(beam.PTransform):
    """PCollection of (path, kind) sources -> PCollection of filtered COUNT_SCHEMA tables."""

    def __init__(self, job: CountingJob):
        super().__init__()
        self.job = job

    def expand(self, sources):
        job = self.job
        return (
            sources
            | "ReadDocuments" >> beam.ParDo(ReadDocuments(job.batch_size))
            | "Redistribute" >> beam.Reshuffle()
            | "StripWikitext" >> beam.ParDo(StripWikitext())
            | "CountNgrams" >> beam.ParDo(CountNgrams(job.lowercase, job.language))
            | "SumPerNgram" >> beam.CombinePerKey(sum)
            | "Batch" >> beam.BatchElements(min_batch_size=1000, max_batch_size=100_000)
            | "ToArrow" >> beam.Map(pairs_to_table)
            | "KeepFrequent" >> beam.Map(FrequentNgrams(job.min_unigram, job.min_bigram))
        )


def count_with_beam(
    job: CountingJob, runner: str | None = None, beam_args: list[str] | None = None, temp_dir: str | None = None
) -> pa.Table:
    """Run the counting job as a Beam pipeline (``runner`` default: pipelines.runtime's offline
    DirectRunner; ``beam_args``: extra pipeline flags); returns the filtered, merged count table
    sorted by ngram. The pipeline writes its result as Parquet under ``temp_dir`` (a path or URI
    the workers can write, e.g. gs://bucket/tmp on Dataflow; default: a local temp dir), which is
    read back and removed."""
    own_dir = temp_dir is None
    base = tempfile.mkdtemp(prefix="openwit-beam-counts-") if own_dir else temp_dir
    prefix = join(base, f"counts-{uuid.uuid4().hex}")
    try:
        with beam.Pipeline(options=beam_pipeline_options(runner, beam_args)) as pipeline:
            _ = (
                pipeline
                | "Sources" >> beam.Create([(s.path, s.kind) for s in job.sources])
                | "CountNgrams" >> CountNgramsTransform(job)
                | "Write" >> WriteToParquetBatched(prefix, schema=COUNT_SCHEMA, file_name_suffix=".parquet")
            )
        files = expand_glob(prefix + "*.parquet")
        tables = []
        for path in files:
            with open_input(path) as f:
                tables.append(pq.read_table(f))
    finally:
        if own_dir:
            shutil.rmtree(base, ignore_errors=True)
        else:
            for path in expand_glob(prefix + "*"):
                fs, local = url_to_fs(path)
                fs.rm(local)
    counts = pa.concat_tables(tables).cast(COUNT_SCHEMA) if tables else COUNT_SCHEMA.empty_table()
    return counts.sort_by("ngram")
