"""Fetching that respects publishers, inside img2dataset's guarded workers.

:class:`RespectfulHandler` is a urllib handler added to the SSRF-guarded opener
(:func:`curation.images.fetch.build_guarded_opener`), so it sees every request img2dataset makes,
redirects included. Before a request it:

1. refuses URLs the **opt-out ledger** lists by domain or URL prefix (``opted_out``; the host
   is never contacted);
2. fetches ``<scheme>://<host>/robots.txt`` once per host and process, **through the same
   guard**, parses it with ``urllib.robotparser`` and refuses what it disallows for our product
   token (``robots_disallowed``). As RFC 9309 says: a 4xx robots.txt allows everything; a 5xx
   or an unreachable one disallows everything (``robots_unavailable``);
3. waits out the host's ``Crawl-delay`` (capped by ``max_crawl_delay_s``) through the host's
   turns (:mod:`curation.images.politeness`): across the cluster with the run's limiter;
4. sends our identifiable ``User-Agent`` (product token + contact URL) instead of img2dataset's.

After a 2xx response, when the ledger lists image hashes, the body's SHA-256 is checked
(``opted_out``). img2dataset's X-Robots-Tag check runs afterwards, unchanged. A refusal raises
``urllib.error.URLError`` whose message starts with the reason; img2dataset records it as the
row's ``error_message`` and :func:`curation.images.download.download_reject_reason` counts it.

Ledger file: one entry a line, ``#`` comments. ``http://`` / ``https://`` lines are URL
prefixes; 64 hex digits are SHA-256 image hashes; anything else is a domain (refusing it and
its subdomains).
"""

from __future__ import annotations

import hashlib
import io
import re
import threading
import urllib.error
import urllib.request
import urllib.response
import urllib.robotparser
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from curation.images.politeness import HostUnavailable, domain_match

ROBOTS_MAX_BYTES = 500 * 1024  # RFC 9309: parse at least 500 KiB
REASONS = ("robots_disallowed", "robots_unavailable", "opted_out")
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")


@dataclass(frozen=True)
class RespectConfig:
    """How the download stage treats publishers."""

    robots: bool = True  # honour robots.txt (off: --ignore-robots; Crawl-delay is then ignored too)
    token: str = "openwit"  # product token matched against robots.txt User-agent lines
    # contact URL sent in the User-Agent ('openwit/1.0 (+URL)')
    contact_url: str = "https://github.com/openwit/openwit#fetching-respectfully"
    max_crawl_delay_s: float = 30.0  # longer Crawl-delay values are capped to this
    robots_timeout_s: float = 10.0  # robots.txt fetch deadline (connect, headers and body in all)
    opt_out_ledger: str | None = None  # ledger file (domains, URL prefixes, SHA-256 image hashes)

    @property
    def user_agent(self) -> str:
        """The User-Agent header sent with every request."""
        return f"{self.token}/1.0 (+{self.contact_url})"


