"""Fetching that is safe to point at the web: per-host turns (rate, concurrency, Retry-After,
backoff, circuit breaker) shared by every worker, hard per-request deadlines and a maximum body
size whatever the server does, and the image filters (minimum size, aspect ratio)."""

from __future__ import annotations

import contextlib
import http.server
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pytest

from curation.images.check import ImageCheckConfig, check_image
from curation.images.download import DownloadConfig, download, download_reject_reason
from curation.images.politeness import HostBook, LocalLimiter, PolitenessConfig, parse_retry_after
from curation.images.robots import RespectConfig
from curation.images.urlguard import UrlGuardConfig
from storage.layout import RunLayout
from tests.curation.images.conftest import textured_png

LOOPBACK = UrlGuardConfig(allow_networks=("127.0.0.0/8",))
IMAGE = textured_png(7)


# -- the limiter's rules (no network) ---------------------------------------------------------

def test_turns_are_spaced_by_the_rate_and_capped_by_concurrency():
    book = HostBook(PolitenessConfig(host_rate=2, host_concurrency=2))
    assert book.acquire("a.example", 0.0, now=100.0) == ("go", 0.0)
    assert book.acquire("a.example", 0.0, now=100.0) == ("go", 0.5)  # 1/rate later
    assert book.acquire("a.example", 0.0, now=100.0)[0] == "busy"  # two in flight
    assert book.acquire("b.example", 0.0, now=100.0) == ("go", 0.0)  # hosts are independent
    book.release("a.example", "ok", None, now=100.2)
    assert book.acquire("a.example", 0.0, now=100.2) == ("go", pytest.approx(0.8))
    book.release("a.example", "ok", None, now=101.0)
    assert book.acquire("a.example", 3.0, now=101.0) == ("go", pytest.approx(0.5))  # Crawl-delay 3 s from here
    book.release("a.example", "ok", None, now=101.0)
    book.release("a.example", "ok", None, now=101.0)
    assert book.acquire("a.example", 3.0, now=101.0) == ("go", pytest.approx(3.5))


def test_retry_after_backoff_and_circuit_breaker():
    config = PolitenessConfig(host_rate=1000, host_concurrency=0, backoff_s=1.0, max_backoff_s=4.0,
                              breaker_failures=3, breaker_pause_s=30.0)
    book = HostBook(config)
    book.acquire("h", 0.0, now=0.0)
    book.release("h", "failed", retry_after=3.0, now=0.0)  # 429 with Retry-After: 3
    verdict, delay = book.acquire("h", 0.0, now=0.0)
    assert verdict == "go" and delay >= 3.0
    book.release("h", "failed", None, now=3.0)  # second failure: backoff 2 s +-50%
    verdict, delay = book.acquire("h", 0.0, now=3.0)
    assert verdict == "go" and 1.0 <= delay <= 3.0 + 1e-9
    book.release("h", "failed", None, now=4.0)  # third in a row: the circuit opens
    assert book.acquire("h", 0.0, now=5.0)[0] == "refused"
    assert book.acquire("h", 0.0, now=20.0)[0] == "refused"
    assert book.acquire("h", 0.0, now=40.0)[0] == "go"  # after the pause: one probe...
    assert book.acquire("h", 0.0, now=40.0)[0] == "refused"  # ...and only one
    book.release("h", "ok", None, now=41.0)  # the probe succeeded: closed again
    assert book.acquire("h", 0.0, now=50.0)[0] == "go"
    report = {r["host"]: r for r in book.report()}
    assert report["h"]["trips"] == 1 and report["h"]["refused"] == 3


def test_overrides_file_and_unlimited_hosts(tmp_path):
    limits = tmp_path / "hosts.txt"
    limits.write_text("# hosts we may fetch faster\ncdn.example 50 16\nslow.example 0.1\n")
    config = PolitenessConfig(host_rate=2, host_concurrency=2, host_limits=str(limits), unlimited_hosts=("127.0.0.1",))
    assert config.overrides() == {"127.0.0.1": (0.0, 0), "cdn.example": (50.0, 16), "slow.example": (0.1, 2)}
    book = HostBook(config)
    book.acquire("img.cdn.example", 0.0, 0.0)  # a subdomain takes its parent's line
    assert book.acquire("img.cdn.example", 0.0, 0.0) == ("go", pytest.approx(0.02))
    limits.write_text("cdn.example fast\n")
    with pytest.raises(ValueError, match=r"hosts.txt:1: 'cdn.example fast'"):
        config.overrides()


