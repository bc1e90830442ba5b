"""Streaming reader for MediaWiki ``pages-articles`` XML dumps (.xml, .bz2, multistream .bz2).

The dump is read as a stream (expat through ``xml.etree.ElementTree.iterparse``, each ``<page>``
cleared once read), so memory stays flat whatever the dump size. Python's ``bz2`` reads
concatenated streams, so the ``-multistream`` dumps work unchanged.

Kept: pages in namespace 0 that are not redirects. Everything else is counted, by reason, in
:class:`DumpStats` (``pages == articles + redirects + other_namespace``).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pyarrow as pa

from storage.files import is_input_file, open_input

# One schema for every document batch, whatever its source (dump or plain-text corpus).
DOCUMENT_SCHEMA = pa.schema(
    [
        ("source", pa.string()),  # file the document came from
        ("doc_id", pa.string()),  # page id (dumps) or key (plain-text corpora)
        ("title", pa.string()),
        ("text", pa.string()),  # raw wikitext or plain text
        ("wikitext", pa.bool_()),  # True: `text` is wikitext still to be stripped
    ]
)


class WikiDumpError(ValueError):
    """A dump that cannot be read; the message names the file and what is wrong."""


@dataclass
class DumpStats:
    """What a dump held: every ``<page>`` lands in exactly one of the last three counters."""

    pages: int = 0  # <page> elements seen
    articles: int = 0  # namespace 0, not a redirect: kept
    redirects: int = 0  # namespace 0 redirects: dropped
    other_namespace: int = 0  # talk, user, file, category, ... pages: dropped
    wikitext_bytes: int = 0  # UTF-8 bytes of the kept articles' wikitext

    def dropped(self) -> dict[str, int]:
        """Dropped pages by reason (the stage's reject counts)."""
        return {"redirect": self.redirects, "other_namespace": self.other_namespace}


def open_dump(path: str | Path) -> IO[bytes]:
    """Open a dump (local path or URI) for reading bytes, decompressing .bz2 / .gz by extension."""
    return open_input(str(path))


def _local(tag: str) -> str:
    """``{namespace}page`` -> ``page``."""
    return tag.rsplit("}", 1)[-1]


def iter_pages(path: str | Path, stats: DumpStats | None = None) -> Iterator[tuple[str, str, str]]:
    """Yield ``(page_id, title, wikitext)`` for every namespace-0, non-redirect page of a dump.

    ``stats`` (optional) is filled as the dump is read. Raises :class:`WikiDumpError`, naming the
    file, for a missing file, a truncated or corrupt compressed stream, a file that is not XML,
    and a dump with no ``<page>`` at all.
    """
    stats = stats if stats is not None else DumpStats()
    path = str(path)
    if not is_input_file(path):
        raise WikiDumpError(f"{path}: no such dump file")
    try:
        with open_dump(path) as stream:
            if not stream.peek(1):
                raise WikiDumpError(f"{path}: empty dump (no data)")
            yield from _iter_pages_stream(stream, stats)
    except EOFError as err:
        raise WikiDumpError(f"{path}: truncated compressed dump ({err})") from err
    except OSError as err:
        raise WikiDumpError(f"{path}: corrupt or unreadable dump ({err})") from err
    except ET.ParseError as err:
        raise WikiDumpError(f"{path}: not a well-formed MediaWiki XML dump ({err})") from err
    if stats.pages == 0:
        raise WikiDumpError(f"{path}: empty dump (no <page> elements)")


def _iter_pages_stream(stream: IO[bytes], stats: DumpStats) -> Iterator[tuple[str, str, str]]:
    ns = page_id = title = text = None
    redirect = False
    depth = 0  # inside <page>: 1, inside <revision>: 2, ...
    root = None
    for event, elem in ET.iterparse(stream, events=("start", "end")):
        if root is None:
            root = elem
            if _local(elem.tag) != "mediawiki":
                raise ET.ParseError(f"root element is <{_local(elem.tag)}>, expected <mediawiki>")
        tag = _local(elem.tag)
        if event == "start":
            if tag == "page":
                depth, ns, page_id, title, text, redirect = 1, None, None, None, None, False
            elif depth:
                depth += 1
            continue
        if not depth:
            continue
        depth -= 1
        if tag == "ns" and depth == 1:
            ns = elem.text
        elif tag == "id" and depth == 1:
            page_id = elem.text
        elif tag == "title" and depth == 1:
            title = elem.text
        elif tag == "redirect" and depth == 1:
            redirect = True
        elif tag == "text":
            text = elem.text or ""
        elif tag == "page":
            stats.pages += 1
            if ns != "0":
                stats.other_namespace += 1
            elif redirect:
                stats.redirects += 1
            else:
                stats.articles += 1
                stats.wikitext_bytes += len(text.encode("utf-8")) if text else 0
                yield page_id or "", title or "", text or ""
            root.clear()  # drop the finished page (and anything before it) from memory


def iter_dump_batches(
    path: str | Path, batch_size: int = 256, stats: DumpStats | None = None
) -> Iterator[pa.RecordBatch]:
    """The articles of one dump as :data:`DOCUMENT_SCHEMA` record batches of ``batch_size`` pages."""
    rows: list[tuple[str, str, str]] = []
    for row in iter_pages(path, stats):
        rows.append(row)
        if len(rows) >= batch_size:
            yield _to_batch(str(path), rows, wikitext=True)
            rows = []
    if rows:
        yield _to_batch(str(path), rows, wikitext=True)


def _to_batch(source: str, rows: list[tuple[str, str, str]], wikitext: bool) -> pa.RecordBatch:
    ids, titles, texts = zip(*rows)
    return pa.RecordBatch.from_arrays(
        [
            pa.array([source] * len(rows), pa.string()),
            pa.array(ids, pa.string()),
            pa.array(titles, pa.string()),
            pa.array(texts, pa.string()),
            pa.array([wikitext] * len(rows), pa.bool_()),
        ],
        schema=DOCUMENT_SCHEMA,
    )
