"""Pool extraction from web archives: real WARCs (pywb's sample, a wget crawl of a loopback
site), a WAT made from that crawl, bad input, and Ray == Beam bytes."""

from __future__ import annotations

import functools
import gzip
import http.server
import io
import subprocess
import tempfile
import threading
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from warcio.archiveiterator import ArchiveIterator
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from curation.text.pool import conform_pool
from curation.web.wat import warc_to_wat
from curation.web.webpool import WebPoolConfig, WebPoolError, extract_file, write_file_part, write_stats

def iana_warc_path() -> Path:
    """pywb's real sample WARC: the data dir's (``make sample-data`` fetches it) when there, else
    fetched from the pywb wheel into a temp cache (tests never write into the data dir)."""
    from pipelines.demo.sample_data import data_dir, wheel_file

    root = data_dir()
    if not (root / "web" / "iana.warc.gz").exists():
        root = Path(tempfile.gettempdir()) / "openwit-wheels"
    return wheel_file("iana_warc", root)


@pytest.fixture(scope="session")
def iana_warc() -> Path:
    path = iana_warc_path()
    assert path.stat().st_size == 786_828
    return path


class _ImgParser(HTMLParser):
    def __init__(self):
        super().__init__()
        self.base, self.imgs = None, []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "base" and self.base is None and attrs.get("href"):
            self.base = attrs["href"]
        if tag == "img":
            self.imgs.append(attrs)


def straightforward_pairs(path: Path) -> tuple[int, int, list[tuple[str, str, str]]]:
    """(html pages, <img>s, [(page, url, alt)]) by warcio + html.parser, for pages with src+alt."""
    pages, imgs, pairs = 0, 0, []
    with open(path, "rb") as f:
        for record in ArchiveIterator(f):
            ctype = record.http_headers.get_header("Content-Type", "") if record.http_headers else ""
            if record.rec_type != "response" or not ctype.startswith("text/html"):
                continue
            pages += 1
            parser = _ImgParser()
            parser.feed(record.content_stream().read().decode("utf-8", "replace"))
            imgs += len(parser.imgs)
            page = record.rec_headers.get_header("WARC-Target-URI")
            base = urljoin(page, parser.base) if parser.base else page
            seen = set()
            for attrs in parser.imgs:
                alt = " ".join((attrs.get("alt") or "").split())
                if alt and attrs.get("src") and (urljoin(base, attrs["src"]), alt) not in seen:
                    seen.add((urljoin(base, attrs["src"]), alt))
                    pairs.append((page, urljoin(base, attrs["src"]), alt))
    return pages, imgs, pairs


def _pairs(table: pa.Table) -> list[tuple[str, str, str]]:
    return list(zip(*(table.column(c).to_pylist() for c in ("page_url", "url", "text"))))


def test_iana_warc_matches_a_straightforward_parse(iana_warc):
    pages, imgs, expected = straightforward_pairs(iana_warc)
    assert (pages, imgs, len(expected)) == (20, 32, 16)  # the counts stated in the issue
    result = extract_file(str(iana_warc), "warc")
    assert _pairs(result.pairs) == expected
    assert result.images.rows_in == 32 and result.images.rejected == {"no_alt": 16}
    kept_pages = result.records.rows_out + result.records.rejected["http_status"]
    assert kept_pages == 20  # 4 of the 20 HTML responses are non-2xx (no <img> on them)
    assert result.records.rows_in == 343  # every record, counted by the iterator


# ---------- a wget crawl of a loopback site with known <img alt>s ----------

SITE = {
    "index.html": b"""<html><head><title>Home</title></head><body>
<img src="img/cat.png" alt="A cat">
<img src="/img/dog.png" alt="  A   dog ">
<img src="img/cat.png" alt="A cat">
<img src="data:image/png;base64,iVBORw0KGgo=" alt="inline">
<img src="img/noalt.png">
<img srcset="img/small.png 1x, img/big.png 2x" alt="Set">
<picture><source srcset="img/pic.webp 1x"><img alt="Pictured"></picture>
<img src="javascript:void(0)" alt="js">
<a href="sub/page.html">sub</a> <a href="latin.html">latin</a> <a href="broken.html">broken</a>
</body></html>""",
    "sub/page.html": b"""<html><head><base href="/assets/"></head><body>
<img src="rel.png" alt="Based" title="T">
<img src="https://example.org/abs.png" alt="Absolute"></body></html>""",
    "latin.html": '<html><head><meta charset="iso-8859-1"></head><body>'
                  '<img src="cafe.png" alt="Caf\xe9 cr\xe8me"></body></html>'.encode("iso-8859-1"),
    "broken.html": b"""<html><body><p><img src=broken.png alt=Unquoted><div><table><td>
<img alt="Second" src=y.png/><img src="x.png" alt="Inside unclosed div">""",
}


