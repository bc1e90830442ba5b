"""Wikitext -> plain text with a handful of regex passes (no full parse per page).

Removed: comments, ``<ref>`` footnotes, templates ``{{...}}`` (nested), tables ``{| ... |}``
(nested), ``[[File:...]]`` / ``[[Image:...]]`` / ``[[Category:...]]`` and interlanguage links,
``<math>``/``<gallery>``/code-like blocks with their content, other HTML tags (their content
kept), bare URLs, bold/italic quotes, heading ``=`` marks, list/indent markers, magic words.
Rewritten: ``[[target|label]]`` -> ``label``, ``[[target]]`` -> ``target``,
``[http://x label]`` -> ``label``; HTML entities decoded.

The result is what a reader sees on the rendered page, minus infoboxes, tables and captions:
the running prose whose words and word pairs we count.
"""

from __future__ import annotations

import html
import re

import pyarrow as pa

from queries.wikidump import DOCUMENT_SCHEMA

_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.S)
_REF = re.compile(r"<ref\b[^>/]*/>|<ref\b[^>]*>.*?</ref\s*>", re.S | re.I)
_DROP_BLOCKS = re.compile(
    r"<(math|gallery|timeline|score|syntaxhighlight|source|pre|code|chem|hiero|imagemap|mapframe|graph)"
    r"\b[^>]*>.*?</\1\s*>",
    re.S | re.I,
)
_TAG = re.compile(r"</?[a-zA-Z][^>]*>")
_TEMPLATE = re.compile(r"\{\{[^{}]*\}\}")
_TABLE = re.compile(r"\{\|(?:(?!\{\|).)*?\|\}", re.S)
# [[...]] whose inside holds no [[ ]] but may hold single [..] groups ("Bicyclo[1.1.0]butane").
_LINK = re.compile(r"\[\[([^\[\]]*(?:\[[^\[\]]*\][^\[\]]*)*)\]\]")
# Fast paths for the bulk of links (no namespace colon, one pipe at most, no brackets inside):
# substituted in C, leaving only the rest to the Python callback.
_PIPED_LINK = re.compile(r"\[\[[^\[\]|:]*\|([^\[\]|]*)\]\]")
_PLAIN_LINK = re.compile(r"\[\[([^\[\]|:]*)\]\]")
_EXT_LINK = re.compile(r"\[(?:https?:|ftp:)?//[^\s\]]*\s*([^\]]*)\]")
_URL = re.compile(r"https?://[^\s<>\]|]*")
# Line-start patterns use a literal "\n" prefix (the text is given a leading "\n"): far faster
# than re.M "^" anchors, which the regex engine tries at every position.
_HEADING = re.compile(r"\n=+[ \t]*([^\n]*?)[ \t]*=+[ \t]*(?=\n|\Z)")
_LIST_MARKERS = re.compile(r"\n[*#:;]+[ \t]*")
_RULE = re.compile(r"\n-{4,}")
_MAGIC_WORD = re.compile(r"__[A-Z]+__")
_LEFTOVERS = ("{{", "}}", "{|", "|}", "'''", "''")  # unbalanced markup; bold/italic quotes

# Link prefixes whose links are not prose (removed with their caption).
_DROP_PREFIXES = frozenset({"file", "image", "media", "category"})
_LANG_PREFIX = re.compile(r"^[a-z]{2,3}(?:-[a-z]{2,8})*$")
_MAX_NESTING = 20  # nested templates / links deeper than this are left as-is (never seen)


def _link_text(match: re.Match) -> str:
    inner = match.group(1)
    target, bar, label = inner.partition("|")
    prefix, colon, _ = target.partition(":")
    if colon:
        prefix = prefix.strip().lower()
        if prefix in _DROP_PREFIXES:
            return ""
        if not bar and _LANG_PREFIX.match(prefix):
            return ""  # interlanguage link such as [[de:Anarchismus]]
    if bar:
        return label.rsplit("|", 1)[-1] if "|" in label else label
    return target.lstrip(":")


def _remove_nested(pattern: re.Pattern, text: str, repl="") -> str:
    for _ in range(_MAX_NESTING):
        text, n = pattern.subn(repl, text)
        if not n:
            break
    return text


def strip_wikitext(wikitext: str) -> str:
    """Plain prose of one page's wikitext (see module docstring for what is removed/kept)."""
    text = _COMMENT.sub("", wikitext)
    if "<" in text:
        text = _REF.sub("", text)
        text = _DROP_BLOCKS.sub("", text)
    if "{{" in text:
        text = _remove_nested(_TEMPLATE, text)
    if "{|" in text:
        text = _remove_nested(_TABLE, text)
    if "[[" in text:
        text = _PLAIN_LINK.sub(r"\1", _PIPED_LINK.sub(r"\1", text))
        if "[[" in text:
            text = _remove_nested(_LINK, text, _link_text)
    if "[" in text:
        text = _EXT_LINK.sub(r"\1", text)
    if "//" in text:
        text = _URL.sub("", text)
    text = _TAG.sub("", text)
    text = _HEADING.sub(r"\n\1", "\n" + text)
    text = _LIST_MARKERS.sub("\n", text)
    if "----" in text:
        text = _RULE.sub("\n", text)
    text = text[1:]  # the "\n" added for the line-start patterns
    if "__" in text:
        text = _MAGIC_WORD.sub("", text)
    for leftover in _LEFTOVERS:
        text = text.replace(leftover, "")
    if "&" in text:
        text = html.unescape(text)
        if "<" in text:  # entity-escaped markup (e.g. &lt;br&gt; in the source)
            text = _TAG.sub("", text)
    return text


class WikitextStripper:
    """Callable stage: a :data:`DOCUMENT_SCHEMA` batch in, the same batch with ``text`` made plain
    (rows with ``wikitext`` true stripped, others unchanged, ``wikitext`` set false). Rows in ==
    rows out."""

    def __call__(self, batch: pa.RecordBatch | pa.Table) -> pa.RecordBatch | pa.Table:
        texts = batch.column("text").to_pylist()
        flags = batch.column("wikitext").to_pylist()
        plain = [strip_wikitext(t) if f and t else t for t, f in zip(texts, flags)]
        columns = {name: batch.column(name) for name in DOCUMENT_SCHEMA.names}
        columns["text"] = pa.array(plain, pa.string())
        columns["wikitext"] = pa.array([False] * len(plain), pa.bool_())
        cls = pa.Table if isinstance(batch, pa.Table) else pa.RecordBatch
        return cls.from_arrays(list(columns.values()), schema=DOCUMENT_SCHEMA)