def test_retry_after_header_forms():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert 0 <= parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") <= 0.0 + 1e-9  # a past date: now


def test_reject_reasons_of_our_own_errors():
    assert download_reject_reason("<urlopen error timeout: http://x/ not complete within its 2 s deadline>") == "timeout"
    assert download_reject_reason("<urlopen error too_large: http://x/ body over the 10-byte limit>") == "too_large"
    assert download_reject_reason("<urlopen error host_unavailable: x paused after 8 failures>") == "host_unavailable"


def test_image_filters_reject_pixels_and_banners():
    config = ImageCheckConfig()
    assert check_image(textured_png(1, (1, 1)), config) == "image_too_small"
    assert check_image(textured_png(1, (640, 64)), config) == "aspect_ratio"  # a 10:1 banner
    assert isinstance(check_image(textured_png(1, (192, 64)), config), dict)  # 3:1 is kept
    assert isinstance(check_image(textured_png(1, (60, 53)), config), dict)  # small copies stay
    assert check_image(textured_png(1, (150, 150)), ImageCheckConfig(min_image_size=200)) == "image_too_small"


# -- hostile servers on loopback hosts --------------------------------------------------------

class Site(http.server.BaseHTTPRequestHandler):
    """Behaviour by path; every request logged as (host, path, monotonic time)."""

    log: list[tuple[str, str, float]] = []
    lock = threading.Lock()
    robots_drip = False
    seen: set[str] = set()

    def log_message(self, *args):
        pass

    def _send(self, code: int, body: bytes = b"", headers: dict | None = None):
        self.send_response(code)
        for k, v in {"Content-Length": str(len(body)), **(headers or {})}.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        host = self.server.server_address[0]
        with Site.lock:
            Site.log.append((host, self.path, time.monotonic()))
            first = (host, self.path) not in Site.seen
            Site.seen.add((host, self.path))
        path = self.path.split("?")[0]
        try:
            if path == "/robots.txt":
                if Site.robots_drip and host == "127.0.0.5":
                    return self._drip_body(b"User-agent: *\nAllow: /\n" * 50, 0.5)
                return self._send(404)
            if path == "/drip-body":
                return self._drip_body(IMAGE, 0.5)
            if path == "/drip-headers":
                self.wfile.write(b"HTTP/1.1 200 OK\r\n")
                for _ in range(60):
                    self.wfile.write(b"X")
                    self.wfile.flush()
                    time.sleep(0.5)
                return
            if path == "/endless":
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.end_headers()
                end = time.monotonic() + 30
                while time.monotonic() < end:
                    self.wfile.write(b"\0" * 65536)
                return
            if path == "/big":
                return self._send(200, IMAGE + b"\0" * 200_000)
            if path.startswith("/429"):
                if first:
                    return self._send(429, b"slow down", {"Retry-After": "3"})
                return self._send(200, IMAGE, {"Content-Type": "image/png"})
            if path.startswith("/fail"):
                return self._send(503)
            return self._send(200, IMAGE, {"Content-Type": "image/png"})
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _drip_body(self, body: bytes, every: float):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        for i in range(min(len(body), 60)):
            self.wfile.write(body[i:i + 1])
            self.wfile.flush()
            time.sleep(every)


@contextlib.contextmanager
def sites(*hosts: str):
    """A :class:`Site` server on each loopback host (one port for all); yields the port."""
    Site.log, Site.seen, Site.robots_drip = [], set(), False
    first = http.server.ThreadingHTTPServer((hosts[0], 0), Site)
    port = first.server_address[1]
    servers = [first] + [http.server.ThreadingHTTPServer((h, port), Site) for h in hosts[1:]]
    for s in servers:
        s.daemon_threads = True
        threading.Thread(target=s.serve_forever, daemon=True).start()
    try:
        yield port
    finally:
        for s in servers:
            s.shutdown()
            s.server_close()


