"""Ray Data adapter of the n-gram counting job (queries/counting.py describes the stages).

    sources ─ map_batches(DocumentReader) ─ map_batches(WikitextStripper)
            ─ map_batches(NgramCounter) ─ groupby("ngram").sum("count") ─ map_batches(FrequentNgrams)

The reduce is Ray Data's own hash-shuffle groupby, so it scales out with the cluster; on one
small machine its fixed cost (~5-10 s) dominates the sample run, which is why the default
runner of build_queries.py is Beam's in-process DirectRunner.

Every stage is a callable class from queries/ applied with ``batch_format="pyarrow"``; Ray
streams the document batches between them and spreads the strip/count actors over the cluster.
"""

from __future__ import annotations

import logging

import pyarrow as pa

from queries.corpus import DocumentSource, iter_document_batches
from queries.counting import CountingJob
from queries.wikidump import DumpStats
from queries.ngrams import COUNT_SCHEMA, FrequentNgrams, NgramCounter
from queries.wikitext import WikitextStripper

log = logging.getLogger(__name__)


class DocumentReader:
    """Callable stage: rows ``(path, kind)`` -> a stream of document batches (a generator, so a
    multi-GB dump never sits in memory whole)."""

    def __init__(self, batch_size: int):
        self.batch_size = batch_size  # documents per yielded batch

    def __call__(self, sources: pa.Table):
        for path, kind in zip(sources["path"].to_pylist(), sources["kind"].to_pylist()):
            stats = DumpStats()
            n = 0
            for batch in iter_document_batches(DocumentSource(path, kind), self.batch_size, stats):
                n += batch.num_rows
                yield pa.Table.from_batches([batch])
            log.info("%s: done, %d documents%s", path, n, f" ({stats})" if stats.pages else "")


def count_with_ray(job: CountingJob, num_cpus: int | None = None) -> pa.Table:
    """Run the counting job on the current Ray runtime (``pipelines.runtime.init_ray`` first);
    returns the filtered, merged count table sorted by ngram."""
    import ray
    from ray.data import ActorPoolStrategy

    workers = max(1, int(num_cpus or ray.cluster_resources().get("CPU", 1)))
    rows = [{"path": s.path, "kind": s.kind} for s in job.sources]
    ds = ray.data.from_items(rows, override_num_blocks=len(rows))
    # The reader and the final filter hold no state: plain tasks (an instance of the callable
    # class), which reuse Ray's pooled workers; the strip/count stages run in actor pools.
    ds = ds.map_batches(
        DocumentReader(job.batch_size),
        batch_size=1,
        batch_format="pyarrow",
        num_cpus=0.5,  # mostly decompression + expat; leaves room for the strip/count actors
    )
    ds = ds.map_batches(
        WikitextStripper,
        batch_size=None,
        batch_format="pyarrow",
        compute=ActorPoolStrategy(min_size=1, max_size=workers),
        num_cpus=0.5,
    )
    ds = ds.map_batches(
        NgramCounter,
        fn_constructor_kwargs={"lowercase": job.lowercase, "language": job.language},
        batch_size=None,
        batch_format="pyarrow",
        compute=ActorPoolStrategy(min_size=1, max_size=workers),
        num_cpus=0.5,
    )
    ds = ds.groupby("ngram", num_partitions=max(2, 2 * workers)).sum("count")
    # Ray's groupby names the summed column "sum(count)"
    keep = FrequentNgrams(job.min_unigram, job.min_bigram, count_column="sum(count)")
    ds = ds.map_batches(keep, batch_size=None, batch_format="pyarrow")
    tables = [t for t in ray.get(ds.to_arrow_refs()) if t.num_rows]
    counts = pa.concat_tables(tables).cast(COUNT_SCHEMA) if tables else COUNT_SCHEMA.empty_table()
    return counts.sort_by("ngram")
