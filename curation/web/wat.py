"""Write a WAT file from a WARC file, in Common Crawl's WAT JSON layout (the subset readers use).

No package ships a WAT sample, so tests and the benchmark make one from a real WARC. Built with
``warcio`` and the standard library's ``html.parser`` — deliberately not the fastwarc/lexbor path
of :mod:`curation.web.webpool`, so a WAT read back is an independent check of the reader.

Each WARC record becomes one ``metadata`` record (``Content-Type: application/json``,
``WARC-Refers-To`` = the source record id) whose JSON is, as in Common Crawl's WAT files
(webarchive-commons ``WATExtractorOutput``)::

    {"Container": {"Filename": ..., "Compressed": true},
     "Envelope": {"Format": "WARC", "WARC-Header-Length": "...",
       "WARC-Header-Metadata": {"WARC-Type": ..., "WARC-Target-URI": ..., "WARC-Record-ID": ...},
       "Payload-Metadata": {"Actual-Content-Type": "application/http; msgtype=response",
         "HTTP-Response-Metadata": {"Response-Message": {"Version": ..., "Status": ..., "Reason": ...},
           "Headers": {...},
           "HTML-Metadata": {"Head": {"Title": ..., "Base": ...},
                             "Links": [{"path": "IMG@/src", "url": <raw attribute>, "alt": ..., "title": ...},
                                       {"path": "A@/href", "url": ...}, ...]}}}}}

``HTML-Metadata`` is present only for ``text/html`` payloads; link URLs are the raw attribute
values (Common Crawl does not resolve them; ``Head.Base`` carries ``<base href>``).
"""

from __future__ import annotations

import codecs
import io
import json
import re
from html.parser import HTMLParser

from warcio.archiveiterator import ArchiveIterator
from warcio.warcwriter import WARCWriter


class _LinkParser(HTMLParser):
    """Collects ``<title>``, ``<base href>`` and ``img``/``a`` links like the WAT extractor."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.head: dict[str, str] = {}
        self.links: list[dict[str, str]] = []
        self._in_title = False

    def handle_starttag(self, tag, attrs):
        attrs = {k: v for k, v in reversed(attrs) if v is not None}  # first occurrence wins
        if tag == "title":
            self._in_title = True
        elif tag == "base" and "href" in attrs and "Base" not in self.head:
            self.head["Base"] = attrs["href"]
        elif tag == "img" and "src" in attrs:
            link = {"path": "IMG@/src", "url": attrs["src"]}
            link.update({k: attrs[k] for k in ("alt", "title") if k in attrs})
            self.links.append(link)
        elif tag == "a" and "href" in attrs:
            self.links.append({"path": "A@/href", "url": attrs["href"]})

    def handle_endtag(self, tag):
        if tag == "title":
            self._in_title = False

    def handle_data(self, data):
        if self._in_title:
            self.head["Title"] = self.head.get("Title", "") + data


def _charset(content_type: str, body: bytes) -> str:
    """The HTTP header's charset, else the first ``charset=`` in the page's first 1024 bytes."""
    for param in content_type.split(";")[1:]:
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset":
            return value.strip().strip("\"'")
    found = re.search(rb"charset=[\"']?([A-Za-z0-9_-]+)", body[:1024])
    try:
        return codecs.lookup(found.group(1).decode()).name if found else "utf-8"
    except LookupError:
        return "utf-8"


def wat_envelope(record, filename: str) -> dict:
    """The WAT JSON of one warcio record (see the module docstring)."""
    headers = dict(record.rec_headers.headers)
    envelope = {"Format": "WARC", "WARC-Header-Metadata": headers}
    if record.rec_type == "response" and record.http_headers is not None:
        http = record.http_headers
        status, _, reason = http.statusline.partition(" ")
        response = {"Response-Message": {"Version": http.protocol, "Status": status, "Reason": reason},
                    "Headers": dict(http.headers)}
        content_type = http.get_header("Content-Type") or ""
        body = record.content_stream().read()
        if content_type.split(";")[0].strip().lower() == "text/html":
            parser = _LinkParser()
            parser.feed(body.decode(_charset(content_type, body), errors="replace"))
            parser.close()
            response["HTML-Metadata"] = {"Head": parser.head, "Links": parser.links}
        envelope["Payload-Metadata"] = {"Actual-Content-Type": "application/http; msgtype=response",
                                        "HTTP-Response-Metadata": response}
    return {"Container": {"Filename": filename, "Compressed": True},
            "Envelope": envelope}


def warc_to_wat(warc_path: str, wat_path: str) -> int:
    """Write ``wat_path`` (gzip per record) from ``warc_path``; return the records written."""
    written = 0
    with open(warc_path, "rb") as src, open(wat_path, "wb") as dst:
        writer = WARCWriter(dst, gzip=True)
        iterator = ArchiveIterator(src)
        for record in iterator:
            # (warcio's get_record_offset() would consume the record here: no Offset field)
            envelope = wat_envelope(record, warc_path.rsplit("/", 1)[-1])
            payload = json.dumps(envelope, ensure_ascii=False).encode("utf-8")
            target = record.rec_headers.get_header("WARC-Target-URI") or ""
            out = writer.create_warc_record(
                target.strip("<>"), "metadata", payload=io.BytesIO(payload), warc_content_type="application/json",
                warc_headers_dict={"WARC-Refers-To": record.rec_headers.get_header("WARC-Record-ID") or ""})
            writer.write_record(out)
            written += 1
    return written
