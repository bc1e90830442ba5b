"""Benchmark: web-archive pool extraction, pairs/s/core and MB/s/core, WARC and WAT.

    PYTHONPATH=. nice -n 10 python bench/bench_webpool.py [--mb 200] [--warc iana.warc.gz]

Input: pywb's real sample WARC (``iana.warc.gz``, from the sample data or fetched like the tests do) concatenated with
itself to >= ``--mb`` MB (gzip members concatenate into a valid WARC), and a WAT made from it by
:mod:`curation.web.wat`, repeated likewise. One process = one core: :func:`extract_file` over the
whole file, all work included (gzip, WARC framing, HTTP split, charset, HTML parse, URL
resolution, hashing, Arrow tables). The comparison — warcio + the standard library's
``html.parser`` doing the same page → (url, alt) work — runs on a ``--compare-mb`` slice.

Anchor: one Common Crawl snapshot ≈ 90,000 WAT files ≈ 20 TB gzipped WAT (the issue's figures,
from Common Crawl's monthly crawl announcements; not re-checked offline here); cc2dataset's
README: one WAT in about 50 s on one core, 5M WAT files → 70k core-hours.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from curation.web.wat import warc_to_wat  # noqa: E402
from curation.web.webpool import extract_file  # noqa: E402

SNAPSHOT_WAT_BYTES = 20e12  # ≈ 20 TB gzipped WAT per snapshot (issue 13's figure)
SNAPSHOT_WAT_FILES = 90_000  # ≈ WAT files per snapshot (issue 13's figure)
CC2DATASET_S_PER_WAT = 50  # cc2dataset README: "process one warc in about 50s" (5M WAT → 70k core-hours)


def repeated(src: Path, dest: Path, megabytes: float) -> int:
    """Write ``src`` concatenated until ``dest`` holds >= ``megabytes`` MB; return its bytes."""
    data = src.read_bytes()
    copies = max(1, int(megabytes * 1e6 // len(data)) + 1)
    with open(dest, "wb") as f:
        for _ in range(copies):
            f.write(data)
    return copies * len(data)


class _Imgs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.base, self.imgs = None, []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "base" and self.base is None:
            self.base = attrs.get("href")
        elif tag == "img":
            self.imgs.append(attrs)


def warcio_pairs(path: Path) -> int:
    """The comparison reader: warcio + html.parser, pairs with a src and a non-empty alt."""
    from warcio.archiveiterator import ArchiveIterator

    pairs = 0
    with open(path, "rb") as f:
        for record in ArchiveIterator(f):
            ctype = record.http_headers.get_header("Content-Type", "") if record.http_headers else ""
            if record.rec_type != "response" or not ctype.startswith("text/html"):
                continue
            parser = _Imgs()
            parser.feed(record.content_stream().read().decode("utf-8", "replace"))
            page = record.rec_headers.get_header("WARC-Target-URI")
            base = urljoin(page, parser.base) if parser.base else page
            pairs += sum(1 for a in parser.imgs if a.get("src") and (a.get("alt") or "").strip()
                         and urljoin(base, a["src"]))
    return pairs


def timed(label: str, size: int, fn) -> tuple[float, float]:
    started = time.process_time()
    pairs = fn()
    seconds = time.process_time() - started
    print(f"{label:34s} {size / 1e6:8.1f} MB  {pairs:9d} pairs  {seconds:7.2f} s CPU  "
          f"{size / 1e6 / seconds:7.2f} MB/s/core  {pairs / seconds:9.0f} pairs/s/core", flush=True)
    return size / seconds, pairs / seconds


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--warc", type=Path, default=None, help="sample WARC (default: pywb's iana.warc.gz)")
    p.add_argument("--mb", type=float, default=200, help="repeat the samples to at least this many MB")
    p.add_argument("--compare-mb", type=float, default=20, help="MB for the warcio + html.parser comparison")
    args = p.parse_args(argv)
    if args.warc is None:
        from tests.curation.web.test_webpool import iana_warc_path

        args.warc = iana_warc_path()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        warc_to_wat(str(args.warc), str(tmp / "one.wat.gz"))
        warc_size = repeated(args.warc, tmp / "big.warc.gz", args.mb)
        wat_size = repeated(tmp / "one.wat.gz", tmp / "big.wat.gz", args.mb)
        small_size = repeated(args.warc, tmp / "small.warc.gz", args.compare_mb)
        timed("WARC fastwarc + resiliparse", warc_size, lambda: extract_file(str(tmp / "big.warc.gz"), "warc").pairs.num_rows)
        wat_rate, _ = timed("WAT  fastwarc + json", wat_size, lambda: extract_file(str(tmp / "big.wat.gz"), "wat").pairs.num_rows)
        fast, _ = timed("WARC fastwarc + resiliparse (slice)", small_size, lambda: extract_file(str(tmp / "small.warc.gz"), "warc").pairs.num_rows)
        slow, _ = timed("WARC warcio + html.parser (slice)", small_size, lambda: warcio_pairs(tmp / "small.warc.gz"))
    print(f"fastwarc+resiliparse / warcio+html.parser: {fast / slow:.2f}x")
    core_hours = SNAPSHOT_WAT_BYTES / wat_rate / 3600
    anchor = SNAPSHOT_WAT_FILES * CC2DATASET_S_PER_WAT / 3600
    print(f"one snapshot's WAT (≈ {SNAPSHOT_WAT_BYTES / 1e12:.0f} TB gzipped): ≈ {core_hours:,.0f} core-hours "
          f"at {wat_rate / 1e6:.2f} MB/s/core; cc2dataset's 50 s/WAT x {SNAPSHOT_WAT_FILES:,} files = "
          f"{anchor:,.0f} core-hours (incl. its S3 download + dedup): ratio {anchor / core_hours:.1f}x")


if __name__ == "__main__":
    main()
