"""The n-gram counting job: what to count, and the in-process reference run of it.

The job is map (read documents -> strip wikitext -> count a batch) then reduce (sum counts by
ngram) then filter (:class:`queries.ngrams.FrequentNgrams`). ``pipelines/queries_ray.py`` and
``pipelines/queries_beam.py`` run the same stages on Ray Data and Apache Beam; this module runs
them in one process (``--runner local``, the benchmark, and tests of the core).
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
from tqdm import tqdm

from queries.corpus import DocumentSource, iter_document_batches
from queries.ngrams import FrequentNgrams, NgramCounter, merge_counts
from queries.wikitext import WikitextStripper


@dataclass(frozen=True)
class CountingJob:
    """Inputs and thresholds of one counting run (the same for every engine)."""

    sources: tuple[DocumentSource, ...]  # dumps and plain-text corpora, counted together
    lowercase: bool = True  # lowercase documents before counting
    min_unigram: int = 5  # unigrams below this are dropped after the reduce
    min_bigram: int = 5  # bigrams below this are dropped after the reduce
    batch_size: int = 256  # documents per batch handed to the strip/count stages
    merge_every: int = 32  # local run: fold partial counts every this many batches (bounds memory)
    language: str | None = None  # a worldwide list's language (a no-space one is segmented); None: English-only


def count_locally(job: CountingJob, progress: bool = True) -> pa.Table:
    """Run the counting job in this process; returns the filtered, merged count table."""
    stripper = WikitextStripper()
    counter = NgramCounter(job.lowercase, job.language)
    merged: list[pa.Table] = []
    partial: list[pa.Table] = []
    for source in job.sources:
        batches = iter_document_batches(source, job.batch_size)
        for batch in tqdm(batches, desc=f"count {source.path.rsplit('/', 1)[-1]}", unit="batch", disable=not progress):
            partial.append(counter(stripper(batch)))
            if len(partial) >= job.merge_every:
                merged = [merge_counts(merged + partial)]
                partial = []
    counts = merge_counts(merged + partial)
    return FrequentNgrams(job.min_unigram, job.min_bigram)(counts)
