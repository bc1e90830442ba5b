"""Serve a directory of images over HTTP on 127.0.0.1 (``build_wit.py`` / ``wit_images.py --serve-images``).

A pool whose URLs point at ``http://127.0.0.1:<port>/<path>`` (the sample pool uses port
18765) is downloaded for real, without leaving the machine, while the image stages serve the
folder during the download::

    with serving(root, port=0) as base_url:
        ...  # GET f"{base_url}/emoji/1f600.png"

The server binds to loopback only (any other host is refused), serves files only (no directory
listings), never follows a path out of the root, and logs nothing per request. The demo's
foreground server (``python -m pipelines.demo.serve_images``) is this one.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import ipaddress
import threading
from collections.abc import Iterator
from pathlib import Path

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 18765  # the sample pool's URLs use this port


class ImageRequestHandler(http.server.SimpleHTTPRequestHandler):
    """Files under the served root; 404 for directories; quiet."""

    def list_directory(self, path):
        self.send_error(404, "Not Found")

    def log_message(self, format, *args):  # the base class's signature
        pass


class ImageServer(http.server.ThreadingHTTPServer):
    """Threaded HTTP server with a backlog big enough for img2dataset's thread pools."""

    daemon_threads = True
    request_queue_size = 512


def make_server(root: str | Path, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                handler: type[http.server.BaseHTTPRequestHandler] = ImageRequestHandler) -> ImageServer:
    """A server for ``root`` bound to ``host:port`` (``port=0``: ephemeral). ``host`` must be a
    loopback address; ``root`` must be a directory (ValueError / FileNotFoundError otherwise)."""
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"serve_images binds to loopback only, not {host}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a directory to serve (run `make sample-data`)")
    if handler is ImageRequestHandler or issubclass(handler, http.server.SimpleHTTPRequestHandler):
        handler = functools.partial(handler, directory=str(root.resolve()))
    return ImageServer((host, port), handler)


@contextlib.contextmanager
def serving(root: str | Path, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
            handler: type[http.server.BaseHTTPRequestHandler] = ImageRequestHandler) -> Iterator[str]:
    """Serve ``root`` in a background thread for the duration of the block; yields the base
    URL (``http://127.0.0.1:<port>``)."""
    server = make_server(root, host, port, handler)
    thread = threading.Thread(target=server.serve_forever, name="serve_images", daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
