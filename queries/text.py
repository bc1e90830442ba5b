"""The one definition of what a query token is, shared by counting (queries/) and matching (curation/).

MetaCLIP's substring rule (``metaclip/metaclip1/substr_matching.py``): the text is padded to
``" " + text + " "``, each of ``, . ; : ? !`` and the backtick is replaced by itself with a space
on each side, and ``\\t \\n \\r`` become spaces. An entry matches when ``" " + entry + " "`` is a
substring of that. Case-sensitive, nothing else normalised.

Equivalently, with ``tokens = space_text(text).split(" ")`` (single spaces, empty tokens kept),
a non-empty entry without leading/trailing spaces matches iff ``entry.split(" ")`` occurs as a
consecutive run of ``tokens``. Counting unigrams/bigrams over those tokens therefore counts
exactly what the matcher can find.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

PUNCT_TO_WRAP = (",", ".", ";", ":", "?", "!", "`")
CHARS_TO_SPACE = ("\t", "\n", "\r")


def space_text(text: str) -> str:
    """MetaCLIP's spacing of one text (see module docstring)."""
    spaced = f" {text} "
    for punct in PUNCT_TO_WRAP:
        spaced = spaced.replace(punct, f" {punct} ")
    for char in CHARS_TO_SPACE:
        spaced = spaced.replace(char, " ")
    return spaced


def space_texts(texts: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """Vectorised :func:`space_text` over an Arrow string array (nulls stay null)."""
    # the last positional argument is the separator
    spaced = pc.binary_join_element_wise(" ", texts, " ", "", null_handling="emit_null")
    for punct in PUNCT_TO_WRAP:
        spaced = pc.replace_substring(spaced, punct, f" {punct} ")
    for char in CHARS_TO_SPACE:
        spaced = pc.replace_substring(spaced, char, " ")
    return spaced


def text_tokens(text: str) -> list[str]:
    """The tokens of a text under the matching rule: non-empty pieces of the spaced text.

    Use for counting. (For an exact match test with entries that contain double spaces, split
    ``space_text(text)`` on ``" "`` keeping empty pieces.)
    """
    return [t for t in space_text(text).split(" ") if t]


def is_matchable(entry: str) -> bool:
    """Whether an entry can ever match under the rule (non-empty, no edge spaces, no wrapped
    punctuation or tab/newline inside)."""
    if not entry or entry != entry.strip(" "):
        return False
    return not any(c in entry for c in PUNCT_TO_WRAP + CHARS_TO_SPACE)