class RespectRefusal(urllib.error.URLError):
    """A request refused before or after download (``reason`` is one of :data:`REASONS`)."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")


@dataclass(frozen=True)
class OptOutLedger:
    """Domains, URL prefixes and SHA-256 image hashes that are always refused."""

    domains: frozenset[str] = frozenset()  # hosts refused with all their subdomains
    prefixes: tuple[str, ...] = ()  # URL prefixes refused
    hashes: frozenset[str] = frozenset()  # SHA-256 hex digests of image bytes refused after the download

    @classmethod
    def read(cls, path: str | None) -> OptOutLedger:
        """Parse a ledger file (see the module docstring); ``None`` gives an empty ledger."""
        if path is None:
            return cls()
        domains, prefixes, hashes = set(), [], set()
        for line in Path(path).read_text().splitlines():
            entry = line.split("#", 1)[0].strip()
            if not entry:
                continue
            if entry.lower().startswith(("http://", "https://")):
                prefixes.append(entry)
            elif _HEX64.match(entry):
                hashes.add(entry.lower())
            else:
                domains.add(entry.lower().strip("."))
        return cls(frozenset(domains), tuple(prefixes), frozenset(hashes))

    def url_refusal(self, url: str) -> str | None:
        """Why ``url`` is opted out by domain or prefix, or None."""
        if any(url.startswith(p) for p in self.prefixes):
            return "URL prefix listed in the opt-out ledger"
        host = (urlsplit(url).hostname or "").lower()
        if domain_match(host, self.domains) is not None:
            return f"domain {host} listed in the opt-out ledger"
        return None


class RobotsCache:
    """robots.txt per (scheme, host, port), fetched once with ``opener`` (the guarded one)."""

    def __init__(self, config: RespectConfig, opener: urllib.request.OpenerDirector):
        self.config, self.opener = config, opener
        self.parsers: dict[str, urllib.robotparser.RobotFileParser | None] = {}
        self.host_locks: dict[str, threading.Lock] = {}
        self.lock = threading.Lock()

    def _fetch(self, origin: str) -> urllib.robotparser.RobotFileParser | None:
        """The parsed robots.txt of ``origin``, or None when it is unavailable (disallow all)."""
        parser = urllib.robotparser.RobotFileParser(origin + "/robots.txt")
        request = urllib.request.Request(origin + "/robots.txt", headers={"User-Agent": self.config.user_agent})
        try:
            with self.opener.open(request, timeout=self.config.robots_timeout_s) as response:
                body = response.read(ROBOTS_MAX_BYTES)
        except HostUnavailable:  # the host's circuit is open: the row says so, not "robots"
            raise
        except urllib.error.HTTPError as err:
            if 400 <= err.code < 500:
                parser.allow_all = True
                return parser
            return None
        except (OSError, ValueError):
            return None
        parser.parse(body.decode("utf-8", errors="replace").splitlines())
        return parser

    def parser(self, origin: str) -> urllib.robotparser.RobotFileParser | None:
        """The cached robots.txt of ``origin``: one fetch per host even with many threads
        (a per-host lock; other hosts go on meanwhile). An unavailable robots.txt (None:
        disallow all) is not cached: the host's next request asks again (through the host's
        turns, so a dead host trips its breaker instead of being asked without end)."""
        with self.lock:
            host_lock = self.host_locks.setdefault(origin, threading.Lock())
        with host_lock:
            parser = self.parsers.get(origin)
            if parser is None:
                parser = self._fetch(origin)
                if parser is not None:
                    self.parsers[origin] = parser
            return parser

class RespectfulHandler(urllib.request.BaseHandler):
    """The urllib handler described in the module docstring."""

    handler_order = 100  # before the default handlers' request processing

    def __init__(self, config: RespectConfig, robots_opener: urllib.request.OpenerDirector, politeness):
        self.config = config
        self.ledger = OptOutLedger.read(config.opt_out_ledger)
        self.robots = RobotsCache(config, robots_opener)
        self.politeness = politeness  # curation.images.politeness.HostTurns: their turns space Crawl-delay

    def http_request(self, request: urllib.request.Request) -> urllib.request.Request:
        """Ledger, robots.txt and Crawl-delay before the request; then our User-Agent."""
        url = request.full_url
        refusal = self.ledger.url_refusal(url)
        if refusal:
            raise RespectRefusal("opted_out", refusal)
        if self.config.robots:
            parts = urlsplit(url)
            origin = f"{parts.scheme}://{parts.netloc}"
            parser = self.robots.parser(origin)
            if parser is None:
                raise RespectRefusal("robots_unavailable", f"{origin}/robots.txt unreachable or 5xx")
            if not parser.can_fetch(self.config.token, url):
                raise RespectRefusal("robots_disallowed", f"{url} disallowed for {self.config.token}")
            delay = parser.crawl_delay(self.config.token)  # spaces the host's turns (taken as the request opens)
            self.politeness.note_crawl_delay(url, min(float(delay), self.config.max_crawl_delay_s) if delay else 0.0)
        request.add_header("User-Agent", self.config.user_agent)
        return request

    https_request = http_request

    def http_response(self, request, response):
        """With hashes in the ledger: refuse a 2xx body whose SHA-256 is listed, else replay it."""
        if not self.ledger.hashes or not 200 <= response.code < 300:
            return response
        body = response.read()
        if hashlib.sha256(body).hexdigest() in self.ledger.hashes:
            raise RespectRefusal("opted_out", f"image hash of {request.full_url} listed in the opt-out ledger")
        replay = urllib.response.addinfourl(io.BytesIO(body), response.headers, response.url, response.code)
        replay.msg = response.msg
        return replay

    https_response = http_response
