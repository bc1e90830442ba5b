"""Respectful fetching: robots.txt (through the guard, cached, Crawl-delay), our User-Agent, the
opt-out ledger — in the guarded opener and end to end inside img2dataset's workers."""

from __future__ import annotations

import hashlib
import threading
import time
import urllib.error

import pyarrow as pa
import pytest

from curation.images.download import DownloadConfig, download, download_reject_reason
from curation.images.fetch import build_guarded_opener
from storage.layout import RunLayout
from curation.images.robots import OptOutLedger, RespectConfig
from curation.images.urlguard import UrlGuardConfig
from pipelines.demo.serve_images import ImageRequestHandler, serving
from tests.curation.images.conftest import textured_png

ROBOTS = b"User-agent: *\nDisallow: /private/\nCrawl-delay: 1\n"
LOOPBACK = UrlGuardConfig(allow_networks=("127.0.0.1",))


class LoggingHandler(ImageRequestHandler):
    """Records (path, User-Agent, monotonic time) of every request."""

    log: list[tuple[str, str, float]] = []
    lock = threading.Lock()

    def do_GET(self):
        with LoggingHandler.lock:
            LoggingHandler.log.append((self.path, self.headers.get("User-Agent", ""), time.monotonic()))
        super().do_GET()


@pytest.fixture
def robots_site(tmp_path):
    """(base URL, files): robots.txt disallowing /private/ with Crawl-delay 1, and images."""
    root = tmp_path / "site"
    files = {"robots.txt": ROBOTS, "img/a.png": textured_png(1), "img/b.png": textured_png(2),
             "private/c.png": textured_png(3), "listed/d.png": textured_png(4), "img/hashed.png": textured_png(5)}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    LoggingHandler.log = []
    with serving(root, port=0, handler=LoggingHandler) as base:
        yield base, files


def _paths() -> list[str]:
    return [path for path, _, _ in LoggingHandler.log]


def test_opener_honours_robots_crawl_delay_and_sends_our_user_agent(robots_site):
    base, files = robots_site
    config = RespectConfig(contact_url="https://example.org/contact")
    opener = build_guarded_opener(LOOPBACK, config)
    assert opener.open(f"{base}/img/a.png", timeout=5).read() == files["img/a.png"]
    with pytest.raises(urllib.error.URLError, match="robots_disallowed"):
        opener.open(f"{base}/private/c.png", timeout=5)
    assert opener.open(f"{base}/img/b.png", timeout=5).read() == files["img/b.png"]
    assert _paths() == ["/robots.txt", "/img/a.png", "/img/b.png"]  # robots.txt once; /private never
    times = {path: t for path, _, t in LoggingHandler.log}
    assert times["/img/b.png"] - times["/img/a.png"] >= 0.95  # Crawl-delay: 1
    assert {ua for _, ua, _ in LoggingHandler.log} == {"openwit/1.0 (+https://example.org/contact)"}


def test_ignore_robots_fetches_disallowed_paths(robots_site):
    base, files = robots_site
    opener = build_guarded_opener(LOOPBACK, RespectConfig(robots=False))
    assert opener.open(f"{base}/private/c.png", timeout=5).read() == files["private/c.png"]
    assert _paths() == ["/private/c.png"]


def test_robots_txt_4xx_allows_and_unreachable_disallows(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(textured_png(1))
    with serving(tmp_path, port=0) as base:  # no robots.txt: 404 → everything allowed
        assert build_guarded_opener(LOOPBACK, RespectConfig()).open(f"{base}/img/a.png", timeout=5).read()
    with pytest.raises(urllib.error.URLError, match="robots_unavailable"):  # server gone
        build_guarded_opener(LOOPBACK, RespectConfig()).open(f"{base}/img/a.png", timeout=5)


def test_ledger_parsing_and_domain_matching(tmp_path):
    digest = hashlib.sha256(b"x").hexdigest()
    path = tmp_path / "ledger.txt"
    path.write_text(f"# publishers who opted out\nexample.org\nhttps://cdn.example.net/private/  # prefix\n{digest}\n")
    ledger = OptOutLedger.read(str(path))
    assert ledger.hashes == {digest}
    assert ledger.url_refusal("http://img.example.org/a.png")  # subdomain of a listed domain
    assert ledger.url_refusal("https://cdn.example.net/private/a.png")
    assert ledger.url_refusal("https://cdn.example.net/public/a.png") is None
    assert ledger.url_refusal("https://notexample.org/a.png") is None


def test_download_stage_counts_every_refusal_and_never_requests_refused_urls(robots_site, tmp_path):
    base, files = robots_site
    ledger = tmp_path / "ledger.txt"
    ledger.write_text(f"{base}/listed/\n{hashlib.sha256(files['img/hashed.png']).hexdigest()}\n")
    urls = [f"{base}/img/a.png", f"{base}/private/c.png", f"{base}/listed/d.png", f"{base}/img/hashed.png"]
    rows = pa.table({"uid": [f"u{i}" for i in range(len(urls))], "url": urls})
    config = DownloadConfig(processes=1, threads=2, retry_pass=False, distributor="multiprocessing",
                            respect=RespectConfig(opt_out_ledger=str(ledger)))
    ok, rejected = download(rows, RunLayout(str(tmp_path / "run")), 0, 0, config, LOOPBACK)
    assert ok.column("uid").to_pylist() == ["u0"]
    reasons = dict(zip(rejected.column("uid").to_pylist(), rejected.column("reason").to_pylist()))
    assert reasons == {"u1": "robots_disallowed", "u2": "opted_out", "u3": "opted_out"}
    assert len(ok) + len(rejected) == len(rows)
    assert "/private/c.png" not in _paths() and "/listed/d.png" not in _paths()
    assert _paths().count("/robots.txt") == 1 and "/img/hashed.png" in _paths()  # the hash is checked after


def test_reject_reason_mapping():
    assert download_reject_reason("<urlopen error robots_disallowed: http://x/ disallowed>") == "robots_disallowed"
    assert download_reject_reason("<urlopen error opted_out: domain x listed>") == "opted_out"
