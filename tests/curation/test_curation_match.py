"""QueryMatcher against the naive MetaCLIP rule: ``f" {entry} " in space_text(text)``."""

from __future__ import annotations

import json

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from curation.text.match import QueryMatcher
from queries.text import space_text


def naive(queries: list[str], texts: list[str | None]) -> list[list[int]]:
    """The reference: loop over every entry of every text."""
    out = []
    for text in texts:
        spaced = space_text(text) if text is not None else None
        out.append([i for i, e in enumerate(queries) if spaced is not None and f" {e} " in spaced])
    return out


def test_overlapping_repeated_and_punctuation():
    queries = ["new york", "york", "new", "new york city", "york", "U.S", "buildings", "a b", "b c", "Cat", "New York"]
    texts = [
        "I love New York, new york city!",
        "york.new york;york",
        "tall buildings) in the U.S.",
        "tall buildings. cat",
        "a b c",
        "new\tyork\nnew  york",
        "",
        None,
    ]
    got = QueryMatcher(queries).match(texts)
    assert got == naive(queries, texts)
    assert got[0] == [0, 1, 2, 3, 4, 10]  # case-sensitive: "New York" only matches itself
    assert got[1] == [0, 1, 2, 4]  # repeated entry "york" matches under both ids
    assert got[2] == []  # "buildings)" is not "buildings"; "U.S." spaces to "U . S ."
    assert got[4] == [7, 8]  # overlapping runs
    assert got[5] == [0, 1, 2, 4]  # tab/newline are spaces; the double space breaks the run
    assert got[7] == []


def test_edge_space_entries_use_the_literal_path():
    queries = ["", " york", "new  york", "york ", "new york"]
    texts = ["new  york", "new york", "york", "a . b", "", "x  york y"]
    assert QueryMatcher(queries).match(texts) == naive(queries, texts)


def test_arrow_input_and_output_types():
    matcher = QueryMatcher(["red", "red cat", "cat"])
    chunked = pa.chunked_array([["a red cat"], [None, "cat"]])
    out = matcher.match_arrow(chunked)
    assert out.type == pa.list_(pa.int32())
    assert out.to_pylist() == [[0, 1, 2], [], [2]]
    assert matcher.match(pa.array(["red", "red"], pa.large_string())) == [[0], [0]]
    sliced = pa.array(["x", "red cat", "cat"]).slice(1)
    assert matcher.match(sliced) == [[0, 1, 2], [2]]


WORDS = st.sampled_from(["new", "york", "New", "a", "b", "cat", "U", "S", "é", "日本"])
SEPS = st.sampled_from([" ", "  ", ",", ".", ";", ":", "?", "!", "`", "\t", "\n", "\r", ")", "-", ", "])
TEXT = st.lists(st.one_of(WORDS, SEPS), max_size=14).map("".join)
ENTRY = st.one_of(
    st.lists(WORDS, min_size=1, max_size=3).map(" ".join),
    st.lists(st.one_of(WORDS, SEPS), min_size=0, max_size=4).map("".join),
)


@settings(max_examples=300, deadline=None)
@given(queries=st.lists(ENTRY, min_size=1, max_size=12), texts=st.lists(st.one_of(TEXT, st.none()), max_size=8))
def test_matches_naive_rule(queries, texts):
    assert QueryMatcher(queries).match(texts) == naive(queries, texts)


def test_real_captions_against_naive(sample):
    summaries = json.load(open(sample["wiki_summaries_en"]))
    texts = [v["extract"][:300] for v in list(summaries.values())[:300]]
    titles = [v["title"] for v in list(summaries.values())[:2000]]
    words = sorted({w for t in texts[:50] for w in t.split()})[:400]
    queries = sorted(set(titles) | set(words)) + ["the", "of the", "in the United States"]
    assert QueryMatcher(queries).match(texts) == naive(queries, texts)


def test_long_words_many_ids_and_large_batches():
    """Words longer than the 16 inlined bytes (same prefix, different tails; > 255 bytes), rows
    with more ids than the insertion-sort cut-off, and repeated/overlapping multi-word entries."""
    long_a, long_b = "x" * 16 + "tail", "x" * 16 + "tall"
    huge = "é" * 200  # 400 bytes: past the tag's length cap
    words = [f"w{i:03d}" for i in range(150)]
    queries = [long_a, huge, "x" * 16, long_a + " " + long_b, *words, "w001 w002 w003", "w002 w003", "w003"]
    texts = [
        f"{long_a} {long_b}, {'x' * 16}",
        f"{long_b}tail {long_a}x {huge}",
        " ".join(reversed(words)) + " w001 w002 w003 w003",
        f"{huge[:-1]} {huge}é {huge}",
    ] * 3
    got = QueryMatcher(queries).match(texts)
    assert got == naive(queries, texts)
    assert len(got[2]) > 100  # past the insertion-sort cut-off


def test_short_words_are_told_apart_by_length_and_bytes():
    """Words of at most 16 bytes are settled by the slot (exact length + packed bytes) alone:
    zero-padding look-alikes (trailing NUL bytes), lengths 7..17 around the 8/16-byte words,
    and near misses must neither match nor shadow each other."""
    base = "abcdefghijklmnopq"
    queries = ["ab", "ab\x00", "\x00", *(base[:k] for k in (7, 8, 9, 15, 16, 17)),
               "abcdefgh abcdefghijklmnop"]
    texts = [
        "ab\x00 ab \x00\x00 \x00",
        " ".join(base[:k] for k in range(1, 18)),
        "abcdefgh abcdefghijklmnop abcdefgX abcdefghijklmnoX a\x00",
        "ab\x00\x00 abcdefghijklmnop\x00",
    ]
    got = QueryMatcher(queries).match(texts)
    assert got == naive(queries, texts)
    assert got[0] == [0, 1, 2] and got[3] == []
