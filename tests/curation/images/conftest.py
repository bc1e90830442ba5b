"""Fixtures for the image stages: a loopback-only socket guard, tiny real images, and a local
HTTP server over them with the failure cases (404, HTML as an image, truncated JPEG, PNG bomb,
X-Robots-Tag opt-out, a flaky 503, a redirect to the metadata address)."""

from __future__ import annotations

import io
import ipaddress
import socket
import struct
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipelines.demo.serve_images import ImageRequestHandler, serving

METADATA_URL = "http://169.254.169.254/latest/meta-data/"


def _is_loopback(host) -> bool:
    try:
        return ipaddress.ip_address(str(host).split("%", 1)[0]).is_loopback
    except ValueError:
        return host == "localhost"


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    """Fail the test on any attempt, in this process, to resolve a name or connect anywhere but
    loopback: even a broken guard cannot send a packet off the machine from here."""
    real_connect, real_connect_ex, real_getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

    def check(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address[0]):
            pytest.fail(f"test tried to connect to non-loopback {address}")

    def connect(sock, address):
        check(sock, address)
        return real_connect(sock, address)

    def connect_ex(sock, address):
        check(sock, address)
        return real_connect_ex(sock, address)

    def getaddrinfo(host, *args, **kwargs):
        if host is not None and not _is_loopback(host):
            pytest.fail(f"test tried to resolve {host!r} (a DNS query leaves the machine)")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield


def textured_png(seed: int, size: tuple[int, int] = (96, 80)) -> bytes:
    """A distinct image (smooth random pattern: pHashes far apart for different seeds)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize(size, Image.BICUBIC)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def jpeg_bytes(seed: int) -> bytes:
    out = io.BytesIO()
    Image.open(io.BytesIO(textured_png(seed, (160, 120)))).convert("RGB").save(out, format="JPEG", quality=90)
    return out.getvalue()


def png_bomb(width: int = 50_000, height: int = 50_000) -> bytes:
    """A valid PNG header claiming width x height 1-bit pixels (2.5 G pixels), ~1 KB on disk."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = zlib.compress(b"\0" * (1 + width // 8) * 16, 9)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", raw) + chunk(b"IEND", b""))


def write_site(root: Path, good: int = 12) -> dict[str, bytes]:
    """Files the test server serves: ``good`` distinct images, an exact and a near duplicate,
    and the bad cases. Returns {relative path: bytes}."""
    files = {f"img/{i:02d}.png": textured_png(i) for i in range(good)}
    files["img/exact_copy_of_03.png"] = files["img/03.png"]
    near = Image.open(io.BytesIO(textured_png(5))).convert("RGB")
    near.putpixel((0, 0), (0, 0, 0))  # one pixel off: different pixels, same pHash
    buf = io.BytesIO()
    near.save(buf, format="PNG")
    files["img/near_copy_of_05.png"] = buf.getvalue()
    jpeg = jpeg_bytes(99)
    files["bad/truncated.jpg"] = jpeg[: len(jpeg) // 2]
    files["bad/page.jpg"] = b"<!doctype html><html><body>not an image</body></html>"
    files["bad/bomb.png"] = png_bomb()
    files["noai/opt_out.png"] = textured_png(1000)
    files["flaky/once.png"] = textured_png(2000)
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


class SiteHandler(ImageRequestHandler):
    """Serves the site, plus: ``/noai/*`` with ``X-Robots-Tag: noai``, ``/flaky/*`` answering
    503 the first time, ``/bad/page.jpg`` as ``image/jpeg``, ``/redirect/metadata`` → 302 to
    the metadata address."""

    flaky_seen: set[str] = set()

    def end_headers(self):
        if self.path.startswith("/noai/"):
            self.send_header("X-Robots-Tag", "noai")
        super().end_headers()

    def guess_type(self, path):
        return "image/jpeg" if str(path).endswith(".jpg") else super().guess_type(path)

    def do_GET(self):
        if self.path == "/redirect/metadata":
            self.send_response(302)
            self.send_header("Location", METADATA_URL)
            self.end_headers()
            return
        if self.path.startswith("/flaky/") and self.path not in SiteHandler.flaky_seen:
            SiteHandler.flaky_seen.add(self.path)
            self.send_error(503, "try again")
            return
        super().do_GET()


@pytest.fixture
def site(tmp_path):
    """(base URL, {relative path: bytes}) of a fresh test server on 127.0.0.1."""
    root = tmp_path / "site"
    files = write_site(root)
    SiteHandler.flaky_seen = set()
    with serving(root, port=0, handler=SiteHandler) as base:
        yield base, files


def write_selection(curation_dir: Path, urls: list[str], parts: int = 2) -> pa.Table:
    """``selected/part-NNNNN.parquet`` in the curation core's schema for ``urls``."""
    n = len(urls)
    table = pa.table({
        "uid": [f"{i:032x}" for i in range(n)],
        "url": urls,
        "text": [f"a picture number {i}" for i in range(n)],
        "query_ids": pa.array([[i % 5, 7] for i in range(n)], pa.list_(pa.int32())),
        "source": ["test"] * n,
    })
    (curation_dir / "selected").mkdir(parents=True, exist_ok=True)
    step = -(-n // parts)
    for p in range(parts):
        pq.write_table(table.slice(p * step, step), curation_dir / "selected" / f"part-{p:05d}.parquet")
    return table
