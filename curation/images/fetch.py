"""The SSRF guard inside img2dataset's download workers: every connection and every redirect.

img2dataset fetches with ``urllib.request.urlopen`` in spawned worker processes and has no URL
filter, so checking the selection beforehand (:class:`curation.images.urlguard.UrlGuard`) is not enough:

- a public URL can answer ``302 Location: http://169.254.169.254/...`` (urllib follows it);
- a host can resolve to a public address at check time and to a private one a second later
  (DNS rebinding).

:class:`GuardedDownloader` is img2dataset's ``Downloader`` with one addition: before a shard is
downloaded, it installs (in that worker process) a urllib opener whose connections resolve the
host once, check every address with the guard and connect to the vetted address itself (so the
address checked is the address connected to), whose redirect handler checks each ``Location``
before following it, and which ignores ``*_proxy`` environment variables (a proxy would hide the
real destination). A refusal surfaces in img2dataset's ``error_message`` as
``urlguard refused <hop>: <reason>``; :func:`curation.images.download.download_reject_reason` maps it to a
reject reason. What stays out of reach: HTTP/HTTPS proxies (disabled), and anything a future
img2dataset does without ``urllib``.
"""

from __future__ import annotations

import functools
import http.client
import socket
import time
import urllib.error
import urllib.request

from img2dataset.downloader import Downloader

from curation.images.deadline import FetchLimits, RequestTimeout, Ticket, read_body, ticket_for
from curation.images.politeness import HostTurns, PolitenessConfig, limiter_key
from curation.images.robots import ROBOTS_MAX_BYTES, RespectConfig, RespectfulHandler
from curation.images.urlguard import UrlGuard, UrlGuardConfig

REFUSAL_MARKER = "urlguard refused"


class GuardRefusal(urllib.error.URLError):
    """A connection or redirect the guard refused (``hop`` is "connect" or "redirect")."""

    def __init__(self, hop: str, reason: str, target: str):
        super().__init__(f"{REFUSAL_MARKER} {hop}: {reason} ({target})")


def _guarded_create_connection(guard: UrlGuard, address, timeout=socket._GLOBAL_DEFAULT_TIMEOUT,
                               source_address=None, **kwargs):
    """``socket.create_connection`` that connects only to addresses the guard allows."""
    host, port = address
    addresses = guard.resolve(host, port)
    if addresses is None:
        raise GuardRefusal("connect", "unresolvable_host", host)
    for addr in addresses:
        reason = guard.address_refusal(addr)
        if reason is not None:
            raise GuardRefusal("connect", reason, f"{host} -> {addr}")
    error: OSError | None = None
    for addr in addresses:  # every address was vetted above; try them in turn
        try:
            return socket.create_connection((addr, port), timeout, source_address, **kwargs)
        except OSError as err:
            error = err
    raise error


class _GuardedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, *args, guard: UrlGuard, ticket: Ticket, **kwargs):
        super().__init__(*args, **kwargs)
        self._create_connection = functools.partial(_guarded_create_connection, guard)
        self.ticket = ticket

    def connect(self):
        self.timeout = max(0.001, min(self.timeout, self.ticket.remaining()))
        super().connect()
        self.ticket.arm(self.sock)  # shut down at the chain's deadline, whatever the server does


class _GuardedHTTPSConnection(http.client.HTTPSConnection):
    # HTTPSConnection.connect() calls HTTPConnection.connect() (our vetted socket), then wraps
    # it in TLS with server_hostname=self.host: certificates are still checked against the name.
    def __init__(self, *args, guard: UrlGuard, ticket: Ticket, **kwargs):
        super().__init__(*args, **kwargs)
        self._create_connection = functools.partial(_guarded_create_connection, guard)
        self.ticket = ticket

    def connect(self):
        self.timeout = max(0.001, min(self.timeout, self.ticket.remaining()))
        super().connect()  # the plain socket is armed below, once wrapped (the TLS handshake
        self.ticket.arm(self.sock)  # itself is bounded by the per-read timeout)


def _bounded_open(handler, connection, req, guard: UrlGuard, limits: FetchLimits, politeness, **kwargs):
    """``do_open`` with the request chain's deadline, the body read bounded
    (:mod:`curation.images.deadline`) and, with ``politeness``, the host's turn taken first and
    the outcome reported after (:mod:`curation.images.politeness`)."""
    asked = time.monotonic()
    turn = politeness.turn(req.full_url) if politeness is not None else None
    ticket = ticket_for(req, limits, waited=time.monotonic() - asked)  # the deadline runs from the turn
    status, retry_after, error = None, None, None
    try:
        try:
            response = handler.do_open(functools.partial(connection, guard=guard, ticket=ticket), req, **kwargs)
        except Exception as err:
            if ticket.expired:
                raise RequestTimeout(req.full_url, ticket.deadline_s) from err
            raise
        status, retry_after = response.status, response.headers.get("Retry-After")
        try:
            return read_body(response, limits, req.full_url, ticket)
        finally:
            ticket.disarm()
    except BaseException as err:
        error = err
        raise
    finally:
        if turn is not None:
            turn.done(None if isinstance(error, RequestTimeout) else status, retry_after,
                      reached=not isinstance(error, GuardRefusal)
                      and not isinstance(getattr(error, "reason", None), GuardRefusal))  # do_open wraps it


