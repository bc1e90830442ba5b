"""Unigram and bigram counting over plain text, vectorised with pyarrow + numpy, and bigram PMI.

What is counted is exactly what the matcher can find (queries/text.py): a document is spaced
with MetaCLIP's rule and split on single spaces, empty pieces kept. A *word* is a piece that
starts and ends with a letter/digit/underscore and has only those, apostrophes and hyphens
inside (``don't``, ``mother-in-law``, ``1990``): pieces such as ``(from`` or ``"the`` are what
the matcher sees too, but they are markup/punctuation artefacts, not entries anyone wants.

- unigram ``w``: every piece equal to a word ``w``;
- bigram ``"a b"``: two consecutive pieces of the same document that are both words. Because
  empty pieces are kept, ``a`` and ``b`` are separated by exactly one space in the spaced text,
  so ``" a b "`` is a substring of it and the entry ``a b`` matches there.

A language written without spaces (:mod:`queries.languages`) is first cut into words by its
segmenter (:func:`queries.languages.segment_text`: words one space apart, the text's own breaks
two), so the same counting gives its words and its pairs of adjacent words; such a pair ``a b``
becomes the entry ``ab`` (a raw substring of the text) when the list is built.

Case: with ``lowercase=True`` (the default) documents are lowercased before counting, as
MetaCLIP's (lowercase) unigram list and pywordfreq's counts are; the matcher stays
case-sensitive, so ``paris`` then matches "paris" but not "Paris".

A count table has columns ``ngram`` (string; a bigram holds one space) and ``count`` (int64).
Rows whose ngram starts with ``"\\x00"`` (never a word) carry corpus totals that the engines
sum like any count: ``\\x00tokens`` (``N``, the number of word pieces), ``\\x00documents``,
``\\x00bytes`` (UTF-8 bytes of plain text counted).
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from queries.languages import segment_text, segmenter
from queries.text import space_texts

COUNT_SCHEMA = pa.schema([("ngram", pa.string()), ("count", pa.int64())])
META_PREFIX = "\x00"  # ngrams starting with it carry corpus totals, not n-grams
TOTAL_KEY = META_PREFIX + "tokens"  # N: total word pieces
DOCUMENTS_KEY = META_PREFIX + "documents"
BYTES_KEY = META_PREFIX + "bytes"
# RE2 syntax (pyarrow): letters, digits, marks, underscore at both ends; ' and - inside.
WORD_PATTERN = r"^[\pL\pN\pM_](?:[\pL\pN\pM_'\-]*[\pL\pN\pM_])?$"


class NgramCounter:
    """Callable stage: a batch with a plain-text ``text`` column -> a :data:`COUNT_SCHEMA` table of
    the batch's unigram and bigram counts plus the corpus-total rows. Null texts count nothing."""

    def __init__(self, lowercase: bool = True, language: str | None = None):
        self.lowercase = lowercase  # lowercase documents before counting (see module doc)
        self.language = language  # None or a spaced language: as above; a no-space language: segmented first
        self.segment = segmenter(language) if language is not None else None

    def __call__(self, batch: pa.RecordBatch | pa.Table) -> pa.Table:
        texts = batch.column("text")
        if isinstance(texts, pa.ChunkedArray):
            texts = texts.combine_chunks()
        texts = pc.fill_null(texts.cast(pa.string()), "")
        meta = [len(texts), int(pc.sum(pc.binary_length(texts)).as_py() or 0)]
        if self.lowercase:
            texts = pc.utf8_lower(texts)
        if self.segment is not None:
            texts = pa.array([segment_text(t, self.segment) for t in texts.to_pylist()], pa.string())
        pieces = pc.split_pattern(space_texts(texts), " ")
        flat = pc.list_flatten(pieces)
        if len(flat) == 0:
            return pa.table({"ngram": [TOTAL_KEY, DOCUMENTS_KEY, BYTES_KEY], "count": [0, *meta]}, schema=COUNT_SCHEMA)
        doc = pc.list_parent_indices(pieces).to_numpy()
        encoded = pc.dictionary_encode(flat)
        vocab = encoded.dictionary
        ids = encoded.indices.to_numpy()
        is_word_id = pc.match_substring_regex(vocab, WORD_PATTERN).to_numpy(zero_copy_only=False)
        is_word = is_word_id[ids]
        unigram_counts = np.bincount(ids[is_word], minlength=len(vocab))
        word_ids = np.flatnonzero(unigram_counts)
        pair = is_word[:-1] & is_word[1:] & (doc[:-1] == doc[1:])
        keys = ids[:-1][pair].astype(np.int64) * len(vocab) + ids[1:][pair]
        pair_keys, pair_counts = np.unique(keys, return_counts=True)
        bigrams = pc.binary_join_element_wise(
            vocab.take(pa.array(pair_keys // len(vocab))), vocab.take(pa.array(pair_keys % len(vocab))), " "
        )
        ngrams = pa.concat_arrays(
            [pa.array([TOTAL_KEY, DOCUMENTS_KEY, BYTES_KEY], pa.string()), vocab.take(pa.array(word_ids)), bigrams]
        )
        totals = [int(unigram_counts.sum()), *meta]
        counts = np.concatenate([totals, unigram_counts[word_ids], pair_counts]).astype(np.int64)
        return pa.Table.from_arrays([ngrams, pa.array(counts)], schema=COUNT_SCHEMA)


def merge_counts(tables: list[pa.Table]) -> pa.Table:
    """Sum count tables by ngram (the reduce step; engines do the same with their own shuffle)."""
    if not tables:
        return COUNT_SCHEMA.empty_table()
    merged = pa.concat_tables(tables).group_by("ngram").aggregate([("count", "sum")])
    return merged.rename_columns(["ngram", "count"]).cast(COUNT_SCHEMA)


def keep_frequent(counts: pa.Table, min_unigram: int, min_bigram: int) -> pa.Table:
    """Drop rare ngrams before they leave the engine: unigrams below ``min_unigram``, bigrams
    below ``min_bigram``. Corpus-total rows are always kept. (A bigram with ``n_ab >= m`` has both
    ``n_a, n_b >= m``, so ``min_unigram <= min_bigram`` keeps every count PMI needs.)"""
    is_bigram = pc.match_substring(counts["ngram"], " ")
    threshold = pc.if_else(is_bigram, min_bigram, min_unigram)
    keep = pc.or_(pc.greater_equal(counts["count"], threshold), pc.starts_with(counts["ngram"], META_PREFIX))
    return counts.filter(keep)


def split_counts(counts: pa.Table) -> tuple[pa.Table, pa.Table, dict[str, int]]:
    """A merged count table -> (unigrams, bigrams, totals), tables sorted by ngram; ``totals``
    has ``tokens`` (N), ``documents`` and ``bytes`` (0 where absent)."""
    meta_mask = pc.starts_with(counts["ngram"], META_PREFIX)
    meta = counts.filter(meta_mask)
    totals = {key[len(META_PREFIX) :]: 0 for key in (TOTAL_KEY, DOCUMENTS_KEY, BYTES_KEY)}
    for key, value in zip(meta["ngram"].to_pylist(), meta["count"].to_pylist()):
        totals[key[len(META_PREFIX) :]] += value
    rest = counts.filter(pc.invert(meta_mask))
    is_bigram = pc.match_substring(rest["ngram"], " ")
    unigrams = rest.filter(pc.invert(is_bigram)).sort_by("ngram")
    bigrams = rest.filter(is_bigram).sort_by("ngram")
    return unigrams, bigrams, totals


def bigram_pmi(unigrams: pa.Table, bigrams: pa.Table, total: int) -> pa.Table:
    """PMI of each bigram ``a b``: ``log2(n_ab * N / (n_a * n_b))``, with the unigram counts and
    ``N`` of the same corpus. Returns ``bigrams`` with a float64 ``pmi`` column appended. Every bigram's words must be in ``unigrams``."""
    if bigrams.num_rows == 0:
        return bigrams.append_column("pmi", pa.array([], pa.float64()))
    parts = pc.split_pattern(bigrams["ngram"], " ", max_splits=1)
    first = pc.list_element(parts, 0)
    second = pc.list_element(parts, 1)
    vocab = unigrams["ngram"]
    n = unigrams["count"].to_numpy()
    idx_a = pc.index_in(first, value_set=vocab)
    idx_b = pc.index_in(second, value_set=vocab)
    if idx_a.null_count or idx_b.null_count:
        raise ValueError("bigram_pmi: a bigram's word has no unigram count (were unigrams filtered?)")
    n_a = n[idx_a.to_numpy()].astype(np.float64)
    n_b = n[idx_b.to_numpy()].astype(np.float64)
    n_ab = bigrams["count"].to_numpy().astype(np.float64)
    pmi = np.log2(n_ab) + math.log2(total) - np.log2(n_a) - np.log2(n_b)
    return bigrams.append_column("pmi", pa.array(pmi, pa.float64()))


class FrequentNgrams:
    """Callable stage wrapping :func:`keep_frequent` (engines apply it after the reduce). The
    input's count column may be named otherwise (Ray's groupby calls it ``sum(count)``); the
    output is a :data:`COUNT_SCHEMA` table."""

    def __init__(self, min_unigram: int, min_bigram: int, count_column: str = "count"):
        self.min_unigram = min_unigram  # unigrams below this never leave the engine
        self.min_bigram = min_bigram  # bigrams below this never leave the engine
        self.count_column = count_column  # name of the summed count column in the input

    def __call__(self, counts: pa.Table) -> pa.Table:
        counts = pa.table({"ngram": counts["ngram"], "count": counts[self.count_column]}).cast(COUNT_SCHEMA)
        return keep_frequent(counts, self.min_unigram, self.min_bigram)