def _rows(urls: list[str]) -> pa.Table:
    return pa.table({"uid": [f"u{i:03d}" for i in range(len(urls))], "url": urls})


def _reasons(rejected: pa.Table) -> dict[str, str]:
    return dict(zip(rejected.column("uid").to_pylist(), rejected.column("reason").to_pylist()))


def test_tarpits_endless_bodies_and_dripped_robots_end_within_the_deadline(tmp_path):
    with sites("127.0.0.4", "127.0.0.5") as port:
        Site.robots_drip = True
        a, b = f"http://127.0.0.4:{port}", f"http://127.0.0.5:{port}"
        rows = _rows([f"{a}/drip-body", f"{a}/drip-headers", f"{a}/endless", f"{a}/big", f"{b}/img.png",
                      f"{a}/ok.png"])
        config = DownloadConfig(threads=8, timeout_s=2, retry_pass=False, max_bytes=100_000,
                                respect=RespectConfig(robots_timeout_s=2),
                                politeness=PolitenessConfig(host_rate=0, host_concurrency=0))
        started = time.monotonic()
        ok, rejected = download(rows, RunLayout(str(tmp_path / "run")), 0, 0, config, LOOPBACK)
        elapsed = time.monotonic() - started
    assert ok.column("uid").to_pylist() == ["u005"]
    assert _reasons(rejected) == {"u000": "timeout", "u001": "timeout", "u002": "too_large", "u003": "too_large",
                                  "u004": "robots_unavailable"}
    assert elapsed < 2 * 2 + 4  # every row ends within a bound of the 2 s deadline (the servers drip for 30 s)


def test_host_rate_holds_across_threads_while_other_hosts_go_at_full_speed(tmp_path):
    with sites("127.0.0.2", "127.0.0.3") as port:
        slow = [f"http://127.0.0.2:{port}/s{i}.png" for i in range(8)]
        fast = [f"http://127.0.0.3:{port}/f{i}.png" for i in range(40)]
        # a 2 s deadline while the slow host's turns take 4.5 s: waiting for a turn is not a timeout
        config = DownloadConfig(threads=16, timeout_s=2, retry_pass=False,
                                politeness=PolitenessConfig(host_rate=2, host_concurrency=2,
                                                            unlimited_hosts=("127.0.0.3",)))
        ok, rejected = download(_rows(slow + fast), RunLayout(str(tmp_path / "run")), 0, 0, config, LOOPBACK)
    assert len(ok) == 48 and len(rejected) == 0
    times = {h: sorted(t for host, _, t in Site.log if host == h) for h in ("127.0.0.2", "127.0.0.3")}
    slow_times = times["127.0.0.2"]
    assert len(slow_times) == 9  # robots.txt takes a turn too
    assert max(sum(1 for t in slow_times if start <= t < start + 0.9) for start in slow_times) <= 2
    assert slow_times[-1] - slow_times[0] >= 8 / 2 - 0.2  # 9 turns 0.5 s apart
    assert times["127.0.0.3"][-1] - times["127.0.0.3"][0] < 2.0  # 41 requests, no limit: not held back


def test_retry_after_is_honoured_and_a_failing_host_trips_the_breaker(tmp_path):
    with sites("127.0.0.6", "127.0.0.7") as port:
        urls = [f"http://127.0.0.6:{port}/429.png"] + [f"http://127.0.0.7:{port}/fail{i}.png" for i in range(10)]
        config = DownloadConfig(threads=4, timeout_s=5, retry_pass=True,
                                politeness=PolitenessConfig(host_rate=0, host_concurrency=1, backoff_s=0.05,
                                                            breaker_failures=3, breaker_pause_s=60))
        ok, rejected = download(_rows(urls), RunLayout(str(tmp_path / "run")), 0, 0, config, LOOPBACK)
    assert ok.column("uid").to_pylist() == ["u000"]  # fetched by the retry pass, after Retry-After
    first_429 = [t for h, p, t in Site.log if p == "/429.png"]
    assert len(first_429) == 2 and first_429[1] - first_429[0] >= 3.0
    reasons = _reasons(rejected)
    assert len(reasons) == 10 and set(reasons.values()) <= {"http_5xx", "host_unavailable"}
    assert list(reasons.values()).count("host_unavailable") >= 7
    failing_requests = [p for h, p, _ in Site.log if h == "127.0.0.7" and p != "/robots.txt"]
    assert len(failing_requests) <= 4  # three failures open the circuit; the rest are not sent