def _expected(host: str, wat: bool) -> list[tuple[str, str, str]]:
    index, sub, latin, broken = (f"{host}/{p}" for p in ("index.html", "sub/page.html", "latin.html", "broken.html"))
    pairs = [(index, f"{host}/img/cat.png", "A cat"), (index, f"{host}/img/dog.png", "A dog")]
    if not wat:  # WAT links are IMG@/src only: no srcset, no <picture> source
        pairs += [(index, f"{host}/img/small.png", "Set"), (index, f"{host}/img/pic.webp", "Pictured")]
    pairs += [(sub, f"{host}/assets/rel.png", "Based"), (sub, "https://example.org/abs.png", "Absolute"),
              (latin, f"{host}/cafe.png", "Caf\xe9 cr\xe8me"),
              (broken, f"{host}/broken.png", "Unquoted"), (broken, f"{host}/y.png/", "Second"),
              (broken, f"{host}/x.png", "Inside unclosed div")]
    return sorted(pairs)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def crawl(tmp_path_factory) -> tuple[Path, str]:
    """(WARC path, site root URL): ``wget --warc-file`` over the SITE served on 127.0.0.1."""
    root = tmp_path_factory.mktemp("site")
    for name, body in SITE.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(body)
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host = f"http://127.0.0.1:{server.server_address[1]}"
    work = tmp_path_factory.mktemp("wget")
    try:
        subprocess.run(["wget", "-q", "-r", "-l", "3", "-e", "robots=off", "--no-proxy", "--delete-after",
                        "-P", str(work), f"--warc-file={work}/crawl", f"{host}/index.html"], check=False, timeout=60)
    finally:
        server.shutdown()
        server.server_close()
    warc = work / "crawl.warc.gz"
    assert warc.stat().st_size > 0
    return warc, host


def test_wget_crawl_gives_exactly_the_known_pairs(crawl):
    warc, host = crawl
    result = extract_file(str(warc), "warc")
    assert sorted(_pairs(result.pairs)) == _expected(host, wat=False)
    assert result.images.rejected == {"data_uri": 1, "no_alt": 1, "bad_url": 1, "duplicate_on_page": 1}
    assert result.images.rows_in == 14 and result.records.rows_out == 4
    assert set(result.pairs.column("source").to_pylist()) == {"warc"}
    titles = dict(zip(result.pairs.column("text").to_pylist(), result.pairs.column("title").to_pylist()))
    assert titles["Based"] == "T"


def test_wat_from_the_crawl_gives_the_hand_written_pairs(crawl, tmp_path):
    warc, host = crawl
    wat = tmp_path / "crawl.wat.gz"
    warc_to_wat(str(warc), str(wat))
    result = extract_file(str(wat), "wat")
    assert sorted(_pairs(result.pairs)) == _expected(host, wat=True)
    assert result.images.rows_in == 12  # IMG@/src links on the 4 pages
    assert result.images.rejected == {"data_uri": 1, "no_alt": 1, "bad_url": 1, "duplicate_on_page": 1}
    warc_ids = set(extract_file(str(warc), "warc").pairs.column("warc_record_id").to_pylist())
    assert set(result.pairs.column("warc_record_id").to_pylist()) == warc_ids  # the source record ids


def test_uid_is_the_pool_readers_hash(crawl):
    pairs = extract_file(str(crawl[0]), "warc").pairs
    rehashed = conform_pool(pairs.drop_columns(["uid"]), "crawl")
    assert rehashed.column("uid").to_pylist() == pairs.column("uid").to_pylist()


# ---------- bad input ----------

def _warc_with_html(path: Path, html: bytes) -> None:
    with open(path, "wb") as f:
        writer = WARCWriter(f, gzip=True)
        headers = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8")], protocol="HTTP/1.1")
        writer.write_record(writer.create_warc_record("http://example.org/big", "response",
                                                      payload=io.BytesIO(html), http_headers=headers))