class _GuardedHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, guard: UrlGuard, limits: FetchLimits, politeness=None):
        super().__init__()
        self.guard, self.limits, self.politeness = guard, limits, politeness

    def http_open(self, req):
        return _bounded_open(self, _GuardedHTTPConnection, req, self.guard, self.limits, self.politeness)


class _GuardedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, guard: UrlGuard, limits: FetchLimits, politeness=None):
        super().__init__()
        self.guard, self.limits, self.politeness = guard, limits, politeness

    def https_open(self, req):
        return _bounded_open(self, _GuardedHTTPSConnection, req, self.guard, self.limits, self.politeness,
                             context=self._context)


class _GuardedRedirectHandler(urllib.request.HTTPRedirectHandler):
    def __init__(self, guard: UrlGuard):
        super().__init__()
        self.guard = guard

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        reason = self.guard.check_url(newurl)
        if reason is not None:
            raise GuardRefusal("redirect", reason, newurl)
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and hasattr(req, "openwit_ticket"):
            new.openwit_ticket = req.openwit_ticket  # one deadline for the whole redirect chain
        return new


def build_guarded_opener(config: UrlGuardConfig, respect: RespectConfig | None = None,
                         limits: FetchLimits = FetchLimits(), politeness=None) -> urllib.request.OpenerDirector:
    """A urllib opener enforcing ``config`` on every connection and redirect, proxies off, each
    request chain within ``limits`` (deadline, body size); with ``respect``, also robots.txt
    (fetched through a guarded opener within ``respect.robots_timeout_s`` and 500 KiB),
    Crawl-delay, our User-Agent and the opt-out ledger (:mod:`curation.images.robots`). With
    ``politeness`` (:class:`curation.images.politeness.HostTurns`), every request -- robots.txt
    included -- waits for its host's turn; with ``respect`` and no ``politeness``, the opener's
    own turns with no rate limit space Crawl-delay (one mechanism for both)."""
    guard = UrlGuard(config)
    if respect is not None and politeness is None:
        politeness = HostTurns(PolitenessConfig(host_rate=0, host_concurrency=0))
    handlers = [urllib.request.ProxyHandler({}), _GuardedHTTPHandler(guard, limits, politeness),
                _GuardedHTTPSHandler(guard, limits, politeness), _GuardedRedirectHandler(guard)]
    if respect is not None:
        robots_limits = FetchLimits(respect.robots_timeout_s, ROBOTS_MAX_BYTES, truncate=True)
        handlers.append(RespectfulHandler(respect, build_guarded_opener(config, limits=robots_limits,
                                                                        politeness=politeness), politeness))
    return urllib.request.build_opener(*handlers)


_OPENERS: dict[tuple, urllib.request.OpenerDirector] = {}


def worker_opener(config: UrlGuardConfig, respect: RespectConfig | None, limits: FetchLimits,
                  politeness_config=None, limiter=None) -> urllib.request.OpenerDirector:
    """One opener per worker process, settings and limiter: its robots.txt cache lasts across
    the shards that process downloads (img2dataset re-sends the Downloader per shard); the
    host turns come from ``limiter`` (the run's; None: a limiter of this process)."""
    key = (config, respect, limits, politeness_config, limiter_key(limiter))
    opener = _OPENERS.get(key)
    if opener is None:
        if len(_OPENERS) >= 4:
            _OPENERS.clear()
        politeness = HostTurns(politeness_config, limiter) if politeness_config is not None else None
        opener = _OPENERS[key] = build_guarded_opener(config, respect, limits, politeness)
    return opener


def node_name() -> str:
    """This worker's node: the Ray node id inside a Ray task, else the host name."""
    try:
        import ray

        if ray.is_initialized():
            return ray.get_runtime_context().get_node_id()
    except ImportError:
        pass
    return socket.gethostname()


class GuardedDownloader(Downloader):
    """img2dataset's ``Downloader`` that installs the guarded opener in the process that runs it
    (built by :func:`curation.images.download.shard_downloader`; the guard, robots, limits and
    politeness settings and the run's host limiter travel with the pickled instance to whatever
    worker runs the download task)."""

    def __init__(self, guard_config: UrlGuardConfig, respect_config: RespectConfig | None,
                 limits: FetchLimits = FetchLimits(), politeness_config=None, limiter=None, **kwargs):
        super().__init__(**kwargs)
        self.guard_config, self.respect_config, self.limits = guard_config, respect_config, limits
        self.politeness_config, self.limiter = politeness_config, limiter

    def download_shard(self, row):
        """Install the guarded opener in this process for the shard (one opener per worker and
        settings: robots.txt cache and host turns last across shards), download the shard as
        usual (img2dataset fetches with ``urllib.request.urlopen``), then put back the opener
        the process had."""
        previous = urllib.request._opener  # put back after: the calling process keeps its opener
        urllib.request.install_opener(worker_opener(self.guard_config, self.respect_config, self.limits,
                                                    self.politeness_config, self.limiter))
        try:
            return super().download_shard(row)
        finally:
            urllib.request.install_opener(previous)