def test_local_limiter_blocks_a_busy_host_until_a_release():
    limiter = LocalLimiter(PolitenessConfig(host_rate=0, host_concurrency=1))
    assert limiter.acquire("h", 0.0) == ("go", 0.0)
    got = []
    waiter = threading.Thread(target=lambda: got.append(limiter.acquire("h", 0.0)))
    waiter.start()
    time.sleep(0.3)
    assert not got  # waiting: the host is at its concurrency cap
    limiter.release("h", "ok", None)
    waiter.join(5)
    assert got == [("go", 0.0)]


@pytest.mark.ray
@pytest.mark.slow
def test_host_rate_holds_across_a_two_node_cluster(tmp_path):
    """Download tasks on both nodes of a 2-node cluster fetch one host under --host-rate 2: its
    server never sees more than 2 requests in any 1 s window (turns from the run's limiter
    actor), while the host with no limit is fetched at full speed."""
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("polite_cluster_run.py")), str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=600)
    result = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and result, proc.stdout[-3000:] + proc.stderr[-5000:]
    out = json.loads(result[0][len("RESULT "):])
    assert len(out["nodes"]) == 2  # download tasks ran on both nodes
    assert out["download"]["out"] == 48 and out["download"]["in"] == 48
    times = {h: sorted(t for host, _, t in out["log"] if host == h) for h in ("127.0.0.2", "127.0.0.3")}
    limited = times["127.0.0.2"]
    assert len(limited) >= 16 + 2  # 16 images + a robots.txt per worker process
    assert max(sum(1 for t in limited if start <= t < start + 0.9) for start in limited) <= 2
    assert limited[-1] - limited[0] >= (len(limited) - 1) / 2 - 0.3
    hosts = {h["host"]: h for h in out["hosts"]}
    assert hosts["127.0.0.2"]["requests"] == len(limited) and hosts["127.0.0.2"]["waited_s"] > 0
    largest = {h["host"]: h for h in out["download"]["largest_hosts"]}
    assert largest["127.0.0.2"] == {"host": "127.0.0.2", "urls": 16, "rate": 2.0, "min_seconds": 8.0}
    assert largest["127.0.0.3"]["rate"] is None


def test_a_turn_never_given_back_is_taken_back_after_its_lease():
    book = HostBook(PolitenessConfig(host_rate=0, host_concurrency=1, turn_lease_s=10))
    assert book.acquire("h", 0.0, now=0.0)[0] == "go"  # its worker dies: never released
    assert book.acquire("h", 0.0, now=5.0)[0] == "busy"
    assert book.acquire("h", 0.0, now=11.0)[0] == "go"  # the lease ran out: the host is not stuck
    assert book.report()[0]["lost"] == 1


def test_a_redirect_that_waited_past_the_old_deadline_is_still_cut_at_the_new_one():
    import socket

    from curation.images.deadline import Ticket

    ticket = Ticket(time.monotonic() + 0.2, 0.2)
    first, _ = socket.socketpair()
    ticket.arm(first)  # hop 1 armed, then done in time
    ticket.disarm()
    time.sleep(0.4)  # hop 2 waits for its host's turn past the first deadline (the watch entry fires)
    ticket.extend(0.4)
    assert not ticket.expired
    reader, writer = socket.socketpair()
    ticket.arm(reader)  # hop 2's socket: watched until the moved deadline
    started = time.monotonic()
    assert reader.recv(10) == b""  # a server that never answers: cut, not held
    assert 0.05 < time.monotonic() - started < 2.0 and ticket.expired
    for s in (first, reader, writer):
        s.close()
