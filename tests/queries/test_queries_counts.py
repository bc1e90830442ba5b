"""Unigram/bigram counts and PMI against a straightforward pure-Python computation."""

from __future__ import annotations

import functools
import math
import unicodedata
from collections import Counter

import numpy as np
import pyarrow as pa
import pytest

from queries.corpus import DocumentSource
from queries.counting import CountingJob, count_locally
from queries.ngrams import NgramCounter, bigram_pmi, keep_frequent, merge_counts, split_counts
from queries.text import space_text
from queries.wikidump import iter_pages
from queries.wikitext import strip_wikitext


def _is_word_char(c: str) -> bool:
    return c == "_" or unicodedata.category(c)[0] in "LNM"


@functools.lru_cache(maxsize=None)
def _is_word(piece: str) -> bool:
    """The word rule, written independently of the RE2 pattern used by NgramCounter."""
    if not piece or not _is_word_char(piece[0]) or not _is_word_char(piece[-1]):
        return False
    return all(_is_word_char(c) or c in "'-" for c in piece)


def _simple_lower(text: str) -> str:
    """Per-code-point lowercasing (Arrow's utf8_lower): "İ" -> "i", where str.lower() gives "i̇"."""
    lowered = text.lower()
    if len(lowered) == len(text):
        return lowered
    return "".join(c.lower()[0] for c in text)


def reference_counts(texts: list[str]) -> tuple[Counter, Counter]:
    """Count by the matching rule with plain Python: pieces of the spaced, lowercased text."""
    unigrams: Counter = Counter()
    bigrams: Counter = Counter()
    for text in texts:
        pieces = space_text(_simple_lower(text)).split(" ")
        words = [p if _is_word(p) else None for p in pieces]
        unigrams.update(w for w in words if w)
        bigrams.update(f"{a} {b}" for a, b in zip(words, words[1:]) if a and b)
    return unigrams, bigrams


@pytest.fixture(scope="module")
def sample_counts(sample):
    texts = [strip_wikitext(text) for _, _, text in iter_pages(sample["wiki_dump"])]
    job = CountingJob((DocumentSource(sample["wiki_dump"], "wiki_dump"),), min_unigram=1, min_bigram=1, batch_size=16)
    return texts, reference_counts(texts), split_counts(count_locally(job, progress=False))


def test_counts_match_reference(sample_counts):
    texts, (ref_uni, ref_bi), (unigrams, bigrams, totals) = sample_counts
    assert dict(zip(unigrams["ngram"].to_pylist(), unigrams["count"].to_pylist())) == dict(ref_uni)
    assert dict(zip(bigrams["ngram"].to_pylist(), bigrams["count"].to_pylist())) == dict(ref_bi)
    assert totals["tokens"] == sum(ref_uni.values())
    assert totals["documents"] == 106
    assert totals["bytes"] == sum(len(t.encode()) for t in texts)
    assert ref_uni["the"] > 10_000 and ref_bi["united states"] > 50  # a real corpus, not an empty one


def test_pmi_matches_reference(sample_counts):
    _, (ref_uni, ref_bi), (unigrams, bigrams, totals) = sample_counts
    n = sum(ref_uni.values())
    scored = bigram_pmi(unigrams, bigrams, totals["tokens"])
    expected = []
    for ngram in scored["ngram"].to_pylist():
        a, b = ngram.split(" ")
        expected.append(math.log2(ref_bi[ngram] * n / (ref_uni[a] * ref_uni[b])))
    np.testing.assert_allclose(scored["pmi"].to_numpy(), expected, rtol=1e-9, atol=1e-12)
    assert len(expected) == len(ref_bi)


def test_matching_rule_edge_cases():
    batch = pa.table({"text": ["New York, new york (NY) don't re-use 1990s é\u0301t\u00e9", None, ""]})
    uni, bi, totals = split_counts(NgramCounter(lowercase=True)(batch))
    counts = dict(zip(uni["ngram"].to_pylist(), uni["count"].to_pylist()))
    # "(ny)" is a piece the matcher sees but not a word; "york," is split by the spacing rule
    assert counts == {"new": 2, "york": 2, "don't": 1, "re-use": 1, "1990s": 1, "é\u0301té": 1}
    # "york , new" is no pair: the comma piece sits between them
    assert dict(zip(bi["ngram"].to_pylist(), bi["count"].to_pylist())) == {
        "new york": 2,
        "don't re-use": 1,
        "re-use 1990s": 1,
        "1990s é\u0301té": 1,
    }
    assert totals == {"tokens": 8, "documents": 3, "bytes": len(batch["text"][0].as_py().encode())}
    cased = split_counts(NgramCounter(lowercase=False)(batch))[0]
    assert "New" in cased["ngram"].to_pylist() and "new" in cased["ngram"].to_pylist()


def test_merge_and_filter():
    a = NgramCounter()(pa.table({"text": ["red fox red fox"]}))
    b = NgramCounter()(pa.table({"text": ["red fox jumps"]}))
    merged = merge_counts([a, b])
    uni, bi, totals = split_counts(keep_frequent(merged, min_unigram=3, min_bigram=3))
    assert uni.to_pylist() == [{"ngram": "fox", "count": 3}, {"ngram": "red", "count": 3}]
    assert bi.to_pylist() == [{"ngram": "red fox", "count": 3}]
    assert totals["tokens"] == 7 and totals["documents"] == 2
