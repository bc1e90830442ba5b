"""SSRF guard: the pure policy (injected resolver, no DNS) and the in-worker urllib opener."""

from __future__ import annotations

import socket
import threading
import urllib.error
import urllib.request

import pyarrow as pa
import pytest

from curation.images.fetch import GuardRefusal, build_guarded_opener
from curation.images.urlguard import UrlGuard, UrlGuardConfig, parse_allow_networks

FAKE_DNS = {
    "public.example": ["93.184.216.34"],
    "intranet.example": ["10.1.2.3"],
    "mixed.example": ["93.184.216.34", "192.168.0.7"],  # one private answer is enough to refuse
    "metadata.example": ["169.254.169.254"],
    "v6meta.example": ["fd00:ec2::254"],
    "cgnat.example": ["100.64.0.9"],
}


def fake_resolver(host: str, port: int) -> list[str]:
    if host not in FAKE_DNS:
        raise socket.gaierror(f"{host}: not known")
    return FAKE_DNS[host]


@pytest.mark.parametrize("url,reason", [
    ("http://public.example/a.jpg", None),
    ("https://public.example:8443/a.jpg", None),
    ("http://intranet.example/a.jpg", "private_address"),
    ("http://mixed.example/a.jpg", "private_address"),
    ("http://metadata.example/latest", "metadata_address"),
    ("http://169.254.169.254/latest/meta-data/", "metadata_address"),
    ("http://[fd00:ec2::254]/latest", "metadata_address"),
    ("http://v6meta.example/", "metadata_address"),
    ("http://169.254.1.1/x", "link_local_address"),
    ("http://127.0.0.1:8080/x", "loopback_address"),
    ("http://[::1]/x", "loopback_address"),
    ("http://[::ffff:10.0.0.1]/x", "private_address"),
    ("http://0.0.0.0/x", "unspecified_address"),
    ("http://224.0.0.251/x", "multicast_address"),
    ("http://240.0.0.1/x", "reserved_address"),
    ("http://cgnat.example/", "private_address"),
    ("http://unknown.example/x", "unresolvable_host"),
    ("ftp://public.example/a.jpg", "bad_scheme"),
    ("file:///etc/passwd", "bad_scheme"),
    ("http:///nohost", "bad_url"),
    ("http://public.example:99999/", "bad_url"),
    ("", "missing_url"),
    (None, "missing_url"),
])
def test_default_policy(url, reason):
    assert UrlGuard(UrlGuardConfig(), resolver=fake_resolver).check_url(url) == reason


def test_allow_list_and_private_switch_never_open_metadata():
    allow_loopback = UrlGuard(UrlGuardConfig(allow_networks=("127.0.0.1",)), resolver=fake_resolver)
    assert allow_loopback.check_url("http://127.0.0.1:1/x") is None
    assert allow_loopback.check_url("http://127.0.0.2:1/x") == "loopback_address"
    private = UrlGuard(UrlGuardConfig(allow_private_networks=True), resolver=fake_resolver)
    assert private.check_url("http://intranet.example/") is None
    assert private.check_url("http://127.0.0.1/") is None
    assert private.check_url("http://169.254.169.254/") == "metadata_address"
    explicit = UrlGuard(UrlGuardConfig(allow_networks=("169.254.169.254/32",)), resolver=fake_resolver)
    assert explicit.check_url("http://169.254.169.254/") is None


def test_table_split_accounts_for_every_row():
    urls = ["http://public.example/1", "http://intranet.example/2", "gopher://x/", "http://public.example/3"]
    table = pa.table({"uid": ["a", "b", "c", "d"], "url": urls, "text": ["t"] * 4})
    kept, rejected = UrlGuard(UrlGuardConfig(), resolver=fake_resolver)(table)
    assert kept.column("uid").to_pylist() == ["a", "d"]
    assert kept.column_names == table.column_names
    assert dict(zip(rejected.column("uid").to_pylist(), rejected.column("reason").to_pylist())) == {
        "b": "private_address", "c": "bad_scheme"}
    assert len(kept) + len(rejected) == len(table)


def test_hosts_resolve_in_parallel_once_each_and_time_out():
    """The pre-download check resolves distinct hosts concurrently (a barrier that needs four
    resolutions at once would break if they ran one by one), each host once, and a host slower
    than resolve_timeout_s is a counted resolve_timeout reject."""
    barrier, calls, release = threading.Barrier(4, timeout=10), [], threading.Event()

    def resolver(host: str, port: int) -> list[str]:
        calls.append(host)
        if host == "slow.example":
            release.wait(10)
            return ["93.184.216.34"]
        barrier.wait()
        return ["93.184.216.34"]

    urls = [f"http://h{i}.example/{j}.jpg" for i in range(4) for j in range(5)] + ["http://slow.example/a.jpg"]
    guard = UrlGuard(UrlGuardConfig(resolve_timeout_s=0.5, resolve_threads=8), resolver=resolver)
    kept, rejected = guard(pa.table({"uid": [str(i) for i in range(len(urls))], "url": urls}))
    release.set()
    assert len(kept) == 20 and rejected.column("reason").to_pylist() == ["resolve_timeout"]
    assert sorted(calls) == sorted([f"h{i}.example" for i in range(4)] + ["slow.example"])


def test_parse_allow_networks():
    assert parse_allow_networks(["127.0.0.1", "10.0.0.0/8,::1"]) == ("127.0.0.1", "10.0.0.0/8", "::1")
    with pytest.raises(ValueError, match="nonsense"):
        parse_allow_networks(["nonsense"])


def test_opener_refuses_redirect_to_metadata(site):
    base, _ = site
    opener = build_guarded_opener(UrlGuardConfig(allow_networks=("127.0.0.1",)))
    assert opener.open(f"{base}/img/00.png", timeout=5).read()[:4] == b"\x89PNG"
    with pytest.raises(GuardRefusal, match="redirect: metadata_address"):
        opener.open(f"{base}/redirect/metadata", timeout=5)


def test_opener_checks_the_address_it_connects_to(site, monkeypatch):
    """DNS rebinding: the name now resolves to a private address; the opener refuses before
    any connect (the loopback_only fixture would fail the test on a connect to 10.9.9.9)."""
    base, _ = site
    monkeypatch.setattr("curation.images.urlguard.system_resolver", lambda host, port: ["10.9.9.9"])
    opener = build_guarded_opener(UrlGuardConfig(allow_networks=("127.0.0.1",)))
    with pytest.raises(urllib.error.URLError, match="refused connect: private_address"):
        opener.open("http://rebinding.example/x.png", timeout=5)


def test_opener_ignores_proxy_environment(site, monkeypatch):
    base, _ = site
    monkeypatch.setenv("http_proxy", "http://10.0.0.1:3128")
    opener = build_guarded_opener(UrlGuardConfig(allow_networks=("127.0.0.1",)))
    assert not any(isinstance(h, urllib.request.ProxyHandler) and h.proxies for h in opener.handlers)
    assert opener.open(f"{base}/img/01.png", timeout=5).status == 200
