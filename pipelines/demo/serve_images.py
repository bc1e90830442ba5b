"""Serve the sample images on 127.0.0.1 in the foreground (the sample pool's image host).

The sample pool's URLs are ``http://127.0.0.1:18765/<path under data/sample/images>``; the demo
serves that tree so img2dataset downloads real images for real, without leaving the machine::

    python -m pipelines.demo.serve_images                       # data/sample/images on 127.0.0.1:18765
    python -m pipelines.demo.serve_images --dir DIR --port 0    # any dir, an ephemeral port

The server itself (``serving``, ``make_server``, ``ImageRequestHandler``) is the product's
:mod:`pipelines.serve_images` (``wit_images.py --serve-images``), re-exported here.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipelines.serve_images import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    ImageRequestHandler,
    ImageServer,
    make_server,
    serving,
)

SAMPLE_BASE_URL = f"http://{DEFAULT_HOST}:{DEFAULT_PORT}"  # the sample pool's URLs start with it
__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "SAMPLE_BASE_URL", "ImageRequestHandler", "ImageServer", "make_server", "run", "serving"]


def run(argv: list[str] | None = None) -> int:
    """CLI: serve in the foreground until interrupted."""
    from storage.datadir import data_dir

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=None, help="directory to serve (default: the sample images)")
    parser.add_argument("--host", default=DEFAULT_HOST, help="loopback address to bind")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port to bind (0: ephemeral)")
    args = parser.parse_args(argv)
    root = args.dir or data_dir() / "images"
    server = make_server(root, args.host, args.port)
    print(f"[serve_images] serving {root} on http://{args.host}:{server.server_address[1]} (Ctrl-C stops)",
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(run())