def test_truncated_gzip_member_is_a_counted_reject(iana_warc, tmp_path):
    cut = tmp_path / "cut.warc.gz"
    cut.write_bytes(iana_warc.read_bytes()[:400_000])
    result = extract_file(str(cut), "warc")
    assert result.records.rejected["truncated_record"] == 1
    assert result.records.rows_in == result.records.rows_out + sum(result.records.rejected.values())


def test_non_warc_file_and_corrupt_member_are_errors_naming_the_file(iana_warc, tmp_path):
    bad = tmp_path / "notes.warc.gz"
    bad.write_bytes(gzip.compress(b"this is a text file, not a WARC\n" * 100))
    with pytest.raises(WebPoolError, match="notes.warc.gz"):
        extract_file(str(bad), "warc")
    data = bytearray(iana_warc.read_bytes())
    for i in range(300_000, 300_400):  # flip bits inside one gzip member
        data[i] ^= 0x5A
    corrupt = tmp_path / "corrupt.warc.gz"
    corrupt.write_bytes(bytes(data))
    with pytest.raises(WebPoolError, match=r"corrupt.warc.gz.*after \d+ records"):
        extract_file(str(corrupt), "warc")


def test_50mb_page_and_100kb_alt_are_counted_rejects(tmp_path):
    big = tmp_path / "big.warc.gz"
    _warc_with_html(big, b"<html><body>" + b"<p>filler</p>" * (50 * 2**20 // 13) + b"</body></html>")
    result = extract_file(str(big), "warc")
    assert result.records.rejected == {"page_too_large": 1} and result.images.rows_in == 0
    long_alt = tmp_path / "alt.warc.gz"
    _warc_with_html(long_alt, b'<img src="a.png" alt="' + b"x" * 100_000 + b'"><img src="b.png" alt="ok">')
    result = extract_file(str(long_alt), "warc", WebPoolConfig())
    assert result.images.rejected == {"alt_too_long": 1} and result.pairs.column("text").to_pylist() == ["ok"]


# ---------- engines ----------

@pytest.mark.ray
def test_ray_and_beam_write_the_same_bytes(ray_session, iana_warc, crawl, tmp_path):
    from pipelines.webpool_beam import run_beam
    from pipelines.webpool_ray import run_ray

    files = [str(iana_warc), str(crawl[0])]
    ray_stats = run_ray(files, "warc", str(tmp_path / "ray"))
    beam_stats = run_beam(files, "warc", str(tmp_path / "beam"))
    assert {k: vars(v) for k, v in ray_stats.items()} == {k: vars(v) for k, v in beam_stats.items()}
    names = sorted(p.relative_to(tmp_path / "ray") for p in (tmp_path / "ray").rglob("*") if p.is_file())
    assert len([n for n in names if n.parts[0] == "pairs"]) == 2
    for name in names:
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "beam" / name).read_bytes(), name
    assert pq.read_table(tmp_path / "ray" / "pairs").num_rows == ray_stats["webpool"].rows_out
    again = write_file_part(files[0], 0, "warc", str(tmp_path / "ray"))  # done marker: not redone
    assert again["webpool"]["out"] == 16
    with pytest.raises(FileExistsError, match="part-00001.parquet"):  # a leftover part of more files
        write_stats(str(tmp_path / "ray"), files[:1])


def test_build_wit_from_warc_builds_the_pool_first(crawl, tmp_path):
    import numpy as np

    from pipelines import build_wit

    queries = tmp_path / "queries.parquet"
    pq.write_table(pa.table({"query_id": np.arange(3), "query": ["Absolute", "cat", "dog"]}), queries)
    summary = build_wit.run(["--warc", str(crawl[0]), "--queries", str(queries), "--out", str(tmp_path / "run"),
                             "--until", "select", "--runner", "beam", "--language", "", "--parts", "1"])
    assert (tmp_path / "run" / "pool" / "stats" / "webpool.json").exists()
    selected = pq.read_table(tmp_path / "run" / "curation" / "selected")
    assert sorted(selected.column("text").to_pylist()) == ["A cat", "A dog", "Absolute"]
    assert summary["stages"]["read"]["in"] == 10  # the 10 pairs of the crawl
