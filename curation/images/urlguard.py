"""SSRF guard: refuse image URLs that point into private, loopback, link-local or metadata space.

The guard runs on the selection *before* img2dataset sees a URL (img2dataset has no allow/deny
option), and again inside the download workers on every connection and every redirect hop
(:mod:`curation.images.fetch`), so a redirect to a refused address or a DNS answer that changed
since the first check (rebinding) is refused too.

Policy, per URL:

- the URL must parse, have scheme ``http`` or ``https`` and a host;
- every address the host resolves to must be public: loopback, private (RFC 1918, ULA),
  link-local, multicast, reserved, unspecified and shared (CGNAT) addresses are refused, and the
  cloud-metadata addresses (169.254.169.254, fd00:ec2::254, ...) always are, even with
  ``allow_private_networks`` — only an explicit entry in ``allow_networks`` lets one through;
- ``allow_private_networks`` lets every non-metadata address through (a private deployment);
  ``allow_networks`` lets chosen addresses/CIDRs through (the demo and tests use 127.0.0.1).
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.compute as pc

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]

ALLOWED_SCHEMES = ("http", "https")
# Instance-metadata endpoints of the big clouds (AWS/GCP/Azure/OpenStack IPv4, AWS IPv6,
# Alibaba, Oracle); refused unless listed explicitly in allow_networks.
METADATA_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in ("169.254.169.254/32", "fd00:ec2::254/128", "100.100.100.200/32", "169.254.170.2/32")
)
SHARED_ADDRESS_SPACE = ipaddress.ip_network("100.64.0.0/10")  # RFC 6598 (CGNAT)


@dataclass(frozen=True)
class UrlGuardConfig:
    """What the guard lets through."""

    allow_private_networks: bool = False  # fetch from any non-metadata address (private deployments)
    allow_networks: tuple[str, ...] = ()  # addresses/CIDRs always allowed, e.g. ("127.0.0.1",)
    resolve_timeout_s: float = 5.0  # DNS resolution timeout per host (resolve_timeout past it)
    resolve_threads: int = 32  # hosts resolved in parallel by the pre-download check


def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (A and AAAA), as strings; raises ``OSError`` when
    it does not resolve."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({info[4][0] for info in infos})


def address_refusal(address: IPAddress, allowed: Iterable[ipaddress._BaseNetwork] = (),
                    allow_private_networks: bool = False) -> str | None:
    """Why ``address`` must not be fetched from (a reject reason), or None if it may be."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    if any(address in net for net in allowed):
        return None
    if any(address in net for net in METADATA_NETWORKS):
        return "metadata_address"
    if allow_private_networks:
        return None
    checks = (
        ("unspecified_address", address.is_unspecified),
        ("loopback_address", address.is_loopback),
        ("link_local_address", address.is_link_local),
        ("multicast_address", address.is_multicast),
        ("reserved_address", address.is_reserved),
        ("private_address", address.is_private or address in SHARED_ADDRESS_SPACE),
        ("non_global_address", not address.is_global),
    )
    return next((reason for reason, hit in checks if hit), None)


TIMED_OUT: list[str] = []  # cache value of a host whose resolution outlasted resolve_timeout_s


class UrlGuard:
    """Checks URLs against a :class:`UrlGuardConfig`.

    ``check_url(url)`` returns None (allowed) or a reject reason; ``__call__(table)`` splits an
    Arrow table/record batch with a ``url`` column into (kept rows, rejected rows + ``reason``).
    Host resolutions are cached per instance (one per worker); ``resolver`` is injectable for
    tests and must return the host's addresses or raise ``OSError``.
    """

    def __init__(self, config: UrlGuardConfig, resolver: Resolver | None = None):
        self.config = config
        self.allowed = tuple(ipaddress.ip_network(n, strict=False) for n in config.allow_networks)
        self.resolver = resolver or system_resolver
        self._cache: dict[str, list[str] | None] = {}

    def address_refusal(self, address: str) -> str | None:
        """Reject reason for one literal IP address string (None if allowed)."""
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return "bad_address"
        return address_refusal(ip, self.allowed, self.config.allow_private_networks)

    def prefetch(self, urls: Iterable[str | None]) -> None:
        """Resolve every distinct host of ``urls`` not cached yet, ``resolve_threads`` at a time;
        a host that takes longer than ``resolve_timeout_s`` is recorded as timed out."""
        hosts: dict[str, int] = {}
        for url in urls:
            try:
                parts = urlsplit((url or "").strip())
                host, port = parts.hostname, parts.port or (443 if parts.scheme.lower() == "https" else 80)
            except ValueError:
                continue
            if host and host not in self._cache and host not in hosts:
                hosts[host] = port
        if not hosts:
            return
        pool = ThreadPoolExecutor(max_workers=max(1, min(self.config.resolve_threads, len(hosts))))
        try:
            futures = {host: pool.submit(self._resolve_now, host, port) for host, port in hosts.items()}
            deadline = time.monotonic() + self.config.resolve_timeout_s
            for host, future in futures.items():
                try:
                    self._cache[host] = future.result(timeout=max(0.0, deadline - time.monotonic()))
                except FutureTimeout:
                    self._cache[host] = TIMED_OUT
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def _resolve_now(self, host: str, port: int) -> list[str] | None:
        try:
            ipaddress.ip_address(host)
            return [host]
        except ValueError:
            try:
                return self.resolver(host, port) or None
            except (OSError, UnicodeError):
                return None

    def resolve(self, host: str, port: int) -> list[str] | None:
        """Addresses of ``host`` (cached), or None if it does not resolve."""
        if host not in self._cache:
            try:
                ipaddress.ip_address(host)
                self._cache[host] = [host]
            except ValueError:
                try:
                    self._cache[host] = self.resolver(host, port) or None
                except (OSError, UnicodeError):
                    self._cache[host] = None
        return self._cache[host]

    def check_url(self, url: str | None) -> str | None:
        """Reject reason for one URL, or None if every address of its host is allowed."""
        if not url:
            return "missing_url"
        try:
            parts = urlsplit(url.strip())
            host, port = parts.hostname, parts.port
        except ValueError:
            return "bad_url"
        if parts.scheme.lower() not in ALLOWED_SCHEMES:
            return "bad_scheme"
        if not host:
            return "bad_url"
        port = port or (443 if parts.scheme.lower() == "https" else 80)
        addresses = self.resolve(host, port)
        if addresses is TIMED_OUT:
            return "resolve_timeout"
        if addresses is None:
            return "unresolvable_host"
        return next((r for r in map(self.address_refusal, addresses) if r is not None), None)

    def __call__(self, batch: pa.Table | pa.RecordBatch) -> tuple[pa.Table, pa.Table]:
        """(rows whose URL is allowed, refused rows with a ``reason`` column)."""
        table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
        urls = table.column("url").to_pylist()
        self.prefetch(urls)
        reasons = pa.array([self.check_url(u) for u in urls], pa.string())
        refused = pc.is_valid(reasons)
        kept = table.filter(pc.invert(refused))
        rejected = table.filter(refused).append_column("reason", reasons.filter(refused))
        return kept, rejected


def parse_allow_networks(values: Iterable[str]) -> tuple[str, ...]:
    """Validate ``--allow-network`` values (IP addresses or CIDRs); raise ``ValueError`` naming
    the bad one."""
    out = []
    for value in values:
        for item in filter(None, (v.strip() for v in value.split(","))):
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError as err:
                raise ValueError(f"--allow-network: {item!r} is not an IP address or CIDR") from err
            out.append(item)
    return tuple(out)
