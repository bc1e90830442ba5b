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
import urllib.error
import urllib.request

from img2dataset.downloader import Downloader

from curation.images.robots import RespectConfig, RespectfulHandler
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
    def __init__(self, *args, guard: UrlGuard, **kwargs):
        super().__init__(*args, **kwargs)
        self._create_connection = functools.partial(_guarded_create_connection, guard)


class _GuardedHTTPSConnection(http.client.HTTPSConnection):
    # HTTPSConnection.connect() calls HTTPConnection.connect() (our vetted socket), then wraps
    # it in TLS with server_hostname=self.host: certificates are still checked against the name.
    def __init__(self, *args, guard: UrlGuard, **kwargs):
        super().__init__(*args, **kwargs)
        self._create_connection = functools.partial(_guarded_create_connection, guard)


class _GuardedHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, guard: UrlGuard):
        super().__init__()
        self.guard = guard

    def http_open(self, req):
        return self.do_open(functools.partial(_GuardedHTTPConnection, guard=self.guard), req)


class _GuardedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, guard: UrlGuard):
        super().__init__()
        self.guard = guard

    def https_open(self, req):
        return self.do_open(functools.partial(_GuardedHTTPSConnection, guard=self.guard), req,
                            context=self._context)


class _GuardedRedirectHandler(urllib.request.HTTPRedirectHandler):
    def __init__(self, guard: UrlGuard):
        super().__init__()
        self.guard = guard

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        reason = self.guard.check_url(newurl)
        if reason is not None:
            raise GuardRefusal("redirect", reason, newurl)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def build_guarded_opener(config: UrlGuardConfig, respect: RespectConfig | None = None) -> urllib.request.OpenerDirector:
    """A urllib opener enforcing ``config`` on every connection and redirect, proxies off; with
    ``respect``, also robots.txt (fetched through a guarded opener), Crawl-delay, our User-Agent
    and the opt-out ledger (:mod:`curation.images.robots`)."""
    guard = UrlGuard(config)
    handlers = [urllib.request.ProxyHandler({}), _GuardedHTTPHandler(guard), _GuardedHTTPSHandler(guard),
                _GuardedRedirectHandler(guard)]
    if respect is not None:
        handlers.append(RespectfulHandler(respect, build_guarded_opener(config)))
    return urllib.request.build_opener(*handlers)


@functools.lru_cache(maxsize=4)
def worker_opener(config: UrlGuardConfig, respect: RespectConfig | None) -> urllib.request.OpenerDirector:
    """One opener per worker process and config: its robots.txt cache and Crawl-delay clocks
    last across the shards that process downloads (img2dataset re-sends the Downloader per shard)."""
    return build_guarded_opener(config, respect)


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
    (built by :func:`curation.images.download.shard_downloader`; the guard and robots configs
    travel with the pickled instance to whatever worker runs the download task)."""

    def __init__(self, guard_config: UrlGuardConfig, respect_config: RespectConfig | None, **kwargs):
        super().__init__(**kwargs)
        self.guard_config, self.respect_config = guard_config, respect_config

    def download_shard(self, row):
        """Install the guarded opener in this process for the shard (one opener per worker and
        config: robots.txt cache and Crawl-delay clocks last across shards), download the shard
        as usual (img2dataset fetches with ``urllib.request.urlopen``), then put back the opener
        the process had."""
        previous = urllib.request._opener  # put back after: the calling process keeps its opener
        urllib.request.install_opener(worker_opener(self.guard_config, self.respect_config))
        try:
            return super().download_shard(row)
        finally:
            urllib.request.install_opener(previous)
